"""Contract tests of HFGenerator on the tiny in-memory model: exact log-probs, sampling options, stopping, padding."""

from __future__ import annotations

import math

import pytest
import torch

from sdar.rollout.generator import Sample, SamplingParams
from sdar.rollout.hf import (
    SHARED_PREFIX_MIN,
    HFGenerator,
    common_prefix,
    eos_token_ids,
    truncated_logits,
    unique_prompts,
)
from sdar.tiny import byte_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok))


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def forward_logits(model, prompt, response) -> torch.Tensor:
    """[len(response), V] fp32 logits predicting each response token, from one plain full forward pass."""
    full = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(full).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(response)]


def teacher_forced_logprobs(model, prompt, response, temperature: float = 1.0) -> torch.Tensor:
    logits = forward_logits(model, prompt, response)
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


class ForcedNext(torch.nn.Module):
    """The tiny model plus a huge logit bonus on ``chain[last input token]``: a deterministic causal LM."""

    def __init__(self, inner, chain: dict[int, int]) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config
        bias = torch.zeros(inner.config.vocab_size, inner.config.vocab_size)
        for prev, nxt in chain.items():
            bias[prev, nxt] = 100.0
        self.register_buffer("bias", bias)

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        out = self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )
        last = input_ids[:, -out.logits.shape[1] :]  # [B, L] the tokens whose next-token logits were returned
        out.logits = out.logits + self.bias[last]
        return out


def chain_of(tok, text: str, end: int | None = None) -> dict[int, int]:
    t = ids(tok, text)
    chain = dict(zip(t[:-1], t[1:]))
    if end is not None:
        chain[t[-1]] = end
    return chain


PROMPTS_TEXT = ["hello there", "hi", "a much longer prompt, with commas and more words"]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_full_forward(model, tok, temperature):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    gen = HFGenerator(model, tok)
    samples = gen.generate(prompts, SamplingParams(max_new_tokens=12, temperature=temperature, seed=3))
    assert len(samples) == len(prompts)
    for p, s in zip(prompts, samples):
        assert len(s.token_ids) == len(s.logprobs) >= 1
        expected = teacher_forced_logprobs(model, p, s.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(s.logprobs), expected, atol=1e-4, rtol=0)


def test_truncated_logits_by_hand():
    # probs 0.5, 0.3, 0.15, 0.05 (logits = their logs)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # top-k 2 keeps 0.5 and 0.3 -> renormalised 0.5/0.8 = 0.625 and 0.3/0.8 = 0.375
    p = torch.softmax(truncated_logits(logits, temperature=1.0, top_k=2, top_p=1.0), -1)
    torch.testing.assert_close(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top-p 0.6: mass before 0.3 is 0.5 < 0.6 (kept), mass before 0.15 is 0.8 >= 0.6 (dropped) -> same two tokens
    p = torch.softmax(truncated_logits(logits, temperature=1.0, top_k=0, top_p=0.6), -1)
    torch.testing.assert_close(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top-p 0.4: only the most likely token (its own mass 0.5 already reaches 0.4)
    p = torch.softmax(truncated_logits(logits, temperature=1.0, top_k=0, top_p=0.4), -1)
    torch.testing.assert_close(p, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    # temperature 0.5 squares the probabilities: 0.25, 0.09, 0.0225, 0.0025 (sum 0.365), then top-k 3 drops the last
    p = torch.softmax(truncated_logits(logits, temperature=0.5, top_k=3, top_p=1.0), -1)
    torch.testing.assert_close(p, torch.tensor([[0.25, 0.09, 0.0225, 0.0]]) / 0.3625)
    # off: top_k 0 and top_p 1 leave the logits unchanged
    torch.testing.assert_close(truncated_logits(logits, temperature=1.0, top_k=0, top_p=1.0), logits)


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.3), (20, 0.5)])
def test_truncated_sampling_logprobs_are_renormalised(model, tok, top_k, top_p):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT[:2]]
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=top_k, top_p=top_p, seed=0)
    for p, s in zip(prompts, HFGenerator(model, tok).generate(prompts, params)):
        scaled = forward_logits(model, p, s.token_ids) / 0.9  # [A, V]
        for row, token, lp in zip(scaled, s.token_ids, s.logprobs):
            # the kept set, computed independently: top-k by rank, then the shortest probability-sorted prefix
            # whose mass reaches top_p
            order = torch.argsort(row, descending=True)
            kept = order[:top_k] if top_k else order
            probs = torch.softmax(row[kept], -1)
            n = int((torch.cumsum(probs, 0) - probs < top_p).sum())
            kept = kept[:n]
            assert token in kept.tolist()
            expected = row[token] - torch.logsumexp(row[kept], 0)
            assert math.isclose(lp, float(expected), abs_tol=1e-4)
            assert lp > float(torch.log_softmax(row, -1)[token])  # truncation raised it above the full softmax


def test_seed_reproducibility(model, tok):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    gen = HFGenerator(model, tok)
    a = gen.generate(prompts, SamplingParams(max_new_tokens=10, seed=7))
    b = gen.generate(prompts, SamplingParams(max_new_tokens=10, seed=7))
    c = gen.generate(prompts, SamplingParams(max_new_tokens=10, seed=8))
    assert a == b
    assert [s.token_ids for s in a] != [s.token_ids for s in c]


def test_greedy_is_deterministic_argmax_with_temperature_one_logprobs(model, tok):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    gen = HFGenerator(model, tok)
    a = gen.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0.0))
    b = gen.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0.0, seed=123))
    assert a == b
    for p, s in zip(prompts, a):
        logits = forward_logits(model, p, s.token_ids)
        assert list(s.token_ids) == logits.argmax(-1).tolist()
        torch.testing.assert_close(torch.tensor(s.logprobs), teacher_forced_logprobs(model, p, s.token_ids, 1.0))


def test_max_new_tokens_respected(model, tok):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    for n in (1, 5):
        for s in HFGenerator(model, tok).generate(prompts, SamplingParams(max_new_tokens=n, temperature=0.0)):
            assert len(s.token_ids) <= n
            if tok.eos_token_id not in s.token_ids:
                assert len(s.token_ids) == n and s.finish_reason == "length"


def test_left_padding_does_not_change_results(model, tok):
    short, long_ = ids(tok, "hi"), ids(tok, "a much, much longer prompt that forces left padding of the short one")
    gen = HFGenerator(model, tok)
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    alone = gen.generate([short], params)[0]
    batched = gen.generate([long_, short, long_[:7]], params)
    assert batched[1].token_ids == alone.token_ids
    torch.testing.assert_close(torch.tensor(batched[1].logprobs), torch.tensor(alone.logprobs), atol=1e-4, rtol=0)
    for row, prompt in ((0, long_), (2, long_[:7])):
        assert batched[row].token_ids == gen.generate([prompt], params)[0].token_ids


def test_one_sample_per_prompt_in_order_across_chunks(model, tok):
    prompts = [ids(tok, t) for t in ["x", "yy", "zzz", "wwww", "vvvvv"]]
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    whole = HFGenerator(model, tok).generate(prompts, params)
    chunked = HFGenerator(model, tok, batch_size=2).generate(prompts, params)
    assert len(chunked) == 5 and all(isinstance(s, Sample) for s in chunked)
    assert [s.token_ids for s in chunked] == [s.token_ids for s in whole]
    for i, p in enumerate(prompts):  # each matches its own single-prompt run
        assert chunked[i].token_ids == HFGenerator(model, tok).generate([p], params)[0].token_ids


def test_unique_prompts_by_hand():
    unique, of_row = unique_prompts([[1, 2], [3], [1, 2], (3,), [1, 2, 0]])
    assert unique == [(1, 2), (3,), (1, 2, 0)]
    assert of_row == [0, 1, 0, 1, 2]


class CountingRows(torch.nn.Module):
    """The tiny model, recording the batch size of every forward call."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config
        self.shapes: list[tuple[int, int]] = []

    @property
    def rows(self) -> list[int]:
        """The batch size of every forward call."""
        return [shape[0] for shape in self.shapes]

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, cache=None, **kwargs):
        self.shapes.append(tuple(input_ids.shape))
        return self.inner(input_ids=input_ids, cache=cache, **kwargs)


def test_identical_prompts_are_prefilled_once_and_sample_on_their_own(model, tok):
    a, b = ids(tok, "the same first turn"), ids(tok, "another task, longer than the first")
    prompts = [a, b, a, a, b, a]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5)
    counting = CountingRows(model)
    deduped = HFGenerator(counting, tok).generate(prompts, params)
    assert counting.rows[0] == 2 and counting.rows[1] == 6  # two distinct prompts prefilled, six rows decoded
    assert len({s.token_ids for s, p in zip(deduped, prompts) if p == a}) > 1  # the copies are independent rows
    for p, s in zip(prompts, deduped):
        torch.testing.assert_close(torch.tensor(s.logprobs), teacher_forced_logprobs(model, p, s.token_ids),
                                   atol=1e-4, rtol=0)
    # the same call with every prompt prefilled on its own row samples the same tokens
    counting.shapes.clear()
    plain = HFGenerator(counting, tok, share_prompts=False).generate(prompts, params)
    assert counting.rows[0] == 6
    assert [s.token_ids for s in plain] == [s.token_ids for s in deduped]
    torch.testing.assert_close(torch.tensor([lp for s in plain for lp in s.logprobs]),
                               torch.tensor([lp for s in deduped for lp in s.logprobs]), atol=1e-5, rtol=0)


def test_common_prefix_by_hand():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shortest prompt keeps its last token
    assert common_prefix([[5, 1], [6, 1]]) == 0
    assert common_prefix([[1, 2, 3]]) == 0 and common_prefix([]) == 0


def test_common_prefix_is_prefilled_once_and_changes_no_sample(model, tok):
    head = "System: you play a household game. Goal: "
    texts = ["put the mug in the sink", "open drawer 2", "put the mug in the sink", "go to the shelf and look around"]
    prompts = [ids(tok, head + t) for t in texts]
    shared = common_prefix(unique_prompts(prompts)[0])
    assert shared >= SHARED_PREFIX_MIN and shared == len(ids(tok, head))
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=7)
    counting = CountingRows(model)
    split = HFGenerator(counting, tok).generate(prompts, params)
    suffix_width = max(len(p) for p in prompts) - shared
    # the prefix at batch 1, the three distinct suffixes (left-padded), then one token per row per step
    assert counting.shapes[:3] == [(1, shared), (3, suffix_width), (4, 1)]
    counting.shapes.clear()
    plain = HFGenerator(counting, tok, share_prompts=False).generate(prompts, params)
    assert counting.shapes[0] == (4, max(len(p) for p in prompts))
    assert [s.token_ids for s in plain] == [s.token_ids for s in split]
    torch.testing.assert_close(torch.tensor([lp for s in plain for lp in s.logprobs]),
                               torch.tensor([lp for s in split for lp in s.logprobs]), atol=1e-5, rtol=0)
    for p, s in zip(prompts, split):  # exact behaviour log-probs: equal to one plain forward over prompt + response
        torch.testing.assert_close(torch.tensor(s.logprobs), teacher_forced_logprobs(model, p, s.token_ids),
                                   atol=1e-4, rtol=0)
    counting.shapes.clear()
    short_head = [p[shared - SHARED_PREFIX_MIN + 1 :] for p in prompts]
    assert common_prefix(unique_prompts(short_head)[0]) == SHARED_PREFIX_MIN - 1
    HFGenerator(counting, tok).generate(short_head, params)
    assert counting.shapes[0][0] == 3  # a common prefix shorter than SHARED_PREFIX_MIN is not split off


def test_stop_string_ends_row_after_completing_token(model, tok):
    forced = ForcedNext(model, chain_of(tok, "qSTOP!!!!!!"))
    gen = HFGenerator(forced, tok)
    prompt = ids(tok, "say it q")
    s = gen.generate([prompt], SamplingParams(max_new_tokens=20, temperature=0.0, stop=("TOP",)))[0]
    assert tok.decode(s.token_ids) == "STOP" and s.finish_reason == "stop"
    s = gen.generate([prompt], SamplingParams(max_new_tokens=6, temperature=0.0))[0]
    assert tok.decode(s.token_ids) == "STOP!!" and s.finish_reason == "length"


def test_eos_is_kept_with_its_logprob_and_rows_finish_independently(model, tok):
    eos = tok.eos_token_id
    forced = ForcedNext(model, chain_of(tok, "qab", end=eos))
    gen = HFGenerator(forced, tok)
    early, other = ids(tok, "go q"), ids(tok, "another, longer prompt")
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)
    batch = gen.generate([early, other, early], params)
    for s in (batch[0], batch[2]):
        assert s.token_ids == (*ids(tok, "ab"), eos) and s.finish_reason == "stop"
        torch.testing.assert_close(
            torch.tensor(s.logprobs), teacher_forced_logprobs(forced, early, s.token_ids), atol=1e-4, rtol=0
        )
    # the row that kept going after the others left the batch is still exact
    torch.testing.assert_close(
        torch.tensor(batch[1].logprobs), teacher_forced_logprobs(forced, other, batch[1].token_ids), atol=1e-4, rtol=0
    )
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    assert gen.generate([early, other], greedy)[1].token_ids == gen.generate([other], greedy)[0].token_ids


def test_generation_config_eos_ids_also_stop(model, tok):
    z = ids(tok, "Z")[0]
    forced = ForcedNext(model, chain_of(tok, "qZ"))
    forced.generation_config = type(model.generation_config)(eos_token_id=[z, 100_000])  # out-of-vocab id ignored
    assert eos_token_ids(forced, tok) == {tok.eos_token_id, z}
    s = HFGenerator(forced, tok).generate([ids(tok, "q")], SamplingParams(max_new_tokens=9, temperature=0.0))[0]
    assert s.token_ids == (z,) and s.finish_reason == "stop"


def test_restores_training_mode(model, tok):
    model.train()
    try:
        HFGenerator(model, tok).generate([ids(tok, "hi")], SamplingParams(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()
    HFGenerator(model, tok).generate([ids(tok, "hi")], SamplingParams(max_new_tokens=2))
    assert not model.training


def test_load_weights_shared_is_noop_and_copy_is_loaded(tok):
    policy = tiny_model(len(tok), seed=0)
    gen = HFGenerator(policy, tok)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    gen.load_weights(policy.named_parameters())  # same storage: nothing copied, nothing changed
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())

    copy = tiny_model(len(tok), seed=1)
    gen_copy = HFGenerator(copy, tok)
    gen_copy.load_weights(policy.named_parameters())
    for (name, a), b in zip(policy.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(a, b), name
    params = SamplingParams(max_new_tokens=5, temperature=0.0)
    assert gen_copy.generate([ids(tok, "hi")], params) == gen.generate([ids(tok, "hi")], params)
    with pytest.raises(KeyError, match="no tensor named"):
        gen_copy.load_weights([("not.a.weight", torch.zeros(1))])

    other = tiny_model(len(tok), seed=2)
    gen.set_model(other)
    assert gen.model is other


def test_rejects_empty_prompt(model, tok):
    with pytest.raises(ValueError, match="at least one token"):
        HFGenerator(model, tok).generate([[]], SamplingParams(max_new_tokens=2))


def test_transformers_default_sampling_would_break_the_logprob_contract(model, tok):
    """``generate(do_sample=True)`` truncates to top_k=50 unless told otherwise: its sampler is not the model."""
    prompt = torch.tensor([ids(tok, "hello there")])
    kwargs = dict(do_sample=True, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    out = {}
    for name, extra in (("default", {}), ("explicit", {"top_k": 0, "top_p": 1.0})):
        torch.manual_seed(0)
        res = model.generate(prompt, temperature=1.0, pad_token_id=tok.pad_token_id, **kwargs, **extra)
        response = res.sequences[0, prompt.shape[1] :].tolist()
        sampler = torch.stack([torch.log_softmax(s[0].float(), -1)[t] for s, t in zip(res.scores, response)])
        out[name] = (sampler - teacher_forced_logprobs(model, prompt[0].tolist(), response)).abs().max().item()
    assert out["explicit"] < 1e-4
    assert out["default"] > 0.5  # near-uniform over 259 ids: log(259/50) ~ 1.6 nats


class CountingView:
    """A sampling view that records how often it is entered and which calls run inside it."""

    def __init__(self) -> None:
        self.entered = 0
        self.inside = False

    def __call__(self, model):
        import contextlib

        @contextlib.contextmanager
        def view():
            self.entered += 1
            self.inside = True
            try:
                yield
            finally:
                self.inside = False
        return view()


def test_session_enters_the_sampling_view_once_for_its_calls(model, tok):
    from sdar.rollout.generator import session

    view = CountingView()
    gen = HFGenerator(model, tok, sampling_view=view)
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=3)
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    alone = [gen.generate(prompts, params) for _ in range(2)]
    assert view.entered == 2  # outside a session: once per call
    with session(gen):
        assert view.inside
        with gen.session():  # nested: still the one session
            held = [gen.generate(prompts, params) for _ in range(2)]
        assert view.inside
    assert view.entered == 3 and not view.inside
    assert held == alone  # the same samples inside a session
    gen.generate(prompts, params)
    assert view.entered == 4  # after the session, per call again
    with pytest.raises(RuntimeError, match="boom"), gen.session():
        raise RuntimeError("boom")
    assert not view.inside and not gen._held
    with session(object()):  # a generator without sessions: nothing happens
        pass

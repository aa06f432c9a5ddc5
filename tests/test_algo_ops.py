"""Masked reductions, the loss record, and chunked token log-probs / entropies (values, gradients, memory)."""

from __future__ import annotations

import math

import pytest
import torch

from sdar.algo import LossOutput, hidden_token_logprobs, masked_mean, masked_sum, token_logprobs, where_mask
from sdar.algo.ops import check_mask


def _close(actual: torch.Tensor, expected: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------------- masked reductions


def test_masked_sum_and_mean_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[True, False, True], [False, False, True]])
    # kept: 1, 3, 6 -> sum 10, mean 10/3
    _close(masked_sum(x, m), 10.0)
    _close(masked_mean(x, m), 10.0 / 3.0)
    # per row: row 0 keeps 1, 3 (sum 4, mean 2); row 1 keeps 6 (sum 6, mean 6)
    _close(masked_sum(x, m, dim=-1), [4.0, 6.0])
    _close(masked_mean(x, m, dim=-1), [2.0, 6.0])
    # per column: col 0 keeps 1 (mean 1); col 1 keeps nothing (mean 0, not NaN); col 2 keeps 3, 6 (mean 4.5)
    _close(masked_mean(x, m, dim=0), [1.0, 0.0, 4.5])


def test_masked_mean_empty_mask_is_zero_not_nan() -> None:
    x = torch.tensor([[1.0, 2.0]])
    m = torch.zeros(1, 2, dtype=torch.bool)
    assert masked_mean(x, m).item() == 0.0
    assert masked_sum(x, m).item() == 0.0
    empty = torch.zeros(0, 3)
    assert masked_mean(empty, torch.zeros(0, 3, dtype=torch.bool)).item() == 0.0


def test_masked_mean_broadcast_mask_counts_broadcast_positions() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = torch.tensor([True, False])  # broadcast over rows: keeps column 0 -> 1, 3 -> mean 2
    _close(masked_mean(x, m), 2.0)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_masked_positions_are_ignored_in_value_and_gradient(poison: float) -> None:
    x = torch.tensor([1.0, 2.0, poison], requires_grad=True)
    m = torch.tensor([True, True, False])
    out = masked_mean(x * 3.0, m)  # (3 + 6) / 2 = 4.5
    out.backward()
    _close(out.detach(), 4.5)
    # d/dx of 3 * mean over 2 kept entries = 1.5; the poisoned entry gets exactly 0
    _close(x.grad, [1.5, 1.5, 0.0])


def test_where_mask_fill_value() -> None:
    x = torch.tensor([1.0, float("nan")])
    _close(where_mask(x, torch.tensor([True, False]), fill=-7.0), [1.0, -7.0])


def test_non_bool_mask_is_refused_with_a_fix() -> None:
    with pytest.raises(TypeError, match=r"mask\.bool\(\)"):
        masked_mean(torch.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match="bool tensor"):
        check_mask([True, False])  # type: ignore[arg-type]


def test_loss_output_is_a_named_tuple() -> None:
    out = LossOutput(torch.tensor(1.0), {"a": torch.tensor(2.0)})
    loss, metrics = out
    assert out.loss is loss and out.metrics is metrics and metrics["a"].item() == 2.0


# -------------------------------------------------------------------------------------------------- token log-probs


def test_token_logprobs_and_entropy_by_hand() -> None:
    # logits [0, 0, ln 2] -> softmax [1/4, 1/4, 1/2]
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]])
    targets = torch.tensor([2, 0])
    lp, ent = token_logprobs(logits, targets, with_entropy=True)
    # log p(2) = ln 1/2, log p(0) = ln 1/4
    _close(lp, [math.log(0.5), math.log(0.25)])
    # H = -(2 * 1/4 ln 1/4 + 1/2 ln 1/2) = 0.5 ln 4 + 0.5 ln 2 = 1.5 ln 2
    _close(ent, [1.5 * math.log(2.0)] * 2)


def test_token_logprobs_temperature_by_hand() -> None:
    # z = [0, 0, ln 2] / 2 = [0, 0, ln sqrt2] -> p(2) = sqrt2 / (2 + sqrt2) = 0.414214
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)]])
    lp, ent = token_logprobs(logits, torch.tensor([2]), temperature=2.0)
    assert ent is None
    _close(lp, [math.log(math.sqrt(2.0) / (2.0 + math.sqrt(2.0)))])


def _plain(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return picked, entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_token_logprobs_equal_plain_computation_values_and_grads(dtype: torch.dtype, chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11, generator=gen)).to(dtype).requires_grad_(True)
    targets = torch.randint(0, 11, (2, 5), generator=gen)
    lp, ent = token_logprobs(logits, targets, temperature=0.7, chunk_size=chunk_size, with_entropy=True)
    assert lp.dtype == torch.float32 and ent is not None and ent.dtype == torch.float32
    assert lp.shape == (2, 5) and ent.shape == (2, 5)
    weights = torch.randn(2, 5, generator=gen)
    (lp * weights + ent * weights.flip(0)).sum().backward()
    got_grad = logits.grad.clone()
    logits.grad = None
    ref_lp, ref_ent = _plain(logits, targets, temperature=0.7)
    (ref_lp * weights + ref_ent * weights.flip(0)).sum().backward()
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, logits.grad, atol=1e-2 if dtype == torch.bfloat16 else 1e-6, rtol=1e-2)


def test_entropy_with_banned_tokens_is_finite() -> None:
    # logits [0, 0, -inf]: p = [1/2, 1/2, 0], H = ln 2, no 0 * -inf NaN
    logits = torch.tensor([[0.0, 0.0, float("-inf")]], requires_grad=True)
    lp, ent = token_logprobs(logits, torch.tensor([0]), with_entropy=True)
    _close(ent, [math.log(2.0)])
    (lp + ent).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_token_logprobs_argument_errors() -> None:
    logits, targets = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(logits, targets, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, targets, temperature=0.0)
    with pytest.raises(ValueError, match="leading shapes"):
        token_logprobs(logits, torch.zeros(3, dtype=torch.long))


def test_token_logprobs_empty_input() -> None:
    lp, ent = token_logprobs(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), with_entropy=True)
    assert lp.shape == (0,) and ent is not None and ent.shape == (0,)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [2, 4, 64])
def test_hidden_token_logprobs_equal_plain_lm_head(with_bias: bool, chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 5, generator=gen, requires_grad=True)
    weight = torch.randn(13, 5, generator=gen, requires_grad=True)
    bias = torch.randn(13, generator=gen, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 13, (7,), generator=gen)
    w_lp, w_ent = torch.randn(7, generator=gen), torch.randn(7, generator=gen)

    lp, ent = hidden_token_logprobs(hidden, weight, targets, bias=bias, chunk_size=chunk_size, with_entropy=True)
    assert ent is not None
    (lp * w_lp + ent * w_ent).sum().backward()
    got = [hidden.grad.clone(), weight.grad.clone()] + ([bias.grad.clone()] if bias is not None else [])
    for p in (hidden, weight, bias):
        if p is not None:
            p.grad = None

    logits = hidden @ weight.T + (bias if bias is not None else 0.0)
    ref_lp, ref_ent = _plain(logits, targets)
    (ref_lp * w_lp + ref_ent * w_ent).sum().backward()
    want = [hidden.grad, weight.grad] + ([bias.grad] if bias is not None else [])
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_hidden_token_logprobs_without_grad_and_with_temperature() -> None:
    gen = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(5, 4, generator=gen), torch.randn(9, 4, generator=gen)
    targets = torch.randint(0, 9, (5,), generator=gen)
    with torch.no_grad():
        lp, ent = hidden_token_logprobs(hidden, weight, targets, temperature=1.3, chunk_size=2)
    assert ent is None and not lp.requires_grad
    ref_lp, _ = _plain(hidden @ weight.T, targets, temperature=1.3)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)


def test_hidden_token_logprobs_shape_errors() -> None:
    with pytest.raises(ValueError, match="weight"):
        hidden_token_logprobs(torch.zeros(3, 4), torch.zeros(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        hidden_token_logprobs(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))


def _saved_tensor_shapes(fn) -> list[tuple[tuple[int, ...], torch.dtype]]:  # type: ignore[no-untyped-def]
    saved: list[tuple[tuple[int, ...], torch.dtype]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


def test_backward_keeps_no_logits_and_no_fp32_chunk_copies() -> None:
    """Autograd saves only the chunk inputs: never logits for the hidden path, never an fp32 copy of a logits chunk."""
    t_rows, h_dim, vocab, chunk = 32, 4, 50, 8
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(t_rows, h_dim, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, h_dim, generator=gen, requires_grad=True)
    targets = torch.randint(0, vocab, (t_rows,), generator=gen)
    saved = _saved_tensor_shapes(
        lambda: hidden_token_logprobs(hidden, weight, targets, chunk_size=chunk, with_entropy=True)
    )
    assert saved, "expected the checkpointed chunk inputs to be saved"
    # logits chunks would be [chunk, vocab]; the full logits [t_rows, vocab]
    assert all(shape[-1] != vocab for shape, _ in saved), saved

    logits = torch.randn(t_rows, vocab, generator=gen).to(torch.bfloat16).requires_grad_(True)
    saved = _saved_tensor_shapes(lambda: token_logprobs(logits, targets, chunk_size=chunk, with_entropy=True))
    assert saved
    assert all(dtype != torch.float32 for _, dtype in saved), saved  # only bf16 input slices, no fp32 upcast
    assert all(math.prod(shape) <= chunk * vocab for shape, _ in saved), saved


def test_algo_package_imports_only_torch_and_the_standard_library() -> None:
    import ast
    import pathlib
    import sys

    import sdar.algo

    import sdar.names

    allowed = set(sys.stdlib_module_names) | {"torch", "__future__"}
    # sdar.names is a leaf of the package (standard library only, checked below), so the algorithms may read it
    leaves = [pathlib.Path(sdar.names.__file__)]
    for path in [*pathlib.Path(sdar.algo.__file__).parent.glob("*.py"), *leaves]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                ok = name.split(".")[0] in allowed or name == "sdar.algo" or name.startswith("sdar.algo.")
                ok = ok or (name == "sdar.names" and path not in leaves)
                assert ok, f"{path.name} imports {name}"

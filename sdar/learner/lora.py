"""LoRA training through peft: wrap the policy, score the reference by switching the adapter off, export merged weights.

- The KL reference of a LoRA run is the base model, which the policy already holds: :class:`AdapterOffReference`
  scores with the policy's own modules under ``disable_adapter()``, so no second copy of the weights exists.
- A generator in the same process shares :func:`inner_model` (the transformers model whose layers carry the
  adapter), so it samples from the adapted policy. A generator with its own copy of the weights (another device,
  another engine) must load :func:`merged_state_dict`: the base names with ``W + scaling * B @ A`` in place, because
  the peft state dict's names (``base_layer``, ``lora_A`` ...) match nothing in a plain model and base weights alone
  would silently sample from the untrained base policy.
- Only this module imports peft, and only inside functions.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_TARGETS",
    "AdapterOffReference",
    "apply_lora",
    "inner_model",
    "is_lora_model",
    "merged_for_sampling",
    "merged_state_dict",
    "merged_weights",
]

DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Attention and MLP projections of Llama/Qwen-style decoders."""


def is_lora_model(model: Any) -> bool:
    """True for a peft-wrapped model (checked by class, without importing peft)."""
    return any(c.__name__ == "PeftModel" and c.__module__.startswith("peft.") for c in type(model).__mro__)


def inner_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft model (its layers carry the adapter); any other model unchanged.

    A generator in the training process should sample with this object: it computes the adapted policy and takes
    the transformers forward arguments (the peft wrapper's forward only passes them through).
    """
    return model.get_base_model() if is_lora_model(model) else model  # type: ignore[operator]


def _matches(name: str, targets: Sequence[str]) -> bool:
    """peft's rule for a list of target names: the module name equals one or ends with ``.<target>``."""
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
) -> nn.Module:
    """Wrap a transformers causal LM with LoRA adapters; base weights are frozen, only the adapters train.

    The adapters start at ``B = 0``, so the wrapped model computes exactly the base model until the first update.

    Args:
        model: A transformers ``*ForCausalLM`` (modified in place: the targeted linears are replaced).
        r: Adapter rank (> 0).
        alpha: Scale numerator; the update is ``alpha / r * B @ A``.
        dropout: Dropout on the adapter input during training (0 keeps training and scoring log-probs identical).
        target_modules: Module names (or name suffixes) to adapt, e.g. ``("q_proj", "v_proj")``. The input
            embedding and the LM head cannot be targeted: the learner scores tokens with the head's plain weight.

    Returns:
        The peft model (``PeftModelForCausalLM``).

    Raises:
        ValueError: a bad rank/alpha/dropout, no target, or a target that is an embedding or the LM head.
    """
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}; use full fine-tuning (no LoRA) for rank 0")
    if alpha <= 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    targets = tuple(target_modules)
    if not targets:
        raise ValueError("target_modules is empty; name the linear layers to adapt, e.g. ('q_proj', 'v_proj')")
    if is_lora_model(model):
        raise ValueError("the model already has LoRA adapters; apply_lora wraps a plain transformers model once")
    special = {id(m) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    bad = [name for name, m in model.named_modules() if id(m) in special and _matches(name, targets)]
    if bad:
        raise ValueError(
            f"target_modules {list(targets)} select {bad}, an embedding or the LM head; the learner scores tokens "
            "with the head's own weight, so adapt the decoder's linear layers only (e.g. q_proj, v_proj)"
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft still calls a transformers method that transformers 5 renamed
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    before = module.training
    module.train(False)
    try:
        yield
    finally:
        module.train(before)


class _AdapterOffBody(nn.Module):
    """The policy's decoder body, run with the adapter switched off."""

    def __init__(self, owner: "AdapterOffReference") -> None:
        super().__init__()
        self._owner = (owner,)  # a tuple: not a registered child, so no module cycle

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        owner = self._owner[0]
        with owner.scope():
            return owner.policy.get_decoder()(*args, **kwargs)


class AdapterOffReference(nn.Module):
    """The frozen base model as seen through a LoRA policy: the policy's own modules with the adapter switched off.

    Use it wherever a reference *model* is expected (``LocalLearner(peft_model, reference_model=
    AdapterOffReference(peft_model))``): it exposes ``get_decoder()`` (the policy's body, run under
    ``disable_adapter()`` and in eval mode), ``get_output_embeddings()`` (the policy's LM head, never adapted) and
    ``config``, and calling it runs the whole policy with the adapter off. The policy is held outside this module's
    children, so ``eval()`` / ``requires_grad_(False)`` on the reference leave the trained adapter alone.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        if not is_lora_model(policy):
            raise TypeError(
                f"AdapterOffReference needs a peft LoRA model (see apply_lora), got {type(policy).__name__}; "
                "for full fine-tuning keep a frozen copy of the model as the reference instead"
            )
        self._policy = (policy,)  # a tuple: the policy is not registered as a child
        self.config = getattr(policy, "config", None)
        self.body = _AdapterOffBody(self)

    @property
    def policy(self) -> nn.Module:
        return self._policy[0]

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Inside: the policy computes the base model (adapter off, eval mode); both are restored on exit."""
        policy = self.policy
        with _eval_mode(policy), policy.disable_adapter():  # type: ignore[operator]
            yield

    def get_decoder(self) -> nn.Module:
        return self.body

    def get_output_embeddings(self) -> nn.Module:
        return self.policy.get_output_embeddings()  # type: ignore[operator]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward (same arguments and outputs as the wrapped transformers model)."""
        with self.scope():
            return inner_model(self.policy)(*args, **kwargs)


@contextlib.contextmanager
def merged_for_sampling(model: nn.Module) -> Iterator[int]:
    """Inside: every adapted linear of ``model`` computes one matmul with ``W + scaling * B @ A`` instead of ``W x``
    plus the adapter's two small ones; outside, the model is exactly as before (the base weights are never touched).

    For no-grad sampling: the adapter branches cost 13% of SmolLM2-135M's prefill on one CPU thread, and their
    small kernels add a fixed cost to every decoding step. The price is one merged copy of each adapted weight,
    alive until exit. A layer that is disabled, already merged, DoRA, or not over a plain ``nn.Linear`` is left as
    it is. Works on the transformers model inside a peft model (:func:`inner_model`) or the peft model itself.

    Yields:
        How many layers compute with merged weights (0 for a model without adapters).
    """
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    swapped: list[tuple[nn.Module, nn.Parameter]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.base_layer
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                if (not active or layer.merged or layer.disable_adapters or type(base) is not nn.Linear
                        or any(layer.use_dora.get(a, False) for a in active)):
                    continue
                weight = base.weight
                delta = sum(layer.get_delta_weight(a) for a in active)
                merged = nn.Parameter((weight + delta.to(weight.dtype)).detach(), requires_grad=False)
                swapped.append((layer, weight))
                base._parameters["weight"] = merged
                layer._disable_adapters = True  # peft's forward then runs base_layer alone
        yield len(swapped)
    finally:
        for layer, weight in swapped:
            layer.base_layer._parameters["weight"] = weight
            layer._disable_adapters = False


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapted policy's weights under the base model's names, with each adapter merged (``W + scaling B A``).

    The model is not modified. Load the result into a plain copy of the base architecture (e.g. a generator's
    ``load_weights``) to sample from the adapted policy. A model without adapters gives its own state dict.
    :func:`merged_weights` gives the same tensors one at a time.

    Returns:
        ``{name: tensor}`` with the base model's names and dtypes (merged tensors are new; others are the live ones,
        detached). Tied weights appear under each of their names, as in ``state_dict()``.

    Raises:
        ValueError: an adapter kind that is not a plain additive LoRA update (e.g. DoRA).
    """
    return dict(merged_weights(model))


def merged_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """:func:`merged_state_dict` as a stream: each adapted weight is merged when its turn comes, so at most one merged
    tensor exists at a time beyond what the consumer keeps (a weight push into an engine holds no merged copy of the
    whole model). Adapter kinds are checked before the first tensor is yielded.

    Raises:
        ValueError: an adapter kind that is not a plain additive LoRA update (e.g. DoRA).
    """
    inner = inner_model(model)
    if not is_lora_model(model):
        for key, tensor in inner.state_dict().items():
            yield key, tensor.detach()
        return
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in inner.named_modules() if isinstance(m, LoraLayer)}
    live: dict[str, list[str]] = {}  # layer -> adapters to merge (none: already inside the base weight, or off)
    for name, layer in layers.items():
        active = [a for a in layer.active_adapters if a in layer.lora_A or a in layer.lora_embedding_A]
        if any(layer.use_dora.get(a, False) for a in active):
            raise ValueError(f"{name} uses DoRA, which merged_state_dict does not merge; use plain LoRA")
        live[name] = [] if layer.merged or layer.disable_adapters else active

    for key, tensor in inner.state_dict().items():
        owner, sep, rest = key.partition(".base_layer.")  # "<layer>.base_layer.weight" -> the plain "<layer>.weight"
        if sep and owner in layers:
            value = tensor.detach()
            if rest == "weight" and live[owner]:
                delta = sum(layers[owner].get_delta_weight(a).float() for a in live[owner])
                value = (value.float() + delta.to(value.device)).to(value.dtype)  # type: ignore[union-attr]
            yield f"{owner}.{rest}", value
        elif key.rpartition(".lora_")[0] not in layers:  # skip the adapter's own tensors (lora_A, lora_B, ...)
            yield key, tensor.detach()

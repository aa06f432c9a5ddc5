"""Model-structure helpers shared by the learner, its sharding strategies and supervised fine-tuning.

Scoring in sdar never builds the ``[T, V]`` logits of a whole sequence: it runs the decoder body to the last hidden
states and applies the LM head to the scored positions only. :func:`split_model` finds those two parts of a
transformers causal LM and refuses models whose logits are not a plain linear function of the hidden states.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["enable_activation_checkpointing", "has_dropout", "module_mode", "split_model"]


def split_model(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(decoder body returning last hidden states, linear LM head) of a transformers causal LM.

    Raises:
        ValueError: The config rescales or soft-caps the logits (``final_logit_softcapping``, ``logit_scale``), so
            log-probs computed from the hidden states with the bare head would be wrong.
        TypeError: The model exposes no decoder (``get_decoder``/``base_model``) or no linear LM head.
    """
    config = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, attr, None) not in (None, 1.0):
            raise ValueError(
                f"the model's config sets {attr}={getattr(config, attr)}; sdar scores tokens from hidden states "
                "with a plain linear LM head and would give wrong log-probs for this model"
            )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or body is model:
        body = getattr(model, "base_model", None)
    if not isinstance(head, nn.Linear) or body is None or body is model:
        raise TypeError(
            f"{type(model).__name__} does not expose a decoder (get_decoder/base_model) and a linear LM head "
            "(get_output_embeddings); pass a transformers *ForCausalLM model"
        )
    return body, head


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Turn on non-reentrant activation checkpointing with whichever name this transformers version has."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise TypeError(f"{type(model).__name__} has no activation checkpointing; set gradient_checkpointing=False")


def has_dropout(model: nn.Module) -> bool:
    """True when the config or any ``nn.Dropout`` module drops activations (training log-probs become random)."""
    config = getattr(model, "config", None)
    probs = [getattr(config, a, 0.0) or 0.0 for a in ("attention_dropout", "hidden_dropout", "resid_pdrop")]
    return any(p > 0 for p in probs) or any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


@contextlib.contextmanager
def module_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Put ``module`` in training or eval mode for the block, then back to the mode it had."""
    before = module.training
    module.train(training)
    try:
        yield
    finally:
        module.train(before)

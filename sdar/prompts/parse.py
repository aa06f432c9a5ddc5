"""Extract the action from a ``<think>…</think><action>…</action>`` response and decide whether it is valid.

Rules: the response must contain exactly one ``<think>`` … ``</think>`` block followed (after it closes) by
exactly one ``<action>`` … ``</action>`` block; tags are matched literally (lower case). Text before the think
block or after the action block is ignored. The action is stripped, lower-cased and its inner whitespace collapsed.
A response containing CJK characters is invalid. When an admissible list is given the action must match one of
its entries after the same normalisation; the entry itself is then returned, so the environment receives exactly
an admissible string.

Which failures make a turn invalid is the run's ``env.invalid_rule`` (``apply_invalid_rule``): ``admissible``
counts every failure above; ``format`` (the reference's rule) forgives ``not_admissible``, so a well-formed action
outside the list is valid and goes to the environment as parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["INVALID_RULES", "REASONS", "ParsedAction", "apply_invalid_rule", "normalize_action", "parse_action"]

REASONS = (
    "ok",
    "contains_cjk",
    "missing_think_tag",
    "duplicate_think_tag",
    "missing_action_tag",
    "duplicate_action_tag",
    "nested_tags",
    "malformed_tags",
    "empty_action",
    "not_admissible",
)
"""Every value ``ParsedAction.reason`` can take."""

_CJK = re.compile(
    "[\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs (extension A, unified, compatibility)
    "\uac00-\ud7af"  # hangul syllables
    "\U00020000-\U0002fa1f]"  # CJK ideographs (extensions B and later)
)


@dataclass(frozen=True)
class ParsedAction:
    """Result of parsing one response."""

    action: str
    """Normalised action ('' when no action could be extracted); set even when it is not admissible."""
    valid: bool
    reason: str
    """``"ok"`` when valid, otherwise one of ``REASONS``."""


def normalize_action(text: str) -> str:
    """Strip, lower-case and collapse runs of whitespace to one space."""
    return " ".join(text.lower().split())


def _invalid(reason: str, action: str = "") -> ParsedAction:
    return ParsedAction(action=action, valid=False, reason=reason)


def parse_action(text: str, admissible: Sequence[str] | None) -> ParsedAction:
    """Parse a model response.

    Args:
        text: the decoded response.
        admissible: actions accepted now; None (or empty) accepts any non-empty action.

    Returns:
        The action with ``valid`` and a machine-readable ``reason``.
    """
    if _CJK.search(text):
        return _invalid("contains_cjk")
    counts = {tag: text.count(tag) for tag in ("<think>", "</think>", "<action>", "</action>")}
    if counts["<think>"] == 0 or counts["</think>"] == 0:
        return _invalid("missing_think_tag")
    if counts["<think>"] > 1 or counts["</think>"] > 1:
        return _invalid("duplicate_think_tag")
    if counts["<action>"] == 0 or counts["</action>"] == 0:
        return _invalid("missing_action_tag")
    if counts["<action>"] > 1 or counts["</action>"] > 1:
        return _invalid("duplicate_action_tag")
    t_open, t_close = text.index("<think>"), text.index("</think>")
    a_open, a_close = text.index("<action>"), text.index("</action>")
    if t_open < a_open < a_close < t_close or a_open < t_open < t_close < a_close:
        return _invalid("nested_tags")
    if not t_open < t_close < a_open < a_close:
        return _invalid("malformed_tags")
    action = normalize_action(text[a_open + len("<action>") : a_close])
    if not action:
        return _invalid("empty_action")
    if admissible:
        match = {normalize_action(a): a for a in admissible}.get(action)
        if match is None:
            return _invalid("not_admissible", action)
        action = match
    return ParsedAction(action=action, valid=True, reason="ok")


INVALID_RULES: tuple[str, ...] = ("format", "admissible")
"""``format``: only malformed responses are invalid (the reference); ``admissible``: also actions outside the list."""


def apply_invalid_rule(parsed: ParsedAction, rule: str) -> ParsedAction:
    """``parsed`` judged by ``rule``: under ``format`` a well-formed but inadmissible action becomes valid (its
    normalised text is what the environment receives); under ``admissible`` nothing changes.

    Raises:
        ValueError: for a rule not in ``INVALID_RULES``.
    """
    if rule not in INVALID_RULES:
        raise ValueError(f"invalid_rule must be one of {INVALID_RULES}, got {rule!r}")
    if rule == "format" and parsed.reason == "not_admissible" and parsed.action:
        return ParsedAction(action=parsed.action, valid=True, reason="ok")
    return parsed

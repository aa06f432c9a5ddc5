"""Structural check of a class or object against a ``typing.Protocol``, member by member, signatures included.

``isinstance(obj, SomeProtocol)`` on a ``runtime_checkable`` Protocol only checks that the member names exist. The
learner tests also need every method to be callable the way the Protocol documents it, so this compares
``inspect.signature``: same parameter names, kinds and defaults; an implementation may add parameters only when
they have defaults.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_ABSENT = object()


def protocol_members(protocol: type) -> dict[str, Any]:
    """Public members a Protocol declares (its Protocol bases' included): name -> function, property, or None for
    an annotated attribute."""
    members: dict[str, Any] = {}
    for klass in reversed(protocol.__mro__):
        if klass is Protocol or not getattr(klass, "_is_protocol", False):
            continue
        for name in vars(klass).get("__annotations__", {}):
            members.setdefault(name, None)
        members.update({n: v for n, v in vars(klass).items() if not n.startswith("_")})
    return members


def signature_problems(want: inspect.Signature, got: inspect.Signature) -> list[str]:
    """Ways a call written against ``want`` could fail or mean something else with ``got``."""
    out = []
    for p in want.parameters.values():
        q = got.parameters.get(p.name)
        if q is None:
            out.append(f"lacks parameter {p.name!r}")
            continue
        if q.kind != p.kind:
            out.append(f"parameter {p.name!r} is {q.kind.description}, the Protocol says {p.kind.description}")
        if q.default != p.default:
            out.append(f"parameter {p.name!r} defaults to {q.default!r}, the Protocol says {p.default!r}")
    want_pos = [p.name for p in want.parameters.values() if p.kind in _POSITIONAL]
    got_pos = [q.name for q in got.parameters.values() if q.kind in _POSITIONAL]
    if got_pos[: len(want_pos)] != want_pos:
        out.append(f"positional parameters {got_pos}, the Protocol says {want_pos}")
    for q in got.parameters.values():
        if q.name not in want.parameters and q.default is q.empty and q.kind not in _VARIADIC:
            out.append(f"adds the required parameter {q.name!r}")
    return out


def protocol_problems(protocol: type, impl: Any) -> list[str]:
    """Why ``impl`` (a class, or an instance) does not match ``protocol``; empty when it does."""
    cls = impl if isinstance(impl, type) else type(impl)
    problems = []
    for name, want in protocol_members(protocol).items():
        got = inspect.getattr_static(cls, name, _ABSENT)
        if got is _ABSENT:
            if not isinstance(impl, type) and hasattr(impl, name):
                continue  # an attribute set on the instance
            problems.append(f"{name}: missing")
        elif isinstance(want, property):
            if not isinstance(got, property):
                problems.append(f"{name}: a property in the Protocol, {type(got).__name__} here")
        elif callable(want):
            if not inspect.isfunction(got):
                problems.append(f"{name}: a method in the Protocol, {type(got).__name__} here")
            else:
                want_sig, got_sig = inspect.signature(want), inspect.signature(got)
                problems.extend(f"{name}: {p}" for p in signature_problems(want_sig, got_sig))
    return problems

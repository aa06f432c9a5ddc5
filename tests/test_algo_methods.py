"""The method table against the paper's hyperparameter table, lookups, overrides and validation."""

from __future__ import annotations

import dataclasses

import pytest

from sdar.algo import METHODS, LossSpec, MethodSpec, get_method, resolve_loss
from sdar.config import RolloutConfig, TeacherConfig

# Paper App. C: (lr, G, clip eps, lambda, beta, KL coef, skill retrieval). None = "—" in the table.
PAPER_TABLE = {
    "grpo": (1e-6, 8, 0.2, None, None, 0.01, None),
    "skill_grpo": (1e-6, 8, 0.2, None, None, 0.01, "keyword"),
    "opsd": (1e-6, None, None, 0.01, 5.0, 0.01, "keyword"),
    "skill_sd": (1e-6, 8, 0.2, 0.001, None, 0.01, "keyword"),
    "grpo_opsd": (1e-6, 8, 0.2, 0.01, 0.0, 0.01, "keyword"),
    "rlsd": (1e-6, 8, 0.2, 0.5, None, 0.01, "keyword"),
    "sdar": (1e-6, 8, 0.2, 0.01, 5.0, 0.01, "keyword"),
}


def _lambda(spec: MethodSpec) -> float | None:
    if spec.loss.advantage_reweight == "rlsd":
        return spec.loss.rlsd_lambda
    return spec.loss.aux_coef if spec.loss.uses_aux else None


def test_every_paper_method_is_in_the_table() -> None:
    assert set(METHODS) == set(PAPER_TABLE)
    for name, spec in METHODS.items():
        assert spec.name == name and spec.description


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_method_values_match_the_paper_table(name: str) -> None:
    lr, group, eps, lam, beta, kl, retrieval = PAPER_TABLE[name]
    spec = get_method(name)
    loss = spec.loss
    assert spec.lr == lr
    if group is not None:  # the group size is the configuration's default, shared by every method
        assert RolloutConfig().group_size == group
    if eps is not None:
        assert loss.pg_coef == 1.0 and loss.clip_low == eps and loss.clip_high == eps
    assert _lambda(spec) == lam
    if beta is not None:
        assert loss.aux == "sdar" and loss.gate == "gap" and loss.gate_beta == beta
    assert loss.kl_coef == kl and loss.kl_estimator == "low_var_kl"
    uses_skills = spec.teacher_sees_skills or spec.student_sees_skills
    assert (TeacherConfig().retrieval if uses_skills else None) == retrieval
    # reference-code settings shared by every method
    assert loss.dual_clip == 3.0 and loss.entropy_coef == 0.001 and loss.agg == "token-mean"
    assert loss.detach_gate


def test_method_specifics() -> None:
    assert get_method("opsd").loss.pg_coef == 0.0  # the SDAR loss alone
    assert get_method("skill_sd").loss.aux == "skill_sd"
    rlsd = get_method("rlsd").loss
    assert (rlsd.advantage_reweight, rlsd.rlsd_eps_w, rlsd.rlsd_warmdown_steps, rlsd.aux) == ("rlsd", 0.2, 100, "none")
    skill_grpo = get_method("skill_grpo")
    assert skill_grpo.student_sees_skills and not skill_grpo.teacher_sees_skills
    assert not skill_grpo.loss.needs_teacher
    grpo = get_method("grpo")
    assert not grpo.student_sees_skills and not grpo.teacher_sees_skills and not grpo.loss.needs_teacher
    for name in ("opsd", "skill_sd", "grpo_opsd", "rlsd", "sdar"):
        spec = get_method(name)
        assert spec.teacher_sees_skills and not spec.student_sees_skills and spec.loss.needs_teacher, name


def test_needs_reference_follows_kl_coef() -> None:
    assert get_method("sdar").loss.needs_reference
    assert not resolve_loss("sdar", kl_coef=0.0).needs_reference


def test_needs_teacher_is_off_when_the_aux_coefficient_is_zero() -> None:
    spec = resolve_loss("sdar", aux_coef=0.0)
    assert not spec.uses_aux and not spec.needs_teacher


def test_get_method_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match=r"'sdr'.*did you mean 'sdar'.*grpo_opsd"):
        get_method("sdr")
    with pytest.raises(ValueError, match="valid methods"):
        get_method("zzz")


def test_resolve_loss_overrides() -> None:
    spec = resolve_loss("sdar", gate_beta=2.0, kl_coef=0.001, aux_coef=None)
    assert spec.gate_beta == 2.0 and spec.kl_coef == 0.001
    assert spec.aux_coef == 0.01  # None overrides are ignored
    assert METHODS["sdar"].loss.gate_beta == 5.0  # the table itself is untouched
    with pytest.raises(ValueError, match=r"'gate_betta' \(did you mean 'gate_beta'\?\)"):
        resolve_loss("sdar", gate_betta=3.0)


def test_specs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS["sdar"].loss.gate_beta = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS["sdar"].lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("agg", "mean", "agg"),
        ("aux", "kl", "aux"),
        ("gate", "hard", "gate"),
        ("kl_estimator", "k4", "kl_estimator"),
        ("divergence_kind", "tv", "divergence_kind"),
        ("advantage_reweight", "gigpo", "advantage_reweight"),
        ("kl_coef", -0.1, "kl_coef"),
        ("dual_clip", 1.0, "dual_clip"),
        ("divergence_topk", 0, "divergence_topk"),
        ("rlsd_lambda", 1.5, "rlsd_lambda"),
        ("rlsd_eps_w", 1.0, "rlsd_eps_w"),
    ],
)
def test_loss_spec_rejects_bad_values(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LossSpec(**{field: value})  # type: ignore[arg-type]

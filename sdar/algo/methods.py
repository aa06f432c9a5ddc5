"""The method table: every paper method as frozen data (loss coefficients, who sees skills, optimiser defaults).

Values follow the paper's hyperparameter table (App. C) and the reference launch scripts:

| method     | pg | lambda (aux)       | gate beta | KL   | skills seen by | extra                          |
|------------|----|--------------------|-----------|------|----------------|--------------------------------|
| grpo       | 1  | -                  | -         | 0.01 | nobody         |                                |
| skill_grpo | 1  | -                  | -         | 0.01 | student        |                                |
| opsd       | 0  | 0.01 (sdar)        | 5.0       | 0.01 | teacher        | SDAR loss alone (reference)    |
| skill_sd   | 1  | 0.001 (skill_sd)   | -         | 0.01 | teacher        |                                |
| grpo_opsd  | 1  | 0.01 (sdar)        | 0.0       | 0.01 | teacher        | gate = 0.5: 0.005 * self-NLL   |
| rlsd       | 1  | -                  | -         | 0.01 | teacher        | lambda 0.5 -> 0 over 100 steps |
| sdar       | 1  | 0.01 (sdar)        | 5.0       | 0.01 | teacher        |                                |

All: lr 1e-6, group size 8, PPO clip 0.2/0.2, dual-clip 3, low_var_kl, entropy bonus 0.001, token-mean, keyword
retrieval whenever skills are used (the configuration's defaults ``rollout.group_size`` and ``teacher.retrieval``).
The paper lists no group size or clip for OPSD (it has no PG term); the reference rolls out 8 per task all the same. The Search scripts use KL 0.001: override
``kl_coef`` per environment.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sdar.algo.aggregate import AGG_MODES, AggMode
from sdar.algo.distill import DIVERGENCE_KINDS, GATE_KINDS, DivergenceKind, GateKind
from sdar.algo.policy import KL_ESTIMATORS, KLEstimator
from sdar.names import MethodName

__all__ = ["METHODS", "LossSpec", "MethodName", "MethodSpec", "get_method", "resolve_loss"]

AuxKind = Literal["none", "sdar", "skill_sd", "divergence"]
AUX_KINDS: tuple[str, ...] = get_args(AuxKind)
Reweight = Literal["none", "rlsd"]
REWEIGHTS: tuple[str, ...] = get_args(Reweight)


@dataclass(frozen=True)
class LossSpec:
    """Every coefficient of the combined objective ``pg_coef PG + kl_coef KL - entropy_coef H + aux_coef AUX``."""

    pg_coef: float = 1.0
    """Weight of the clipped policy-gradient term (0 = pure distillation)."""
    clip_low: float = 0.2
    """PPO ratio clip below 1."""
    clip_high: float = 0.2
    """PPO ratio clip above 1."""
    dual_clip: float | None = 3.0
    """Dual-clip constant c > 1 for negative advantages; None disables it."""
    kl_coef: float = 0.01
    """Weight of the KL-to-reference penalty (0 = no reference model needed)."""
    kl_estimator: KLEstimator = "low_var_kl"
    """Per-token KL estimator."""
    entropy_coef: float = 0.001
    """Weight of the entropy bonus (subtracted)."""
    agg: AggMode = "token-mean"
    """Aggregation of every term."""
    aux: AuxKind = "none"
    """Auxiliary distillation term."""
    aux_coef: float = 0.0
    """Weight of the auxiliary term (lambda)."""
    gate: GateKind = "gap"
    """SDAR gate."""
    gate_beta: float = 5.0
    """SDAR gate sharpness (0 = constant 0.5 gate)."""
    detach_gate: bool = True
    """False = the undetached Prop. 5 ablation."""
    divergence_kind: DivergenceKind = "reverse_kl"
    """Divergence used when aux == "divergence"."""
    divergence_topk: int | None = None
    """Top-k support (plus tail) of the divergence; None = full vocabulary."""
    advantage_reweight: Reweight = "none"
    """"rlsd" rescales advantages per token with the teacher."""
    rlsd_lambda: float = 0.5
    """RLSD's starting mixing weight λ0 (the schedule, ``sdar.algo.distill.rlsd_lambda``, starts from it)."""
    rlsd_eps_w: float = 0.2
    """RLSD token-weight clip half-width."""
    rlsd_warmdown_steps: int = 100
    """Steps over which the RLSD weight decays linearly to 0 (<= 0: constant)."""

    def __post_init__(self) -> None:
        choices: dict[str, tuple[str, tuple[str, ...]]] = {
            "kl_estimator": (self.kl_estimator, KL_ESTIMATORS),
            "agg": (self.agg, AGG_MODES),
            "aux": (self.aux, AUX_KINDS),
            "gate": (self.gate, GATE_KINDS),
            "divergence_kind": (self.divergence_kind, DIVERGENCE_KINDS),
            "advantage_reweight": (self.advantage_reweight, REWEIGHTS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"LossSpec.{name}={value!r} is not one of {list(allowed)}")
        for name in ("pg_coef", "kl_coef", "entropy_coef", "aux_coef", "clip_low", "clip_high", "gate_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossSpec.{name} must be >= 0, got {getattr(self, name)}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"LossSpec.dual_clip must be > 1 or None, got {self.dual_clip}")
        if self.divergence_topk is not None and self.divergence_topk < 1:
            raise ValueError(f"LossSpec.divergence_topk must be >= 1 or None, got {self.divergence_topk}")
        if not 0.0 <= self.rlsd_lambda <= 1.0:
            raise ValueError(f"LossSpec.rlsd_lambda must be in [0, 1], got {self.rlsd_lambda}")
        if not 0.0 <= self.rlsd_eps_w < 1.0:
            raise ValueError(f"LossSpec.rlsd_eps_w must be in [0, 1), got {self.rlsd_eps_w}")

    @property
    def uses_aux(self) -> bool:
        """True when an auxiliary distillation term is computed."""
        return self.aux != "none" and self.aux_coef > 0

    @property
    def needs_teacher(self) -> bool:
        """True when the privileged-teacher forward pass is needed (distillation term or RLSD reweighting)."""
        return self.uses_aux or self.advantage_reweight == "rlsd"

    @property
    def zero_advantage_rows_inert(self) -> bool:
        """True when a row whose advantages are all 0 adds exactly nothing to the loss or its gradient: the clipped
        policy-gradient term (whose RLSD reweighting only rescales A) is the only term. The learner then skips such
        rows' forward and backward passes (a GRPO group whose episodes all got the same reward is such a group)."""
        return self.pg_coef > 0 and self.kl_coef == 0 and self.entropy_coef == 0 and not self.uses_aux

    @property
    def needs_reference(self) -> bool:
        """True when a frozen reference model is needed (``kl_coef > 0``)."""
        return self.kl_coef > 0


@dataclass(frozen=True)
class MethodSpec:
    """One training method: its loss plus who sees the skills and the optimiser/rollout defaults."""

    name: str
    """Key in :data:`METHODS`."""
    description: str
    """One line for humans."""
    loss: LossSpec = field(default_factory=LossSpec)
    """The objective's coefficients."""
    teacher_sees_skills: bool = False
    """The teacher prompt carries the retrieved skills (privileged context)."""
    student_sees_skills: bool = False
    """The student (rollout and training) prompt carries the skills (Skill-GRPO)."""
    lr: float = 1e-6
    """Learning rate (``optim.lr`` when that is left unset)."""


def _method(name: str, description: str, loss: LossSpec, *, teacher: bool, student: bool = False) -> MethodSpec:
    return MethodSpec(
        name=name,
        description=description,
        loss=loss,
        teacher_sees_skills=teacher,
        student_sees_skills=student,
    )


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        _method("grpo", "GRPO with dual-clip PPO, KL to the reference and an entropy bonus", LossSpec(), teacher=False),
        _method(
            "skill_grpo",
            "GRPO with keyword-retrieved skills in the student's own prompt (no teacher)",
            LossSpec(),
            teacher=False,
            student=True,
        ),
        _method(
            "opsd",
            "the SDAR gated distillation loss alone (no policy-gradient term), skills in the teacher prompt",
            LossSpec(pg_coef=0.0, aux="sdar", aux_coef=0.01, gate_beta=5.0),
            teacher=True,
        ),
        _method(
            "grpo_opsd",
            "GRPO plus the SDAR loss with beta = 0 (constant gate 0.5: a teacher-independent self-NLL term)",
            LossSpec(aux="sdar", aux_coef=0.01, gate_beta=0.0),
            teacher=True,
        ),
        _method(
            "skill_sd",
            "GRPO plus Skill-SD's importance-weighted K3 distillation toward the skill-conditioned teacher",
            LossSpec(aux="skill_sd", aux_coef=0.001),
            teacher=True,
        ),
        _method(
            "rlsd",
            "GRPO with RLSD token advantages rescaled by the teacher (lambda 0.5 decaying to 0 over 100 steps)",
            LossSpec(advantage_reweight="rlsd", rlsd_lambda=0.5, rlsd_eps_w=0.2, rlsd_warmdown_steps=100),
            teacher=True,
        ),
        _method(
            "sdar",
            "GRPO plus SDAR's sigmoid-gated self-distillation toward the skill-conditioned teacher",
            LossSpec(aux="sdar", aux_coef=0.01, gate="gap", gate_beta=5.0),
            teacher=True,
        ),
    )
}


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` called ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid names and the closest match.
    """
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown method {name!r}{hint}; valid methods: {sorted(METHODS)}")


def resolve_loss(name: str, **overrides: Any) -> LossSpec:
    """The method's :class:`LossSpec` with ``overrides`` applied (keys whose value is None are ignored).

    Raises:
        ValueError: unknown method, unknown override key (with the closest field name), or an invalid value.
    """
    spec = get_method(name).loss
    fields = [f.name for f in dataclasses.fields(LossSpec)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        close = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
        hints = ", ".join(f"{k!r} (did you mean {c[0]!r}?)" if c else repr(k) for k, c in close.items())
        raise ValueError(f"unknown LossSpec fields {hints}; valid fields: {fields}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(spec, **changes)

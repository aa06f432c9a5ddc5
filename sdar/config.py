"""Typed, frozen run configuration: all defaults, the strict YAML loader and ``validate``.

Every default lives in these dataclasses (or, for the loss coefficients left at ``None``, in the method table of
``sdar.algo.methods``, which holds the paper's per-method values). YAML presets may only override keys that exist;
an unknown key is an error that names the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml

from sdar.names import ExpertKind, MethodName

TEACHER_METHODS = ("opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar")
"""Methods whose update reads the teacher (``LossSpec.needs_teacher``; tests/test_protocols.py ties the two)."""
# Per-environment facts (names, privileged sources, compact template, retriever) are read from the environment
# specs (``sdar.envs.registry``) when a configuration is validated: adding an environment does not touch this file.


class ConfigError(ValueError):
    """A configuration value or combination that cannot work; the message says how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny-random"
    """Policy model: a Hugging Face id (e.g. Qwen/Qwen2.5-3B-Instruct), a local folder, the alias smollm2-135m
    (run `sdar model prepare smollm2-135m` once), or tiny-random (a 30k-parameter random model for smoke runs)."""
    precision: Literal["auto", "fp32", "mixed_bf16", "pure_bf16"] = "auto"
    """Training precision. mixed_bf16: fp32 master weights and AdamW state, forward/backward (and rollout
    sampling) in bf16 (autocast; FSDP2 gathers bf16 parameters over fp32 shards and reduces gradients in fp32).
    fp32: fp32 throughout. pure_bf16: bf16 weights and optimizer state (half the memory, but updates below half a
    bf16 step, e.g. most lr-1e-6 steps, round away; logs a warning). auto = mixed_bf16 on GPUs with bf16 support
    and on CPUs where bf16 autocast was measured fast (sdar.hardware), fp32 otherwise."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Older way to pick the weights' dtype, kept for existing configs: auto and float32 leave the choice to
    model.precision (whose every mode but pure_bf16 keeps fp32 weights), bfloat16 means precision pure_bf16. The
    vLLM backend's engine dtype still follows it (auto = bf16 on GPUs)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    enable_thinking: bool | None = None
    """Passed to the chat template when set (Qwen3: false, as in the paper)."""
    attn_implementation: str | None = None
    """Attention kernel for transformers (sdpa, eager, flash_attention_2); None = the library default."""
    lora_rank: int = 0
    """LoRA adapter rank (0 = train every weight). With LoRA the KL reference is the policy with its adapter
    switched off, so no second copy of the model is kept (needs the lora extra: pip install sdar[lora])."""
    lora_alpha: float = 32.0
    """LoRA scale numerator: the update is lora_alpha / lora_rank * B A."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input while training (0 keeps rollout and training log-probs identical)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Names (or name suffixes) of the linear layers that get adapters."""


@dataclass(frozen=True)
class EnvConfig:
    name: str = "toy"
    """Environment: toy (built-in household game), alfworld, webshop, search."""
    prompt_style: Literal["", "compact"] = ""
    """Prompt wording: '' = the environment's template (the paper's structure), compact = a short variant of the
    same parts (toy, alfworld) for small models trained from scratch."""
    task_types: tuple[str, ...] = ()
    """Train and evaluate on these task types only (empty = the environment's default types)."""
    train_split: str = "train"
    """Split the training tasks are drawn from."""
    eval_split: str = "eval"
    """Split used by periodic evaluation."""
    max_turns: int = 50
    """Turn limit per episode (paper: ALFWorld 50, WebShop 15, Search-QA 4)."""
    history_length: int = 2
    """Number of past (observation, action) pairs shown in each turn's prompt (paper: 2; Search-QA 4)."""
    invalid_penalty: float = 0.1
    """Subtracted from a turn's reward when its action is invalid (see invalid_rule; Search-QA: 0.01)."""
    invalid_rule: Literal["format", "admissible"] = "format"
    """Which actions are invalid: format = only malformed responses (missing or broken tags, CJK text), as the
    reference; a well-formed action outside the admissible list is sent to the environment, which answers e.g.
    "Nothing happens.". admissible = also actions outside the admissible list, which are then not sent."""
    win_reward: float | None = None
    """Reward for solving the task; None = the environment's default (10 for toy, ALFWorld and WebShop as in the
    paper; 1 for Search-QA, whose reward is exact match in {0, 1})."""
    data_dir: str | None = None
    """Environment data folder (games, catalogue, corpus); None = the environment's default location."""
    num_workers: int = 0
    """Environment worker processes (0 = step environments in the training process). ALFWorld is not thread-safe,
    so parallel stepping uses processes."""
    step_timeout_s: float = 60.0
    """A worker that does not answer a step within this time is restarted and its episodes count as failed."""
    retriever_url: str | None = None
    """Search-QA: a ``/retrieve`` server (``sdar retriever serve``), e.g. http://127.0.0.1:8000/retrieve, shared by
    all workers instead of an index per process; its bearer token, if any, comes from $SDAR_RETRIEVER_TOKEN."""


@dataclass(frozen=True)
class RolloutConfig:
    backend: Literal["hf", "vllm"] = "hf"
    """Generation backend."""
    tasks_per_step: int = 16
    """Distinct tasks per training step (paper: 16; Search-QA 128)."""
    group_size: int = 8
    """Episodes per task (GRPO group size G)."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts."""
    top_p: float = 1.0
    """Nucleus sampling (1.0 = off, keeps rollouts exactly on-policy)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    max_new_tokens: int = 512
    """Response budget per turn."""
    max_prompt_tokens: int = 2048
    """Student prompt budget per turn; older history is dropped to fit."""
    view: Literal["per_turn", "conversation"] = "per_turn"
    """Training rows: one per turn (the paper's step-independent form) or one per episode with observation tokens
    masked out."""
    batch_size: int = 64
    """Prompts per generation call."""
    merge_lora: bool = True
    """With LoRA, fp32 weights and the hf backend: sample from merged weights (W + scaling·B·A, one copy of the
    adapted weights alive during the rollout) instead of running the adapter branches; false saves that memory."""


@dataclass(frozen=True)
class AlgoConfig:
    method: MethodName = "sdar"
    """Training method; its loss composition and paper defaults come from the method table (`sdar methods`)."""
    advantage: Literal["grpo", "drgrpo", "rloo", "gigpo"] = "grpo"
    """Advantage estimator: GRPO, Dr.GRPO (no std scaling), RLOO, or GiGPO (episode + anchor-state step level)."""
    adv_stats: Literal["steps", "episodes"] = "steps"
    """Group statistics over all step samples of a group (the reference's cross-steps mode) or over episodes."""
    gigpo_omega: float = 1.0
    """GiGPO weight of the step-level advantage."""
    gigpo_gamma: float = 0.95
    """GiGPO discount for step-level returns."""
    pg_coef: float | None = None
    """Weight of the policy-gradient term (None = method default: 1, or 0 for OPSD)."""
    aux_coef: float | None = None
    """λ of the distillation term (None = method default: SDAR/OPSD/GRPO+OPSD 0.01, Skill-SD 0.001)."""
    gate: Literal["gap", "entropy", "soft_or", "constant"] | None = None
    """SDAR gate (None = method default: gap)."""
    gate_beta: float | None = None
    """Gate sharpness β (None = method default: 5; GRPO+OPSD 0)."""
    detach_gate: bool | None = None
    """Stop the gradient through the gate (None = method default: true; false only for the Prop. 5 ablation)."""
    kl_coef: float | None = None
    """KL-to-reference weight (None = method default 0.01; 0 skips the reference pass)."""
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl"] | None = None
    """KL estimator (None = method default: low_var_kl)."""
    entropy_coef: float | None = None
    """Entropy bonus weight (None = method default 0.001)."""
    clip_low: float | None = None
    """PPO clip range below 1 (None = method default 0.2)."""
    clip_high: float | None = None
    """PPO clip range above 1 (None = method default 0.2)."""
    dual_clip: float | None = None
    """Dual-clip constant c for negative advantages (None = method default 3)."""
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] | None = None
    """Loss aggregation (None = method default: token-mean)."""
    rlsd_lambda: float | None = None
    """RLSD's starting mixing weight λ0 (None = method default 0.5); the first step uses λ0·(1 − 1/warmdown), as the
    reference counts its steps from 1."""
    rlsd_warmdown_steps: int | None = None
    """RLSD: steps over which λ decays linearly to 0 (None = method default 100)."""
    old_logprobs: Literal["auto", "recompute", "rollout"] = "auto"
    """Old log-probs of the PPO ratio: recompute (a no-grad pass over the student rows), rollout (the generator's
    sampling log-probs), or auto = rollout when those are exact (the generator is the training model, per-turn
    rows, no top-k/top-p, no bf16 autocast) and no mismatch correction is on, else recompute."""
    logprob_check_rows: int = 8
    """Rows the learner re-scores each step, while the old log-probs come from the rollout, to measure the
    sampler-vs-learner log-prob difference (``rollout/logprob_diff_*``); 0 = never. With recompute every row is
    measured at no extra cost."""
    logprob_tolerance: float = 0.01
    """Largest 99th percentile of the per-token |log p_sampler − log p_learner| (nats) at which ``auto`` keeps the
    sampler's log-probs; above it the run recomputes them from then on (0.01 nats: a 1% error of the PPO ratio, a
    twentieth of its 0.2 clip)."""
    mismatch_correction: Literal["auto", "off", "tis", "mis"] = "auto"
    """Importance weights for rollout-vs-trainer log-prob mismatch on the PG term: tis (truncated at
    mismatch_cap), mis (tokens/rows above the cap dropped), off, or auto = tis unless the generator is the training
    model itself. Needs recomputed old log-probs."""
    mismatch_level: Literal["token", "sequence"] = "token"
    """Mismatch ratio per token, or per row (product of the row's token ratios)."""
    mismatch_cap: float = 2.0
    """Ratio threshold of the mismatch correction (>= 1)."""


@dataclass(frozen=True)
class TeacherConfig:
    source: str = "skills"
    """Privileged context given to the teacher: skills, expert_plan (toy/alfworld), gold_answer (search),
    goal_attributes (webshop), or none."""
    retrieval: Literal["keyword", "ucb", "full", "random"] = "keyword"
    """How skills are chosen per task."""
    ucb_c: float = 1.0
    """Exploration constant of UCB skill retrieval."""
    skills_dir: str | None = None
    """Skill library folder (markdown files + skill_mapping.json); None = the built-in skills of the environment."""
    max_prompt_tokens: int = 4096
    """Teacher prompt budget; history is shortened to fit, the privileged text is never cut."""
    hint_noise: float = 0.0
    """Teacher reliability knob: the fraction of turns whose privileged hint is replaced by a plausible wrong one
    (expert_plan: its next step swapped for another admissible action), chosen by a seeded hash of (seed, episode,
    turn) so every method of a comparison sees the same wrong hints. 0 = always right."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float | None = None
    """AdamW learning rate (None = method default 1e-6)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    warmup_ratio: float = 0.0
    """Fraction of optimizer steps with linear lr warm-up (paper: 0; Search-QA 0.1)."""
    ppo_epochs: int = 1
    """Passes over each step's batch."""
    mini_batch_rows: int | None = None
    """Rows (turn samples) per optimizer step; None = the whole step's batch in one optimizer step."""
    micro_batch_tokens: int = 8192
    """Tokens per packed micro-batch (gradient accumulation happens across micro-batches)."""
    layout: Literal["auto", "packed", "bucketed"] = "auto"
    """Micro-batch layout: rows packed into one sequence (no padding; fast with flash-attention kernels), padded
    length buckets (fast with dense attention), or auto = packed under flash attention, else bucketed."""
    strategy: Literal["auto", "local", "fsdp"] = "auto"
    """Learner placement: local = the whole model and optimizer in one process; fsdp = parameters, gradients and
    AdamW state sharded over the processes of a torchrun job (FSDP2), each process rolling out its share of the
    step's task groups; auto = fsdp when launched with more than one process, else local."""
    rollback_nonfinite: bool = True
    """Undo an optimizer step that leaves a weight NaN or infinite (counted in train/skipped_steps). The local
    learner keeps a copy of the trainable weights and AdamW state during each step for this, about 3x the trainable
    parameters in memory; turn it off for full fine-tuning near the memory limit (non-finite gradients are still
    skipped, and a checkpoint is never written from non-finite weights)."""


@dataclass(frozen=True)
class LogConfig:
    jsonl: bool = True
    """Write metrics.jsonl in the run folder."""
    tensorboard: bool = True
    """Write TensorBoard event files in the run folder (needs the tensorboard package)."""
    progress: bool = True
    """Progress bar with ETA on the console."""
    sample_every: int = 10
    """Print a few decoded sample turns every k steps (0 = never)."""
    num_samples: int = 2
    """Sample turns printed each time."""
    delta_samples: int = 256
    """Teacher-student gaps Δ saved per step to delta_samples.jsonl for the Δ histogram (0 = none)."""


@dataclass(frozen=True)
class SFTConfig:
    """The supervised warm start (``sdar sft``). It reads the rest of the run's configuration as the RL run does:
    model.name (the starting model, unless sft.model), model.enable_thinking, env.name/task_types/prompt_style/
    max_turns/history_length, rollout.max_prompt_tokens, rollout.max_new_tokens (the measurement's response
    budget), teacher.source (the privileged text of sft.privileged_fraction) and seed; so one preset describes the
    warm start and the RL run that follows it, with the same prompts."""

    model: str = ""
    """Model to start from ('' = model.name): an alias prepared with `sdar model prepare`, a folder, a Hub id."""
    out_dir: str = "runs/sft"
    """Folder for the trained model, its tokenizer and sft_report.json (pass it as --model.name to sdar train)."""
    expert: ExpertKind = "auto"
    """Demonstrator: plan = the environment's optimal plan (it knows where objects are), search = the toy expert
    that looks for the object receptacle by receptacle, as the agent has to; auto = search on toy, else plan."""
    num_tasks: int = 28
    """Expert episodes to record (train-split tasks in order; cycled with new reset seeds when more are asked)."""
    keep_unfinished: bool = False
    """Keep the turns of expert episodes that did not win within env.max_turns (their actions are the expert's)."""
    reasoning: bool = True
    """Targets carry a one-sentence reasoning line inside <think></think> (false: an empty think block)."""
    privileged_fraction: float = 0.0
    """Fraction of demonstrated turns also trained with the privileged text (teacher.source) in the prompt and the
    plan's next step as the answer, so the same weights learn to act on the teacher's context."""
    epochs: int = 1
    """Passes over the demonstrations."""
    lr: float = 1.5e-4
    """Peak AdamW learning rate."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 2
    """Optimizer steps of linear warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_rows: int = 4
    """Turns per optimizer step."""
    batch_tokens: int = 4096
    """Token budget of one packed forward/backward pass."""
    train_layers: int = 12
    """Train only this many top decoder layers plus the final norm (0 = all parameters)."""
    autocast: Literal["auto", "none", "bfloat16"] = "auto"
    """Forward passes of training and measurement under bfloat16 autocast (weights stay float32): bfloat16 = always,
    none = never, auto = on a GPU that supports it, and on a CPU only where a one-time probe found bf16 matmuls
    faster than fp32 (``sdar.hardware``; CPUs without native bf16 can be tens of times slower with it)."""
    num_threads: int = 0
    """CPU threads for torch (0 = torch's default); on a busy machine fewer threads can be faster."""
    eval_tasks: int = 16
    """Held-out eval-split tasks measured before and after training (0 = no measurement)."""
    eval_temperature: float = 0.0
    """Sampling temperature of the measurement (0 = greedy)."""
    eval_before: bool = True
    """Also measure the starting model (doubles the measurement time)."""
    eval_privileged: bool = False
    """Also measure the trained model with the privileged text in every prompt (how much the context helps)."""


@dataclass(frozen=True)
class RunConfig:
    """A complete training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    """The supervised warm start (`sdar sft`); `sdar train` does not read it."""
    seed: int = 0
    """Seed for task sampling, environments, sampling and initialisation."""
    total_steps: int = 150
    """Training steps (paper: 150)."""
    eval_every: int = 5
    """Evaluate every k steps (0 = never)."""
    eval_tasks: int = 128
    """Tasks in the fixed evaluation panel."""
    eval_at_start: bool = False
    """Also evaluate the starting model before the first update (logged at step -1, i.e. after 0 updates)."""
    eval_temperature: float = 0.4
    """Evaluation sampling temperature (paper: 0.4 for ALFWorld/WebShop, 0 = greedy for Search-QA)."""
    eval_with_skills: bool = False
    """Put retrieved skills in the evaluation prompts (the paper's starred rows: Skill-Prompt*, Skill-GRPO*); by
    default evaluation sees no privileged context, as at test time."""
    save_every: int = 10
    """Checkpoint every k steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk."""
    out_dir: str = "runs/sdar"
    """Run folder: config, metrics, checkpoints."""
    resume: bool = False
    """Continue from the last checkpoint in out_dir."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""


# ----------------------------------------------------------------------------------------------------------------
# strict loading


def _closest(name: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.0)
    return match[0] if match else ""


def _suggest(cls: type, key: str, names: list[str], path: str) -> str:
    """The closest valid key; a key that is a field of one of ``cls``'s sections is shown under it (an old flat
    `sdar sft` preset's ``epochs`` -> ``sft.epochs``)."""
    hints = typing.get_type_hints(cls)
    for name in names:
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and key in {f.name for f in dataclasses.fields(tp)}:
            return f"{path}.{name}.{key}" if path else f"{name}.{key}"
    return _closest(key, names)


def _check_value(path: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(path, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {args}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return tuple(_check_value(f"{path}[{i}]", args[0], v) for i, v in enumerate(value))
    return value


def from_dict(cls: type, data: Mapping[str, Any], *, base: Any = None, path: str = "") -> Any:
    """Build the (nested) frozen dataclass ``cls`` from ``data`` on top of ``base`` (defaults when None).

    Unknown keys raise ``ConfigError`` naming the key and the closest valid one; values are type-checked.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    updates: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{where}'; did you mean '{_suggest(cls, str(key), names, path)}'? "
                              f"valid keys here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            updates[key] = from_dict(tp, value, base=getattr(base, key), path=where)
        else:
            updates[key] = _check_value(where, tp, value)
    return dataclasses.replace(base, **updates)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML preset; every failure is a ``ConfigError`` that names the file and the fix."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a YAML file" if p.is_dir() else "does not exist"
        raise ConfigError(f"config file {p} {what}; presets live in configs/ (e.g. configs/demo_cpu.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {err.start}); save it with UTF-8 encoding") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {p}: YAML syntax error{where} ({problem}); check the indentation and the "
                          "'key: value' form of that line") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: the top level is a {type(data).__name__}; a preset is a mapping of "
                          "'key: value' lines (see configs/)")
    return data


def load_config(path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML preset (or the defaults when ``path`` is None), apply dotted ``overrides``, validate."""
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        try:
            cfg = from_dict(RunConfig, read_config_file(p))
        except ConfigError as err:
            raise ConfigError(str(err) if str(p) in str(err) else f"{p}: {err}") from None
    if overrides:
        cfg = from_dict(RunConfig, nest_dotted(overrides), base=cfg)
    validate(cfg)
    return cfg


def nest_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"algo.method": "grpo"}`` -> ``{"algo": {"method": "grpo"}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (for writing the resolved config next to a run)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------
# validation


def nonfinite_fields(cfg: Any, prefix: str = "") -> list[str]:
    """One problem line for every float of the (nested) dataclass ``cfg`` that is NaN or infinite."""
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.extend(nonfinite_fields(value, where + "."))
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{where} must be a finite number (got {value}); give a plain number such as 0.5 or 1e-6")
    return out


def combine_with_dtype(precision: str, dtype: str) -> str:
    """The precision setting implied by ``model.precision`` together with the older ``model.dtype``.

    ``model.dtype`` only picks the weights' dtype: ``float32`` is what ``auto`` keeps anyway, ``bfloat16`` means
    ``pure_bf16``. A combination that contradicts itself raises ``ValueError``.
    """
    if dtype == "auto":
        return precision
    if dtype == "float32":
        if precision == "pure_bf16":
            raise ValueError("model.dtype=float32 contradicts model.precision=pure_bf16; drop model.dtype")
        return precision
    if dtype == "bfloat16":
        if precision not in ("auto", "pure_bf16"):
            raise ValueError(f"model.dtype=bfloat16 (bf16 weights) contradicts model.precision={precision}, which "
                             "keeps fp32 weights; drop model.dtype")
        return "pure_bf16"
    raise ValueError(f"model.dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")


def validate(cfg: RunConfig) -> None:
    """Reject values and combinations that cannot work; every message names the fix. Raises ``ConfigError``.

    Every float must be finite (NaN and infinities are reported first and alone: range checks cannot judge them).
    """
    nonfinite = nonfinite_fields(cfg)
    if nonfinite:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(nonfinite))
    problems: list[str] = []
    add = problems.append
    m, e, r, a, t, o = cfg.model, cfg.env, cfg.rollout, cfg.algo, cfg.teacher, cfg.optim

    if not m.name:
        add("model.name is empty; give a Hugging Face id, a local folder, smollm2-135m or tiny-random")
    try:
        combine_with_dtype(m.precision, m.dtype)
    except ValueError as err:
        add(str(err))
    from sdar.envs.registry import ENV_NAMES, find_env_spec  # text-only; the specs hold the per-environment facts

    spec = find_env_spec(e.name)
    if spec is None:
        add(f"env.name={e.name!r} is not available in this version; use one of {list(ENV_NAMES)}")
    compact_envs = [n for n in ENV_NAMES if find_env_spec(n).compact_template is not None]  # type: ignore[union-attr]
    retriever_envs = [n for n in ENV_NAMES if find_env_spec(n).uses_retriever]  # type: ignore[union-attr]
    allowed = spec.privileged_sources if spec is not None else ()
    if e.max_turns < 1:
        add(f"env.max_turns must be >= 1 (got {e.max_turns})")
    if e.prompt_style == "compact" and e.name not in compact_envs:
        add(f"env.prompt_style=compact exists for {' and '.join(compact_envs)} only, not {e.name!r}; leave "
            "env.prompt_style empty")
    if e.history_length < 0:
        add(f"env.history_length must be >= 0 (got {e.history_length})")
    if e.num_workers < 0:
        add(f"env.num_workers must be >= 0 (got {e.num_workers}); 0 steps environments in-process")
    if e.step_timeout_s <= 0:
        add(f"env.step_timeout_s must be > 0 (got {e.step_timeout_s})")
    if e.retriever_url and (e.name not in retriever_envs or not e.retriever_url.startswith(("http://", "https://"))):
        add(f"env.retriever_url={e.retriever_url!r} needs env.name={'|'.join(retriever_envs)} and an http(s):// "
            "URL, e.g. http://127.0.0.1:8000/retrieve (`sdar retriever serve`)")
    if e.invalid_penalty < 0:
        add(f"env.invalid_penalty is subtracted from rewards and must be >= 0 (got {e.invalid_penalty})")
    if e.win_reward is not None and e.win_reward <= 0:
        add(f"env.win_reward must be > 0 (got {e.win_reward}); leave it unset for the environment's default")
    if r.tasks_per_step < 1:
        add(f"rollout.tasks_per_step must be >= 1 (got {r.tasks_per_step})")
    if r.group_size < 2 and a.method != "opsd":
        add(f"rollout.group_size={r.group_size}: group-relative advantages need at least 2 episodes per task; "
            "set rollout.group_size >= 2 (paper: 8)")
    if r.temperature <= 0:
        add("rollout.temperature must be > 0 for training rollouts (greedy rollouts give no exploration); "
            "use eval_temperature for greedy evaluation")
    if not 0 < r.top_p <= 1:
        add(f"rollout.top_p must be in (0, 1] (got {r.top_p})")
    if r.top_k < 0:
        add(f"rollout.top_k must be >= 0, 0 = off (got {r.top_k})")
    if r.max_new_tokens < 1 or r.max_prompt_tokens < 1:
        add("rollout.max_new_tokens and rollout.max_prompt_tokens must be >= 1")
    if r.batch_size < 1:
        add(f"rollout.batch_size must be >= 1 (got {r.batch_size})")

    if a.method in TEACHER_METHODS and t.source == "none":
        add(f"algo.method={a.method!r} distils from a privileged teacher but teacher.source is 'none'; set "
            f"teacher.source to one of {list(allowed or ('skills',))} or use algo.method=grpo")
    if a.method == "skill_grpo" and t.source != "skills":
        add("algo.method='skill_grpo' puts skills in the student prompt; set teacher.source=skills")
    if spec is not None and t.source != "none" and t.source not in allowed:
        add(f"teacher.source={t.source!r} does not exist for env {e.name!r}; choose one of {list(allowed)}")
    if t.max_prompt_tokens < r.max_prompt_tokens:
        add(f"teacher.max_prompt_tokens ({t.max_prompt_tokens}) is smaller than rollout.max_prompt_tokens "
            f"({r.max_prompt_tokens}); the teacher prompt holds the student prompt plus the privileged text, so raise it")
    if t.ucb_c < 0:
        add(f"teacher.ucb_c must be >= 0 (got {t.ucb_c})")
    if not 0 <= t.hint_noise <= 1:
        add(f"teacher.hint_noise is a fraction of hints and must be in [0, 1] (got {t.hint_noise})")
    elif t.hint_noise > 0 and t.source != "expert_plan":
        add(f"teacher.hint_noise corrupts expert_plan hints only, but teacher.source={t.source!r}; set "
            "teacher.source=expert_plan (toy, alfworld) or teacher.hint_noise=0")
    for name in ("aux_coef", "kl_coef", "entropy_coef", "pg_coef", "clip_low", "clip_high", "rlsd_lambda"):
        v = getattr(a, name)
        if v is not None and v < 0:
            add(f"algo.{name} must be >= 0 (got {v})")
    if a.dual_clip is not None and a.dual_clip <= 1:
        add(f"algo.dual_clip must be > 1 (got {a.dual_clip}); the paper uses 3")
    if a.gate_beta is not None and a.gate_beta < 0:
        add(f"algo.gate_beta must be >= 0 (got {a.gate_beta})")
    if a.method == "opsd" and a.pg_coef not in (None, 0.0):
        add("algo.method='opsd' is the distillation term alone; leave algo.pg_coef unset or use algo.method=sdar")
    if r.view == "conversation" and a.advantage == "gigpo":
        add("algo.advantage=gigpo needs per-turn rows; set rollout.view=per_turn")
    if a.gigpo_omega < 0:
        add(f"algo.gigpo_omega weighs the step-level advantage and must be >= 0 (got {a.gigpo_omega})")
    if not 0 <= a.gigpo_gamma <= 1:
        add(f"algo.gigpo_gamma is a discount and must be in [0, 1] (got {a.gigpo_gamma})")
    if a.mismatch_cap < 1:
        add(f"algo.mismatch_cap must be >= 1 (got {a.mismatch_cap}); verl uses 2")
    if a.logprob_check_rows < 0:
        add(f"algo.logprob_check_rows must be >= 0 (0 = no check), got {a.logprob_check_rows}")
    if not a.logprob_tolerance > 0:
        add(f"algo.logprob_tolerance must be > 0 nats, got {a.logprob_tolerance}")
    if a.old_logprobs == "rollout" and a.mismatch_correction in ("tis", "mis"):
        add(f"algo.mismatch_correction={a.mismatch_correction} compares recomputed old log-probs with the rollout "
            "ones; set algo.old_logprobs=recompute (or auto)")
    if a.old_logprobs == "rollout" and r.view == "conversation":
        add("algo.old_logprobs=rollout: conversation rows see more context than the generator's per-turn prompts, "
            "so the rollout log-probs are not the trainer's; set algo.old_logprobs=recompute (or auto)")
    if m.lora_rank < 0:
        add(f"model.lora_rank must be >= 0, 0 = no LoRA (got {m.lora_rank})")
    if m.lora_rank > 0 and (m.lora_alpha <= 0 or not 0 <= m.lora_dropout < 1 or not m.lora_targets):
        add("LoRA needs model.lora_alpha > 0, model.lora_dropout in [0, 1) and at least one model.lora_targets name")

    if o.lr is not None and o.lr <= 0:
        add(f"optim.lr must be > 0 (got {o.lr})")
    elif o.lr is not None and o.lr >= 1:
        add(f"optim.lr must be < 1 (got {o.lr}); the method defaults are 1e-6 to 1e-5 (`sdar methods`)")
    if o.weight_decay < 0:
        add(f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    if not 0 <= o.warmup_ratio < 1:
        add(f"optim.warmup_ratio must be in [0, 1) (got {o.warmup_ratio})")
    if o.ppo_epochs < 1:
        add(f"optim.ppo_epochs must be >= 1 (got {o.ppo_epochs})")
    if o.mini_batch_rows is not None and o.mini_batch_rows < 1:
        add(f"optim.mini_batch_rows must be >= 1 or null (got {o.mini_batch_rows})")
    if o.micro_batch_tokens < 16:
        add(f"optim.micro_batch_tokens must be >= 16 (got {o.micro_batch_tokens})")
    if o.grad_clip <= 0:
        add(f"optim.grad_clip must be > 0 (got {o.grad_clip})")
    if o.strategy == "fsdp" and m.lora_rank > 0:
        add("optim.strategy=fsdp shards full weights and does not train LoRA adapters; set model.lora_rank=0 or "
            "train LoRA in one process with optim.strategy=local")

    if cfg.total_steps < 1:
        add(f"total_steps must be >= 1 (got {cfg.total_steps})")
    for name in ("eval_every", "save_every"):
        if getattr(cfg, name) < 0:
            add(f"{name} must be >= 0 (0 = never) (got {getattr(cfg, name)})")
    if cfg.eval_tasks < 1:
        add(f"eval_tasks must be >= 1 (got {cfg.eval_tasks})")
    if cfg.eval_temperature < 0:
        add(f"eval_temperature must be >= 0 (0 = greedy) (got {cfg.eval_temperature})")
    if cfg.keep_checkpoints < 1:
        add(f"keep_checkpoints must be >= 1 (got {cfg.keep_checkpoints})")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        add(f"device={cfg.device!r}: use auto, cpu, cuda or cuda:N")
    problems += sft_problems(cfg.sft)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def sft_problems(s: SFTConfig) -> list[str]:
    """What is wrong with the ``sft`` section (range checks; ``validate`` reports non-finite numbers first)."""
    out = []
    for name in ("num_tasks", "epochs", "batch_rows", "batch_tokens"):
        if getattr(s, name) < 1:
            out.append(f"sft.{name} must be >= 1 (got {getattr(s, name)})")
    for name in ("eval_tasks", "train_layers", "warmup_steps", "num_threads"):
        if getattr(s, name) < 0:
            out.append(f"sft.{name} must be >= 0 (got {getattr(s, name)})")
    if not 0 < s.lr < 1:
        out.append(f"sft.lr must be in (0, 1) (got {s.lr})")
    for name in ("eval_temperature", "weight_decay"):
        if getattr(s, name) < 0:
            out.append(f"sft.{name} must be >= 0 (got {getattr(s, name)})")
    if not 0 <= s.privileged_fraction <= 1:
        out.append(f"sft.privileged_fraction must be in [0, 1] (got {s.privileged_fraction})")
    return out

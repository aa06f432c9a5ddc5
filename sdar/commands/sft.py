"""Supervised warm start: expert episodes rendered with the rollout prompts, trained with NLL on the answer tokens.

Pipeline (``sdar sft``):

1. ``expert_turns`` plays tasks with an expert hook and records, for every turn, the same ``PromptContext`` the
   rollout collector would build (task, steps taken, last ``history_length`` (observation, action) pairs, current
   observation, admissible actions) plus the expert's action. Experts: ``plan_expert`` (first step of the
   environment's ``expert_plan``, e.g. toy or ALFWorld), ``toy_expert`` (the toy solver) and ``ToySearchExpert``
   (looks for the object like the agent must, instead of knowing where it lies).
2. ``encode_examples`` renders each context exactly as the collector does (``fit_prompt``, no privileged text) and
   tokenizes a target ``<think>{one sentence}</think><action>{action}</action>`` followed by the eos token.
3. ``train_sft`` minimises the mean NLL of the target tokens (prompt tokens are context only) over packed
   micro-batches with AdamW, optionally training only the top decoder layers.
4. ``measure`` runs greedy (or low-temperature) episodes through ``collect_episodes`` + ``HFGenerator`` and reports
   the valid-action and success rates; ``run_sft`` measures before and after training and saves the model folder,
   which ``sdar train --model.name <folder>`` loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from sdar.algo.logprobs import hidden_token_logprobs
from sdar.atomic import clean_leftovers, new_tmp_dir, replace_dir, write_text_atomic
from sdar.envs.base import EnvFactory, TaskSpec, panel_tasks
from sdar.envs.registry import prompt_template
from sdar.learner.local import lr_at
from sdar.learner.modules import split_model
from sdar.learner.packing import PackedMicroBatch, choose_layout, make_micro_batches
from sdar.metrics import RolloutProgress, eta_seconds, format_duration
from sdar.prompts.parse import parse_action
from sdar.prompts.render import fit_prompt
from sdar.envs.experts import ToySearchExpert, plan_expert, toy_expert
from sdar.envs.registry import expert_for
from sdar.envs.spec import Expert
from sdar.data.demos import ExpertTurn, episode_seed, expert_turns

if TYPE_CHECKING:
    from sdar.config import RunConfig
    from sdar.rollout.collect import TurnProgress

__all__ = [
    "REASONING_TEMPLATES",
    "Expert",
    "ExpertTurn",
    "SFTExample",
    "ToySearchExpert",
    "encode_examples",
    "episode_seed",
    "expert_for",
    "expert_turns",
    "freeze_lower_layers",
    "measure",
    "plan_expert",
    "reasoning_line",
    "run_sft",
    "save_model",
    "target_logprobs",
    "target_nll",
    "target_text",
    "toy_expert",
    "train_sft",
]

logger = logging.getLogger(__name__)

REASONING_TEMPLATES = (
    "To {goal}, I will {action} next.",
    "My goal is to {goal}, so I {action} now.",
    "I need to {goal}; the next step is {action}.",
    "Step {step} of the plan to {goal}: {action}.",
)
"""One-sentence reasoning lines of the targets; ``{goal}`` is the goal without its final period."""



def _pick(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % n


def reasoning_line(goal: str, action: str, *, step: int, choice: int) -> str:
    """One sentence naming the goal and the next action, from ``REASONING_TEMPLATES[choice % len]``."""
    g = goal.strip().rstrip(".").strip()
    g = g[:1].lower() + g[1:] if g else "finish the task"
    template = REASONING_TEMPLATES[choice % len(REASONING_TEMPLATES)]
    return template.format(goal=g, action=action, step=step + 1)


def target_text(turn: ExpertTurn, *, seed: int, reasoning: bool = True, action: str | None = None) -> str:
    """``<think>{reasoning}</think><action>{action}</action>``; the template is a deterministic function of seed.

    ``reasoning=False`` leaves the think block empty; ``action`` replaces the turn's action (privileged examples
    answer with the plan's next step)."""
    act = turn.action if action is None else action
    thought = ""
    if reasoning:
        choice = _pick(f"{seed}:{turn.task_id}:{turn.episode_seed}:{turn.index}", len(REASONING_TEMPLATES))
        thought = reasoning_line(turn.context.goal, act, step=turn.index, choice=choice)
    return f"<think>{thought}</think><action>{act}</action>"


@dataclass(frozen=True)
class SFTExample:
    """One training row: prompt ids (context only) and target ids (trained on)."""

    prompt_ids: tuple[int, ...]
    """Exactly the ids the collector gives the generator for this turn."""
    target_ids: tuple[int, ...]
    """The target text's ids followed by the eos id."""
    text: str
    """The target text (without the eos token)."""


def privileged_example_turns(turns: Sequence[ExpertTurn], fraction: float, *, source: str, seed: int) -> list[
        tuple[ExpertTurn, str, str]]:
    """The turns (a seeded ``fraction`` of those whose state has a ``source`` plan) that also become privileged
    examples: ``(turn, privileged text, action)`` with the plan's next step as the action."""
    from sdar.data.hints import plan_steps

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"privileged_fraction must be in [0, 1], got {fraction}")
    out = []
    for turn in turns:
        text = turn.privileged.get(source, "")
        steps = plan_steps(text)
        if not steps:
            continue
        if _pick(f"priv:{seed}:{turn.task_id}:{turn.episode_seed}:{turn.index}", 1_000_000) < fraction * 1_000_000:
            out.append((turn, text, steps[0]))
    return out


def encode_examples(
    tokenizer: Any,
    turns: Sequence[ExpertTurn],
    *,
    seed: int,
    max_prompt_tokens: int,
    system: str | None = None,
    enable_thinking: bool | None = None,
    reasoning: bool = True,
    privileged: Sequence[tuple[ExpertTurn, str, str]] = (),
) -> list[SFTExample]:
    """Encode prompts with the collector's ``fit_prompt`` settings and targets as text ids + eos.

    ``privileged`` adds one example per ``(turn, text, action)``: the turn's prompt with ``text`` in the privileged
    block (as the teacher sees it) answered with ``action``.

    Raises:
        ValueError: when the tokenizer has no eos token or a prompt does not fit even without history.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; targets must end with one so generation learns to stop")
    eos = int(tokenizer.eos_token_id)
    out = []
    items = [(turn, None, None) for turn in turns] + [(t, text, a) for t, text, a in privileged]
    for turn, text_in, action in items:
        ids, _ = fit_prompt(
            tokenizer,
            turn.context,
            privileged=text_in,
            max_tokens=max_prompt_tokens,
            system=system,
            enable_thinking=enable_thinking,
            template=prompt_template(turn.context.env_name, turn.context.style),
        )
        text = target_text(turn, seed=seed, reasoning=reasoning, action=action)
        target = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos]
        out.append(SFTExample(tuple(ids), tuple(target), text))
    return out


# ------------------------------------------------------------------------------------------------------ training
_body_and_head = split_model  # the learner's (decoder body, linear LM head) split, with the same model checks


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def target_logprobs(model: nn.Module, mb: PackedMicroBatch, *, autocast_dtype: torch.dtype | None = None) -> Tensor:
    """Log-probs ``[R]`` of a micro-batch's target tokens (``mb.targets``); gradients follow the caller's mode.

    Only the positions that predict target tokens reach the LM head, so prompt tokens never enter the loss.
    """
    body, head = _body_and_head(model)
    device = head.weight.device
    with _autocast(device, autocast_dtype):
        out = body(
            input_ids=mb.input_ids.to(device),
            position_ids=mb.position_ids.to(device),
            attention_mask=None if mb.attention_mask is None else mb.attention_mask.to(device),
            use_cache=False,  # a cache object would switch off the packed-row isolation
        )
        hidden = out.last_hidden_state  # [B, L, H]
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, mb.pred_index.to(device))  # [R, H]
        logprobs, _ = hidden_token_logprobs(picked, head.weight, mb.targets.to(device), bias=head.bias)
    return logprobs  # [R]


def _rows(examples: Sequence[SFTExample]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return [(e.prompt_ids, e.target_ids) for e in examples]


@torch.no_grad()
def target_nll(
    model: nn.Module,
    examples: Sequence[SFTExample],
    *,
    batch_tokens: int = 4096,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Mean negative log-likelihood per target token (nats), without gradient, in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for mb in make_micro_batches(_rows(examples), max_tokens=batch_tokens, layout=choose_layout("auto", model)):
            lp = target_logprobs(model, mb, autocast_dtype=autocast_dtype)
            total += float(-lp.sum())
            count += lp.numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)


def freeze_lower_layers(model: nn.Module, train_layers: int) -> int:
    """Train only the top ``train_layers`` decoder layers and the final norm (0 = train everything).

    The embeddings (and a tied LM head) are frozen too, so backward stops at the lowest trained layer.

    Returns:
        The number of trainable parameters.
    """
    if train_layers < 0:
        raise ValueError(f"train_layers must be >= 0 (0 = all), got {train_layers}")
    if train_layers == 0:
        model.requires_grad_(True)
    else:
        body, _ = _body_and_head(model)
        layers = getattr(body, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"{type(body).__name__} has no .layers list; use train_layers=0")
        model.requires_grad_(False)
        for layer in list(layers)[-train_layers:]:
            layer.requires_grad_(True)
        norm = getattr(body, "norm", None)
        if isinstance(norm, nn.Module):
            norm.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_sft(
    model: nn.Module,
    examples: Sequence[SFTExample],
    *,
    epochs: int,
    lr: float,
    batch_rows: int,
    batch_tokens: int,
    schedule: Literal["cosine", "constant"] = "cosine",
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Minimise the mean target-token NLL with AdamW; one optimizer step per ``batch_rows`` shuffled rows.

    Each optimizer batch is packed into micro-batches of at most ``batch_tokens`` tokens whose gradients add up to
    the gradient of the batch's token-mean NLL. Trains the parameters that have ``requires_grad`` set.

    Returns:
        Per-step metrics: ``step``, ``epoch``, ``loss`` (token-mean NLL before the update), ``lr``, ``grad_norm``,
        ``target_tokens``, ``input_tokens``, ``seconds``.
    """
    if epochs < 1 or batch_rows < 1 or batch_tokens < 1:
        raise ValueError(f"epochs, batch_rows, batch_tokens must be >= 1, got {epochs}, {batch_rows}, {batch_tokens}")
    if not examples:
        raise ValueError("no SFT examples: every expert episode was dropped (see the warnings above)")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rows = _rows(examples)
    per_epoch = math.ceil(len(rows) / batch_rows)
    total = epochs * per_epoch
    shuffle = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    layout = choose_layout("auto", model)  # packed rows only where the attention kernel isolates them natively
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(rows), generator=shuffle).tolist()
        for start in range(0, len(rows), batch_rows):
            step = len(history)
            began = time.perf_counter()
            batch = [rows[i] for i in order[start : start + batch_rows]]
            n_targets = sum(len(t) for _, t in batch)
            micro = make_micro_batches(batch, max_tokens=batch_tokens, layout=layout)
            loss_value = 0.0
            for mb in micro:
                loss = -target_logprobs(model, mb, autocast_dtype=autocast_dtype).sum() / n_targets
                loss.backward()
                loss_value += float(loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf")))
            step_lr = lr_at(step, base_lr=lr, warmup_steps=warmup_steps,
                            total_steps=total if schedule == "cosine" else None)
            if math.isfinite(loss_value) and math.isfinite(grad_norm):
                for group in optimizer.param_groups:
                    group["lr"] = step_lr
                optimizer.step()
            else:
                logger.warning("step %d: non-finite loss %.4g or grad norm %.4g, update skipped", step, loss_value,
                               grad_norm)
            optimizer.zero_grad(set_to_none=True)
            metrics = {
                "step": float(step), "epoch": float(epoch), "loss": loss_value, "lr": step_lr,
                "grad_norm": grad_norm, "target_tokens": float(n_targets),
                "input_tokens": float(sum(mb.num_tokens for mb in micro)), "seconds": time.perf_counter() - began,
            }
            history.append(metrics)
            eta = eta_seconds([h["seconds"] for h in history], total - len(history))
            logger.info("sft step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.1fs  ETA ~%s", step + 1, total,
                        loss_value, step_lr, grad_norm, metrics["seconds"], format_duration(eta))
    model.eval()
    return history


# --------------------------------------------------------------------------------------------------- measurement
def measure(
    model: nn.Module,
    tokenizer: Any,
    make_env: EnvFactory,
    tasks: Sequence[TaskSpec],
    *,
    history_length: int = 2,
    max_turns: int = 50,
    max_prompt_tokens: int = 2048,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    enable_thinking: bool | None = None,
    autocast_dtype: torch.dtype | None = None,
    privileged_source: str | None = None,
    progress: Callable[[TurnProgress], None] | None = None,
    prompt_style: str = "",
) -> dict[str, float]:
    """Run one episode per task through the rollout collector and report how well the model acts.

    ``privileged_source`` puts that privileged text (e.g. the state's ``expert_plan``) in every prompt, as the
    teacher sees it. ``progress`` is called after every turn (``collect_episodes``'s callback), e.g. a
    ``sdar.metrics.RolloutProgress`` console line.

    Returns:
        ``episodes``, ``success_rate``, ``valid_action_rate`` (well-formed and admissible turns / all turns: it
        runs under invalid_rule=admissible), ``format_rate`` (tags parse), ``mean_turns`` and ``seconds``.
    """
    from sdar.rollout.collect import CollectSettings, EpisodeRequest, collect_episodes
    from sdar.rollout.generator import SamplingParams
    from sdar.rollout.hf import HFGenerator

    began = time.perf_counter()
    requests = [EpisodeRequest(t, seed=episode_seed(seed, i, purpose="eval"), group_id=i, episode_id=i)
                for i, t in enumerate(tasks)]
    settings = CollectSettings(
        max_turns=max_turns,
        history_length=history_length,
        max_prompt_tokens=max_prompt_tokens,
        sampling=SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
        enable_thinking=enable_thinking,
        student_privileged_source=privileged_source,
        prompt_style=prompt_style, invalid_rule="admissible",  # inadmissible actions count as invalid, never sent
    )
    generator = HFGenerator(model, tokenizer, batch_size=batch_size)
    device = next(model.parameters()).device
    with _autocast(device, autocast_dtype):
        trajectories = collect_episodes(requests, make_env, generator, tokenizer, settings, progress=progress)
    turns = [t for traj in trajectories for t in traj.turns]
    n_turns = max(len(turns), 1)
    return {
        "episodes": float(len(trajectories)),
        "success_rate": sum(t.won for t in trajectories) / max(len(trajectories), 1),
        "valid_action_rate": sum(t.valid for t in turns) / n_turns,
        "format_rate": sum(parse_action(t.response_text, None).valid for t in turns) / n_turns,
        "mean_turns": len(turns) / max(len(trajectories), 1),
        "seconds": time.perf_counter() - began,
    }


# ----------------------------------------------------------------------------------------------------- the run
def _check_out_dir(folder: Path) -> None:
    """Refuse to replace a non-empty folder that is not a saved model (it would be swapped out as a whole)."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file; out_dir must be a folder")
    if folder.is_dir() and not (folder / "config.json").is_file() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} holds files but no saved model (no config.json); saving would replace the "
                              "folder as a whole: choose an empty or new out_dir")


def save_model(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """``save_pretrained`` the model and tokenizer as the folder ``out_dir`` (``load_model`` reads it back).

    ``dtype`` (e.g. ``torch.bfloat16``) writes the floating-point weights in that dtype, for serving a model trained
    with fp32 master weights at half the size; the model in memory is left as it is. None = as stored.

    The files are written into a hidden sibling folder, flushed to disk and renamed into place
    (:func:`sdar.atomic.replace_dir`), so a crash while saving leaves the previous model (or no folder), never a
    half-written one. An existing model folder is replaced as a whole; a non-empty folder that holds no model is
    refused (``FileExistsError``).
    """
    folder = Path(out_dir)
    _check_out_dir(folder)
    clean_leftovers(folder.parent, writer=True, only=folder.name)  # from an earlier save that was killed
    tmp = new_tmp_dir(folder)
    try:
        if dtype is None:
            model.save_pretrained(str(tmp))
        else:
            _save_cast(model, tmp, dtype)
        tokenizer.save_pretrained(str(tmp))
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _save_cast(model: Any, folder: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` with the floating-point tensors cast to ``dtype`` and the config saying so."""
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.save_pretrained(str(folder), state_dict=state)
    path = folder / "config.json"  # transformers records the in-memory parameters' dtype there
    config = json.loads(path.read_text(encoding="utf-8"))
    config["dtype"] = str(dtype).removeprefix("torch.")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _cycle(tasks: Sequence[TaskSpec], n: int) -> list[TaskSpec]:
    if not tasks:
        raise ValueError("the task source returned no tasks")
    return [tasks[i % len(tasks)] for i in range(n)]


def run_sft(cfg: RunConfig) -> dict[str, Any]:
    """Record demonstrations, measure, train, measure again, save; returns the report written to sft_report.json.

    Reads ``cfg.sft`` and, as the RL run does, the model, environment, prompt budgets, privileged source and seed
    (see :class:`sdar.config.SFTConfig`)."""
    from sdar.config import to_dict
    from sdar.envs.registry import make_env_factory, make_task_source
    from sdar.hardware import cpu_description, resolve_autocast
    from sdar.models import load_model, load_tokenizer

    s, env = cfg.sft, cfg.env
    model_name = s.model or cfg.model.name
    thinking, prompt_budget, source_name = cfg.model.enable_thinking, cfg.rollout.max_prompt_tokens, cfg.teacher.source
    _check_out_dir(Path(s.out_dir))  # before the work, not after it
    torch.manual_seed(cfg.seed)
    if s.num_threads > 0:
        torch.set_num_threads(s.num_threads)
    make_env = make_env_factory(env.name, max_turns=env.max_turns, win_reward=env.win_reward, data_dir=env.data_dir,
                                retriever_url=env.retriever_url)
    source = make_task_source(env.name, data_dir=env.data_dir, task_types=env.task_types)
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, dtype="float32")
    device = next(model.parameters()).device
    autocast = resolve_autocast(s.autocast, device)
    logger.info("CPU: %s; device %s; autocast %s -> compute dtype %s", cpu_description(), device, s.autocast,
                str(autocast or torch.float32).removeprefix("torch."))

    began = time.perf_counter()
    turns = expert_turns(make_env, _cycle(source.tasks("train"), s.num_tasks),
                         expert=expert_for(env.name, s.expert), history_length=env.history_length,
                         max_turns=env.max_turns, seed=cfg.seed, keep_failed=s.keep_unfinished,
                         style=env.prompt_style)
    privileged = privileged_example_turns(turns, s.privileged_fraction, source=source_name,
                                          seed=cfg.seed) if s.privileged_fraction > 0 else []
    examples = encode_examples(tokenizer, turns, seed=cfg.seed, max_prompt_tokens=prompt_budget,
                               enable_thinking=thinking, reasoning=s.reasoning, privileged=privileged)
    prompt_lens = [len(e.prompt_ids) for e in examples]
    target_lens = [len(e.target_ids) for e in examples]
    logger.info("%d expert turns from %d episodes; prompt tokens mean %.0f max %d; target tokens max %d",
                len(examples), s.num_tasks, sum(prompt_lens) / max(len(prompt_lens), 1), max(prompt_lens, default=0),
                max(target_lens, default=0))

    eval_tasks = panel_tasks(source.tasks("eval"), s.eval_tasks)  # round-robin over task types

    def evaluate(label: str, privileged_source: str | None = None) -> dict[str, float]:
        return measure(model, tokenizer, make_env, eval_tasks, history_length=env.history_length,
                       max_turns=env.max_turns, max_prompt_tokens=prompt_budget,
                       max_new_tokens=cfg.rollout.max_new_tokens, temperature=s.eval_temperature, seed=cfg.seed,
                       enable_thinking=thinking, autocast_dtype=autocast,
                       privileged_source=privileged_source, prompt_style=env.prompt_style,
                       progress=RolloutProgress(f"measure {label}"))

    before = evaluate("before") if eval_tasks and s.eval_before else None
    if before is not None:
        logger.info("before: %s", before)
    trainable = freeze_lower_layers(model, s.train_layers)
    history = train_sft(model, examples, epochs=s.epochs, lr=s.lr, batch_rows=s.batch_rows,
                        batch_tokens=s.batch_tokens, schedule=s.schedule, warmup_steps=s.warmup_steps,
                        weight_decay=s.weight_decay, autocast_dtype=autocast, seed=cfg.seed)
    model.requires_grad_(True)
    folder = save_model(model, tokenizer, s.out_dir)  # saved before the measurement: a failure there loses nothing
    after = evaluate("after") if eval_tasks else None
    if after is not None:
        logger.info("after: %s", after)
    after_privileged = (evaluate(f"after ({source_name})", source_name)
                        if eval_tasks and s.eval_privileged else None)
    if after_privileged is not None:
        logger.info("after, with %s in the prompt: %s", source_name, after_privileged)
    report: dict[str, Any] = {
        "config": to_dict(cfg),
        "eval_task_ids": [t.task_id for t in eval_tasks],
        "train_turns": len(examples),
        "train_prompt_tokens_mean": sum(prompt_lens) / max(len(prompt_lens), 1),
        "train_prompt_tokens_max": max(prompt_lens),
        "target_tokens_mean": sum(target_lens) / len(target_lens),
        "target_tokens_max": max(target_lens),
        "trainable_parameters": trainable,
        "optimizer_steps": len(history),
        "first_loss": history[0]["loss"],
        "last_loss": history[-1]["loss"],
        "train_seconds": sum(h["seconds"] for h in history),
        "before": before,
        "after": after,
        "after_privileged": after_privileged,
        "privileged_examples": len(privileged),
        "total_seconds": time.perf_counter() - began,
        "model_dir": str(folder),
    }
    write_text_atomic(folder / "sft_report.json", json.dumps(report, indent=2) + "\n")
    return report

"""The `sdar` command line: one entry point with subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

COMPUTE_COMMANDS = frozenset({"train", "demo", "sft", "eval", "compare"})
"""Commands that run a model: they start by telling glibc to keep freed memory (``sdar.allocator``)."""
NOT_AVAILABLE = 2
"""Exit status of a subcommand that this version does not provide yet."""

COMMANDS = {
    "train": "train an agent (GRPO, SDAR and the baselines); `sdar train --help` lists every option",
    "eval": "evaluate a checkpoint or base model on a fixed task panel",
    "compare": "run several methods x seeds and tabulate the results",
    "report": "render a run's metrics into plots and a summary",
    "envs": "list environments, run their conformance checks, generate data",
    "model": "prepare offline models (e.g. convert SmolLM2 from GGUF)",
    "sft": "supervised warm start on expert turns (same per-turn prompts as RL): `sdar sft --help`",
    "retriever": "serve a local retriever over HTTP for Search-QA workers: `sdar retriever serve --help`",
    "methods": "print the method table with each method's loss and paper defaults",
    "config": "print the fully resolved configuration of a preset plus overrides",
    "demo": "a short CPU training run with a report at the end (what `make demo` runs)",
}


def _split_config_arg(argv: Sequence[str], prog: str = "sdar train") -> tuple[str | None, list[str]]:
    """Pull ``--config FILE`` (or ``--config=FILE``) out of ``argv``; the rest goes to the option parser."""
    from sdar.config import ConfigError

    rest: list[str] = []
    config: str | None = None
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config = next(it, None)
            if config is None:
                raise ConfigError(f"{prog}: --config needs a file name, e.g. --config configs/demo_cpu.yaml")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config, rest


def _take_flag(argv: Sequence[str], flag: str) -> tuple[bool, list[str]]:
    """(whether ``flag`` is in ``argv``, ``argv`` without it)."""
    rest = [a for a in argv if a != flag]
    return len(rest) != len(argv), rest


def parse_run_config(argv: Sequence[str], prog: str):
    """``[--config FILE] [--section.key VALUE ...]`` -> a validated ``RunConfig``.

    Raises:
        ConfigError: for a missing or malformed preset (the message names the file) or an invalid value.
    """
    import tyro

    from sdar.config import ConfigError, RunConfig, from_dict, read_config_file, validate

    config_path, rest = _split_config_arg(argv, prog)
    base = RunConfig()
    if config_path is not None:
        try:
            base = from_dict(RunConfig, read_config_file(config_path))
        except ConfigError as e:
            raise ConfigError(str(e) if config_path in str(e) else f"{config_path}: {e}") from None
    cfg = tyro.cli(
        RunConfig,
        default=base,
        args=rest,
        prog=prog,
        description="Options override the preset given with --config FILE (YAML); defaults are shown."
                    + (" A run folder (out_dir) that is not empty is refused unless --resume (continue it) or "
                       "--overwrite (delete the run's files first) is given." if prog == "sdar train" else "")
                    + (" The warm start reads the sft section and, as the RL run does, model, env, "
                       "rollout.max_prompt_tokens/max_new_tokens, teacher.source and seed; a non-empty sft.out_dir "
                       "is refused unless --overwrite (it deletes the model folder's files first)."
                       if prog == "sdar sft" else ""),
    )
    try:
        validate(cfg)
    except ConfigError as e:
        origin = f" (preset {config_path} plus the command line)" if config_path else ""
        raise ConfigError(str(e).replace("invalid configuration:", f"invalid configuration{origin}:", 1)) from None
    return cfg


def cmd_train(argv: Sequence[str]) -> int:
    """``sdar train [--overwrite] [--resume] [--config FILE] [--section.key VALUE ...]``."""
    overwrite, rest = _take_flag(argv, "--overwrite")
    cfg = parse_run_config(rest, "sdar train")
    from sdar.commands.train import train

    train(cfg, folder="overwrite" if overwrite else "new")
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    from sdar.commands.demo import main as demo_main

    return demo_main(list(argv))


def cmd_config(argv: Sequence[str]) -> int:
    from sdar.config import dump_yaml

    cfg = parse_run_config(argv, "sdar config")
    sys.stdout.write(dump_yaml(cfg))
    return 0


def cmd_methods(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="sdar methods", description=COMMANDS["methods"]).parse_args(argv)
    from sdar.algo.methods import METHODS

    sys.stdout.write(format_method_table(METHODS.values()))
    return 0


def format_method_table(methods) -> str:
    """A plain-text table of methods: loss composition and the paper's defaults."""
    from sdar.config import RolloutConfig

    group_size = RolloutConfig().group_size  # the paper's G, one default for every method
    rows = [("method", "PG", "aux loss", "λ", "gate", "β", "KL", "entropy", "clip", "dual", "lr", "G", "skills in")]
    for m in methods:
        s = m.loss
        aux = s.aux if s.advantage_reweight == "none" else f"{s.aux}+{s.advantage_reweight}"
        lam = s.rlsd_lambda if s.advantage_reweight == "rlsd" else s.aux_coef
        where = "student" if m.student_sees_skills else ("teacher" if m.teacher_sees_skills else "-")
        rows.append((m.name, f"{s.pg_coef:g}", aux, f"{lam:g}", s.gate if s.aux == "sdar" else "-",
                     f"{s.gate_beta:g}" if s.aux == "sdar" else "-", f"{s.kl_coef:g}", f"{s.entropy_coef:g}",
                     f"{s.clip_low:g}/{s.clip_high:g}", f"{s.dual_clip:g}" if s.dual_clip else "-", f"{m.lr:g}",
                     str(group_size), where))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out = "\n".join(lines) + "\n\n"
    out += "\n".join(f"{m.name}: {m.description}" for m in methods) + "\n"
    return out


def cmd_model(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdar model", description=COMMANDS["model"])
    sub = parser.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="convert a packaged model to safetensors once (into the cache)")
    prep.add_argument("alias", help="model alias, e.g. smollm2-135m")
    prep.add_argument("--out", type=Path, default=None, help="target folder (default: the sdar cache)")
    prep.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="stored dtype")
    prep.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    sub.add_parser("list", help="known model aliases and whether they are prepared")
    args = parser.parse_args(argv)
    from sdar import models

    if args.action == "list":
        for alias, info in [*models.KNOWN_MODELS.items(), *models.SCRATCH_MODELS.items()]:
            path = models.prepared_dir(alias)
            state = f"prepared at {path}" if models.is_prepared(alias) else f"not prepared (run: sdar model prepare {alias})"
            sys.stdout.write(f"{alias:16s} {info}  [{state}]\n")
        return 0
    out = models.prepare_model(args.alias, out_dir=args.out, dtype=args.dtype, force=args.force)
    sys.stdout.write(f"{out}\n")
    return 0


def cmd_envs(argv: Sequence[str]) -> int:
    from sdar.envs.registry import ENV_NAMES as AVAILABLE_ENVS
    from sdar.envs import registry

    if len(argv) >= 2 and argv[0] == "generate":
        spec = registry.find_env_spec(argv[1])
        if spec is not None and spec.generate is not None:  # the generator parses its own options
            return spec.generate(list(argv[2:]))
    parser = argparse.ArgumentParser(prog="sdar envs", description=COMMANDS["envs"])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="environments and whether this version can train on them")
    chk = sub.add_parser("check", help="run the conformance suite (check_env) on an environment")
    chk.add_argument("name", help="environment name, e.g. toy")
    chk.add_argument("--tasks", type=int, default=20, help="number of tasks to check")
    chk.add_argument("--data-dir", default=None, help="game folder (alfworld)")
    gen = sub.add_parser("generate", help="generate an offline data set: `sdar envs generate alfworld --help`")
    gen.add_argument("name", help="environment (alfworld)")
    gen.add_argument("rest", nargs=argparse.REMAINDER, help="options of the generator")
    args = parser.parse_args(argv)

    if args.action == "list":
        for name in registry.ENV_NAMES:
            state = "available" if name in AVAILABLE_ENVS else "not available in this version"
            sys.stdout.write(f"{name:10s} {state}\n")
        return 0
    if args.action == "check":
        if args.name not in AVAILABLE_ENVS:
            sys.stderr.write(f"sdar envs check: {args.name!r} is not available in this version\n")
            return NOT_AVAILABLE
        from sdar.envs.checker import check_env

        factory = registry.make_env_factory(args.name, data_dir=args.data_dir)
        source = registry.make_task_source(args.name, data_dir=args.data_dir)
        tasks = source.tasks("train")[: args.tasks]
        solver = registry.get_env_spec(args.name).check_policy
        check_env(factory, tasks, policy=solver() if solver is not None else None)
        sys.stdout.write(f"{args.name}: check_env passed on {len(tasks)} tasks\n")
        return 0
    makers = [spec.name for spec in registry.ENV_SPECS if spec.generate is not None]
    sys.stderr.write(f"sdar envs generate: data generation for {args.name!r} is not available in this version "
                     f"({' and '.join(makers)} {'is' if len(makers) == 1 else 'are'}; the toy environment needs no "
                     "data)\n")
    return NOT_AVAILABLE


def cmd_sft(argv: Sequence[str]) -> int:
    """``sdar sft [--overwrite] [--config FILE] [--section.key VALUE ...]``: the warm start of ``RunConfig.sft``.

    The preset is a run configuration like `sdar train`'s (its sft section, plus the model, env, rollout budgets,
    teacher.source and seed that the RL run uses); a non-empty ``sft.out_dir`` is refused unless ``--overwrite``,
    which deletes only the files of a model folder (:data:`sdar.runfolder.SFT_LAYOUT`).
    """
    overwrite, rest = _take_flag(argv, "--overwrite")
    cfg = parse_run_config(rest, "sdar sft")
    from sdar.commands.sft import run_sft
    from sdar.runfolder import SFT_LAYOUT, prepare_folder

    prepare_folder(cfg.sft.out_dir, SFT_LAYOUT, mode="overwrite" if overwrite else "new")
    report = run_sft(cfg)
    for name in ("before", "after", "after_privileged"):
        m = report.get(name)
        if m is not None:
            sys.stdout.write(f"{name.replace('_', ' ')}: valid-action rate {m['valid_action_rate']:.3f}  success "
                             f"rate {m['success_rate']:.3f}  format rate {m['format_rate']:.3f}  "
                             f"({int(m['episodes'])} episodes, {m['mean_turns']:.1f} turns each)\n")
    sys.stdout.write(f"model saved to {report['model_dir']} (report: {report['model_dir']}/sft_report.json)\n")
    return 0


def cmd_eval(argv: Sequence[str]) -> int:
    from sdar.commands.evaluate import main as eval_main

    return eval_main(list(argv))


def cmd_report(argv: Sequence[str]) -> int:
    from sdar.commands.report import main as report_main

    return report_main(list(argv))


def cmd_compare(argv: Sequence[str]) -> int:
    from sdar.commands.compare import main as compare_main

    return compare_main(list(argv))


def cmd_retriever(argv: Sequence[str]) -> int:
    usage = "usage: sdar retriever serve [--host 127.0.0.1] [--port 8000] [--retriever bm25|dense] ... " \
            "(`sdar retriever serve --help` for all options)\n"
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(usage)
        return 0
    if not argv or argv[0] != "serve":
        sys.stderr.write(usage)
        return 2
    from sdar.envs.search.server import main_serve

    return main_serve(list(argv[1:]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdar",
        description="Self-Distilled Agentic Reinforcement Learning for multi-turn LLM agents.",
        epilog="Run `sdar COMMAND --help` for the options of a command. Errors in your input (configuration, "
               "files, models, data) are reported in one or two lines with exit status 2; --debug (or "
               "SDAR_DEBUG=1) adds the traceback.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="print the traceback of every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


GLOBAL_FLAGS = ("-v", "--verbose", "--debug")
"""Options of `sdar` itself, given before the command."""


def debug_requested(flags: Sequence[str] = ()) -> bool:
    """``--debug`` among the global flags, or ``SDAR_DEBUG`` set to anything but empty/0/false/no."""
    env = os.environ.get("SDAR_DEBUG", "").strip().lower()
    return "--debug" in flags or env not in ("", "0", "false", "no")


def report_error(command: str, exc: BaseException, *, debug: bool) -> int | None:
    """Write a user error as one or two lines (the traceback too with ``debug``); returns the exit status, or
    None when ``exc`` is not a user error (the caller re-raises it: a bug keeps its traceback)."""
    from sdar.errors import DEBUG_HINT, NonFiniteWeightsError, user_message

    message = user_message(exc)
    if message is None:
        return None
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    named = any(message.startswith(f"sdar {name}:") for name in COMMANDS)  # already says which command
    sys.stderr.write((message if named else f"sdar {command}: {message}") + "\n")
    if not debug and not _names_its_fix(exc):
        sys.stderr.write(DEBUG_HINT + "\n")
    return 1 if isinstance(exc, NonFiniteWeightsError) else 2


def _names_its_fix(exc: BaseException) -> bool:
    """Errors of the project's own types carry the fix in their message; a library's error may not."""
    from sdar.config import ConfigError
    from sdar.errors import InputFileError, NonFiniteWeightsError

    own: tuple[type[BaseException], ...] = (ConfigError, InputFileError, NonFiniteWeightsError)
    for module, name in (("sdar.models", "ModelNotFoundError"), ("sdar.envs.base", "EnvUnavailable"),
                         ("sdar.skills.library", "SkillLibraryError")):
        if module in sys.modules:
            own += (getattr(sys.modules[module], name),)
    return isinstance(exc, own)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    head: list[str] = []
    while len(head) < len(argv) and argv[len(head)] in GLOBAL_FLAGS:
        head.append(argv[len(head)])
    rest = argv[len(head):]
    if not rest or rest[0] in ("-h", "--help") or rest[0] not in COMMANDS:
        if rest and rest[0] not in ("-h", "--help") and rest[0] not in COMMANDS:
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"sdar: unknown command {rest[0]!r}; choose from {', '.join(COMMANDS)}\n")
            return 2
        parser.print_help()
        return 0
    verbose = any(f in head for f in ("-v", "--verbose"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, args = rest[0], rest[1:]
    if command in COMPUTE_COMMANDS:  # CPU tensors: reuse freed memory instead of page-faulting it in again
        from sdar.allocator import keep_freed_memory

        logging.getLogger("sdar.allocator").info("glibc malloc: %s", keep_freed_memory())
    handlers = {
        "train": cmd_train,
        "demo": cmd_demo,
        "config": cmd_config,
        "methods": cmd_methods,
        "model": cmd_model,
        "envs": cmd_envs,
        "retriever": cmd_retriever,
        "eval": cmd_eval,
        "report": cmd_report,
        "compare": cmd_compare,
        "sft": cmd_sft,
    }
    try:
        code = handlers[command](args)
    except Exception as exc:  # noqa: BLE001 - user errors become one line; anything else is re-raised
        reported = report_error(command, exc, debug=debug_requested(head))
        if reported is None:
            raise
        code = reported
    if "torch.distributed" in sys.modules:  # under torchrun: leave the process group, exit without finalization
        from sdar.distributed import finish

        code = finish(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""`sdar sft` on the command line: the preset and options, the checks of an ``SFTConfig``, the output folder.

The pipeline itself is :func:`sdar.commands.sft.run_sft`. Values are checked after the whole command line is read, so a bad
value is reported in one line (by :func:`sdar.commands.cli.main`) instead of in the option parser's box.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Sequence

from sdar.commands.sft import SFTConfig, _checks_deferred, sft_config_problems

__all__ = ["main"]

def _split_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config FILE`` / ``--config=FILE`` out of ``argv``."""
    from sdar.config import ConfigError

    rest, config, it = [], None, iter(argv)
    for arg in it:
        if arg == "--config":
            config = next(it, None)
            if config is None:
                raise ConfigError("sdar sft: --config needs a YAML file, e.g. --config configs/sft/smollm2.yaml")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config, rest


def _summary(report: dict[str, Any]) -> Iterator[str]:
    for name in ("before", "after", "after_privileged"):
        m = report.get(name)
        if m is not None:
            yield (f"{name.replace('_', ' ')}: valid-action rate {m['valid_action_rate']:.3f}  success rate "
                   f"{m['success_rate']:.3f}  format rate {m['format_rate']:.3f}  ({int(m['episodes'])} episodes, "
                   f"{m['mean_turns']:.1f} turns each)\n")
    yield f"model saved to {report['model_dir']} (report: {report['model_dir']}/sft_report.json)\n"


def parse_sft_config(argv: Sequence[str]) -> SFTConfig:
    """``[--config FILE] [--option VALUE ...]`` -> a checked ``SFTConfig``.

    Raises:
        ConfigError: for a missing or malformed preset (the message names the file) or an invalid value.
    """
    import tyro

    from sdar.config import ConfigError, from_dict, read_config_file
    from sdar.commands.sft import SFTConfig

    config_path, rest = _split_config(argv)
    base = SFTConfig()
    with _checks_deferred():  # checked once below, with every problem in one message
        if config_path is not None:
            try:
                base = from_dict(SFTConfig, read_config_file(config_path))
            except ConfigError as e:
                raise ConfigError(str(e) if config_path in str(e) else f"{config_path}: {e}") from None
        cfg = tyro.cli(SFTConfig, default=base, args=rest, prog="sdar sft",
                       description="Options override the preset given with --config FILE (YAML); defaults are "
                                   "shown. A non-empty --out-dir is refused unless --overwrite is given (it deletes "
                                   "the model folder's files first).")
    problems = sft_config_problems(cfg)
    if problems:
        origin = f" (preset {config_path} plus the command line)" if config_path else ""
        raise ConfigError(f"sdar sft: invalid configuration{origin}: " + "; ".join(problems))
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """``sdar sft [--overwrite] [--config FILE] [--option VALUE ...]``: run the warm start, print before/after rates.

    A non-empty ``out_dir`` is refused unless ``--overwrite``, which deletes only the files of a model folder
    (weights, JSON, tokenizer files; :data:`sdar.runfolder.SFT_LAYOUT`).

    Raises:
        ConfigError: for a bad preset or value, or an output folder that cannot be used.
    """
    from sdar.runfolder import SFT_LAYOUT, prepare_folder
    from sdar.commands.sft import run_sft

    args = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_sft_config([a for a in args if a != "--overwrite"])
    prepare_folder(cfg.out_dir, SFT_LAYOUT, mode="overwrite" if "--overwrite" in args else "new")
    report = run_sft(cfg)
    for line in _summary(report):
        sys.stdout.write(line)
    return 0

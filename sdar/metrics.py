"""Where training metrics go (JSONL, TensorBoard), stage timing, a console progress line with an ETA, and a
throttled console line for the turns of a long episode collection."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from sdar.rollout.collect import TurnProgress

__all__ = [
    "JsonlSink",
    "MetricsSink",
    "MultiSink",
    "ProgressLine",
    "RolloutProgress",
    "StageTimer",
    "TensorBoardSink",
    "build_sinks",
    "eta_seconds",
    "format_duration",
    "format_rollout",
    "rollout_eta",
]

logger = logging.getLogger(__name__)


class MetricsSink(Protocol):
    """Receives one flat dict of float metrics per training step."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _json_value(value: float) -> float | None:
    """A JSON-safe number: NaN and +-inf become null (strict JSON has no spelling for them)."""
    value = float(value)
    return value if math.isfinite(value) else None


class JsonlSink:
    """Appends one JSON object per call to ``path``: ``{"step": s, "time": unix_seconds, **metrics}``.

    Each line is flushed as soon as it is written, so a crashed run keeps every step it logged. Non-finite values
    are written as ``null``. The file is opened in append mode, so a resumed run continues the same file.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        record: dict[str, Any] = {"step": int(step), "time": self._clock()}
        record.update({k: _json_value(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class TensorBoardSink:
    """Writes each metric as a TensorBoard scalar under its own name (``train/loss``, ``timing/rollout_s``...)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            import tensorboard  # noqa: F401  (SummaryWriter needs it; fail here with a clear message)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "TensorBoardSink needs the tensorboard package: run `pip install tensorboard`, "
                "or turn TensorBoard logging off"
            ) from exc
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), global_step=int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MultiSink:
    """Fans every call out to several sinks."""

    def __init__(self, sinks: Sequence[MetricsSink]) -> None:
        self.sinks = tuple(sinks)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a run's ``metrics.jsonl`` in file order (an empty list when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_sinks(out_dir: str | Path, *, jsonl: bool = True, tensorboard: bool = True) -> MultiSink:
    """The run's sinks: ``out_dir/metrics.jsonl`` and TensorBoard events under ``out_dir/tensorboard``.

    A missing tensorboard package is not fatal here: the TensorBoard sink is dropped with a warning.
    """
    out = Path(out_dir)
    sinks: list[MetricsSink] = []
    if jsonl:
        sinks.append(JsonlSink(out / "metrics.jsonl"))
    if tensorboard:
        try:
            sinks.append(TensorBoardSink(out / "tensorboard"))
        except ImportError as exc:
            logger.warning("TensorBoard logging disabled: %s", exc)
    return MultiSink(sinks)


class StageTimer:
    """Accumulates wall-clock seconds per named stage.

    Example::

        timer = StageTimer()
        with timer.stage("rollout"):
            ...
        sink.log(timer.as_metrics(), step)   # {"timing/rollout_s": 12.3}
        timer.reset()

    Args:
        clock: Seconds counter (``time.perf_counter`` by default; injectable for tests).
        sync: Called before reading the clock at both ends of a stage, e.g. ``torch.cuda.synchronize`` so that
            queued GPU work is charged to the stage that launched it.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None
    ) -> None:
        self._clock = clock
        self._sync = sync
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` body; repeated stages of the same name add up (also when the body raises)."""
        if self._sync is not None:
            self._sync()
        start = self._clock()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + (self._clock() - start)

    def as_metrics(self, prefix: str = "timing/") -> dict[str, float]:
        """``{f"{prefix}{name}_s": seconds}`` for every stage seen since the last reset."""
        return {f"{prefix}{name}_s": s for name, s in self.seconds.items()}

    def reset(self) -> None:
        self.seconds = {}


def eta_seconds(step_seconds: Sequence[float], steps_left: int) -> float | None:
    """Mean step time times the steps left; None before any step has been timed."""
    if not step_seconds:
        return None
    return sum(step_seconds) / len(step_seconds) * max(steps_left, 0)


def format_duration(seconds: float | None) -> str:
    """``"1h02m03s"``, ``"4m05s"`` or ``"6s"``; ``"?"`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class ProgressLine:
    """A tqdm bar over training steps whose postfix shows a few metrics and the ETA.

    The ETA is the mean time of the steps seen by this object times the steps left, so time spent before a resume
    (or loading) does not distort it.

    Args:
        total_steps: Last step (exclusive) of the run.
        start_step: First step of this process (after a resume).
        keys: Metrics shown in the postfix when present, in this order.
        disable: No bar at all (e.g. off the main process, or logging to a file).
        clock: Seconds counter (injectable for tests).
    """

    def __init__(
        self,
        total_steps: int,
        *,
        start_step: int = 0,
        keys: Sequence[str] = ("rollout/success_rate", "train/loss", "sdar/gate_mean"),
        disable: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        from tqdm.auto import tqdm

        self.total_steps = total_steps
        self.step = start_step
        self.keys = tuple(keys)
        self._clock = clock
        self._last = clock()
        self.step_seconds: list[float] = []
        self.postfix: dict[str, str] = {}
        """What the bar shows after the last update (short metric names and ``eta``)."""
        self._bar = tqdm(total=total_steps, initial=start_step, disable=disable, dynamic_ncols=True, unit="step")

    @property
    def eta_s(self) -> float | None:
        return eta_seconds(self.step_seconds, self.total_steps - self.step)

    def update(self, metrics: Mapping[str, float] | None = None) -> None:
        """Mark one step done and refresh the postfix."""
        now = self._clock()
        self.step_seconds.append(now - self._last)
        self._last = now
        self.step += 1
        postfix = {k.rsplit("/", 1)[-1]: f"{float(metrics[k]):.4g}" for k in self.keys if metrics and k in metrics}
        postfix["eta"] = format_duration(self.eta_s)
        self.postfix = postfix
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _console_write(line: str) -> None:
    """Print ``line`` to stderr without tearing an active tqdm bar (tqdm redraws the bar below the line)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; plain stderr is enough without it
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return
    tqdm.write(line, file=sys.stderr)


def rollout_eta(p: TurnProgress) -> float | None:
    """Seconds left if every remaining turn up to ``max_turns`` takes the mean time of the turns so far.

    An upper-bound style estimate: episodes that end early make later turns smaller and faster, and the collection
    stops as soon as none is left. None before a turn is done."""
    done = p.turn + 1
    if done <= 0:
        return None
    if p.active == 0:
        return 0.0
    return p.seconds / done * max(p.max_turns - done, 0)


def format_rollout(p: TurnProgress, label: str = "rollout") -> str:
    """``"rollout: turn 3/8, 24/32 episodes active, 1,234 tokens, 95 tok/s, ETA ~40s"``."""
    rate = p.tokens / p.seconds if p.seconds > 0 else 0.0
    return (f"{label}: turn {p.turn + 1}/{p.max_turns}, {p.active}/{p.total} episodes active, {p.tokens:,} tokens, "
            f"{rate:,.0f} tok/s, ETA ~{format_duration(rollout_eta(p))}")


class RolloutProgress:
    """A ``collect_episodes(progress=...)`` callback that prints one status line at most every ``interval_s``.

    The first line comes only once ``interval_s`` has passed since this object was made, so a collection that is
    over in less time prints nothing (tests, quick runs); a long one shows a line every ``interval_s`` or so instead
    of a frozen screen. Make one per collection (or call ``restart``) so that the delay counts from its start.

    Args:
        label: Line prefix, e.g. ``"rollout"`` or ``"eval before"``.
        interval_s: Minimum seconds between lines (and before the first).
        clock: Seconds counter (injectable for tests).
        write: Receives each finished line (default: stderr, cooperating with tqdm bars).
    """

    def __init__(
        self,
        label: str = "rollout",
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] | None = None,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.label = label
        self.interval_s = interval_s
        self._clock = clock
        self._write = write or _console_write
        self._last = clock()
        self.lines: int = 0
        """Lines printed so far."""

    def restart(self) -> None:
        """Count the delay of the next line from now (reuse for another collection)."""
        self._last = self._clock()

    def __call__(self, p: TurnProgress) -> None:
        now = self._clock()
        if now - self._last < self.interval_s:
            return
        self._last = now
        self.lines += 1
        self._write(format_rollout(p, self.label))


# --------------------------------------------------------------------------------------------- reading a run
def load_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``run_dir/metrics.jsonl`` sorted by step; a step logged twice (a resumed run repeats the steps after
    its last checkpoint) keeps its last row."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in read_metrics(Path(run_dir) / "metrics.jsonl"):
        by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def series(rows: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """(steps, values × scale) of the rows that logged a finite ``key``."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is not None and math.isfinite(float(v)):
            xs.append(float(r["step"]))
            ys.append(float(v) * scale)
    return xs, ys


def final_and_best(rows: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> dict[str, float] | None:
    """``{"final", "final_step", "best", "best_step"}`` of ``key`` (the earliest step wins a tie); None if absent."""
    xs, ys = series(rows, key, scale)
    if not xs:
        return None
    best = max(range(len(ys)), key=lambda i: (ys[i], -xs[i]))
    return {"final": ys[-1], "final_step": xs[-1], "best": ys[best], "best_step": xs[best]}


def last_n_means(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], n: int = 10) -> dict[str, float]:
    """Mean of each key over the last ``n`` rows that logged it."""
    out = {}
    for key in keys:
        _, ys = series(rows, key)
        if ys:
            out[key] = sum(ys[-n:]) / len(ys[-n:])
    return out


def stage_seconds(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean seconds per step of every ``timing/<stage>_s`` metric (``step`` is the whole step)."""
    keys = sorted({k for r in rows for k in r if k.startswith("timing/") and k.endswith("_s")})
    out = {}
    for key in keys:
        _, ys = series(rows, key)
        if ys:
            out[key.removeprefix("timing/").removesuffix("_s")] = sum(ys) / len(ys)
    return out

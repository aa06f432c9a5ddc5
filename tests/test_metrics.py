"""Metric sinks (JSONL, TensorBoard, fan-out), the stage timer and the ETA arithmetic."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from sdar.metrics import (
    JsonlSink,
    MultiSink,
    ProgressLine,
    RolloutProgress,
    StageTimer,
    TensorBoardSink,
    build_sinks,
    eta_seconds,
    format_duration,
    format_rollout,
    rollout_eta,
)
from sdar.rollout.collect import TurnProgress


class FakeClock:
    def __init__(self, *ticks: float) -> None:
        self.ticks = list(ticks)

    def __call__(self) -> float:
        return self.ticks.pop(0)


class ListSink:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], int]] = []
        self.closed = False

    def log(self, metrics, step):
        self.calls.append((dict(metrics), step))

    def close(self):
        self.closed = True


def test_jsonl_lines_have_step_time_and_values(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    sink = JsonlSink(path, clock=FakeClock(100.0, 101.5))
    sink.log({"train/loss": 0.25, "rollout/success_rate": 1}, step=0)
    # the line is flushed immediately: readable before close
    assert json.loads(path.read_text().splitlines()[0]) == {
        "step": 0,
        "time": 100.0,
        "train/loss": 0.25,
        "rollout/success_rate": 1.0,
    }
    sink.log({"train/loss": float("nan"), "x": float("inf")}, step=1)
    sink.close()
    assert json.loads(path.read_text().splitlines()[1]) == {"step": 1, "time": 101.5, "train/loss": None, "x": None}
    # a resumed run appends to the same file
    again = JsonlSink(path, clock=FakeClock(200.0))
    again.log({"train/loss": 0.5}, step=2)
    again.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_tensorboard_sink_writes_an_event_file(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb")
    sink.log({"train/loss": 0.5, "timing/rollout_s": 2.0}, step=3)
    sink.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    (event,) = acc.Scalars("train/loss")
    assert (event.step, event.value) == (3, 0.5)


def test_missing_tensorboard_gives_clear_error_and_build_sinks_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` raise ImportError
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardSink(tmp_path / "tb")
    with caplog.at_level(logging.WARNING, logger="sdar.metrics"):
        sinks = build_sinks(tmp_path, jsonl=True, tensorboard=True)
    assert "TensorBoard logging disabled" in caplog.text
    assert [type(s).__name__ for s in sinks.sinks] == ["JsonlSink"]
    sinks.log({"a": 1.0}, step=0)
    sinks.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["a"] == 1.0


def test_build_sinks_with_both_and_multisink_fan_out(tmp_path):
    sinks = build_sinks(tmp_path)
    assert [type(s).__name__ for s in sinks.sinks] == ["JsonlSink", "TensorBoardSink"]
    sinks.close()
    a, b = ListSink(), ListSink()
    multi = MultiSink([a, b])
    multi.log({"x": 1.0}, step=5)
    multi.close()
    assert a.calls == b.calls == [({"x": 1.0}, 5)]
    assert a.closed and b.closed


def test_stage_timer_adds_up_repeated_stages():
    # rollout 10 -> 12 (2 s), update 12 -> 15 (3 s), rollout 15 -> 16 (1 s) -> rollout 3 s in total
    syncs = []
    timer = StageTimer(clock=FakeClock(10.0, 12.0, 12.0, 15.0, 15.0, 16.0), sync=lambda: syncs.append(1))
    with timer.stage("rollout"):
        pass
    with timer.stage("update"):
        pass
    with pytest.raises(RuntimeError):
        with timer.stage("rollout"):
            raise RuntimeError("boom")  # still timed
    assert timer.as_metrics() == {"timing/rollout_s": 3.0, "timing/update_s": 3.0}
    assert len(syncs) == 6  # before and after every stage
    timer.reset()
    assert timer.as_metrics() == {}


def test_eta_arithmetic_and_formatting():
    assert eta_seconds([2.0, 4.0], steps_left=10) == 30.0  # mean 3 s x 10 steps
    assert eta_seconds([], steps_left=10) is None
    assert eta_seconds([5.0], steps_left=-3) == 0.0
    assert format_duration(3723) == "1h02m03s"
    assert format_duration(245) == "4m05s"
    assert format_duration(6.4) == "6s"
    assert format_duration(None) == "?"


def test_progress_line_eta_uses_mean_step_time_of_this_process():
    # resumed at step 2 of 10; steps take 1, 2 and 3 s -> mean 2 s, 5 steps left -> ETA 10 s
    bar = ProgressLine(10, start_step=2, disable=True, clock=FakeClock(0.0, 1.0, 3.0, 6.0))
    assert bar.eta_s is None
    for loss in (0.3, 0.2, 0.1):
        bar.update({"train/loss": loss, "other": 1.0})
    assert bar.step == 5
    assert bar.step_seconds == [1.0, 2.0, 3.0]
    assert bar.eta_s == 10.0
    assert bar.postfix == {"loss": "0.1", "eta": "10s"}  # keys absent from the metrics are left out
    bar.close()


def tick(turn: int, *, active: int = 24, total: int = 32, tokens: int = 1234, seconds: float = 13.0,
         max_turns: int = 8) -> TurnProgress:
    return TurnProgress(turn=turn, max_turns=max_turns, active=active, finished=total - active, total=total,
                        tokens=tokens, seconds=seconds)


def test_rollout_line_shows_turns_episodes_tokens_rate_and_eta():
    # 3 of 8 turns took 13 s -> ~4.33 s per turn, 5 turns left -> ~22 s; 1234 tokens / 13 s -> 95 tok/s
    assert format_rollout(tick(2)) == "rollout: turn 3/8, 24/32 episodes active, 1,234 tokens, 95 tok/s, ETA ~22s"
    assert format_rollout(tick(7, active=0, seconds=40.0), "eval").startswith("eval: turn 8/8, 0/32 episodes")
    assert rollout_eta(tick(2)) == pytest.approx(13.0 / 3 * 5)
    assert rollout_eta(tick(3, active=0)) == 0.0  # nothing left to run: the collection is over
    assert rollout_eta(tick(7)) == 0.0  # at the turn limit
    assert "0 tok/s" in format_rollout(tick(0, tokens=0, seconds=0.0))


def test_rollout_progress_throttles_with_an_injected_clock():
    lines: list[str] = []
    # made at t=0; turns end at t=3, 9.9, 10, 15, 19.9, 20.5, 50
    clock = FakeClock(0.0, 3.0, 9.9, 10.0, 15.0, 19.9, 20.5, 50.0)
    printer = RolloutProgress("measure before", interval_s=10.0, clock=clock, write=lines.append)
    for turn in range(7):
        printer(tick(turn, max_turns=15))
    # nothing before the first interval; then at most one line per interval
    assert [line.split(",")[0] for line in lines] == [
        "measure before: turn 3/15", "measure before: turn 6/15", "measure before: turn 7/15"]
    assert printer.lines == 3


def test_rollout_progress_is_silent_for_a_fast_collection_and_restarts():
    lines: list[str] = []
    clock = FakeClock(0.0, 1.0, 2.0, 100.0, 105.0)
    printer = RolloutProgress(interval_s=10.0, clock=clock, write=lines.append)
    printer(tick(0))
    printer(tick(1))
    assert lines == []
    printer.restart()  # t=100: a new collection counts its delay from here
    printer(tick(0))  # t=105
    assert lines == []
    with pytest.raises(ValueError, match="interval_s"):
        RolloutProgress(interval_s=-1)


def test_rollout_progress_writes_to_stderr_by_default(capsys):
    printer = RolloutProgress("rollout", interval_s=0.0)
    printer(tick(2))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "rollout: turn 3/8, 24/32 episodes active, 1,234 tokens, 95 tok/s, ETA ~22s"

"""`sdar eval`: interval arithmetic, metric definitions, table layout, panel determinism and a tiny checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sdar.config import ConfigError, load_config
from sdar.commands.evaluate import (
    EpisodeOutcome,
    EvalResult,
    ci_note,
    episode_intervals,
    eval_config,
    evaluate_model,
    load_policy_weights,
    main,
    metrics_of,
    parse_overrides,
    read_result,
    resolve_target,
    summarise_seeds,
    table_columns,
)
from sdar.learner.checkpoint import latest_checkpoint, load_checkpoint
from sdar.intervals import Interval, markdown_table, seed_interval, t_quantile

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"
FAST = {"env.max_turns": 1, "rollout.max_new_tokens": 4, "rollout.tasks_per_step": 1, "eval_tasks": 3,
        "log.sample_every": 0, "total_steps": 1}


def out(task_type: str, won: bool, **kw) -> EpisodeOutcome:
    return EpisodeOutcome(task_id=f"{task_type}-0", task_type=task_type, seed=0, won=won, turns=1, **kw)


# ------------------------------------------------------------------------------------------------- statistics
def test_t_quantiles_match_the_table():
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=5e-4)
    assert t_quantile(0.975, 10) == pytest.approx(2.228, abs=5e-4)
    assert t_quantile(0.025, 2) == pytest.approx(-4.303, abs=5e-4)
    assert t_quantile(0.5, 7) == 0.0
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_seed_interval_by_hand():
    # [0.5, 0.7, 0.6]: mean 0.6, sd = sqrt((0.01 + 0.01 + 0) / 2) = 0.1, half-width 4.303 * 0.1 / sqrt(3) = 0.2484
    iv = seed_interval([0.5, 0.7, 0.6])
    assert iv.mean == pytest.approx(0.6)
    assert iv.half_width == pytest.approx(0.2484, abs=1e-4)
    assert (iv.n, iv.method) == (3, "t")
    one = seed_interval([0.3])
    assert one.mean == 0.3 and math.isnan(one.half_width) and one.method == "none"


def test_binomial_interval_over_episodes():
    # 1 of 4 won: p = 25 %, SE = sqrt(25 * 75 / 4) = 21.65, half-width 1.96 * 21.65 = 42.44
    outs = [out("pick", True), out("pick", False), out("look", False), out("look", False)]
    iv = episode_intervals(outs, "alfworld")
    assert iv["success"].mean == pytest.approx(25.0)
    assert iv["success"].half_width == pytest.approx(1.959964 * math.sqrt(25 * 75 / 4), abs=1e-3)
    assert iv["success"].half_width == pytest.approx(42.44, abs=0.01)
    assert (iv["success"].method, iv["success"].n) == ("binomial", 4)
    assert iv["success/pick"].mean == 50.0 and iv["success/look"].mean == 0.0


def test_search_average_is_the_mean_over_data_sets():
    # nq: EM [1, 0] -> 50 %; hotpotqa: EM [1, 1, 1, 0] -> 75 %; average 62.5 (pooled would be 66.7)
    outs = [out("nq", True, em=1.0, f1=1.0), out("nq", False, em=0.0, f1=0.5)]
    outs += [out("hotpotqa", True, em=1.0, f1=1.0)] * 3 + [out("hotpotqa", False, em=0.0, f1=0.0)]
    m = metrics_of(outs, "search")
    assert m["em/nq"] == 50.0 and m["em/hotpotqa"] == 75.0 and m["em/avg"] == pytest.approx(62.5)
    assert m["f1/nq"] == 75.0 and m["f1/avg"] == pytest.approx((75.0 + 75.0) / 2)
    # SE of the average: sqrt(SE_nq² + SE_hotpot²) / 2 = sqrt(50*50/2 + 75*25/4) / 2 = sqrt(1718.75) / 2 = 20.729
    iv = episode_intervals(outs, "search")["em/avg"]
    assert iv.half_width == pytest.approx(1.959964 * math.sqrt(1718.75) / 2, abs=1e-3)


def test_webshop_score_and_acc():
    # scores 1.0, 0.5, 0.0 -> 100, 50, 0: mean 50, sd 50, SE 50/sqrt(3) = 28.87, half-width 56.58; acc 1 of 3
    outs = [out("fashion", True, score=1.0), out("fashion", False, score=0.5), out("beauty", False, score=0.0)]
    iv = episode_intervals(outs, "webshop")
    assert iv["score"].mean == pytest.approx(50.0)
    assert iv["score"].half_width == pytest.approx(1.959964 * 50 / math.sqrt(3), abs=1e-3)
    assert iv["score"].method == "normal"
    assert iv["acc"].mean == pytest.approx(100 / 3)


def test_several_seeds_use_the_t_interval():
    # seed metrics 50, 70, 60 (percent): mean 60, half-width 4.303 * 10 / sqrt(3) = 24.84
    runs = [[out("pick", True)] * k + [out("pick", False)] * (10 - k) for k in (5, 7, 6)]
    s = summarise_seeds(runs, "toy")
    assert s["success"].mean == pytest.approx(60.0)
    assert s["success"].half_width == pytest.approx(24.84, abs=0.01)
    assert s["success"].method == "t" and s["success"].n == 3


def test_bounded_summary_stays_within_the_metric_range():
    # one seed, 3 of 10 won: Wilson interval, 30.0 [10.8, 60.3] % (hand arithmetic in test_report.py)
    one = summarise_seeds([[out("pick", True)] * 3 + [out("pick", False)] * 7], "toy", bounded=True)
    assert one["success"].method == "wilson" and one["success"].n == 10
    assert one["success"].cell() == "30.0 [10.8, 60.3]"
    assert "Wilson score interval" in ci_note(one)
    # two seeds at 50 % and 75 %: the t-interval was 62.5 ± 158.8; the bootstrap stays within [0, 100]
    runs = [[out("pick", True)] * 2 + [out("pick", False)] * 2, [out("pick", True)] * 3 + [out("pick", False)]]
    two = summarise_seeds(runs, "toy", bounded=True)["success"]
    assert two.method == "bootstrap" and two.n == 2 and two.mean == pytest.approx(62.5)
    assert 0.0 <= two.lo <= two.mean <= two.hi <= 100.0
    note = ci_note({"success": two})
    assert "bootstrap over 2 seeds and the episodes within each seed" in note and "2000 resamples" in note
    # all won / all lost: the interval collapses onto 100 / 0 instead of leaving the range
    won = summarise_seeds([[out("pick", True)] * 4] * 3, "toy", bounded=True)["success"]
    lost = summarise_seeds([[out("pick", False)] * 4] * 3, "toy", bounded=True)["success"]
    assert (won.lo, won.hi) == (100.0, 100.0) and (lost.lo, lost.hi) == (0.0, 0.0)
    # a continuous metric of one seed (WebShop score) is bootstrapped over its episodes, also within [0, 100]
    shop = summarise_seeds([[out("a", True, score=1.0), out("a", False, score=0.5), out("b", False, score=0.0)]],
                           "webshop", bounded=True)
    assert shop["score"].method == "bootstrap" and 0.0 <= shop["score"].lo <= shop["score"].hi <= 100.0
    assert shop["acc"].method == "wilson"


def test_table_columns_follow_the_paper():
    keys = ["success/pick_two_obj_and_place", "success", "success/pick_and_place_simple",
            "success/look_at_obj_in_light"]
    assert table_columns("alfworld", keys) == [("success/pick_and_place_simple", "Pick"),
                                               ("success/look_at_obj_in_light", "Look"),
                                               ("success/pick_two_obj_and_place", "Pick2"), ("success", "ALF Avg")]
    keys = ["em/bamboogle", "em/nq", "em/avg", "f1/nq", "success"]
    assert table_columns("search", keys) == [("em/nq", "NQ"), ("em/bamboogle", "Bamboogle"), ("em/avg", "SQA Avg")]
    assert table_columns("webshop", ["acc", "score", "success"]) == [("score", "WS Score"), ("acc", "WS Acc")]


def test_markdown_table_format():
    rows = [("SDAR", {"a": Interval(84.44, 2.06, 3, "t"), "b": Interval(50.0, float("nan"), 1, "none")}),
            ("GRPO", {"a": Interval(75.0, 0.0, 3, "t")})]
    text = markdown_table(rows, [("a", "ALF Avg"), ("b", "WS Acc")])
    assert text == ("| Method | ALF Avg | WS Acc |\n"
                    "|---|---:|---:|\n"
                    "| SDAR | 84.4 ± 2.1 | 50.0 |\n"
                    "| GRPO | 75.0 ± 0.0 | – |")


def test_result_json_round_trip():
    r = EvalResult(label="sdar", env="toy", model="m", checkpoint=None, step=None, eval_with_skills=False,
                   temperature=0.4, panel=(("pick-0", "pick", 7),), outcomes={3: (out("pick", True),)})
    back = EvalResult.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r and back.seeds == (3,)


# ------------------------------------------------------------------------------------------------ command line
def test_parse_overrides_splits_config_keys():
    rest, ov = parse_overrides(["run", "--model.name", "tiny-random", "--seeds", "0", "1", "--eval_temperature=0",
                                "--optim.lr", "1e-4", "--eval-with-skills", "--rollout.group-size", "4"],
                               ("seeds", "eval-with-skills"))
    assert rest == ["run", "--seeds", "0", "1", "--eval-with-skills"]
    assert ov == {"model.name": "tiny-random", "eval_temperature": 0, "optim.lr": 1e-4, "rollout.group_size": 4}
    with pytest.raises(ConfigError):
        parse_overrides(["--device"], ())


def test_resolve_target_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        resolve_target(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_target(tmp_path)


def test_base_model_needs_a_preset(capsys):
    assert main([]) == 2
    assert "--config PRESET" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from sdar.commands.train import train

    run = tmp_path_factory.mktemp("eval") / "run"
    train(load_config(SMOKE, overrides={**FAST, "out_dir": str(run)}))
    return run


def test_eval_of_a_checkpoint_end_to_end(tiny_run, tmp_path):
    assert main([str(tiny_run), "--seeds", "0", "1", "--out", str(tmp_path / "ev")]) == 0
    result = read_result(tmp_path / "ev")
    ckpt = latest_checkpoint(tiny_run / "checkpoints")
    assert result.checkpoint == str(ckpt) and result.step == 0 and result.label == "sdar"
    assert result.seeds == (0, 1) and len(result.panel) == 3
    assert all(len(outs) == 3 for outs in result.outcomes.values())
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert data["summary"]["success"]["method"] == "t" and data["summary"]["success"]["n"] == 2
    md = (tmp_path / "ev" / "eval.md").read_text()
    assert "| Method | pick_and_place" in md and "t-distribution over 2 seeds" in md


def test_panel_is_fixed_across_evaluations_and_methods(tiny_run, tmp_path):
    ckpt = latest_checkpoint(tiny_run / "checkpoints")
    run_cfg = load_config(tiny_run / "config.yaml")
    first = evaluate_model(eval_config(run_cfg, out_dir=tmp_path / "a"), checkpoint=ckpt, seeds=[5])
    again = evaluate_model(eval_config(run_cfg, out_dir=tmp_path / "b"), checkpoint=ckpt, seeds=[5])
    assert first.panel == again.panel and first.outcomes == again.outcomes  # same model and seed: same episodes
    other = load_config(SMOKE, overrides={**FAST, "algo.method": "grpo", "seed": 3, "out_dir": str(tmp_path / "c")})
    base = evaluate_model(eval_config(other, out_dir=tmp_path / "c"), seeds=[1, 2], label="vanilla")
    assert base.panel == first.panel and base.panel_hash == first.panel_hash
    ids = [(o.task_id, o.seed) for o in base.outcomes[1]]
    assert ids == [(t, s) for t, _, s in first.panel] == [(o.task_id, o.seed) for o in base.outcomes[2]]
    assert len({s for _, _, s in first.panel}) == 3  # one episode seed per panel task


def test_checkpoint_weights_are_loaded(tiny_run):
    from sdar.models import load_model

    model = load_model("tiny-random")
    ckpt = latest_checkpoint(tiny_run / "checkpoints")
    assert load_policy_weights(model, ckpt) == 0
    state, _ = load_checkpoint(ckpt, restore_rng=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    fresh = load_model("tiny-random").state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in model.state_dict().items())

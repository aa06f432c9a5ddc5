"""bench/step_model.py: the stage arithmetic, checked against the reference run it is compared with."""

from __future__ import annotations


import pytest

from bench_module import load_bench

@pytest.fixture(scope="module")
def model():
    return load_bench("step_model")


def test_the_reference_runs_own_utilisation_gives_back_its_no_grad_and_update_stages(model):
    # the reference step's utilisation, computed from its own stage times: forward 2N x 3.83M tokens in 179 s on
    # 4 x 312 TFLOPs is 10.6%, the update 6N x 3.83M in 774 s is 7.4%; priced with them, the model must land on
    # the reference's old-log-prob, reference and update times (the teacher's extra tokens are an assumption)
    cluster = model.Cluster(gpus=4, peak_tflops=312.0, forward_mfu=0.106, update_mfu=0.074)
    got = model.stages(model.Shape(), model.Workload(), cluster, checkpointing=False)
    for stage in ("old log-probs", "reference", "update"):
        assert got[stage] == pytest.approx(model.REFERENCE[stage], rel=0.05), stage
    assert got["teacher"] == pytest.approx(model.REFERENCE["teacher"], rel=0.10)


def test_switches_remove_their_passes_and_checkpointing_costs_a_third_more(model):
    shape, work, cluster = model.Shape(), model.Workload(), model.Cluster()
    full = model.stages(shape, work, cluster)
    lean = model.stages(shape, work, cluster, kl=False, recompute_old=False, checkpointing=False)
    assert lean["reference"] == 0.0 and lean["old log-probs"] == 0.0 and full["reference"] > 0
    assert full["update"] == pytest.approx(lean["update"] * 4 / 3)
    doubled = model.stages(shape, work, model.Cluster(gpus=16))
    assert doubled["update"] == pytest.approx(full["update"] / 2)


def test_the_script_prints_the_table(model, capsys):
    assert model.main(["--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "| update |" in out and "| **total** |" in out and "1816" in out

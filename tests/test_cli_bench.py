"""``aevis bench --json``: one JSON object with the fields the extraction issue names."""

import json

import pytest

from tensorboard_plugin_aevis.cli import main


def test_bench_prints_one_json_object(capsys):
    code = main(["bench", "--json", "--model", "resnet18", "--size", "64", "--steps", "3", "--candidates", "2",
                 "--batched-steps", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "resnet18" and result["threads"] >= 1
    # 3 chain stages of one image, 3 steps each (no early stop in 3 steps), plus 3 where the stage's fit was
    # refitted (a fit that lost its label at its last step: where that happens depends on the CPU's rounding)
    assert len(result["stage_steps"]) == 3 and all(s in (3, 6) for s in result["stage_steps"])
    assert result["steps"] == sum(result["stage_steps"])
    assert result["limit_seconds"] == pytest.approx(result["steps"] * result["step_seconds"], rel=1e-2, abs=2e-3)
    # the printed seconds are rounded to 1 ms, the ratios computed before rounding
    assert result["overhead_ratio"] == pytest.approx(result["extract_seconds"] / result["limit_seconds"], rel=5e-2)
    assert result["batched_speedup"] == pytest.approx(result["one_by_one_seconds"] / result["batched_seconds"], rel=5e-2)
    assert result["label_preserved"] is True
    assert len(result["kept_fraction"]) == 3 and all(0 <= k <= 1 for k in result["kept_fraction"])


def test_bench_rejects_a_bad_count(capsys):
    assert main(["bench", "--steps", "0"]) != 0
    assert "--steps must be a positive integer" in capsys.readouterr().err


def test_stage_steps_count_each_batched_fit_of_a_stage():
    from tensorboard_plugin_aevis.commands.bench import _stage_steps

    fits = [{"fit": 10, "tempered": None, "plain": None}, {"fit": 25, "tempered": 40, "plain": 12},
            {"fit": 30, "tempered": None, "plain": 20}]
    params = {"fit_steps": fits}
    # the batched first fit ran 30 steps, the tempered refit of example 1 40, the plain refit of 1 and 2 another 20
    assert _stage_steps(params, [0, 1, 2]) == 30 + 40 + 20
    assert _stage_steps(params, [0, 2]) == 30 + 20
    assert _stage_steps(params, [0]) == 10

"""The pure helpers of ``benchmarks/vs_trl_learning.py`` (the benchmark itself needs TRL and is run by hand)."""

import pytest

from benchmarks.vs_trl_learning import (
    compare,
    eval_points,
    first_reaching,
    markdown,
    mean_phases,
    ratio,
    step_seconds,
    training_rows,
)
from lit_rl.data import ResumableBatches


def test_training_rows_are_what_lit_rl_loader_yields_across_epochs():
    rows = [{"prompt": f"p{i}", "meta": {"target": i}} for i in range(10)]
    got = training_rows(rows, batch_size=4, steps=5, seed=3)           # 2 batches per epoch: crosses two epochs
    loader, want = ResumableBatches(rows, 4, 3), []
    for _ in range(3):                                                  # the epochs Lightning would start
        want += [p for batch in loader for p in batch["prompt"]]
    assert [r["prompt"] for r in got] == want[:20]
    assert all(r["meta"] == {"target": int(r["prompt"][1:])} for r in got)     # rows stay whole
    assert [r["prompt"] for r in got[:8]] != [r["prompt"] for r in got[8:16]]  # a new permutation per epoch


def test_eval_points():
    assert eval_points(200, 50) == [0, 50, 100, 150, 200]
    assert eval_points(120, 50) == [0, 50, 100, 120]                    # the last step is always evaluated
    assert eval_points(2, 1) == [0, 1, 2]
    assert eval_points(3, 0) == [0, 3]


def test_first_reaching_and_ratio():
    curve = [{"step": 0, "seconds": 0.0, "accuracy": 0.1}, {"step": 50, "seconds": 20.0, "accuracy": 0.3},
             {"step": 100, "seconds": 40.0, "accuracy": 0.25}]
    assert first_reaching(curve, 0.3)["step"] == 50
    assert first_reaching(curve, 0.31) is None
    assert first_reaching(curve, 0.05)["step"] == 0
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None and ratio(1.0, None) is None


def test_step_seconds_skips_the_warm_up_step():
    assert step_seconds([5.0, 7.0, 9.0]) == pytest.approx(2.0)          # steps of 5, 2, 2 s
    assert step_seconds([5.0]) == 5.0
    assert mean_phases([{"time/generate": 9.0}, {"time/generate": 1.0}, {"time/generate": 3.0, "x": 4.0}]) == \
        {"time/generate": 2.0, "x": 4.0}
    assert mean_phases([]) == {}


def test_compare_uses_trl_final_accuracy_as_the_default_target():
    def result(accuracies, seconds, order="a"):
        curve = [{"step": 10 * i, "seconds": s, "accuracy": a} for i, (a, s) in enumerate(zip(accuracies, seconds))]
        return {"curve": curve, "accuracy_before": accuracies[0], "accuracy_after": accuracies[-1],
                "train_seconds": seconds[-1], "seconds_per_step": seconds[-1] / 20, "peak_rss": 2**30,
                "prompt_order": order, "phases": {}}

    results = {"trl": result([0.1, 0.2, 0.4], [0.0, 10.0, 20.0]), "lit-rl": result([0.1, 0.4, 0.5], [0.0, 5.0, 10.0])}
    c = compare(results, None)
    assert c["target"] == 0.4 and c["same_prompt_order"]
    assert c["reached"]["lit-rl"]["step"] == 10 and c["reached"]["trl"]["step"] == 20
    assert c["ratios"]["time to target"] == pytest.approx(5.0 / 20.0)
    assert c["ratios"]["training time"] == pytest.approx(0.5)
    assert c["ratios"]["final accuracy"] == pytest.approx(1.25)
    c = compare(results, 0.45)
    assert c["reached"]["trl"] is None and c["ratios"]["time to target"] is None
    table = markdown({"grpo": results}, {"grpo": c})
    assert "| grpo | trl |" in table and "not reached" in table and "0.50x" in table

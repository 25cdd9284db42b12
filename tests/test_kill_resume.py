"""kill -9 at a random step of a real ``lit-rl`` process, then resume: the uninterrupted run's weights,
optimizer state and metrics.csv rows (``generate``: its bytes). The full sweep (RL, offline, ERPD, generate,
several seeds) is ``benchmarks/resume_sweep.py``; these are one seed each of the quickest kinds, of multi-turn
episodes and of PPO with a separate critic (its weights and its optimizer state are compared with the policy's)."""

import pytest

from benchmarks.resume_sweep import sweep_one


@pytest.mark.parametrize("kind, seed", [("rl", 3), ("multiturn", 3), ("generate", 3), ("critic", 3)])
def test_a_killed_run_resumes_to_the_uninterrupted_one(kind, seed, tmp_path):
    result = sweep_one(kind, seed, tmp_path / kind, steps=4)
    assert result["resumed_from"] != "scratch (no checkpoint yet)"
    assert result["differs"] == [], result

"""pass@k and mean@k: golden numbers derived by hand, a differential test against ``math.comb``, and validation
with ``val_samples`` samples per held-out prompt (overall and per ``data_source``)."""

import json
import math
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.testing import assert_close

from lit_rl import RLOO, CountdownData, PromptData, RewardFunction, Score
from lit_rl.objectives import mean_at_k, pass_at_k
from lit_rl.rollout import Sampling

from conftest import VAL

SAMPLED = Sampling(temperature=1.0, max_new_tokens=8)


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 2, 0.7),          # 1 - C(3, 2) / C(5, 2) = 1 - 3 / 10
    (4, 0, 2, 0.0),          # no correct sample: C(4, 2) / C(4, 2) = 1
    (4, 4, 2, 1.0),          # n - c = 0 < k
    (4, 3, 2, 1.0),          # n - c = 1 < k: every pair holds a correct sample
    (4, 1, 4, 1.0),          # n == k: any correct sample
    (4, 0, 4, 0.0),
    (10, 3, 1, 0.3),         # k = 1: c / n
    (6, 1, 3, 0.5),          # 1 - C(5, 3) / C(6, 3) = 1 - 10 / 20
])
def test_pass_at_k_golden(n, c, k, expected):
    got = pass_at_k(torch.tensor([n], dtype=torch.float64), torch.tensor([c], dtype=torch.float64), k)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_per_problem_and_k1_is_c_over_n():
    n, c = torch.tensor([5, 4, 4, 10]), torch.tensor([2, 0, 4, 3])
    assert_close(pass_at_k(n, c, 2), torch.tensor([0.7, 0.0, 1.0, 1 - 21 / 45]), rtol=0, atol=1e-6)  # C(7,2)/C(10,2)
    assert_close(pass_at_k(n, c, 1), c / n, rtol=0, atol=1e-6)
    assert pass_at_k(n, c, 2).dtype == torch.get_default_dtype()        # integer counts


def test_pass_at_k_matches_the_binomial_formula():
    """Differential: ``1 - C(n - c, k) / C(n, k)`` with exact integers, over random (n, c, k)."""
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 60)
        c, k = rng.randint(0, n), rng.randint(1, n)
        naive = 1 - math.comb(n - c, k) / math.comb(n, k)              # math.comb(a, k) = 0 when a < k
        got = pass_at_k(torch.tensor([n], dtype=torch.float64), torch.tensor([c], dtype=torch.float64), k)
        assert got.item() == pytest.approx(naive, rel=1e-12, abs=1e-12), (n, c, k)


def test_mean_at_k_golden():
    n, c = torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64), torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64)
    got = mean_at_k(n, c)
    assert got.dtype == torch.float64
    assert got.tolist() == [0.25, 0.0, 1.0]


def test_pass_at_k_errors():
    n, c = torch.tensor([4, 2]), torch.tensor([1, 1])
    with pytest.raises(ValueError, match="at least k samples"):
        pass_at_k(n, c, 3)                                              # k > n for the second problem
    with pytest.raises(ValueError, match="k >= 1"):
        pass_at_k(n, c, 0)
    with pytest.raises(ValueError, match=r"within \[0, n\]"):
        pass_at_k(torch.tensor([2]), torch.tensor([3]), 1)
    with pytest.raises(ValueError, match="one shape"):
        pass_at_k(torch.tensor([2, 2]), torch.tensor([1]), 1)


class SevenRecorder(RewardFunction):
    """Correct when the completion holds a ``7`` (some samples of a prompt do, some do not, even untrained);
    records every ``(prompt, source, correct)`` it judged, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, bool]] = []

    def score(self, prompts, completions, columns):
        sources = columns.get("data_source", [None] * len(completions))
        out = []
        for prompt, completion, source in zip(prompts, completions, sources, strict=True):
            correct = "7" in completion
            self.calls.append((json.dumps(prompt), source, correct))
            out.append(Score(float(correct), correct=correct))
        return out


def validate(module, datamodule) -> dict[str, float]:
    """One validation pass on CPU, quietly; the logged metrics."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False)
    trainer.validate(module, datamodule=datamodule)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def counts(calls, k: int) -> dict[str | None, tuple[torch.Tensor, torch.Tensor]]:
    """Per source (``None``: all prompts): the per-prompt ``n`` and ``c`` recomputed from the reward's calls."""
    per_prompt: dict[str, list] = defaultdict(list)
    source_of = {}
    for prompt, source, correct in calls:
        per_prompt[prompt].append(correct)
        source_of[prompt] = source
    assert all(len(v) == k for v in per_prompt.values())               # k samples of every prompt, judged once
    out = {}
    for source in {None, *source_of.values()}:
        cs = [sum(v) for p, v in per_prompt.items() if source is None or source_of[p] == source]
        out[source] = (torch.full((len(cs),), float(k)), torch.tensor(cs, dtype=torch.float32))
    return out


def test_validation_logs_pass_at_k_and_mean_at_k_of_what_the_reward_judged(tiny_model_dir):
    """``val_samples=4`` at temperature 1: ``val/pass@4`` is the estimator on the per-prompt correct counts the
    reward saw (with n = k: the share of prompts with a correct sample), ``val/mean@4`` their mean correctness,
    and ``val/accuracy`` (over all samples) equals ``val/mean@4``."""
    torch.manual_seed(0)
    reward = SevenRecorder()
    module = RLOO(model=tiny_model_dir, reward=reward, group_size=2, val_sampling=SAMPLED, val_samples=4)
    dm = CountdownData(batch_size=4, val_batch_size=4, train_size=16, val_size=8)
    metrics = validate(module, dm)
    n, c = counts(reward.calls, 4)[None]
    assert len(n) == 8
    assert 0 < c.sum() < 32 and (c < 4).any() and (c > 0).any(), c    # a mix, so pass@4 and mean@4 differ
    assert metrics["val/pass@4"] == pytest.approx(pass_at_k(n, c, 4).mean().item(), abs=1e-6)
    assert metrics["val/pass@4"] == pytest.approx((c > 0).float().mean().item(), abs=1e-6)   # n == k
    assert metrics["val/mean@4"] == pytest.approx((c / 4).mean().item(), abs=1e-6)
    assert metrics["val/accuracy"] == pytest.approx(metrics["val/mean@4"], abs=1e-6)
    assert metrics["val/pass@4"] > metrics["val/mean@4"]
    assert {key for key in metrics if "@" in key} == {"val/pass@4", "val/mean@4"}   # no data_source column


def test_pass_at_k_per_data_source(tiny_model_dir, tmp_path):
    """Rows with a ``data_source`` column: ``val/pass@4/<source>`` and ``val/mean@4/<source>`` for each source, from
    that source's prompts only; the overall keys cover both."""
    numbers = [(1, 2), (3, 4), (5, 6), (2, 9), (8, 1), (4, 4)]
    rows = [{"prompt": f"Using the numbers [{a}, {b}], create an equation that equals {a + b}.",
             "data_source": "alpha" if i % 2 else "beta"} for i, (a, b) in enumerate(numbers)]
    for name, part in (("train.jsonl", rows[:2]), ("val.jsonl", rows)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    torch.manual_seed(0)
    reward = SevenRecorder()
    module = RLOO(model=tiny_model_dir, reward=reward, group_size=2, val_sampling=SAMPLED, val_samples=4)
    dm = PromptData(str(tmp_path / "train.jsonl"), val_path=str(tmp_path / "val.jsonl"), val_batch_size=4)
    metrics = validate(module, dm)
    per_source = counts(reward.calls, 4)
    assert set(per_source) == {None, "alpha", "beta"}
    for source, (n, c) in per_source.items():
        suffix = "" if source is None else f"/{source}"
        assert metrics[f"val/pass@4{suffix}"] == pytest.approx(pass_at_k(n, c, 4).mean().item(), abs=1e-6), source
        assert metrics[f"val/mean@4{suffix}"] == pytest.approx(mean_at_k(n, c).mean().item(), abs=1e-6), source
    assert len(per_source["alpha"][0]) == len(per_source["beta"][0]) == 3


def test_no_pass_at_k_without_a_notion_of_correctness_nor_with_one_sample(tiny_model_dir):
    """A reward of plain floats logs no pass@k; ``val_samples=1`` (the default) logs none either."""
    class Length(RewardFunction):
        def __call__(self, completion, meta):
            return float(len(completion))

    dm = CountdownData(batch_size=4, val_batch_size=4, train_size=16, val_size=4)
    torch.manual_seed(0)
    metrics = validate(RLOO(model=tiny_model_dir, reward=Length(), group_size=2, val_sampling=SAMPLED,
                            val_samples=4), dm)
    assert "val/reward_mean" in metrics and not any("@" in key for key in metrics)
    metrics = validate(RLOO(model=tiny_model_dir, reward=SevenRecorder(), group_size=2, val_sampling=VAL), dm)
    assert "val/accuracy" in metrics and not any("@" in key for key in metrics)


def test_val_samples_settings_are_checked(tiny_model_dir):
    with pytest.raises(ValueError, match="val_samples must be >= 1"):
        RLOO(model=tiny_model_dir, reward=SevenRecorder(), val_samples=0)
    with pytest.raises(ValueError, match="val_sampling.temperature is 0"):
        RLOO(model=tiny_model_dir, reward=SevenRecorder(), val_sampling=VAL, val_samples=4)


def test_pass_at_k_under_ddp_sums_every_ranks_prompts_and_sources(tiny_model_dir, tmp_path):
    """2 processes (gloo): rank 0 holds rows 0 and 2 (source ``beta``) and rank 1 rows 1 and 3 (``alpha``), so
    each rank sees one source only; every rank logs the global values, derived by hand with ``c = [0, 1, 4, 2]``
    correct of k = 4 samples (the reward marks a prompt's first ``c`` samples correct):
    pass@4 = (0 + 1 + 1 + 1) / 4 = 0.75, mean@4 = (0 + 1/4 + 1 + 1/2) / 4 = 0.4375;
    beta (c = 0, 4): pass 0.5, mean 0.5; alpha (c = 1, 2): pass 1, mean (1/4 + 1/2) / 2 = 0.375."""
    rows = [{"prompt": f"Using the numbers [{i}, 2], create an equation that equals {i + 2}.", "c": c,
             "data_source": "alpha" if i % 2 else "beta"} for i, c in enumerate([0, 1, 4, 2])]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = Path(__file__).with_name("pass_at_k_ddp_run.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(script.parents[1])}
    result = subprocess.run([sys.executable, str(script), tiny_model_dir, str(tmp_path), "2"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    expected = {"val/pass@4": 0.75, "val/mean@4": 0.4375, "val/pass@4/beta": 0.5, "val/mean@4/beta": 0.5,
                "val/pass@4/alpha": 1.0, "val/mean@4/alpha": 0.375}
    for rank in (0, 1):
        metrics = json.loads((tmp_path / f"metrics_{rank}.json").read_text())
        assert {k: v for k, v in metrics.items() if "@" in k} == pytest.approx(expected, abs=1e-6), rank
        assert metrics["val/accuracy"] == pytest.approx(0.4375, abs=1e-6)   # over all 16 samples: 7 correct

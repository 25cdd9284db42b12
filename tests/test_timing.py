"""The phase timer: blocks add to their phase, a step's totals come out once; on a real run the phases are
logged as time/* and account for nearly all of the step."""

import time

import pytest
from lightning.pytorch import Callback, Trainer

from lit_rl import GRPO, CountdownData, CountdownReward
from lit_rl.rollout import Sampling
from lit_rl.timing import PhaseTimer


def test_phases_sum_and_stop_empties_the_timer():
    timer = PhaseTimer("cpu")
    with timer("validation"):                                           # before start: not this step's
        time.sleep(0.01)
    timer.start()
    for _ in range(2):
        with timer("forward_backward"):
            time.sleep(0.02)
    with timer("generate"):
        time.sleep(0.01)
    timer.count("generated_tokens", 5)
    timer.count("generated_tokens", 3)
    seconds, counts = timer.stop()
    assert set(seconds) == {"forward_backward", "generate", "step"} and counts == {"generated_tokens": 8}
    assert 0.04 <= seconds["forward_backward"] < 0.5 and 0.01 <= seconds["generate"] < 0.5
    assert seconds["step"] >= seconds["forward_backward"] + seconds["generate"]
    assert timer.stop()[1] == {}


def test_a_failing_block_still_counts():
    timer = PhaseTimer()
    timer.start()
    with pytest.raises(ValueError):
        with timer("score"):
            raise ValueError("bad reward")
    assert "score" in timer.stop()[0]


class Metrics(Callback):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("time/", "rollout/tokens"))})


def test_the_phases_of_a_step_are_logged_and_add_up_to_it(tiny_model_dir):
    """GRPO with two passes and a KL penalty has every phase; what the phases leave out of time/step (logging,
    advantages, the loop's own work) is a few percent."""
    module = GRPO(model=tiny_model_dir, reward=CountdownReward(), group_size=4, num_iterations=2, kl_coef=0.1,
                  sampling=Sampling(temperature=1.0, max_new_tokens=16), micro_batch_size=8)
    data = CountdownData(batch_size=4, train_size=64, val_size=8)
    metrics = Metrics()
    Trainer(accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, limit_val_batches=0, callbacks=[metrics]).fit(module, datamodule=data)
    phases = ("generate", "score", "old_logps", "ref_logps", "forward_backward", "optimizer")
    steps = metrics.steps[1:]                                           # the first step warms up
    for step in steps:
        assert {f"time/{p}" for p in phases} | {"time/step", "rollout/tokens_per_s"} <= set(step)
        assert sum(step[f"time/{p}"] for p in phases) <= step["time/step"], step
        assert step["rollout/tokens_per_s"] > 0
    parts = sum(step[f"time/{p}"] for step in steps for p in phases)   # over the steps: one descheduled
    assert parts >= 0.9 * sum(step["time/step"] for step in steps), steps   # moment must not decide it

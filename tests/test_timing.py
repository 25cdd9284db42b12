"""The phase timer: blocks add to their phase, a step's totals pop once."""

import time

from lit_rl.timing import PhaseTimer


def test_phases_sum_and_pop():
    timer = PhaseTimer("cpu")
    for _ in range(2):
        with timer("forward_backward"):
            time.sleep(0.02)
    with timer("generate"):
        time.sleep(0.01)
    seconds = timer.pop()
    assert set(seconds) == {"forward_backward", "generate"}
    assert 0.04 <= seconds["forward_backward"] < 0.5 and 0.01 <= seconds["generate"] < 0.5
    assert timer.pop() == {}


def test_a_failing_block_still_counts():
    timer = PhaseTimer()
    try:
        with timer("score"):
            raise ValueError("bad reward")
    except ValueError:
        pass
    assert "score" in timer.pop()

"""Nothing regresses: the first step of every shipped config gives the numbers the loop gave before the collector
restructuring (``tests/data/first_steps.json``: ``benchmarks/first_steps.py --steps 1`` run by commit 17776c5 on
an Intel Xeon with AVX-512; on that machine today's code gives the same numbers cell for cell, and two steps too).

Compared with ``rtol=1e-3``, for two reasons. Float32 sums depend on the CPU's vector width: a loss or gradient
norm summed over ~10^3 tokens or ~10^6 weights moves by up to ~10^3 x 6e-8 relative between CPUs, and 1e-3
leaves a margin of ten over that. A sampled token changes only if a uniform draw lands within that rounding of a
boundary of the categorical distribution, about 10^-4 over a step's ~10^3 draws; then the step's discrete metrics
(reward mean, accuracy, length) move by a whole sample, far beyond the tolerance, and the message says so.
``train/clip_frac`` is left out: at step 0 the policy is the one that sampled, so every ratio is 1 up to rounding
and whether it counts as clipped is decided by the last bit (TOPR's was 0.508 on one CPU and 0.371 under
``ATEN_CPU_CAPABILITY=avx2`` on the same one)."""

import json
import math

import pytest

from benchmarks.first_steps import first_steps
from conftest import ROOT

SAVED = json.loads((ROOT / "tests" / "data" / "first_steps.json").read_text())


@pytest.mark.parametrize("name", sorted(SAVED))
def test_the_first_step_of_a_shipped_config_is_what_it_was(name):
    saved, today = step_zero(SAVED[name]), step_zero(first_steps(name, 1, ROOT))
    assert set(today) == set(saved), f"{name}: metrics added {set(today) - set(saved)}, gone {set(saved) - set(today)}"
    moved = {key: (saved[key], today[key]) for key in saved if not key.startswith("train/clip_frac")
             and not math.isclose(float(saved[key]), float(today[key]), rel_tol=1e-3, abs_tol=1e-6)}
    assert not moved, (f"{name}: step 0 moved (before, today): {moved}; a discrete metric moving by a whole sample "
                       f"means a sampled token came out differently (float rounding at a boundary, rare) or the loop "
                       f"changed")


def step_zero(rows: list[dict[str, str]]) -> dict[str, str]:
    """The metrics logged at global step 0 (one or more rows of metrics.csv)."""
    return {key: value for row in rows if row.get("step") == "0" for key, value in row.items()}

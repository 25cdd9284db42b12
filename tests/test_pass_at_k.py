"""pass@k and mean@k: golden numbers derived by hand, a differential test against ``math.comb``, and validation
with ``val_samples`` samples per held-out prompt (overall and per ``data_source``)."""

import math
import random

import pytest
import torch
from torch.testing import assert_close

from lit_rl.objectives import mean_at_k, pass_at_k


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

"""TOPR and the pairwise/listwise objectives: golden numbers derived by hand, naive loops, invariants."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lit_rl.objectives import (
    best_worst,
    dpo_loss,
    ipo_loss,
    multi_completion_loss,
    pair_margins,
    rebel_loss,
    sequence_logps,
    topr_loss,
)

# ------------------------------------------------------------------------------------------------- TOPR
LOGPS = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-1.0, -9.0]])       # row 2's second token is padding
MASK = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
BEHAVIOUR = torch.tensor([[-1.5, -2.0], [-1.0, -0.2], [-0.2, 0.0]])
REWARDS = torch.tensor([1.0, 0.1, 0.1])


def test_topr_sequence_ratio_golden():
    """threshold 1: row 0 (R = 1) is positive, alpha = 1, loss -l = [1, 2].
    Row 1: log pi/mu = (-0.5 + 1.0) + (-0.5 + 0.2) = 0.2 > 0, clamped to 0: alpha = 1 (truncated),
    loss -0.1 l = [0.05, 0.05]. Row 2: log ratio = -1.0 + 0.2 = -0.8 (the padded token is masked out),
    alpha = e^-0.8 = 0.449329, loss at t0 = -0.449329 * 0.1 * -1 = 0.0449329."""
    loss, truncated = topr_loss(LOGPS, BEHAVIOUR, REWARDS, MASK, threshold=1.0)
    a = math.exp(-0.8)
    expected = torch.tensor([[1.0, 2.0], [0.05, 0.05], [0.1 * a, 0.1 * a * 9.0]])
    assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert truncated.tolist() == [[False, False], [True, True], [False, False]]
    assert_close((loss * MASK).sum(-1), torch.tensor([3.0, 0.1, 0.1 * a]), rtol=1e-6, atol=1e-7)


def test_topr_per_token_ratio_golden():
    """Row 1 per token: log ratios 0.5 and -0.3 give alphas 1 and e^-0.3 = 0.740818;
    loss = -0.1 * alpha * l = [0.05, 0.05 * 0.740818]."""
    loss, truncated = topr_loss(LOGPS, BEHAVIOUR, REWARDS, MASK, threshold=1.0, per_token=True)
    assert_close(loss[1], torch.tensor([0.05, 0.05 * math.exp(-0.3)]), rtol=1e-6, atol=1e-7)
    assert truncated[1].tolist() == [True, False]


def test_topr_gradient_is_tapered_reinforce():
    """d loss / d l_t = -sg(alpha) (R - c): alpha is not differentiated; baseline c = 0.5 shifts R.
    Row 2 with threshold 0 is positive (R = 0.1 >= 0): alpha = 1, gradient -(0.1 - 0.5) = 0.4."""
    logps = LOGPS.clone().requires_grad_(True)
    loss, _ = topr_loss(logps, BEHAVIOUR, REWARDS, MASK, threshold=1.0, baseline=0.5)
    (loss * MASK).sum().backward()
    a = math.exp(-0.8)
    assert_close(logps.grad, torch.tensor([[-0.5, -0.5], [0.4, 0.4], [0.4 * a, 0.4 * a]]) * MASK, rtol=1e-6, atol=1e-7)
    logps.grad = None
    loss, _ = topr_loss(logps, BEHAVIOUR, REWARDS, MASK, threshold=0.0, baseline=0.5)
    (loss * MASK).sum().backward()
    assert_close(logps.grad[2], torch.tensor([0.4, 0.0]))


def test_topr_on_policy_data_is_reinforce():
    """mu = pi: every ratio is 1, so TOPR is REINFORCE whatever the threshold."""
    loss, truncated = topr_loss(LOGPS, LOGPS, REWARDS, MASK, threshold=1.0)
    assert_close(loss, -REWARDS[:, None] * LOGPS)
    assert not truncated.any()


# ------------------------------------------------------------------------------------ pairs and groups
def test_sequence_logps_sum_and_mean():
    """Row 2: sum = -1 (padding ignored), mean over 1 token = -1; row 0: sum -3, mean -1.5."""
    assert_close(sequence_logps(LOGPS, MASK), torch.tensor([-3.0, -1.0, -1.0]))
    assert_close(sequence_logps(LOGPS, MASK, average=True), torch.tensor([-1.5, -0.5, -1.0]))


def test_dpo_and_ipo_golden():
    """h = (L_w - L_ref,w) - (L_l - L_ref,l) = (-1 + 2) - (-3 + 2) = 2.
    DPO, beta 0.1: -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598139. IPO, beta 0.1: (2 - 5)^2 = 9."""
    h = pair_margins(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]))
    assert_close(h, torch.tensor([2.0]))
    assert_close(dpo_loss(h, 0.1), torch.tensor([0.5981388693815918]), rtol=1e-6, atol=0)
    assert_close(ipo_loss(h, 0.1), torch.tensor([9.0]))


def test_rebel_golden():
    """G = 3, implicit rewards L - L_anchor = [0.5, -0.5, -2.5], r = [1, 0.1, 0], eta = 2:
    pair (0,1): h = 1, (1/2 - 0.9)^2 = 0.16; (0,2): h = 3, (1.5 - 1)^2 = 0.25; (1,2): h = 2, (1 - 0.1)^2 = 0.81."""
    loss = rebel_loss(torch.tensor([-1.0, -2.0, -4.0]), torch.full((3,), -1.5), torch.tensor([1.0, 0.1, 0.0]), 3, 2.0)
    assert_close(loss, torch.tensor([[0.16, 0.25, 0.81]]), rtol=1e-6, atol=1e-7)


def test_rebel_matches_a_naive_loop_over_pairs():
    torch.manual_seed(0)
    P, G, eta = 3, 4, 0.7
    seq, anchor, r = torch.randn(P * G), torch.randn(P * G), torch.rand(P * G)
    naive = [((seq[p * G + i] - anchor[p * G + i] - seq[p * G + j] + anchor[p * G + j]) / eta
              - (r[p * G + i] - r[p * G + j])) ** 2 for p in range(P) for i in range(G) for j in range(i + 1, G)]
    assert_close(rebel_loss(seq, anchor, r, G, eta).flatten(), torch.stack(naive))
    with pytest.raises(ValueError, match="at least 2"):
        rebel_loss(seq, anchor, r, 1, eta)


def test_multi_completion_golden():
    """G = 2, r = [1, 0], implicit rewards equal: p = (sigmoid(1), sigmoid(-1)) = (0.731059, 0.268941),
    q = (1/2, 1/2): KL = log 2 - H(p) = 0.693147 - 0.582203 = 0.110944."""
    loss = multi_completion_loss(torch.tensor([-2.0, -2.0]), torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 0.0]), 2, 0.1)
    assert_close(loss, torch.tensor([0.11094407167172737]), rtol=1e-6, atol=0)


def test_multi_completion_is_zero_exactly_when_implicit_rewards_equal_rewards_plus_a_constant():
    """r^_i = beta (L_i - L_ref,i) = r_i + c(x), a different c per prompt: zero loss; any other shift: > 0."""
    torch.manual_seed(0)
    P, G, beta = 3, 4, 0.5
    r, ref = torch.rand(P * G), torch.randn(P * G)
    c = torch.tensor([3.0, -1.0, 0.2]).repeat_interleave(G)
    seq = ref + (r + c) / beta
    assert_close(multi_completion_loss(seq, ref, r, G, beta), torch.zeros(P), atol=1e-6, rtol=0)
    off = seq.clone()
    off[0] += 0.3
    loss = multi_completion_loss(off, ref, r, G, beta)
    assert loss[0] > 1e-4 and torch.all(loss[1:] < 1e-6)
    assert_close(multi_completion_loss(ref + (r / 2.0 + c) / beta, ref, r, G, beta, temperature=2.0), torch.zeros(P),
                 atol=1e-6, rtol=0)


def test_multi_completion_with_two_completions_is_soft_label_dpo():
    """G = 2: KL(p || q) = BCE_with_logits(beta h, p_1) - H(p), with p_1 = sigmoid(r_1 - r_2): DPO with a soft
    label, shifted by the label's entropy (a constant)."""
    torch.manual_seed(0)
    seq, ref, r, beta = torch.randn(10), torch.randn(10), torch.rand(10), 0.3
    h = pair_margins(seq, ref)
    p1 = torch.sigmoid(r[0::2] - r[1::2])
    entropy = -(p1 * p1.log() + (1 - p1) * (1 - p1).log())
    soft_dpo = F.binary_cross_entropy_with_logits(beta * h, p1, reduction="none") - entropy
    assert_close(multi_completion_loss(seq, ref, r, 2, beta), soft_dpo, rtol=1e-5, atol=1e-6)


def test_multi_completion_gradient_matches_finite_differences():
    torch.manual_seed(0)
    seq = torch.randn(8, dtype=torch.float64, requires_grad=True)
    ref, r = torch.randn(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: multi_completion_loss(s, ref, r, 4, 0.7, 1.5), (seq,))
    rewards = r.clone().requires_grad_(True)                            # the target is detached
    multi_completion_loss(seq, ref, rewards, 4, 0.7).sum().backward()
    assert rewards.grad is None or not rewards.grad.any()


def test_best_worst_pairs_and_ties():
    """Group 0: best row 1 (1.0), worst row 2 (0.0); group 1 all tied: dropped; group 2: best row 10, worst
    row 8 (ties break to the earliest row)."""
    rewards = torch.tensor([0.1, 1.0, 0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0, 1.0, 0.0])
    rows, keep = best_worst(rewards, 4)
    assert rows.tolist() == [1, 2, 10, 8] and keep.tolist() == [True, False, True]

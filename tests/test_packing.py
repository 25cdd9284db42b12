"""Packed sequences (``packed_sequences``): every row's real tokens in one padding-free row with restarting position
ids; micro-batches cut by a token budget (``max_tokens_per_micro_batch``). Values and gradients are the padded
forward's, no row attends to another, and the step's gradient does not depend on how it is cut."""

from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from lit_rl import GRPO, PPO, CountdownReward
from lit_rl.policy import pack_rows
from lit_rl.rollout import token_budget_cuts

from conftest import SAMPLING
from test_chunked_logprobs import probe_args
from test_modules import DigitShare, fit, prompts

U = 2**-24                                                              # float32 unit roundoff


def forward(policy, args, packed: bool, **kwargs):
    policy.packed_sequences = packed
    policy.zero_grad()
    out = policy(*args, 0.7, entropy=True, hidden=True, **kwargs)
    mask = args[3]
    ((out.logps * mask).sum() + (out.entropy * mask).sum() + (out.hidden[..., 0] * mask).sum()).backward()
    return out, [p.grad.clone() for p in policy.parameters()]


@pytest.mark.parametrize("logits", [False, True], ids=["chunked", "logits"])
def test_the_packed_forward_is_the_padded_one(policy, logits):
    """Log-probs, entropy, hidden states (and logits when asked) on every real completion position, and the
    gradient, equal the padded forward's. Tolerance: the packed row has other matrix shapes and its attention
    another mask layout, so float32 sums run in other orders; the per-position values are sums of at most
    H + T terms (~100) of the model's activations (|x| < 10 here): within 100 * 10 * u ~ 6e-5, so 1e-4; each
    gradient entry sums the batch's n tokens' terms, so n u relative to the largest entry (seen: ~1e-7)."""
    args = probe_args(policy)
    (padded, padded_grads), (packed, packed_grads) = (forward(policy, args, p, logits=logits) for p in (False, True))
    mask = args[3].bool()
    for name in ("logps", "entropy", "hidden"):
        assert_close(getattr(packed, name)[mask], getattr(padded, name)[mask], rtol=0, atol=1e-4, msg=name)
    if logits:
        assert_close(packed.logits[mask], padded.logits[mask], rtol=0, atol=1e-4)
    assert (packed.logps[~mask] == 0).all() or logits                   # padding: no output layer call
    n = int(args[1].sum() + args[3].sum())
    scale = max(g.abs().max().item() for g in padded_grads)
    for a, b in zip(padded_grads, packed_grads):
        assert_close(b, a, rtol=0, atol=max(n * U, 1e-5) * scale)


def test_no_row_attends_to_another(policy):
    """What another row holds changes no row's log-probs: attention stays within each packed row (a cross-row
    leak moved a row's log-probs by ~0.4 when transformers was given a cache). Tolerance as above."""
    policy.packed_sequences = True
    args = probe_args(policy)
    width, bins = pack_rows((args[1].sum(-1) + args[3].sum(-1)).tolist())
    assert sorted(map(len, bins)) == [1, 2]                             # rows 0 and 1 share a bin
    changed = list(args)
    changed[2] = args[2].clone()
    changed[2][1] = changed[2][1].flip(0)                               # row 1's completion reversed
    with torch.no_grad():
        a, b = policy(*args).logps, policy(*changed).logps
    mask = args[3].bool()
    for row in (0, 2):
        assert_close(b[row][mask[row]], a[row][mask[row]], rtol=0, atol=1e-5)
    assert not torch.allclose(b[1][mask[1]], a[1][mask[1]])             # the changed row did change


def test_token_budget_cuts_cover_every_row_in_order_within_the_budget():
    tokens = torch.tensor([5, 3, 9, 2, 2, 7])
    assert token_budget_cuts(tokens, 10) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert token_budget_cuts(tokens, 4) == [(0, 1), (1, 2), (2, 3), (3, 5), (5, 6)]   # a longer row goes alone
    assert token_budget_cuts(tokens, 100) == [(0, 6)]
    assert token_budget_cuts(tokens, 16, unit=2) == [(0, 2), (2, 4), (4, 6)]   # whole groups of 2: 8, 11, 9 tokens
    assert token_budget_cuts(tokens, 20, unit=2) == [(0, 4), (4, 6)]
    assert token_budget_cuts(torch.tensor([], dtype=torch.long), 5) == []


def test_a_token_budget_gives_the_full_batch_gradient(tiny_model_dir):
    """One micro-batch of the whole batch, or micro-batches of at most 40 real tokens: the same gradient (the step's
    global normaliser), packed or not; rows are consecutive, as the budget cuts them."""
    torch.manual_seed(0)
    module = GRPO(model=tiny_model_dir, reward=DigitShare(), group_size=2, sampling=SAMPLING, kl_coef=0.1,
                  num_iterations=2, packed_sequences=True, aggregation="token_mean")
    rollout = module.make_rollout(prompts(4))
    rollout = replace(rollout, old_logps=rollout.old_logps - 0.05)
    params = [p for p in module.policy.parameters() if p.requires_grad]
    normalisers = module.normalisers(rollout)
    whole = torch.autograd.grad(module.micro_loss(rollout, normalisers)[0], params)
    micros = rollout.split(None, max_tokens=40)
    assert len(micros) > 2 and sum(len(m) for m in micros) == len(rollout)
    parts = [torch.autograd.grad(module.micro_loss(m, normalisers)[0], params) for m in micros]
    for i, w in enumerate(whole):
        assert_close(sum(p[i] for p in parts), w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [GRPO, PPO])
def test_modules_train_packed_with_a_token_budget(tiny_model_dir, cls):
    """GRPO and PPO (its value head reads the packed hidden states) train packed, by a token budget; their
    rollouts' old and reference log-probs and values are the padded ones (tolerance as above)."""
    runs = {}
    for packed in (False, True):
        torch.manual_seed(0)
        module = cls(model=tiny_model_dir, reward=DigitShare(), group_size=2, sampling=SAMPLING, kl_coef=0.05,
                     num_iterations=2, packed_sequences=packed, max_tokens_per_micro_batch=60 if packed else None)
        rollout = module.make_rollout(prompts(2))
        runs[packed] = [f for f in (rollout.old_logps, rollout.ref_logps, rollout.values) if f is not None]
        if packed:
            trainer = fit(module, 2)
            assert trainer.global_step == 2
    for a, b in zip(*runs.values()):
        assert_close(b, a, rtol=0, atol=1e-4)


def test_packing_takes_the_place_of_the_shared_prompt_forward(policy, tiny_model_dir):
    """With both on (the shared prompt forward is the default), the forward is the packed one: the same
    computation as packing alone, so the same bits; not the shared forward's, which sums in another order."""
    args = probe_args(policy)
    outputs = {}
    for shared, packed in ((True, True), (False, True), (True, False)):
        policy.shared_prompt_forward, policy.packed_sequences = shared, packed
        outputs[shared, packed] = policy.logps(*args)[0]
    assert torch.equal(outputs[True, True], outputs[False, True])
    assert not torch.equal(outputs[True, True], outputs[True, False])
    assert GRPO(model=tiny_model_dir, reward=CountdownReward(), packed_sequences=True).policy.shared_prompt_forward
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch must be >= 1"):
        GRPO(model=tiny_model_dir, reward=CountdownReward(), max_tokens_per_micro_batch=0)


def test_the_packing_benchmark_runs_on_a_tiny_shape():
    """``benchmarks/packing.py --quick``: both sides, each in its own process, and their ratios."""
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "packing.py"), "--quick"], capture_output=True,
                         text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("packed / padded: time") == 2

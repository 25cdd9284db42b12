"""lit-rl's own decoding loop (``HFEngine(fast_decode=True)``, ``lit_rl.decode``): the greedy tokens and masks of
``generate``, its filters, a sampling distribution checked against the model's own, and the behaviour
log-probs of the trainer."""

import torch
from torch.testing import assert_close
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

from lit_rl.decode import ReservedLayer, filter_logits
from lit_rl.rollout import HFEngine, Sampling

PROMPTS = ["numbers [1, 2] target 3: ", "Using the numbers [10, 4, 7], create an equation that equals 42.\n", "7"]


def engines(policy):
    out = []
    for fast in (False, True):
        engine = HFEngine(return_logps=True, fast_decode=fast)
        engine.bind(policy.model, policy.tokenizer)
        out.append(engine)
    return out


def test_greedy_tokens_and_masks_are_generates(policy):
    """Left-padded prompts of three lengths, two samples each, with and without a stop string: the tokens and
    masks of ``generate``, exactly (same model, same machine, the same argmax of the same computation but for the
    prefill's batch size; the tiny model has no near-ties here). The last prompt ends in ``7`` and its greedy
    completion repeats ``7``: the stop string ``77`` ends it after two tokens, read in the completion alone (as
    vLLM reads it; ``generate``'s own ``stop_strings`` ended it after one and padded the rest as if generated)."""
    ids, mask = policy.encode_prompts(PROMPTS, 24)
    lengths = []
    for stop in ((), ("77",)):
        sampling = Sampling(temperature=0.0, max_new_tokens=24, stop=stop)
        slow, fast = (e.generate(ids, mask, sampling, 2) for e in engines(policy))
        assert torch.equal(fast.completion_mask, slow.completion_mask)
        assert torch.equal(fast.completion_ids[:, :slow.completion_ids.shape[1]], slow.completion_ids)
        assert (fast.completion_ids[:, slow.completion_ids.shape[1]:] == policy.tokenizer.pad_token_id).all()
        lengths.append(fast.completion_mask.sum(-1))
    assert lengths[1][4:].tolist() == [2, 2] and (lengths[1][:4] == lengths[0][:4]).all()


def test_the_filters_are_generates_warpers():
    """Temperature, then top-k, then top-p: the same kept tokens and values as ``transformers``' warpers."""
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for temperature, k, p in ((0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.9, 10, 0.5), (1.0, 1, 0.9)):
        expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if k:
            expected = TopKLogitsWarper(k)(None, expected)
        if p < 1:
            expected = TopPLogitsWarper(p)(None, expected)
        assert torch.equal(filter_logits(logits, temperature, k, p).isinf(), expected.isinf()), (temperature, k, p)
        assert_close(filter_logits(logits, temperature, k, p), expected, rtol=0, atol=0)


def test_samples_follow_the_models_filtered_distribution(policy):
    """4000 samples of two tokens after one prompt at temperature 0.8, top-k 8, top-p 0.9: the first token's
    frequencies are the filtered ``softmax(logits / T)`` of the model's next-token logits, and so are the second
    token's after the most common first token (read from the cache the loop extended). Each frequency is within 5
    standard deviations of its probability (binomial; seeded, so the test is deterministic; a wrong filter or a
    stale cache moves frequencies by far more), and no filtered-out token is ever drawn."""
    torch.manual_seed(0)
    engine = engines(policy)[1]
    ids, mask = policy.encode_prompts(PROMPTS[:1], 8)
    sampling = Sampling(temperature=0.8, top_k=8, top_p=0.9, max_new_tokens=2)
    tokens = engine.generate(ids, mask, sampling, 4000).completion_ids            # [4000, 2]

    def expected(prefix):
        with torch.no_grad():
            logits = policy.model(input_ids=prefix).logits[0, -1]
        return filter_logits(logits[None], 0.8, 8, 0.9).softmax(-1)[0]             # [V]

    def check(drawn, probs):
        counts = torch.bincount(drawn, minlength=len(probs)).double()
        n, p = len(drawn), probs.double()
        assert counts[p == 0].sum() == 0                                           # excluded tokens never drawn
        sigma = (p * (1 - p) / n).sqrt()
        assert ((counts / n - p).abs() <= 5 * sigma + 1e-12).all(), (counts / n - p).abs().max()
        return counts

    prompt = ids[mask.bool()][None]
    counts = check(tokens[:, 0], expected(prompt))
    first = int(counts.argmax())
    rows = tokens[:, 0] == first
    assert rows.sum() > 500
    check(tokens[rows, 1], expected(torch.cat([prompt, torch.tensor([[first]])], 1)))


def test_a_seeded_run_samples_what_generate_samples(policy):
    """Both draw one ``torch.multinomial`` per step over the same rows, so from one seed they sample the same
    tokens (with top-k and top-p filtering too) and leave the random stream in the same state. A row may differ only
    where float rounding of its probabilities (the loop prefills each prompt once, ``generate`` each row) moves a
    draw across a boundary: about 1e-7 relative per probability, so ~1e-4 over these ~10^3 draws; one such row is
    allowed, which keeps the test from failing on another CPU while a loop that drew differently (another order,
    another count) changes nearly every row."""
    ids, mask = policy.encode_prompts(PROMPTS, 24)
    sampling = Sampling(temperature=0.9, top_k=20, top_p=0.95, max_new_tokens=24)
    runs = []
    for engine in engines(policy):
        torch.manual_seed(3)
        out = engine.generate(ids, mask, sampling, 8)
        runs.append((out.completion_ids * out.completion_mask, torch.rand(1)))
    (slow, slow_next), (fast, fast_next) = runs
    width = min(slow.shape[1], fast.shape[1])
    assert (slow[:, width:] == 0).all() and (fast[:, width:] == 0).all()
    assert (slow[:, :width] != fast[:, :width]).any(-1).sum() <= 1
    assert torch.equal(slow_next, fast_next)


def test_behaviour_logps_are_the_trainers(policy):
    """The sampled tokens' log-probs under ``softmax(logits / T)``, before top-k/top-p, equal the trainer's
    (float32, other matrix shapes: 1e-5)."""
    torch.manual_seed(1)
    ids, mask = policy.encode_prompts(PROMPTS, 16)
    out = engines(policy)[1].generate(ids, mask, Sampling(temperature=0.7, top_k=10, max_new_tokens=16), 2)
    trainer = policy.logps(ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), out.completion_ids,
                           out.completion_mask, 0.7)[0]
    assert_close(out.logps, trainer * out.completion_mask, rtol=0, atol=1e-5)
    assert out.completion_mask.sum() > 20


def test_a_module_trains_on_the_loop_single_and_multi_turn(tiny_model_dir):
    """GRPO samples through the loop; ReMax's greedy baseline and multi-turn episodes go through it too."""
    from lit_rl import GRPO, CountdownFeedback, MultiTurn, ReMax

    from conftest import SAMPLING
    from test_modules import DigitShare, fit

    torch.manual_seed(0)
    grpo = GRPO(model=tiny_model_dir, reward=DigitShare(), group_size=2, sampling=SAMPLING,
                engine=HFEngine(fast_decode=True))
    assert fit(grpo, 2).global_step == 2
    remax = ReMax(model=tiny_model_dir, reward=DigitShare(), group_size=2, sampling=SAMPLING,
                  engine=HFEngine(fast_decode=True), collector=MultiTurn(CountdownFeedback(), max_turns=2))
    assert fit(remax, 2).global_step == 2


def test_the_reserved_cache_layer_is_a_repeated_dynamic_layer():
    """``ReservedLayer`` holds what ``DynamicLayer`` holds after ``batch_repeat_interleave(n)`` and the same
    updates, one position at a time and then two past its reserve (where it falls back to concatenation): the same
    tensors copied, so exactly equal."""
    torch.manual_seed(0)
    prefill = [torch.randn(2, 3, 5, 4) for _ in range(2)]
    plain, reserved = DynamicLayer(), DynamicLayer()
    for layer in (plain, reserved):
        layer.update(*prefill)
    plain.batch_repeat_interleave(3)
    reserved = ReservedLayer(reserved, 3, reserve=2)
    assert torch.equal(reserved.keys, plain.keys) and torch.equal(reserved.values, plain.values)
    for length in (1, 1, 2, 1):
        new = [torch.randn(6, 3, length, 4) for _ in range(2)]
        for got, want in zip(reserved.update(*new), plain.update(*new)):
            assert torch.equal(got, want)
    assert reserved.get_seq_length() == plain.get_seq_length() == 10

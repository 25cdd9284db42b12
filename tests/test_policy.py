"""Log-probs against a naive log_softmax; padding invariance; the reference; prompt truncation; rollouts."""

import pytest
import torch
from torch.testing import assert_close

from lit_rl.logprobs import token_entropy, token_logps
from lit_rl.policy import LoraSettings, Policy, prompt_groups, resolve
from lit_rl.rollout import HFEngine, RolloutBatch, Sampling, completion_mask


@pytest.mark.parametrize("temperature, chunk", [(1.0, 1024), (0.7, 3), (1.3, 1)])
def test_token_logps_match_naive_log_softmax(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    ours = token_logps(logits, labels, temperature, chunk_size=chunk)
    naive = torch.log_softmax(logits / temperature, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert_close(ours, naive, rtol=1e-5, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_naive,) = torch.autograd.grad(naive.sum(), logits)
    assert_close(g_ours, g_naive, rtol=1e-5, atol=1e-6)


def test_token_entropy_matches_naive():
    logits = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(1))
    p = torch.softmax(logits / 0.8, -1)
    assert_close(token_entropy(logits, 0.8, chunk_size=3), -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-6)


def test_uniform_logits_entropy_is_log_vocab():
    assert_close(token_entropy(torch.zeros(1, 2, 16)), torch.full((1, 2), torch.log(torch.tensor(16.0)).item()))


def _naive_logps(policy, prompt, completion):
    """One unpadded sequence, plain forward, full log_softmax: the reference the batched path must match."""
    ids = torch.tensor([prompt + completion])
    logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_policy_logps_do_not_depend_on_padding(policy):
    """Two prompts of different lengths in one batch (left padding) and completions of different lengths
    (right padding) give exactly the per-token log-probs of each sequence run alone, unpadded."""
    tok = policy.tokenizer
    prompts = ["numbers [1, 2] target 3: ", "Using the numbers [10, 4, 7], create an equation that equals 42.\n"]
    completions = ["<answer>1 + 2</answer>", "<answer>(10 - 4) * 7</answer> more"]
    prompt_ids, prompt_mask = policy.encode_prompts(prompts, max_new_tokens=32)
    completion_ids, completion_mask = policy.encode_completions(completions)
    logps, entropy = policy.logps(prompt_ids, prompt_mask, completion_ids, completion_mask, entropy=True)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert_close(logps[i, :len(c_ids)], _naive_logps(policy, p_ids, c_ids), rtol=1e-4, atol=1e-5)
        assert (completion_mask[i, len(c_ids):] == 0).all()
    assert entropy.shape == logps.shape


def test_reference_is_a_frozen_copy_kept_out_of_checkpoints(policy):
    policy.enable_reference()
    assert policy.has_reference
    assert not any(k.startswith("_reference") for k in policy.state_dict())
    prompt_ids, prompt_mask = policy.encode_prompts(["numbers [1, 2] target 3: "], 16)
    completion_ids, completion_mask = policy.encode_completions(["<answer>1 + 2</answer>"])
    before = policy.reference_logps(prompt_ids, prompt_mask, completion_ids, completion_mask)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.1)
    after = policy.reference_logps(prompt_ids, prompt_mask, completion_ids, completion_mask)
    moved = policy.logps(prompt_ids, prompt_mask, completion_ids, completion_mask)[0]
    assert_close(before, after)
    assert not torch.allclose(moved, after)


def test_lora_reference_is_the_adapter_disabled_model(tiny_model_dir):
    base = Policy.load(tiny_model_dir)
    lora = Policy.load(tiny_model_dir, lora=LoraSettings(r=4))
    assert lora.is_lora and lora.has_reference
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in base.parameters()) / 5
    args = (*lora.encode_prompts(["numbers [1, 2] target 3: "], 16), *lora.encode_completions(["<answer>1+2</answer>"]))
    with torch.no_grad():
        for name, p in lora.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    assert_close(lora.reference_logps(*args), base.logps(*args)[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(lora.logps(*args)[0], base.logps(*args)[0])


def test_long_prompts_are_cut_from_the_left_with_a_warning(policy):
    context = policy.model.config.max_position_embeddings                 # 128
    with pytest.warns(UserWarning, match="keeping their last 96 tokens"):
        ids, mask = policy.encode_prompts(["1" * 500, "2"], max_new_tokens=32)
    assert ids.shape == (2, context - 32) and mask[1].sum() == 1
    with pytest.raises(ValueError, match="max_new_tokens=128"):
        policy.encode_prompts(["1"], max_new_tokens=context)


def test_builtin_names_resolve_to_shipped_models():
    assert resolve("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve("builtin:countdown-init").endswith("assets/countdown-init")
    with pytest.raises(FileNotFoundError, match="builtin:countdown-init"):
        resolve("builtin:nope")


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 0, 0, 0]])
    assert completion_mask(ids, [1]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_hf_engine_samples_prompt_major_with_behaviour_logps(policy):
    engine = HFEngine(return_logps=True)
    engine.bind(policy.model, policy.tokenizer)
    prompt_ids, prompt_mask = policy.encode_prompts(["numbers [1, 2] target 3: ", "numbers [4, 5, 6] target 9: "], 12)
    torch.manual_seed(0)
    sampling = Sampling(temperature=0.7, max_new_tokens=12)
    gen = engine.generate(prompt_ids, prompt_mask, sampling, n=3)
    assert gen.completion_ids.shape[0] == 6 and gen.completion_ids.shape[1] <= 12
    expected_mask = completion_mask(gen.completion_ids, [policy.tokenizer.eos_token_id])
    assert (gen.completion_mask == expected_mask).all()
    recomputed, _ = policy.logps(prompt_ids.repeat_interleave(3, 0), prompt_mask.repeat_interleave(3, 0),
                                 gen.completion_ids, gen.completion_mask, temperature=0.7)
    assert_close(gen.logps, recomputed * gen.completion_mask, rtol=1e-4, atol=1e-4)
    greedy = engine.generate(prompt_ids, prompt_mask, sampling.greedy, n=2)
    assert (greedy.completion_ids[0] == greedy.completion_ids[1]).all()   # greedy is deterministic
    assert policy.model.training                                          # generation restores train mode
    default = HFEngine()                                                  # no per-step logits kept unless asked
    default.bind(policy.model, policy.tokenizer)
    assert default.generate(prompt_ids, prompt_mask, sampling, n=1).logps is None


def test_sampling_rejects_impossible_settings():
    with pytest.raises(ValueError, match="max_new_tokens"):
        Sampling(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)


def test_rollout_batch_select_split_cat():
    batch = RolloutBatch(
        prompt_ids=torch.arange(8).view(4, 2), prompt_mask=torch.ones(4, 2, dtype=torch.long),
        completion_ids=torch.arange(12).view(4, 3), completion_mask=torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]]),
        scores=torch.arange(4.0), correct=torch.tensor([True, False, False, True]), metas=[{"i": i} for i in range(4)],
        group_size=2, advantages=torch.arange(4.0))
    first, second = batch.split(2)
    assert first.completion_ids.shape == (2, 2) and second.completion_ids.shape == (2, 1)   # trimmed width
    assert second.metas == [{"i": 2}, {"i": 3}] and second.scores.tolist() == [2.0, 3.0]
    joined = RolloutBatch.cat([first, second])
    assert joined.completion_ids.shape == (4, 2) and joined.completion_mask.tolist() == [[1, 0], [1, 1], [1, 0], [1, 0]]
    assert joined.metas == batch.metas


def test_token_logps_bfloat16_logits_get_bfloat16_gradients():
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(2)).bfloat16().requires_grad_()
    labels = torch.tensor([[0, 1, 2], [3, 4, 5]])
    ours = token_logps(logits, labels)
    naive = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    assert ours.dtype == torch.float32
    assert_close(ours, naive, rtol=1e-5, atol=1e-5)
    ours.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("which", ["tiny", "builtin"])
def test_tokenizer_round_trips_through_from_pretrained(tiny_model_dir, which):
    """Saved and loaded back like a hub model, the character tokenizer keeps every character and encodes
    the answer tags as single tokens (transformers 5 can silently swap in a model-specific pre-tokenizer)."""
    policy = Policy.load(tiny_model_dir if which == "tiny" else "builtin:countdown-init")
    text = "Using the numbers [10, 4, 7], create an equation that equals 42.\n<answer>(10 - 4) * 7</answer>"
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert policy.tokenizer.decode(ids) == text
    tokens = policy.tokenizer.convert_ids_to_tokens(ids)
    assert "<answer>" in tokens and "</answer>" in tokens and len(ids) == len(text) - 2 * len("answer>") - len("/")


def groups_batch(policy):
    """Two prompts of different lengths, 3 and 2 samples each (side by side, as a rollout holds them), with
    completions of different lengths; then a third prompt alone."""
    prompts = ["numbers [1, 2] target 3: "] * 3 + ["Using the numbers [10, 4, 7], create an equation.\n"] * 2 + ["7: "]
    completions = ["<answer>1 + 2</answer>", "<answer>2 + 1", "3", "<answer>(10 - 4) * 7</answer>", "x", "<a"]
    return (*policy.encode_prompts(prompts, max_new_tokens=32), *policy.encode_completions(completions))


def test_prompt_groups_are_runs_of_equal_prompts(policy):
    prompt_ids, prompt_mask, _, _ = groups_batch(policy)
    assert prompt_groups(prompt_ids, prompt_mask).tolist() == [0, 0, 0, 1, 1, 2]
    assert prompt_groups(prompt_ids[2:4], prompt_mask[2:4]) is None    # a micro-batch may cut a group
    assert prompt_groups(prompt_ids[1:5], prompt_mask[1:5]).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_shared_prompt_forward_is_the_full_forward(tiny_model_dir, lora):
    """Log-probs, entropy, last hidden states and the gradient of a loss reading all three are those of one
    forward per row (float32 rounding apart), for the policy, its LoRA adapter and the reference."""
    torch.manual_seed(0)
    policy = Policy.load(tiny_model_dir, lora=LoraSettings(r=4, alpha=8) if lora else None)
    policy.enable_reference()
    args = groups_batch(policy)
    mask = args[3]
    weights = torch.randn(*mask.shape, 64, generator=torch.Generator().manual_seed(1))
    runs = {}
    for shared in (False, True):
        policy.shared_prompt_forward = shared
        out = policy(*args, temperature=0.7, entropy=True, hidden=True)
        loss = ((out.logps + out.entropy + (out.hidden * weights).sum(-1)) * mask).sum()
        params = [p for p in policy.model.parameters() if p.requires_grad]
        runs[shared] = (out.logps * mask, out.entropy * mask, out.hidden * mask[..., None],
                        policy.reference_logps(*args) * mask, torch.autograd.grad(loss, params))
    (*full, full_grads), (*shared, shared_grads) = runs[False], runs[True]
    for a, b in zip(full, shared):
        assert_close(b, a, rtol=1e-5, atol=1e-5)
    for a, b in zip(full_grads, shared_grads):
        assert_close(b, a, rtol=1e-4, atol=1e-5 * a.abs().max().item())


def test_characters_the_vocabulary_cannot_spell_are_warned_about_once():
    """The built-in character tokenizers read an unknown character as ``<pad>``: said once per character,
    naming it (here for the policy and for the reward model's encoding)."""
    import warnings

    from lit_rl.rewards.model import load_reward_model, reward_inputs

    policy = Policy.load("builtin:countdown-sft")
    with pytest.warns(UserWarning, match=r"the tokenizer has no token for \['é', '€'\] .*reads each as '<pad>'"):
        ids = policy.tokenize("numbers [1, 2] target 3: é€")
    assert ids[-2:] == [policy.tokenizer.pad_token_id] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                  # the same characters: no second warning
        policy.tokenize("é again, € again")
        policy.tokenize("numbers [1, 2] target 3: ")
    _, tokenizer = load_reward_model("builtin:countdown-rm")
    with pytest.warns(UserWarning, match=r"no token for \['ß'\]"):
        reward_inputs(tokenizer, ["numbers [1] target 1: "], ["ß"], {"chat_template": None, "system_prompt": None,
                                                                     "chat_template_kwargs": None}, None, None)


def test_model_kwargs_reach_from_pretrained_and_what_lit_rl_sets_is_refused(tiny_model_dir):
    """Peer libraries' model options (``attn_implementation``, ``revision``, ``trust_remote_code``) pass through
    to ``from_pretrained``; the dtype and the devices are lit-rl's own settings and named as such."""
    from lit_rl import RLOO
    from lit_rl.tasks.countdown import CountdownReward

    eager = Policy.load(tiny_model_dir, model_kwargs={"attn_implementation": "eager", "revision": "main"})
    assert eager.model.config._attn_implementation == "eager"
    assert Policy.load(tiny_model_dir).model.config._attn_implementation == "sdpa"
    for key, where in [("dtype", "use dtype"), ("torch_dtype", "use dtype"), ("device_map", "use the Lightning strategy")]:
        with pytest.raises(ValueError, match=rf"model_kwargs.{key} is set by lit-rl itself: {where}"):
            Policy.load(tiny_model_dir, model_kwargs={key: "auto"})
    with pytest.warns(UserWarning, match="trust_remote_code: true runs Python code from the model's repository"):
        Policy.load(tiny_model_dir, model_kwargs={"trust_remote_code": True})
    module = RLOO(model=tiny_model_dir, reward=CountdownReward(), model_kwargs={"attn_implementation": "eager"})
    assert module.hparams.model_kwargs == {"attn_implementation": "eager"}           # saved with the run's settings
    assert module.policy.model.config._attn_implementation == "eager"

"""Log-probs from the last hidden states in chunks (``lit_rl.logprobs.hidden_token_logps``) against a float64
reference with full logits, and the policy's forward that uses them.

Tolerances come from float32 error analysis (u = 2^-24), first order, doubled for the second-order terms:

- logits ``z = head(h) / T``: each is a dot product of K_z = H + 2r + 3 terms (``W h``, LoRA's ``A h`` and ``B (A h)``,
  the bias, the scaling and the division), so ``|dz| <= K_z u |z|_abs`` where ``|z|_abs`` is the head evaluated on
  absolute values (``|W| |h| + s |B| |A| |h| + |b|``) over T.
- ``log p_y = z_y - lse(z)``: ``lse`` is Lipschitz-1 in each ``z`` and adds V + 3 roundings (the exps' sum, the log,
  the max's addition): ``delta = 2 max_v |dz_v| + (V + 4 + 3 (max|z| + |lse|)) u`` per token.
- entropy ``H = -sum_v p_v log p_v``: each ``log p_v`` is off by at most ``delta``, each ``p_v`` by ``p_v (delta + u)``,
  and the sum adds V roundings: ``|dH| <= delta (1 + H) + (V + 2) u H``.
- gradients: the logits' gradient ``gz = (g (onehot - p) - g_H p (log p + H)) / T`` has each term off by at most
  ``(delta + |dH| + 4u)`` relative; the head's backward is linear in ``gz`` and sums over tokens (N), vocabulary (V)
  and widths (H, r), so a gradient entry is off by at most the backward of that error plus ``(N + V + H + 2r + 3) u``
  times the backward on absolute values. Both backwards run on the float64 head with absolute-valued weights
  (``bound_of``), which gives each entry its own bound.
"""

import copy
import warnings
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.testing import assert_close
from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from lit_rl import GRPO, CountdownData, CountdownReward, Sampling
from lit_rl.logprobs import hidden_token_logps, token_logps, token_logps_entropy
from lit_rl.losses import TokenLoss
from lit_rl.modules.heads import entropy_with_grad
from lit_rl.policy import LoraSettings, Policy, logits_are_head_of_hidden

from conftest import fit

U = 2.0 ** -24
V, H, R = 37, 16, 4                                                    # vocabulary, hidden width, LoRA rank


class Toy(nn.Module):
    """ids -> input embedding -> output layer: the hidden state is the token's embedding, so that a tied output
    layer's weight gets its gradient from both of its uses."""

    def __init__(self, tied: bool, bias: bool, lora: bool) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(V, H), nn.Linear(H, V, bias=bias)
        if tied:
            self.head.weight = self.embed.weight
        if lora:
            inject_adapter_in_model(LoraConfig(r=R, lora_alpha=2 * R, target_modules=["head"]), self)
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.3)                               # B starts at 0: make the adapter count
        self.requires_grad_(True)                                       # PEFT froze the rest: test every gradient


HEADS = {"untied": dict(tied=False, bias=False, lora=False), "tied": dict(tied=True, bias=False, lora=False),
         "bias": dict(tied=False, bias=True, lora=False), "lora": dict(tied=False, bias=False, lora=True),
         "tied+lora": dict(tied=True, bias=True, lora=True)}


def batch(seed: int, rows: int = 2, width: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids, labels = torch.randint(0, V, (rows, width), generator=g), torch.randint(0, V, (rows, width), generator=g)
    w_logps, w_entropy = torch.randn(rows, width, generator=g), torch.randn(rows, width, generator=g)   # dL/dl, dL/dH
    return ids, labels, w_logps, w_entropy


def ours(toy: Toy, ids, labels, w_logps, w_entropy, temperature: float, chunk: int) -> dict[str, torch.Tensor]:
    hidden = toy.embed(ids)                                             # [B, C, H]
    logps, entropy = hidden_token_logps(hidden, toy.head, labels, temperature, chunk, entropy=True)
    params = dict(toy.named_parameters())
    grads = torch.autograd.grad((logps * w_logps + entropy * w_entropy).sum(), [hidden, *params.values()])
    return {"logps": logps, "entropy": entropy, "hidden": grads[0], **dict(zip(params, grads[1:]))}


def reference(toy: Toy, ids, labels, w_logps, w_entropy, temperature: float) -> dict[str, torch.Tensor]:
    """Full float64 logits, log_softmax, gather: the naive computation."""
    toy = copy.deepcopy(toy).double()
    hidden = toy.embed(ids)
    z = toy.head(hidden)                                                # [B, C, V]
    logp = torch.log_softmax(z / temperature, -1)                       # [B, C, V]
    logps, entropy = logp.gather(-1, labels[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    params = dict(toy.named_parameters())
    grads = torch.autograd.grad((logps * w_logps.double() + entropy * w_entropy.double()).sum(),
                                [hidden, *params.values()])
    return {"logps": logps, "entropy": entropy, "hidden": grads[0], **dict(zip(params, grads[1:])), "_z": z.detach()}


def softmax_bounds(z: torch.Tensor, dz: torch.Tensor, labels, w_logps, w_entropy) -> dict[str, torch.Tensor]:
    """float32 error bounds, per entry, of log-probs, entropy and the gradient w.r.t. ``z`` (``gz``, with
    ``|gz|_abs``, the sum of its terms' sizes), given float64 tempered logits ``z [B, C, V]`` and a bound ``dz``
    on the float32 logits' error (the module docstring's analysis)."""
    vocab = z.shape[-1]
    logp, lse = torch.log_softmax(z, -1), torch.logsumexp(z, -1)                            # [B, C, V], [B, C]
    delta = 2 * dz.amax(-1) + U * (vocab + 4 + 3 * (z.abs().amax(-1) + lse.abs()))         # [B, C]
    p, entropy = logp.exp(), -(logp.exp() * logp).sum(-1)
    d_entropy = delta * (1 + entropy) + (vocab + 2) * U * entropy                           # [B, C]
    onehot = nn.functional.one_hot(labels, vocab).double()
    g, g_h = w_logps.double().abs()[..., None], w_entropy.double().abs()[..., None]
    gz_abs = g * (p + (onehot - p).abs()) + g_h * p * (1 + logp.abs() + entropy[..., None])  # before the 1/T
    return {"logps": delta, "entropy": d_entropy, "gz_abs": gz_abs,
            "gz": gz_abs * (delta + d_entropy + 4 * U)[..., None]}


def bound_of(toy: Toy, ids, labels, w_logps, w_entropy, temperature: float, ref: dict,
             num_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """Each output's float32 error bound, per entry: the logits' error from the head run on absolute values, then
    :func:`softmax_bounds`, then the head's backward of the logits' gradient's error plus the rounding of its
    sums, both run on absolute values. ``num_tokens``: the tokens a weight's gradient sums over."""
    absolute = copy.deepcopy(toy).double()
    with torch.no_grad():
        for p in absolute.parameters():
            p.abs_()
    hidden = absolute.embed(ids)                                        # |h|, gathered from |E|
    z_abs = absolute.head(hidden)                                       # [B, C, V]: sum of |terms| of each logit
    k_z = H + 2 * R + 3
    soft = softmax_bounds(ref["_z"] / temperature, k_z * U * z_abs / temperature, labels, w_logps, w_entropy)
    params = dict(absolute.named_parameters())
    propagated = torch.autograd.grad(z_abs, [hidden, *params.values()], soft["gz"] / temperature, retain_graph=True)
    summed = torch.autograd.grad(z_abs, [hidden, *params.values()], soft["gz_abs"] / temperature)
    k_backward = (num_tokens or ids.numel()) + V + H + 2 * R + 3
    bounds = [a + k_backward * U * b for a, b in zip(propagated, summed)]
    return {"logps": soft["logps"], "entropy": soft["entropy"], "hidden": bounds[0], **dict(zip(params, bounds[1:]))}


def assert_within(ours: dict, ref: dict, bound: dict) -> None:
    for name, value in ours.items():
        err = (value.double() - ref[name]).abs()
        worst = (err - 2 * bound[name]).max()
        assert worst <= 0, (f"{name}: error {err.max():.3g} beyond twice its float32 bound somewhere "
                            f"(bound there {bound[name].flatten()[(err - 2 * bound[name]).argmax()]:.3g})")


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("temperature, chunk", [(1.0, 1024), (0.7, 3), (1.3, 4), (0.6, 1)])
def test_values_and_gradients_match_a_float64_reference(head, temperature, chunk):
    """14 tokens in chunks of 1024 (one), 3, 4 (neither divides 14) and 1; tied and untied output layers, with a
    bias, with LoRA (``target_modules`` naming the output layer, as ``lm_head`` would be): log-probs, entropy, and
    the gradient of a loss reading both w.r.t. the hidden states and every parameter (the tied weight's through
    both of its uses; LoRA's A and B)."""
    torch.manual_seed(0)
    toy = Toy(**HEADS[head])
    data = batch(1)
    ref = reference(toy, *data, temperature)
    got = ours(toy, *data, temperature, chunk)
    assert set(got) == set(ref) - {"_z"}
    if HEADS[head]["lora"]:
        assert any("lora_A" in k for k in got) and any("lora_B" in k for k in got)
    assert got["logps"].dtype == got["entropy"].dtype == torch.float32
    assert_within(got, ref, bound_of(toy, *data, temperature, ref))


def test_padding_changes_nothing_but_rounding_and_padded_positions_get_no_gradient():
    """Extra positions with other hidden states, masked out of the loss (zero weight): the real positions'
    log-probs and every gradient stay within the unpadded float64 reference's bound (the padded run sums more
    zero terms, in other chunks), and the padded positions' hidden states get exactly zero gradient."""
    torch.manual_seed(0)
    toy = Toy(tied=True, bias=False, lora=True)
    ids, labels, w_logps, w_entropy = batch(2, width=5)
    ref = reference(toy, ids, labels, w_logps, w_entropy, 0.8)
    bound = bound_of(toy, ids, labels, w_logps, w_entropy, 0.8, ref, num_tokens=18)        # the padded run's
    pad = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(3))
    padded = ours(toy, torch.cat([ids, pad], 1), torch.cat([labels, pad.flip(0)], 1),
                  torch.cat([w_logps, torch.zeros(2, 4)], 1), torch.cat([w_entropy, torch.zeros(2, 4)], 1), 0.8, 3)
    assert (padded["hidden"][:, 5:] == 0).all()
    real = {k: (v[:, :5] if k in ("logps", "entropy", "hidden") else v) for k, v in padded.items()}
    assert_within(real, ref, bound)


def test_without_gradients_nothing_is_checkpointed_and_values_are_the_same():
    toy = Toy(tied=False, bias=True, lora=False)
    ids, labels, _, _ = batch(4)
    with_grad = hidden_token_logps(toy.embed(ids), toy.head, labels, 0.9, 4, entropy=True)
    with torch.no_grad():
        without = hidden_token_logps(toy.embed(ids), toy.head, labels, 0.9, 4, entropy=True)
    assert with_grad[0].requires_grad and with_grad[1].requires_grad and not without[0].requires_grad
    assert torch.equal(with_grad[0], without[0]) and torch.equal(with_grad[1], without[1])   # one computation
    assert hidden_token_logps(toy.embed(ids), toy.head, labels, 0.9, 4)[1] is None


def record_output_layer(monkeypatch, vocab: int) -> list[tuple[int, ...]]:
    """The output shapes of every ``torch.nn.functional.linear`` call with ``vocab`` outputs from now on: the
    output layer's, called as a module or by the chunked path's own function, in the forward and in the backward's
    recomputation."""
    calls, linear = [], torch.nn.functional.linear

    def recorded(*args, **kwargs):
        out = linear(*args, **kwargs)
        if out.shape[-1] == vocab:
            calls.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", recorded)
    return calls


@pytest.mark.parametrize("chunk, calls", [(1024, 1), (4, 8)])
def test_the_output_layer_is_recomputed_only_when_there_is_more_than_one_chunk(chunk, calls, monkeypatch):
    """14 tokens: in one chunk the logits are kept for the backward (one call of the output layer in all); in
    chunks of 4 each of the 4 chunks is called in the forward and again in the backward."""
    toy = Toy(tied=False, bias=True, lora=False)
    ids, labels, w_logps, w_entropy = batch(1)
    seen = record_output_layer(monkeypatch, toy.head.out_features)
    logps, entropy = hidden_token_logps(toy.embed(ids), toy.head, labels, 0.9, chunk, entropy=True)
    (logps * w_logps + entropy * w_entropy).sum().backward()
    assert len(seen) == calls and toy.head.weight.grad is not None


def test_the_chunks_weight_gradients_reach_the_parameter_once_summed():
    """A plain ``Linear`` output layer in 4 chunks: its weight and bias get one gradient, the sum of the chunks'
    (the hook on the parameter fires once; what it receives is the gradient of the one-chunk call, float32
    rounding apart: ~14 terms of size ~1, so 1e-5), and a second backward of the same graph gets it again."""
    toy = Toy(tied=False, bias=True, lora=False)
    ids, labels, w_logps, w_entropy = batch(1)
    hidden = toy.embed(ids).detach()
    grads = {}
    for chunk in (1024, 4):
        received = {"weight": [], "bias": []}
        hooks = [getattr(toy.head, name).register_hook(got.append) for name, got in received.items()]
        logps, entropy = hidden_token_logps(hidden, toy.head, labels, 0.9, chunk, entropy=True)
        loss = (logps * w_logps + entropy * w_entropy).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        for hook in hooks:
            hook.remove()
        assert [len(got) for got in received.values()] == [2, 2]        # once per backward each
        grads[chunk] = received
    for name in ("weight", "bias"):
        for one, chunked in zip(grads[1024][name], grads[4][name]):
            assert_close(chunked, one, rtol=0, atol=1e-5)


@pytest.mark.parametrize("head", ["untied", "tied", "bias"])
def test_a_second_micro_batch_adds_into_the_existing_gradient_in_place(head):
    """Gradient accumulation over two micro-batches in chunks of 4: the first backward hands the output layer's
    weight one summed gradient, the second adds straight into ``.grad`` and hands autograd a stride-0 zero view
    (no ``[V, H]`` buffer; tied, the embedding's gradient is added to it, so what arrives is dense). Every
    parameter's ``.grad`` is the float64 sum of both micro-batches' gradients, within the sum of their float32
    bounds. Then ``torch.autograd.grad`` of a third batch returns its own gradient and leaves ``.grad`` as it was."""
    toy = Toy(**HEADS[head])
    micro = [batch(1), batch(2)]
    incoming = []
    accumulator = get_gradient_edge(toy.head.weight).node               # held: the parameter holds it weakly
    accumulator.register_prehook(lambda grads: incoming.append(grads[0]))
    for ids, labels, w_logps, w_entropy in micro:
        logps, entropy = hidden_token_logps(toy.embed(ids), toy.head, labels, 0.9, 4, entropy=True)
        (logps * w_logps + entropy * w_entropy).sum().backward()
    assert len(incoming) == 2 and incoming[0].stride() != (0, 0)
    assert (incoming[1].stride() == (0, 0)) is (head != "tied")
    refs = [reference(toy, *b, 0.9) for b in micro]
    bounds = [bound_of(toy, *b, 0.9, r) for b, r in zip(micro, refs)]
    for name, p in toy.named_parameters():
        err = (p.grad.double() - refs[0][name] - refs[1][name]).abs()
        assert (err <= 2 * (bounds[0][name] + bounds[1][name])).all(), name
    accumulated = {name: p.grad.clone() for name, p in toy.named_parameters()}
    third = batch(3)
    got, ref = ours(toy, *third, 0.9, 4), reference(toy, *third, 0.9)
    assert_within({k: v for k, v in got.items() if k in accumulated}, ref, bound_of(toy, *third, 0.9, ref))
    for name, p in toy.named_parameters():
        assert torch.equal(p.grad, accumulated[name]), name             # the same tensors, untouched


def test_chunks_under_bfloat16_autocast_give_the_one_chunk_gradients():
    """``bf16-mixed`` training: the output layer runs in bfloat16 inside each chunk, the float32 parameters get
    float32 gradients, the same as one chunk's up to bfloat16 rounding (8 significant bits: each per-chunk
    product is rounded where one chunk's is rounded once, so 2^-8 of the largest entry, times 2 for margin)."""
    toy = Toy(tied=False, bias=True, lora=False)
    ids, labels, w_logps, w_entropy = batch(1)
    hidden = toy.embed(ids).detach().requires_grad_()
    grads = []
    for chunk in (1024, 4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps, entropy = hidden_token_logps(hidden, toy.head, labels, 0.9, chunk, entropy=True)
        grads.append(torch.autograd.grad((logps * w_logps + entropy * w_entropy).sum(),
                                         [hidden, toy.head.weight, toy.head.bias]))
    for one, chunked in zip(*grads):
        assert chunked.dtype == one.dtype == torch.float32
        assert_close(chunked, one, rtol=0, atol=2 * 2**-8 * one.abs().max().item())


def test_token_logps_entropy_gradients_match_float64():
    """The logits-level function inside each chunk: log-probs and entropy and the gradient w.r.t. the logits of
    a loss reading one or both (``(onehot - p) / T`` and ``-p (log p + H) / T``), on float64 logits against
    float64 log_softmax. The float32 logits are off by at most 2u |z| (the cast and the division by T); the
    gradient is the bound's ``gz`` plus 2u |gz|_abs (the division and the scatter) over T."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 4), generator=g)
    w, w_h = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    logps, entropy = token_logps_entropy(logits, labels, 0.7, chunk_size=5)
    logp = torch.log_softmax(logits / 0.7, -1)
    ref_logps, ref_entropy = logp.gather(-1, labels[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    z = logits.detach() / 0.7
    for weights in [(w, torch.zeros_like(w_h)), (torch.zeros_like(w), w_h), (w, w_h)]:
        bound = softmax_bounds(z, 2 * U * z.abs(), labels, *weights)
        (grad,) = torch.autograd.grad((logps * weights[0] + entropy * weights[1]).sum(), logits, retain_graph=True)
        (ref_grad,) = torch.autograd.grad((ref_logps * weights[0] + ref_entropy * weights[1]).sum(), logits,
                                          retain_graph=True)
        assert_within({"logps": logps, "entropy": entropy, "grad": grad},
                      {"logps": ref_logps, "entropy": ref_entropy, "grad": ref_grad},
                      {"logps": bound["logps"], "entropy": bound["entropy"],
                       "grad": (bound["gz"] + 2 * U * bound["gz_abs"]) / 0.7})


# ------------------------------------------------------------------------------------------ the policy's forward
def forward_and_grads(policy: Policy, args, chunk: int | None, **kwargs):
    """Log-probs, entropy, hidden states and the gradient of a loss reading all three, with the output layer in
    chunks of ``chunk`` tokens (``None``: [B, C, V] logits)."""
    policy.logps_chunk_tokens = chunk
    mask = args[3]
    weights = torch.randn(*mask.shape, policy.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    out = policy(*args, temperature=0.7, entropy=True, hidden=True, **kwargs)
    loss = ((out.logps + 0.5 * out.entropy + (out.hidden * weights).sum(-1)) * mask).sum()
    params = [p for p in policy.model.parameters() if p.requires_grad]
    return out, torch.autograd.grad(loss, params)


def probe_args(policy: Policy):
    """Two prompts of different lengths, the first with two samples (a group, for the shared prompt forward),
    completions of different lengths."""
    prompts = ["numbers [1, 2] target 3: "] * 2 + ["Using the numbers [10, 4, 7], create an equation that equals 42.\n"]
    return (*policy.encode_prompts(prompts, 32),
            *policy.encode_completions(["<answer>1 + 2</answer>", "3", "<answer>(10 - 4) * 7</answer> more"]))


def absolute(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` with every parameter made non-negative: run on |inputs|, it gives each output's
    sum of |terms|."""
    module = copy.deepcopy(module).double()
    with torch.no_grad():
        for p in module.parameters():
            p.abs_()
    return module


def assert_same_forward(policy: Policy, chunk: int = 5) -> None:
    """Chunked and materialised: the decoder is the same computation (hidden states bitwise equal); the output
    layer's matmuls differ in shape and the log-softmax in chunking, so each path's log-probs and entropy are
    within :func:`softmax_bounds` of the exact ones (logits off by at most (H + 2r + 3) u |z|_abs), and the two
    within twice that, doubled for second-order terms. A gradient entry sums the batch's n tokens' terms; each
    term is linear in its token's logit gradient, off by at most (delta + (V + H) u) relative in either path, and
    (test_modules' premise) no larger than the largest gradient entry, so entries agree to
    (delta / u + V + H + n) u max|grad|."""
    args = probe_args(policy)
    (full, full_grads), (chunked, chunked_grads) = (forward_and_grads(policy, args, c) for c in (None, chunk))
    mask = args[3]
    assert full.logits is None and chunked.logits is None              # [B, C, V] logits only when asked
    assert torch.equal(chunked.hidden, full.hidden)
    head, hidden = policy.model.get_output_embeddings(), full.hidden.detach().double()
    with torch.no_grad():
        z, z_abs = copy.deepcopy(head).double()(hidden) / 0.7, absolute(head)(hidden.abs()) / 0.7   # [B, C, V]
    width, rank = hidden.shape[-1], 4 if policy.is_lora else 0
    bound = softmax_bounds(z, (width + 2 * rank + 3) * U * z_abs, args[2], torch.ones_like(mask), torch.ones_like(mask))
    for name in ("logps", "entropy"):
        err = ((getattr(chunked, name) - getattr(full, name)).abs() * mask).double()
        assert (err <= 4 * bound[name]).all(), (name, err.max(), bound[name].max())
    n, vocab = int(args[1].sum() + mask.sum()), z.shape[-1]
    scale = max(g.abs().max().item() for g in full_grads)
    atol = (bound["logps"].max().item() / U + vocab + width + n) * U * scale
    for a, b in zip(full_grads, chunked_grads):
        assert_close(b, a, rtol=0, atol=atol)


def untied_policy(tiny_model_dir: str) -> Policy:
    torch.manual_seed(0)
    config = LlamaConfig.from_pretrained(tiny_model_dir, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).train()
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    return Policy(model, AutoTokenizer.from_pretrained(tiny_model_dir))


@pytest.mark.parametrize("kind", ["tied", "untied", "lora", "gradient_checkpointing", "shared_prompt"])
def test_the_chunked_forward_is_the_materialised_one(tiny_model_dir, kind):
    """The policy's forward with the output layer in chunks of 5 tokens (not dividing the batch's) against the
    one with [B, C, V] logits: the tiny model (tied embeddings), an untied one, LoRA on ``lm_head`` too (the
    adapter's A and B get their gradients, and the reference, adapter disabled, is the base model), gradient
    checkpointing, and the shared prompt forward."""
    torch.manual_seed(0)
    if kind == "untied":
        policy = untied_policy(tiny_model_dir)
    elif kind == "lora":
        policy = Policy.load(tiny_model_dir, lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "lm_head"]))
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        assert "lora" in type(policy.model.get_output_embeddings()).__module__
    else:
        policy = Policy.load(tiny_model_dir, gradient_checkpointing=kind == "gradient_checkpointing")
        policy.shared_prompt_forward = kind == "shared_prompt"
    assert_same_forward(policy)
    if kind == "lora":
        names = [n for n, p in policy.model.named_parameters() if p.requires_grad]
        assert any("lm_head.lora_A" in n for n in names) and any("lm_head.lora_B" in n for n in names)
        args = probe_args(policy)
        base = Policy.load(tiny_model_dir)
        assert_close(policy.reference_logps(*args), base.logps(*args)[0].detach(), rtol=0, atol=1e-5)


def test_no_output_layer_call_sees_more_than_a_chunk_and_nothing_saved_is_vocabulary_wide(policy, monkeypatch):
    """The model's own output layer call gets one position per row; every other, forward or the backward's
    recomputation, gets at most ``logps_chunk_tokens`` positions; no tensor saved for the backward outside the
    checkpointed chunks has a vocabulary-wide last dimension but the output layer's weight (``[H, V]``, as the
    matmul saves it). So no [B, C, V] logits exist."""
    policy.logps_chunk_tokens = 4
    args = probe_args(policy)
    vocab, rows = policy.model.config.vocab_size, args[0].shape[0]
    saved = []
    calls = record_output_layer(monkeypatch, vocab)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = policy(*args, entropy=True)
    (out.logps.sum() + out.entropy.sum()).backward()
    assert calls[:2] == [(1, 1, vocab)] * 2                             # the probe (the model's, the check's), once
    assert calls[2] == (rows, 1, vocab)                                 # the model's own: one position per row
    assert all(len(s) == 2 and s[0] <= 4 for s in calls[3:]) and len(calls) > 5
    width = policy.model.config.hidden_size
    assert not [s for s in saved if s and s[-1] == vocab and tuple(s) != (width, vocab)], saved


def test_a_large_vocabulary_takes_fewer_tokens_per_chunk(policy, monkeypatch):
    """A chunk's logits stay within ``CHUNK_LOGITS`` (at Qwen2.5's 151,936 tokens: 220 positions of the 1024
    asked): with the budget cut to three positions' worth, every output-layer call of the forward and the
    backward's recomputation gets at most three positions, and the values are the one-chunk ones (other matmul
    shapes sum in other orders: a few float32 ulps of values of size ~4, so 1e-5)."""
    import lit_rl.logprobs as logprobs

    args = probe_args(policy)
    whole = policy(*args, entropy=True)
    vocab = policy.model.config.vocab_size
    monkeypatch.setattr(logprobs, "CHUNK_LOGITS", 3 * vocab + 1)
    calls = record_output_layer(monkeypatch, vocab)
    cut = policy(*args, entropy=True)
    (cut.logps.sum() + cut.entropy.sum()).backward()
    chunked = [s for s in calls if len(s) == 2]
    assert chunked and max(s[0] for s in chunked) == 3
    assert_close(cut.logps, whole.logps, rtol=0, atol=1e-5)
    assert_close(cut.entropy, whole.entropy, rtol=0, atol=1e-5)


def test_a_model_whose_logits_are_capped_keeps_the_materialised_path(tiny_model_dir):
    """Gemma 2 caps its logits (``tanh(z / c) c``) after the output layer: the forward says so once and takes
    its log-probs from the model's own logits."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, head_dim=16, final_logit_softcapping=0.5,
                          pad_token_id=tokenizer.pad_token_id)
    policy = Policy(Gemma2ForCausalLM(config).train(), tokenizer)
    args = probe_args(policy)
    with pytest.warns(UserWarning, match="logits are not its output layer applied to the last hidden state"):
        logps = policy.logps(*args)[0]
    ids = torch.cat([args[0], args[2]], 1)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert not logits_are_head_of_hidden(policy.model, ids)
        policy.logps(*args)
    assert not [w for w in again if "logits are not its output layer" in str(w.message)]     # said once per model
    logits = policy.model(input_ids=ids, attention_mask=torch.cat([args[1], args[3]], 1),
                          position_ids=(torch.cat([args[1], args[3]], 1).cumsum(-1) - 1).clamp(min=0)).logits
    assert logits.abs().max() <= 0.5                                    # capped
    expected = token_logps(logits[:, args[0].shape[1] - 1:-1], args[2])
    assert_close(logps, expected, rtol=0, atol=1e-6)
    assert logits_are_head_of_hidden(Policy.load(tiny_model_dir).model, ids)


def test_logits_are_computed_only_when_asked(policy):
    args = probe_args(policy)
    out = policy(*args, entropy=True, logits=True)
    assert out.logits.shape == (*args[2].shape, policy.model.config.vocab_size) and out.logits.requires_grad
    logps, entropy = token_logps_entropy(out.logits, args[2])
    assert torch.equal(out.logps, logps) and torch.equal(out.entropy, entropy)    # from these very logits
    assert policy(*args).logits is None


SEEN_LOGITS: list[torch.Size] = []


@dataclass(frozen=True)
class EntropyOfLogits(TokenLoss):
    """A loss that reads the logits themselves, and says so."""

    needs_logits: ClassVar[bool] = True

    def __call__(self, output, batch, values=None):
        SEEN_LOGITS.append(output.logits.shape)
        return -output.logps - 0.01 * entropy_with_grad(output.logits), None


def test_a_loss_that_needs_logits_gets_them_and_one_that_does_not_gets_none(tiny_model_dir):
    torch.manual_seed(0)
    module = GRPO(model=tiny_model_dir, reward=CountdownReward(), group_size=2, loss=EntropyOfLogits(),
                  sampling=Sampling(temperature=1.0, max_new_tokens=8))
    assert module.needs_logits
    fit(module, CountdownData(batch_size=2, train_size=8, val_size=4), 1)
    assert SEEN_LOGITS and SEEN_LOGITS[-1][-1] == module.policy.model.config.vocab_size
    with pytest.raises(ValueError, match="output.entropy is this entropy"):
        entropy_with_grad(module.policy(*probe_args(module.policy)).logits)


def test_the_benchmark_runs_on_a_tiny_shape():
    """``benchmarks/logprobs.py --quick``: both sides, each in its own process, and their ratios."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "logprobs.py"), "--quick"], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("chunked / logits: memory") == 2, out.stdout

"""Per-token log-probs and entropy without materialising a float32 ``[B, T, V]`` log-softmax, and, from the last
hidden states, without materialising ``[B, T, V]`` logits at all.

``log p(y_t) = z_{y_t} - logsumexp(z)`` with ``z = logits / temperature``, computed over row chunks of the
flattened ``[N, V]`` logits. The forward saves only the logits and one logsumexp (and entropy) per row; the
backward writes ``(onehot(y) - softmax(z)) * grad / temperature`` chunk by chunk into a single gradient buffer.

:func:`hidden_token_logps` goes one step further back: it takes the last hidden states ``[N, H]`` and the
model's output layer, and computes each chunk's ``[n, V]`` logits, uses them and drops them; the backward
recomputes them chunk by chunk. Peak extra memory is then a few ``[n, V]`` buffers instead of ``[N, V]``.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.autograd.graph import get_gradient_edge
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 20                                                # 4 MiB of float32 per chunk
CHUNK_TOKENS = 1024                                                     # tokens per output-layer chunk, at most
CHUNK_LOGITS = 1 << 25                                                  # logits per chunk, at most: 128 MiB float32


def _chunks(num_rows: int, vocab: int, chunk_size: int | None):
    step = chunk_size or max(1, CHUNK_ELEMENTS // vocab)
    return (slice(s, s + step) for s in range(0, num_rows, step))


class _TokenLogps(torch.autograd.Function):
    """Log-probs of ``labels`` and, with ``with_entropy``, the entropy, both differentiable. With
    ``H = -sum_v p_v log p_v``: ``dH/dz_v = -p_v (log p_v + H)``, and ``d log p_y / dz_v = onehot_y(v) - p_v``."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float, chunk_size: int | None,
                with_entropy: bool) -> Tensor | tuple[Tensor, Tensor]:
        flat, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        logps = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)     # [N]
        lse = torch.empty_like(logps)                                                       # [N]
        entropy = torch.empty_like(logps) if with_entropy else None                         # [N]
        for rows in _chunks(flat.shape[0], flat.shape[1], chunk_size):
            z = _scaled(flat[rows], temperature)                                            # [n, V]
            lse[rows] = torch.logsumexp(z, dim=-1)
            logps[rows] = z.gather(-1, flat_labels[rows, None]).squeeze(-1) - lse[rows]
            if with_entropy:
                logp = torch.sub(z, lse[rows, None])                                        # log softmax [n, V]
                entropy[rows] = -logp.exp().mul_(logp).sum(-1)
        ctx.save_for_backward(logits, labels, lse, *([entropy] if with_entropy else []))
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)                                # an unused output's gradient is None
        if with_entropy:
            return logps.view(labels.shape), entropy.view(labels.shape)
        return logps.view(labels.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps: Tensor | None, grad_entropy: Tensor | None = None):
        logits, labels, lse, *entropy = ctx.saved_tensors
        flat, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        g = None if grad_logps is None else grad_logps.reshape(-1).float()                 # [N]
        g_h = None if grad_entropy is None else grad_entropy.reshape(-1).float()           # [N]
        grad = torch.empty_like(flat)                                                       # [N, V], the logits' dtype
        in_place = grad.dtype == torch.float32                                              # else a float32 chunk
        for rows in _chunks(flat.shape[0], flat.shape[1], ctx.chunk_size):
            z = _scaled(flat[rows], ctx.temperature)
            logp = (torch.sub(z, lse[rows, None], out=grad[rows]) if in_place
                    else z.sub(lse[rows, None]))                                            # log softmax [n, V]
            if g_h is None:
                grad_z = logp.exp_().mul_(-g[rows, None])                                   # -p g
            else:
                p = logp.exp()
                grad_z = logp.add_(entropy[0][rows, None]).mul_(p).mul_(-g_h[rows, None])  # -p (log p + H) g_H
                if g is not None:
                    grad_z.sub_(p.mul_(g[rows, None]))                                      # - p g
            if g is not None:
                grad_z.scatter_add_(-1, flat_labels[rows, None], g[rows, None])             # + onehot(y) g
            grad_z.div_(ctx.temperature)
            if not in_place:
                grad[rows] = grad_z
        return grad.view_as(logits), None, None, None, None


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` in float32: the logits themselves (no copy) when that is what they already are."""
    z = logits.float()
    return z if temperature == 1.0 else z / temperature


def token_logps(logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """``log softmax(logits / temperature)`` at ``labels``: ``logits [B, T, V]``, ``labels [B, T]`` -> ``[B, T]``
    float32. ``chunk_size`` rows per chunk (default: about 4M logits per chunk)."""
    return _TokenLogps.apply(logits, labels, temperature, chunk_size, False)


def token_logps_entropy(logits: Tensor, labels: Tensor, temperature: float = 1.0,
                        chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """:func:`token_logps` and the entropy of ``softmax(logits / temperature)`` per position, ``[B, T]`` float32
    each, from one pass over the logits; both carry a gradient (an entropy bonus costs no second pass)."""
    return _TokenLogps.apply(logits, labels, temperature, chunk_size, True)


@torch.no_grad()
def token_entropy(logits: Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position, ``[B, T, V]`` -> ``[B, T]`` (no gradient)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for rows in _chunks(flat.shape[0], flat.shape[1], chunk_size):
        logp = torch.log_softmax(flat[rows].float() / temperature, dim=-1)                  # [n, V]
        out[rows] = -(logp.exp() * logp).sum(-1)
    return out.view(logits.shape[:-1])


class _SharedGrads:
    """The gradients of an output layer's weight and bias that the chunks of one :func:`hidden_token_logps` call add
    into, and how many chunks' backwards are still to come."""

    def __init__(self, chunks: int) -> None:
        self.chunks, self.left = chunks, chunks
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None


def _adds_into_grad(weight: Tensor) -> bool:
    """Whether this backward may add the weight's gradient straight into ``weight.grad``, and hand autograd zeros:
    the gradient exists already (a second micro-batch of gradient accumulation, or gradients zeroed rather than
    set to ``None``), it is a plain dense tensor of the weight's dtype, no tensor hook waits to see (or rewrite)
    the incoming gradient, and this backward accumulates into ``.grad`` (``backward()``, not ``torch.autograd.grad``
    nor ``backward(inputs=...)`` without the weight). Hooks that run after accumulation (DDP's, FSDP2's,
    ``register_post_accumulate_grad_hook``) see the whole sum either way."""
    if not weight.is_leaf or weight._backward_hooks:
        return False
    grad = weight.grad
    if grad is None or type(grad) is not Tensor or grad.layout != torch.strided or grad.dtype != weight.dtype \
            or grad.shape != weight.shape:
        return False
    try:
        return torch._C._will_engine_execute_node(get_gradient_edge(weight).node)
    except RuntimeError:                        # raised for a leaf under ``torch.autograd.grad``, which accumulates none
        return False


def _add_product(buffer: Tensor | None, a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """``buffer + a @ b``, in place when there is a buffer; a new tensor of ``dtype`` when there is none."""
    if buffer is None:
        return (a @ b).to(dtype)
    return buffer.addmm_(a, b) if a.dtype == buffer.dtype else buffer.add_(a @ b)


class _ChunkLinear(torch.autograd.Function):
    """``F.linear(hidden, weight, bias)`` for one chunk of several, whose backward adds the chunk's weight and bias
    gradients into ``shared``'s buffers in place (``addmm_``) and hands autograd their sums once, at the last
    chunk's backward. Autograd alone makes a whole ``[V, H]`` weight gradient per chunk and sums them out of place
    (three at once at the peak); here there is one, and the parameter's gradient hooks (DDP's, FSDP2's) fire once,
    with the whole gradient, as for one call. When the parameter already has a gradient (:func:`_adds_into_grad`),
    the chunks add straight into it and autograd gets zeros (a stride-0 view, no memory), so no ``[V, H]`` buffer
    exists at all beyond ``.grad``."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, shared: _SharedGrads) -> Tensor:
        ctx.save_for_backward(hidden, weight)
        ctx.shared, ctx.has_bias = shared, bias is not None
        ctx.weight = weight                                             # the parameter itself, for its ``.grad``
        return nn.functional.linear(hidden, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        hidden, weight = ctx.saved_tensors                              # [n, H], [V, H]; grad [n, V]
        shared, h = ctx.shared, hidden.to(grad.dtype)                   # autocast: the forward ran in grad's dtype
        if ctx.needs_input_grad[1]:
            if shared.weight is None and _adds_into_grad(ctx.weight):  # the first chunk's backward decides
                shared.weight = ctx.weight.grad
            shared.weight = _add_product(shared.weight, grad.t(), h, weight.dtype)     # [V, H], the weight's dtype
        if ctx.has_bias and ctx.needs_input_grad[2]:
            bias_grad = grad.sum(0).to(weight.dtype)                    # a Linear's bias has its weight's dtype
            shared.bias = bias_grad if shared.bias is None else shared.bias.add_(bias_grad)
        grad_hidden = (grad @ weight.to(grad.dtype)).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        shared.left -= 1
        if shared.left:
            return grad_hidden, None, None, None
        into_grad = shared.weight is not None and shared.weight is ctx.weight.grad
        grads = weight.new_zeros(()).expand_as(weight) if into_grad else shared.weight, shared.bias
        shared.left, shared.weight, shared.bias = shared.chunks, None, None             # a second backward anew
        return grad_hidden, *grads, None


def _head_chunk(hidden: Tensor, labels: Tensor, head: Callable[[Tensor], Tensor], temperature: float,
                entropy: bool) -> Tensor | tuple[Tensor, Tensor]:
    """One chunk: its logits ``[n, V]`` (the only ones that exist), log-probs and maybe entropy ``[n]``."""
    return _TokenLogps.apply(head(hidden), labels, temperature, hidden.shape[0], entropy)


def _chunk_head(head: nn.Module, chunks: int) -> Callable[[Tensor], Tensor]:
    """What each chunk calls: a plain ``Linear`` output layer through :class:`_ChunkLinear` (one weight gradient
    for all ``chunks``); any other module (PEFT's LoRA ``Linear``, a ``DTensor`` shard) as it is."""
    if type(head) is not nn.Linear or isinstance(head.weight, DTensor):
        return head
    shared = _SharedGrads(chunks)
    return lambda hidden: _ChunkLinear.apply(hidden, head.weight, head.bias, shared)


def hidden_token_logps(hidden: Tensor, head: nn.Module, labels: Tensor, temperature: float = 1.0,
                       chunk_tokens: int = CHUNK_TOKENS, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs ``[B, C]`` float32 of ``labels [B, C]`` under ``softmax(head(hidden) / temperature)``
    from the last hidden states ``hidden [B, C, H]``, ``chunk_tokens`` tokens at a time (fewer where the vocabulary
    would make a chunk's logits more than ``CHUNK_LOGITS``: 220 tokens at Qwen2.5's 151,936), so that no
    ``[B, C, V]`` logits ever exist; with ``entropy``, also the entropy ``[B, C]`` float32 of the same distributions. Both
    carry gradients to ``hidden`` and to ``head``'s parameters (an entropy bonus needs no logits either).

    ``head`` is the model's output layer (``model.get_output_embeddings()``): a ``Linear`` with or without a
    bias, tied to the input embedding or not, PEFT's LoRA ``Linear`` around it, or any module mapping
    ``[n, H]`` to ``[n, V]`` logits.

    How the backward works, and why this way: each chunk runs under ``torch.utils.checkpoint`` (non-reentrant):
    the forward keeps only the chunk's hidden states (already alive) and drops its logits; the backward calls
    ``head`` on the chunk again and autograd differentiates that call. A hand-written backward for the whole
    output layer would have to know the head: its weight and bias, LoRA's ``A``, ``B``, scaling and dropout, a
    weight shared with the input embedding, a ``DTensor`` shard. Calling the module instead gets all of these from
    the module and autograd, including the checkpoint's replay of the RNG state (LoRA dropout) and autocast; only
    a plain ``Linear`` (tied or not: the one parameter gets the sum of both uses) is called through
    :class:`_ChunkLinear`, for memory (below). Inside a chunk,
    the logits' own backward is :class:`_TokenLogps`'s (one ``[n, V]`` gradient buffer in the logits' dtype).
    Cost: the output layer's matmul runs once more per chunk in the backward. When every token fits in one chunk
    there is nothing to free: that chunk's logits (at most ``CHUNK_LOGITS`` floats) are kept for the backward
    and the matmul is not redone (a 12M-parameter model with a 32,000-word vocabulary spends more in its output
    layer than in its blocks). (Liger's fused linear cross-entropy saves the recomputation by computing the
    gradients during the forward, which needs the loss's gradient w.r.t. each log-prob then; here the log-probs go
    on into an arbitrary loss, so it is known only later.) Memory: autograd would make a whole ``[V, H]`` gradient
    of the output layer's weight per chunk and sum them out of place (three at once: 6.2 GiB at Qwen2.5-7B's
    output layer, more than 2048 tokens' logits save); a plain ``Linear`` layer is called through
    :class:`_ChunkLinear`, which adds every chunk's into one buffer in place, or straight into the weight's
    ``.grad`` when it already exists (a later micro-batch of gradient accumulation), so no ``[V, H]`` buffer at all.

    Sharded weights: ``head`` is called as a module (or, a plain ``Linear``, on its weight as it is then), so
    hooks on it run. FSDP2 registers no hook on the output layer (it belongs to the root's parameter group): the
    root keeps its parameters unsharded from its forward until its post-backward callback (torch's default
    ``reshard_after_forward`` for the root), so a call between the model's forward and its backward, as the
    policy's, sees the full weight (a plain tensor, not a ``DTensor``), and its gradient reaches the root's
    reduce-scatter (``tests/test_distributed.py``: 2 FSDP2 processes give 1 process's losses and weights).
    DeepSpeed ZeRO-3 gathers the weight in the module's pre-forward hook, once per chunk and again for each
    recomputation, and releases a frozen weight right after the recomputing call, before its backward reads it;
    the policy keeps ZeRO-3 on materialised logits (:meth:`lit_rl.policy.Policy.forward`).
    """
    flat, flat_labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)        # [N, H], [N]
    if flat.shape[0] == 0:
        empty = flat.new_zeros(labels.shape, dtype=torch.float32)
        return empty, empty.clone() if entropy else None
    trains = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    vocab = getattr(head, "out_features", None) or head(flat[:1]).shape[-1]
    chunk_tokens = max(1, min(chunk_tokens, CHUNK_LOGITS // vocab))     # a large vocabulary takes fewer tokens
    recompute = trains and flat.shape[0] > chunk_tokens                 # one chunk: its logits are kept, not redone
    project = _chunk_head(head, -(-flat.shape[0] // chunk_tokens)) if recompute else head
    parts = []
    for start in range(0, flat.shape[0], chunk_tokens):
        args = (flat[start:start + chunk_tokens], flat_labels[start:start + chunk_tokens], project, temperature,
                entropy)
        part = checkpoint(_head_chunk, *args, use_reentrant=False) if recompute else _head_chunk(*args)
        parts.append(part if entropy else (part,))
    logps = torch.cat([p[0] for p in parts]).view(labels.shape)                         # [B, C]
    return logps, torch.cat([p[1] for p in parts]).view(labels.shape) if entropy else None

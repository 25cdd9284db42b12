"""FSDP2 sharding of the policy, applied by ``PolicyModule.configure_model`` under ``ModelParallelStrategy``;
what the modules need to know of DeepSpeed (its gradient norm, its clipping)."""

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn


class FSDP2(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as lit-rl uses it: FSDP2 over every process, no tensor parallelism.
    Its data-parallel size defaults to the world size, ``num_nodes x devices`` (Lightning's ``auto`` is the
    number of nodes, paired with tensor parallelism over each node's devices, which lit-rl does not do); the
    module shards the policy itself (``PolicyModule.configure_model``)."""

    def __init__(self, **kwargs: Any) -> None:
        for key in ("data_parallel_size", "tensor_parallel_size"):
            if key in kwargs:
                raise ValueError(f"lit_rl.FSDP2 sets {key} itself (the world size, and 1); use Lightning's "
                                 f"ModelParallelStrategy to set it")
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def fully_shard_blocks(model: nn.Module, mesh) -> None:
    """``fully_shard`` each transformer block of ``model`` (the classes a Hugging Face model lists in
    ``_no_split_modules``) over ``mesh``; what is left (embeddings, final norm, heads) belongs to the unit of the
    module sharded around them."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in base.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"{type(base).__name__} names no transformer block class in `_no_split_modules`: "
                         "lit-rl cannot tell which modules to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh)


def fully_shard_policy(model: nn.Module, mesh) -> nn.Module:
    """``fully_shard`` each transformer block, then the whole model, over ``mesh`` (the data-parallel
    dimension). Marks the model as FSDP-managed so ``generate`` keeps ranks in step (``synced_gpus``): every rank
    must run the same number of forwards."""
    from torch.distributed.fsdp import fully_shard

    fully_shard_blocks(model, mesh)
    fully_shard(model, mesh=mesh)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for m in {model, base}:
        m._is_fsdp_managed_module = True
    return model


def fully_shard_heads(module: nn.Module, policy: nn.Module, mesh) -> None:
    """``fully_shard`` every child of ``module`` with trainable parameters other than ``policy`` (a value head):
    its parameters become ``DTensor``s like the policy's, so one gradient-norm clip covers both, and its
    gradients are reduced over the ranks (``ModelParallelStrategy`` adds no data-parallel wrapper of its own).
    A child whose blocks are sharded already (PPO's critic) becomes the root unit around them."""
    from torch.distributed.fsdp import fully_shard

    for child in module.children():
        if child is not policy and any(p.requires_grad for p in child.parameters()):
            fully_shard(child, mesh=mesh)


def deepspeed_grad_norm(strategy: Any) -> Tensor | None:
    """The global gradient norm (before clipping) that DeepSpeed's engine computed in its last step, or ``None``
    outside DeepSpeed or before its first step. ZeRO keeps the gradients in its own partitions, so ``p.grad`` is
    ``None`` there and a norm over ``p.grad`` would read 0."""
    engine = getattr(strategy, "deepspeed_engine", None) if is_deepspeed(strategy) else None
    norm = engine.get_global_grad_norm() if engine is not None else None
    return None if norm is None else torch.as_tensor(float(norm))


def check_clipping(strategy: Any, max_grad_norm: float | None, setting: str = "max_grad_norm") -> None:
    """Refuse ``max_grad_norm`` under DeepSpeed, where Lightning's clipping does nothing: DeepSpeed clips by its
    own config's ``gradient_clipping``."""
    if max_grad_norm is not None and is_deepspeed(strategy):
        raise ValueError(f"{setting}: {max_grad_norm} would not clip under DeepSpeed, which clips the gradients "
                         f"itself: set model.init_args.{setting}: null and gradient_clipping in the strategy's "
                         "config (as cli_configs/strategies/deepspeed_zero2.yaml and deepspeed_zero3.yaml do)")


def is_deepspeed(strategy: Any) -> bool:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy)


def shards_parameters(strategy: Any) -> bool:
    """Whether ``strategy`` shards the parameters themselves (FSDP2, ZeRO-3), not only gradients and optimizer."""
    stage = (getattr(strategy, "config", None) or {}).get("zero_optimization", {}).get("stage", 0)
    return isinstance(strategy, ModelParallelStrategy) or (is_deepspeed(strategy) and stage == 3)


def gradient_sync(strategy: Any, last: bool) -> AbstractContextManager:
    """The context of a micro-batch's backward. Under DDP, the micro-batches of an optimizer step before its last
    add their gradients up on each rank (``no_sync``; Lightning then leaves DDP's reducer unprepared), and the last
    one's backward all-reduces the sum: one all-reduce of the gradients a step rather than one a micro-batch, for
    the same average (tested: the count of bucket reductions, and 2 DDP processes against one). FSDP2
    reduce-scatters every micro-batch's gradients (skipping it would keep each rank's whole unsharded gradient
    between micro-batches) and DeepSpeed reduces as its engine decides: for them, and for one process, this is
    nothing."""
    block = getattr(strategy, "block_backward_sync", None)              # Lightning's parallel strategies
    return nullcontext() if last or block is None else block()

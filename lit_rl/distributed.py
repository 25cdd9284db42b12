"""FSDP2 sharding of the policy, applied by ``PolicyModule.configure_model`` under ``ModelParallelStrategy``."""

from torch import nn


def fully_shard_policy(model: nn.Module, mesh) -> nn.Module:
    """``fully_shard`` each transformer block (the classes a Hugging Face model lists in ``_no_split_modules``),
    then the whole model, over ``mesh`` (the data-parallel dimension). Marks the model as FSDP-managed so
    ``generate`` keeps ranks in step (``synced_gpus``): every rank must run the same number of forwards."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in base.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"{type(base).__name__} names no transformer block class in `_no_split_modules`: "
                         "lit-rl cannot tell which modules to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in {model, base}:
        m._is_fsdp_managed_module = True
    return model

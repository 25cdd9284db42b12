"""The trained policy's weights as a plain Hugging Face model: LoRA merged, shards gathered.

Both the vLLM weight refresh and the end-of-training export read :func:`merged_state_dict`, so what vLLM
serves during training is exactly what ``hf_model/`` holds afterwards.
"""

from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager

import torch
from torch import Tensor, nn


def _full(t: Tensor) -> Tensor:
    """A sharded (FSDP2 ``DTensor``) parameter gathered to a plain tensor; a plain one as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def zero3_partitioned(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned ``model``'s parameters (each then holds an empty tensor and a
    ``ds_id``; the full values exist only inside ``deepspeed.zero.GatheredParameters``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def is_sharded(model: nn.Module) -> bool:
    """Whether reading ``model``'s full weights is a collective every rank must join (FSDP2 or ZeRO-3)."""
    return zero3_partitioned(model) or any(hasattr(p, "full_tensor") for p in model.parameters())


def gathered_parameters(params: list[nn.Parameter]) -> ContextManager:
    """DeepSpeed's ``GatheredParameters``, read-only: inside, ZeRO-3's partitions are full parameters (a
    collective: every rank enters it); nothing is written back."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _gathered(model: nn.Module) -> ContextManager:
    return gathered_parameters(list(model.parameters())) if zero3_partitioned(model) else nullcontext()


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Weights under the base model's own names (those in its ``model.safetensors``), detached.

    For a PEFT LoRA model each adapted weight is ``W + scale * B @ A`` (PEFT's ``get_delta_weight``), computed
    out of place: the training model is left as it is (``merge_adapter`` would change it in place, and
    unmerging does not restore it bit for bit). Under FSDP2 or ZeRO-3 every rank must call it (it gathers)."""
    copy = zero3_partitioned(model)                                     # a gathered parameter's storage is freed
    with _gathered(model):
        return {name: t.clone() if copy else t for name, t in _merged(model).items()}


@torch.no_grad()
def adapter_weights(model: nn.Module) -> dict[str, Tensor]:
    """A LoRA model's adapter weights under their state-dict names, full and copied out: what
    ``save_pretrained`` writes to ``adapter/``. Under FSDP2 or ZeRO-3 every rank must call it (it gathers)."""
    with _gathered(model):
        return {name: _full(t).detach().clone() for name, t in model.state_dict().items() if "lora_" in name}


def _merged(model: nn.Module) -> dict[str, Tensor]:
    if not hasattr(model, "get_base_model"):
        return {name: _full(t).detach() for name, t in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    out: dict[str, Tensor] = {}
    for prefix, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = _full(module.get_base_layer().weight).detach().clone()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight += module.get_delta_weight(adapter).to(weight.dtype)
            out[f"{prefix}.weight"] = weight
            if (bias := module.get_base_layer().bias) is not None:
                out[f"{prefix}.bias"] = _full(bias).detach()
    for name, t in base.state_dict().items():
        if "lora_" in name or ".base_layer." in name:
            continue                                                    # adapted weights are in `out` already
        out.setdefault(name, _full(t).detach())
    return out


def export_pretrained(model: nn.Module, tokenizer, out_dir: str | Path, state: dict[str, Tensor] | None = None,
                      adapter: dict[str, Tensor] | None = None) -> Path:
    """``save_pretrained`` a loadable model to ``out_dir``. Under LoRA also ``out_dir/adapter`` (the adapter alone,
    for PEFT) and the merged weights in ``out_dir`` itself, so ``from_pretrained(out_dir)`` in ``transformers``
    or ``LLM(out_dir)`` in vLLM loads the trained policy with no PEFT involved. ``state`` and ``adapter``: the
    weights to write (default :func:`merged_state_dict` and :func:`adapter_weights`); pass them when gathering
    them is a collective (:func:`is_sharded`), having gathered them on every rank."""
    out = Path(out_dir)
    lora = hasattr(model, "get_base_model")
    if lora:
        model.save_pretrained(out / "adapter", state_dict=adapter)
        tokenizer.save_pretrained(out / "adapter")
    if lora or state is not None:
        base = model.get_base_model() if lora else model
        state = state if state is not None else merged_state_dict(model)
        # A fresh model of the base class: no LoRA modules, no shards, so its names are the merged dict's.
        plain = type(base)(base.config)
        plain.load_state_dict(state)
        plain.to(next(iter(state.values())).dtype).save_pretrained(out)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(out)
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

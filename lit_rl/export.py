"""The trained policy's weights as a plain Hugging Face model: LoRA merged, shards gathered.

Both the vLLM weight refresh and the end-of-training export read :func:`merged_state_dict`, so what vLLM
serves during training is exactly what ``hf_model/`` holds afterwards.
"""

from pathlib import Path

import torch
from torch import Tensor, nn


def _full(t: Tensor) -> Tensor:
    """A sharded (FSDP2 ``DTensor``) parameter gathered to a plain tensor; a plain one as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Weights under the base model's own names (those in its ``model.safetensors``), detached.

    For a PEFT LoRA model each adapted weight is ``W + scale * B @ A`` (PEFT's ``get_delta_weight``), computed
    out of place: the training model is left as it is (``merge_adapter`` would change it in place, and
    unmerging does not restore it bit for bit)."""
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


def export_pretrained(model: nn.Module, tokenizer, out_dir: str | Path, state: dict[str, Tensor] | None = None) -> Path:
    """``save_pretrained`` a loadable model to ``out_dir``. Under LoRA also ``out_dir/adapter`` (the adapter alone,
    for PEFT) and the merged weights in ``out_dir`` itself, so ``from_pretrained(out_dir)`` in ``transformers``
    or ``LLM(out_dir)`` in vLLM loads the trained policy with no PEFT involved. ``state``: the weights to write
    (default :func:`merged_state_dict`); pass them when gathering them is a collective (FSDP2)."""
    out = Path(out_dir)
    lora = hasattr(model, "get_base_model")
    if lora:
        model.save_pretrained(out / "adapter")
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

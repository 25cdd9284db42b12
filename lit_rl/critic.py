"""PPO's separate critic: a transformer of its own with a linear value head read at every position, as the ReMax
paper's PPO, veRL's critic worker and OpenRLHF's critic have it (initialised, as OpenRLHF does, from a reward
model: its backbone and its score head), beside the policy rather than on the policy's trunk."""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from lit_rl.policy import LoraSettings, check_model_kwargs, locate_model, sequence_inputs


@dataclass
class CriticSettings:
    """A separate critic for :class:`~lit_rl.PPO`: where its weights come from and how it trains."""

    model: str | None = None
    """A directory, a hub id or ``builtin:NAME``: a reward model (its backbone and one-label score head, as
    OpenRLHF initialises the critic), or any causal LM (its backbone, with a new zero head: the first
    advantages are then the plain returns). ``None``: the policy's own ``model``, i.e. its starting weights."""
    lr: float | None = None
    """The critic's learning rate (``None``: the policy's). It is a parameter group of the policy's optimizer."""
    weight_decay: float | None = None
    """The critic's weight decay (``None``: the optimizer's)."""
    max_grad_norm: float | None = 1.0
    """Clip the critic's gradient norm on its own (``None``: no clipping; ``train/critic_grad_norm`` is logged)."""
    warmup_steps: int = 0
    """The first optimizer steps train the critic alone: the policy runs no forward and is not stepped."""
    lora: LoraSettings | None = None
    """Train LoRA adapters on the critic's backbone (its value head trains in full) instead of all its weights."""
    gradient_checkpointing: bool = False
    """Trade compute for the critic's activation memory."""

    def __post_init__(self) -> None:
        for name, ok in (("lr", self.lr is None or self.lr > 0), ("warmup_steps", self.warmup_steps >= 0),
                         ("weight_decay", self.weight_decay is None or self.weight_decay >= 0),
                         ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0)):
            if not ok:
                raise ValueError(f"critic.{name}: {getattr(self, name)} is out of range")

    def param_group(self, params: list[nn.Parameter]) -> dict[str, Any]:
        """The critic's parameter group in the policy's optimizer: its parameters and the settings it overrides."""
        overrides = {"lr": self.lr, "weight_decay": self.weight_decay}
        return {"params": params, **{k: v for k, v in overrides.items() if v is not None}}


torch.serialization.add_safe_globals([CriticSettings])                  # saved with the hyperparameters


def value_head_of(model: PreTrainedModel) -> nn.Linear:
    """The one-label head of a sequence-classification model: its one child beside the backbone (``score`` in
    Llama, Qwen2, Mistral, Gemma, GPT-2), a linear layer to one output."""
    backbone = model.base_model
    heads = [m for m in model.children() if m is not backbone and any(True for _ in m.parameters())]
    if len(heads) != 1 or not isinstance(heads[0], nn.Linear) or heads[0].out_features != 1:
        raise ValueError(f"{type(model).__name__} has no single one-output linear head beside its backbone; "
                         f"a critic needs one (found {[type(h).__name__ for h in heads]})")
    return heads[0]


def check_vocabulary(name: str, path: str, tokenizer: Any) -> None:
    """Refuse a critic whose own tokenizer (when it has one) maps tokens to other ids than the policy's."""
    try:
        own = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):                                       # no tokenizer saved: nothing to compare
        return
    if own.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"critic {name!r} has a tokenizer of its own that differs from the policy's "
                         f"({len(own)} against {len(tokenizer)} tokens, or other ids): the critic reads the "
                         f"policy's token ids, so it must share the policy's vocabulary (initialise it from a "
                         f"reward model trained on the policy's tokenizer, or from the policy)")


class Critic(nn.Module):
    """``V(s_t)`` for every completion position: the backbone's last hidden state at the position that predicts
    token ``t`` (like the policy's logits), through the linear value head. ``model`` is the whole
    sequence-classification model (so it exports as one, and loads back as a critic or a reward model); the
    forward calls its backbone and its head as two modules, never its pooled forward."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def load(cls, name_or_path: str, dtype: str = "float32", lora: LoraSettings | None = None,
             gradient_checkpointing: bool = False, model_kwargs: dict[str, Any] | None = None,
             tokenizer: Any = None) -> "Critic":
        """The critic from ``name_or_path`` (:attr:`CriticSettings.model`). It reads the policy's token ids, so a
        tokenizer saved beside it must be the policy's ``tokenizer`` (same vocabulary), or it is refused."""
        path = locate_model(name_or_path)
        if tokenizer is not None:
            check_vocabulary(name_or_path, path, tokenizer)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=getattr(torch, dtype), output_loading_info=True,
            **check_model_kwargs(model_kwargs))
        head = value_head_of(model)
        if any(key.startswith(f"{name}.") for key in info["missing_keys"] for name, m in model.named_children()
               if m is head):                                           # a causal LM: the head is new
            nn.init.zeros_(head.weight)
            if head.bias is not None:
                nn.init.zeros_(head.bias)
        model.train()
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            name = next(n for n, m in model.named_children() if m is head)
            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=lora.target_modules, exclude_modules=[name])
            model = get_peft_model(model, config)
            head.requires_grad_(True)                                   # the head trains in full beside the adapters
        return cls(model)

    @property
    def base(self) -> PreTrainedModel:
        """The sequence-classification model itself (under LoRA, with its adapters in place)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                temperature: float = 1.0) -> Tensor:
        """Values ``[B, C]`` in float32, with gradient (``temperature`` is unused: the signature of
        ``RLModule._rowwise``'s functions)."""
        ids, attention, positions = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
        base = self.base
        hidden = base.base_model(input_ids=ids, attention_mask=attention, position_ids=positions,
                                 use_cache=False).last_hidden_state      # [B, P+C, H]
        hidden = hidden[:, -completion_ids.shape[1] - 1:-1]             # [B, C, H]: position t-1 reads token t
        head = value_head_of(base)
        with torch.autocast(hidden.device.type, enabled=False):         # values and GAE in the head's dtype
            return head(hidden.to(head.weight.dtype)).squeeze(-1).float()   # [B, C]

    @torch.no_grad()
    def values(self, *args: Tensor) -> Tensor:
        """:meth:`forward` without gradient (a rollout's values)."""
        return self(*args)

"""RewardModelTraining: a Bradley-Terry reward model trained on preference pairs, exported for ``RewardModel``."""

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_rl.chat import ChatTemplate
from lit_rl.modules.policy_module import check_finite, optimizers
from lit_rl.objectives import PairMode, bradley_terry_loss, pairwise_accuracy, preference_pairs
from lit_rl.offline import StoredGroups
from lit_rl.rewards.model import eos_to_append, load_reward_model, pad_right, reward_inputs


class RewardModelTraining(LightningModule):
    """Trains ``r(x, y)``, a sequence classifier with one label, so that ``sigmoid(r(x, y_c) - r(x, y_r))`` is the
    probability that ``y_c`` is preferred (Bradley-Terry; Ouyang et al. 2022, eq. 1).

    Data: :class:`lit_rl.OfflineData` batches of stored groups: preference pairs (``prompt``/``chosen``/
    ``rejected``, text or conversational: a group of two with rewards 1 and 0) or groups of scored completions
    (e.g. ``lit-rl generate`` output), which become pairs by reward (``pairs``, ``min_reward_gap``). Texts are
    built exactly as :class:`lit_rl.RewardModel` builds them (the same function), with the reward model's own
    tokenizer and template. Logged: ``train/loss``, ``train/rm_accuracy``, ``val/loss``, ``val/rm_accuracy``
    (held-out pairwise accuracy, 0.5 is chance) and ``val/rm_margin`` (mean ``r_c - r_r``). At the end of
    ``fit`` the model is saved with ``save_pretrained`` to ``<run dir>/hf_model``: ``RewardModel`` loads it.

    Departures from a plain pairwise loss:
      1. ``reward_gap_margin`` adds ``r_c* - r_r*`` (the data's reward difference) to the margin, Llama 2's
         rating-dependent margin with scores in place of ratings.
      2. A batch whose groups hold no pair (all completions tied or identical) is skipped, not a zero loss.
    """

    def __init__(
        self,
        model: str = "builtin:countdown-sft",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        dtype: str = "float32",
        pairs: PairMode = "all",
        min_reward_gap: float = 0.0,
        margin: float = 0.0,
        reward_gap_margin: bool = False,
        center_coef: float = 0.0,
        max_length: int | None = None,
        append_eos: bool = True,
        chat_template: ChatTemplate = "auto",
        system_prompt: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            model: the starting point: a reward model, or any base model (a causal LM gets a fresh one-label head).
            optimizer: e.g. ``torch.optim.AdamW`` with ``init_args.lr``.
            lr_scheduler: optional, stepped once per optimizer step.
            dtype: the dtype the weights are loaded in.
            pairs: from a scored group, ``all`` pairs with different rewards, or only ``best_worst``.
            min_reward_gap: only pairs whose rewards differ by more than this (e.g. 0.5: correct vs wrong, not a
                formatted wrong answer against a missing one).
            margin: a constant margin ``m`` in ``-log sigmoid(r_c - r_r - m)``.
            reward_gap_margin: add the data's reward difference to the margin.
            center_coef: weight of the centring term ``(r_c + r_r)^2`` (TRL's ``center_rewards_coefficient``).
            max_length: the longest text in tokens (the prompt is cut from the left; default: the context).
            append_eos: end each text with EOS, where the score is read (must match ``RewardModel``'s).
            chat_template: as ``RewardModel``'s, for this model's tokenizer.
            system_prompt: a system message for this model's template.
            chat_template_kwargs: extra variables for this model's template.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if margin < 0 or center_coef < 0:
            raise ValueError(f"margin and center_coef must be >= 0 (got {margin}, {center_coef})")
        self.model, self.tokenizer = load_reward_model(model, dtype, new_head=True)
        self.model.train().requires_grad_(True)
        self.optimizer_fn, self.lr_scheduler_fn = optimizer, lr_scheduler
        self.pairs, self.min_reward_gap = pairs, min_reward_gap
        self.margin, self.reward_gap_margin, self.center_coef = margin, reward_gap_margin, center_coef
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None)
        self.eos_id = eos_to_append(self.tokenizer, append_eos)
        self.chat = {"chat_template": chat_template, "system_prompt": system_prompt,
                     "chat_template_kwargs": chat_template_kwargs}

    def configure_optimizers(self) -> Any:
        return optimizers(self.optimizer_fn, self.lr_scheduler_fn, self.model.parameters())

    def scores(self, prompts: list[Any], completions: list[str]) -> Tensor:
        """``r(x, y)`` ``[N]`` of texts built as ``RewardModel`` builds them."""
        rows = reward_inputs(self.tokenizer, prompts, completions, self.chat, self.max_length, self.eos_id)
        ids, mask = pad_right(rows, self.tokenizer.pad_token_id, self.device)
        return self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float()  # [N]

    def pair_scores(self, batch: StoredGroups) -> tuple[Tensor, Tensor, Tensor] | None:
        """Scores of every pair's chosen and rejected completion ``[N]`` each, and the data's reward gaps ``[N]``;
        ``None`` when the batch holds no pair. Both sides of all pairs go through one forward."""
        prompts, chosen, rejected, gaps = [], [], [], []
        for prompt, completions, rewards in zip(batch.prompt, batch.completions, batch.rewards):
            for i, j in preference_pairs(completions, rewards, self.pairs, self.min_reward_gap):
                prompts.append(prompt)
                chosen.append(completions[i])
                rejected.append(completions[j])
                gaps.append(rewards[i] - rewards[j])
        if not prompts:
            return None
        r = self.scores(prompts + prompts, chosen + rejected)           # [2N]
        n = len(prompts)
        return r[:n], r[n:], torch.tensor(gaps, dtype=torch.float32, device=self.device)

    def loss(self, chosen: Tensor, rejected: Tensor, gaps: Tensor) -> Tensor:
        margin = self.margin + (gaps if self.reward_gap_margin else 0.0)
        return bradley_terry_loss(chosen, rejected, margin, self.center_coef).mean()

    def training_step(self, batch: StoredGroups, batch_idx: int) -> Tensor | None:
        scored = self.pair_scores(batch)
        if scored is None:                                              # all ties: nothing to learn
            return None
        loss = self.loss(*scored)
        check_finite(loss, "loss", self.global_step)
        n = len(scored[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/rm_accuracy", pairwise_accuracy(scored[0], scored[1]), prog_bar=True, batch_size=n)
        self.log("train/pairs", float(n), batch_size=1)
        return loss

    def validation_step(self, batch: StoredGroups, batch_idx: int) -> None:
        scored = self.pair_scores(batch)
        if scored is None:
            return
        chosen, rejected, gaps = scored
        n = len(chosen)
        self.log("val/loss", self.loss(chosen, rejected, gaps), batch_size=n)
        self.log("val/rm_accuracy", pairwise_accuracy(chosen, rejected), prog_bar=True, batch_size=n)
        self.log("val/rm_margin", (chosen - rejected).mean(), batch_size=n)

    def on_train_end(self) -> None:
        """Save the reward model (with its tokenizer and pad id) to ``<run dir>/hf_model`` for ``RewardModel``."""
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if log_dir is not None and self.trainer.is_global_zero:
            self.save_pretrained(f"{log_dir}/hf_model")

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

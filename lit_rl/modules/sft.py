"""SFT: supervised warm start on demonstrations."""

from typing import Any

from lightning.pytorch.utilities import grad_norm
from torch import Tensor

from lit_rl.modules.policy_module import PolicyModule, check_finite
from lit_rl.objectives import aggregate, sft_loss


class SFT(PolicyModule):
    """Changes the base's objective to the token-mean NLL of demonstration completions
    (Off-Policy Finetuning for LLM Math Reasoning eq. 1). Uses Lightning's automatic optimization, so
    ``accumulate_grad_batches``
    and ``gradient_clip_val`` of the Trainer apply as usual."""

    def loss(self, batch: dict[str, list]) -> Tensor:
        completion_ids, completion_mask = self.policy.encode_completions(batch["completion"])
        prompt_ids, prompt_mask = self.sampler.encode(batch["prompt"], completion_ids.shape[1])
        logps, _ = self.policy.logps(prompt_ids, prompt_mask, completion_ids, completion_mask)
        return aggregate(sft_loss(logps), completion_mask, "token_mean")

    def training_step(self, batch: dict[str, list], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        check_finite(loss, "loss", self.global_step)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["completion"]))
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.log("train/grad_norm", grad_norm(self.policy, norm_type=2)["grad_2.0_norm_total"])

"""PPO: a value head, GAE advantages per token, the clipped surrogate and a clipped value loss."""

from typing import Any

from torch import Tensor

from lit_rl.modules.base import RLModule
from lit_rl.modules.heads import ValueHead, capture_output
from lit_rl.objectives import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    length_adaptive_lambda,
    outcome_token_rewards,
    whiten,
)
from lit_rl.rollout import RolloutBatch


def ppo_advantages(rollout: RolloutBatch, values: Tensor, gamma: float, lam: float,
                   adaptive_lambda_alpha: float | None, critic_lambda: float,
                   whiten_advantages: bool) -> tuple[Tensor, Tensor]:
    """Per-token advantages (policy lambda: ``lam`` or VAPO's length-adaptive one) and value targets
    (``critic_lambda``, 1 by default: the Monte Carlo return) of a scored rollout. Shared with ERPD's PPO teacher."""
    mask = rollout.completion_mask
    token_rewards = outcome_token_rewards(rollout.rewards, mask)         # [B, C]
    policy_lam = lam if adaptive_lambda_alpha is None else length_adaptive_lambda(mask.sum(-1), adaptive_lambda_alpha)
    advantages, _ = gae(token_rewards, values, mask, gamma, policy_lam)  # [B, C]
    _, returns = gae(token_rewards, values, mask, gamma, critic_lambda)  # [B, C]
    return (whiten(advantages, mask) if whiten_advantages else advantages), returns


class PPO(RLModule):
    """Changes the base's advantage to GAE over a learned value head and its loss to the PPO clip plus a
    clipped value loss (Schulman et al. 2017, eq. 7 and 9; GAE: Schulman et al. 2016).

    The outcome reward sits on the last completion token; ``gamma = lambda = 1`` (the defaults, as in ERPD
    sec. 4.1) make the advantage the return minus the value. Departures:
    1. The critic is a linear head on the policy's own last hidden state (a shared trunk), not a separate
       value model: one forward serves both, and its gradient flows into the trunk weighted by ``vf_coef``.
    2. ``adaptive_lambda_alpha`` uses VAPO's ``1 - 1 / (alpha * length)`` for the policy's lambda (ERPD's
       printed ``1 / (0.05 * length)`` exceeds 1 for short answers); the critic keeps ``critic_lambda`` (1).
    3. Value-head gradients are not included in ``max_grad_norm`` clipping (the policy's are).
    """

    def __init__(self, *, eps_low: float = 0.2, eps_high: float = 0.2, vf_coef: float = 0.5,
                 value_clip: float | None = 0.2, gamma: float = 1.0, lam: float = 1.0,
                 adaptive_lambda_alpha: float | None = None, critic_lambda: float = 1.0,
                 whiten_advantages: bool = True, num_iterations: int = 2, mini_batches: int = 1,
                 **kwargs: Any) -> None:
        """
        Args:
            eps_low, eps_high: the clip range ``[1 - eps_low, 1 + eps_high]``.
            vf_coef: weight of the value loss.
            value_clip: clip range of the value update around the rollout's values (``None``: unclipped).
            gamma, lam: GAE discount and lambda (1 and 1: return minus value).
            adaptive_lambda_alpha: policy lambda ``1 - 1 / (alpha * length)`` (VAPO uses 0.05); ``None``: ``lam``.
            critic_lambda: the lambda of the value targets.
            whiten_advantages: whiten the advantages over the batch's valid tokens.
            num_iterations, mini_batches: passes over each rollout and optimizer steps per pass.
        """
        for name, value in (("num_iterations", num_iterations), ("mini_batches", mini_batches)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1 (got {value})")
        for name, value in (("gamma", gamma), ("lam", lam), ("critic_lambda", critic_lambda)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1] (got {value})")
        if vf_coef < 0:
            raise ValueError(f"vf_coef must be >= 0 (got {vf_coef})")
        super().__init__(**kwargs)
        self.eps_low, self.eps_high, self.vf_coef, self.value_clip = eps_low, eps_high, vf_coef, value_clip
        self.gamma, self.lam, self.critic_lambda = gamma, lam, critic_lambda
        self.adaptive_lambda_alpha, self.whiten_advantages = adaptive_lambda_alpha, whiten_advantages
        self.num_iterations, self.mini_batches = num_iterations, mini_batches
        self.value_head = ValueHead(self.policy)
        self._captured: list = []

    def needs_old_logps(self, rollout: RolloutBatch) -> bool:
        return True                                                     # the value loss clips around stored values

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        optimizer = config["optimizer"] if isinstance(config, dict) else config
        optimizer.add_param_group({"params": list(self.value_head.parameters())})
        return config

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        rollout.values = self._rowwise(rollout, lambda *a: self.value_head.values(self.policy, *a))  # [B, C]
        advantages, rollout.returns = ppo_advantages(rollout, rollout.values, self.gamma, self.lam,
                                                     self.adaptive_lambda_alpha, self.critic_lambda,
                                                     self.whiten_advantages)
        self.log("rollout/value_mean", rollout.values.sum() / rollout.completion_mask.sum().clamp(min=1),
                 batch_size=len(rollout))
        return advantages

    def micro_loss(self, micro: RolloutBatch, normalisers: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        with capture_output(ValueHead.decoder(self.policy)) as self._captured:
            return super().micro_loss(micro, normalisers)

    def policy_loss(self, logps: Tensor, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        loss, clipped = clipped_policy_loss(logps, batch.old_logps, batch.advantages, self.eps_low, self.eps_high)
        values = self.value_head(self._captured[-1].last_hidden_state, logps.shape[1])       # [b, C]
        value_loss = clipped_value_loss(values, batch.values, batch.returns, self.value_clip)  # [b, C]
        return loss + self.vf_coef * value_loss, clipped

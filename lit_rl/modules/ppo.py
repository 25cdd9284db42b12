"""PPO: a value head, GAE advantages per token, the clipped surrogate and a clipped value loss."""

from typing import Any

from torch import Tensor

from lit_rl.losses import PPOClip
from lit_rl.modules.base import RLModule
from lit_rl.modules.heads import ValueHead
from lit_rl.objectives import ppo_advantages, ppo_returns
from lit_rl.policy import PolicyOutput
from lit_rl.rollout import RolloutBatch


class PPO(RLModule):
    """Changes the base's advantage to GAE over a learned value head and its loss to the PPO clip plus a
    clipped value loss (Schulman et al. 2017, eq. 7 and 9; GAE: Schulman et al. 2016).

    The outcome reward sits on the last completion token; ``gamma = lambda = 1`` (the defaults, as in ERPD
    sec. 4.1) make the advantage the return minus the value. Departures:
    1. The critic is a linear head on the policy's own last hidden state (a shared trunk), not a separate
       value model: one forward serves both, and its gradient flows into the trunk weighted by ``vf_coef``.
    2. ``adaptive_lambda_alpha`` uses VAPO's ``1 - 1 / (alpha * length)`` for the policy's lambda (ERPD's
       printed ``1 / (0.05 * length)`` exceeds 1 for short answers); the critic keeps ``critic_lambda`` (1).
    3. ``max_grad_norm`` clips the value head's gradients together with the policy's (one norm over the
       optimizer's parameters, through Lightning's ``clip_gradients``); ``train/grad_norm`` is the policy's.
    """

    def __init__(self, *, eps_low: float = 0.2, eps_high: float = 0.2, vf_coef: float = 0.5,
                 value_clip: float | None = 0.2, gamma: float = 1.0, lam: float = 1.0,
                 adaptive_lambda_alpha: float | None = None, critic_lambda: float = 1.0,
                 whiten_advantages: bool = True, num_iterations: int = 2, **kwargs: Any) -> None:
        """
        Args:
            eps_low, eps_high: the clip range ``[1 - eps_low, 1 + eps_high]``.
            vf_coef: weight of the value loss.
            value_clip: clip range of the value update around the rollout's values (``None``: unclipped).
            gamma, lam: GAE discount and lambda (1 and 1: return minus value).
            adaptive_lambda_alpha: policy lambda ``1 - 1 / (alpha * length)`` (VAPO uses 0.05); ``None``: ``lam``.
            critic_lambda: the lambda of the value targets.
            whiten_advantages: whiten the advantages over the batch's valid tokens.
            num_iterations: passes over each rollout (PPO's epochs; see ``RLModule``).

        The loss is ``lit_rl.losses.PPOClip(eps_low, eps_high, vf_coef, value_clip)``.
        """
        for name, value in (("gamma", gamma), ("lam", lam), ("critic_lambda", critic_lambda)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1] (got {value})")
        loss = PPOClip(eps_low, eps_high, vf_coef, value_clip)
        super().__init__(num_iterations=num_iterations, **kwargs)
        self.loss, self.needs_hidden = loss, loss.needs_hidden         # the value head reads the hidden state
        self.needs_logits = loss.needs_logits
        self.gamma, self.lam, self.critic_lambda = gamma, lam, critic_lambda
        self.adaptive_lambda_alpha, self.whiten_advantages = adaptive_lambda_alpha, whiten_advantages
        self.value_head = ValueHead(self.policy)

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        optimizer = config["optimizer"] if isinstance(config, dict) else config
        optimizer.add_param_group({"params": list(self.value_head.parameters())})
        return config

    def value_targets(self, rollout: RolloutBatch) -> tuple[Tensor, Tensor]:
        values = self._rowwise(rollout, lambda *a: self.value_head.values(self.policy, *a))       # [B, C]
        self.log("rollout/value_mean", values.sum() / rollout.loss_mask.sum().clamp(min=1), batch_size=len(rollout))
        return values, ppo_returns(rollout.rewards, values, rollout.loss_mask, self.gamma, self.critic_lambda)

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return ppo_advantages(rollout.rewards, rollout.values, rollout.loss_mask, self.gamma, self.lam,
                              self.adaptive_lambda_alpha, self.whiten_advantages)                 # [B, C]

    def token_loss(self, output: PolicyOutput, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        return self.loss(output, batch, self.value_head(output))

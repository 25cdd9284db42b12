"""PPO: a critic (a value head on the policy, or a separate network), GAE advantages per token, the clipped
surrogate and a clipped value loss."""

from typing import Any

import torch
from torch import Tensor

from lit_rl.critic import Critic, CriticSettings
from lit_rl.distributed import check_clipping, fully_shard_blocks
from lit_rl.export import export_pretrained, is_sharded, merged_state_dict
from lit_rl.losses import PPOClip
from lit_rl.modules.base import RLModule
from lit_rl.modules.policy_module import check_finite
from lit_rl.modules.heads import ValueHead
from lit_rl.objectives import aggregate, clipped_value_loss, ppo_advantages, ppo_returns
from lit_rl.policy import PolicyOutput
from lit_rl.rollout import RolloutBatch


class PPO(RLModule):
    """Changes the base's advantage to GAE over a learned value head and its loss to the PPO clip plus a
    clipped value loss (Schulman et al. 2017, eq. 7 and 9; GAE: Schulman et al. 2016).

    The outcome reward sits on the last completion token; ``gamma = lambda = 1`` (the defaults, as in ERPD
    sec. 4.1) make the advantage the return minus the value. Two critics:

    - ``critic: null`` (the default): a linear head on the policy's own last hidden state (a shared trunk): one
      forward serves both, the value loss's gradient flows into the trunk weighted by ``vf_coef``, and
      ``max_grad_norm`` clips the head's gradients together with the policy's (one norm, through Lightning's
      ``clip_gradients``; ``train/grad_norm`` is the policy's).
    - ``critic: {model: ...}`` (:class:`~lit_rl.critic.CriticSettings`): a separate transformer with a value
      head, as in the ReMax paper's PPO, veRL and OpenRLHF, initialised from a reward model or a causal LM (by
      default the policy's own checkpoint). It has its own forward and backward, its own parameter group of the
      optimizer (``lr``, ``weight_decay``), its own gradient clip (``train/critic_grad_norm``), optional LoRA and
      ``warmup_steps`` that train it alone; it is sharded like the policy under FSDP2 and exported to
      ``<run dir>/critic`` (a sequence-classification model: ``critic: {model: <run dir>/critic}`` starts a
      next stage from it).

    Departures:
    1. ``adaptive_lambda_alpha`` uses VAPO's ``1 - 1 / (alpha * length)`` for the policy's lambda (ERPD's
       printed ``1 / (0.05 * length)`` exceeds 1 for short answers); the critic keeps ``critic_lambda`` (1).
    2. The separate critic's loss is the same ``vf_coef`` times the clipped value loss as the head's (OpenRLHF
       and veRL weight it by 1): under Adam a constant factor on a network's own loss changes only what its
       gradient clip and Adam's epsilon see.
    3. The separate critic is a parameter group of the policy's one optimizer, not an optimizer of its own: so
       the step count, the learning-rate schedule (shared), checkpointing and DeepSpeed's single-optimizer
       engine stay as they are. Under DeepSpeed, whose clip is global, both clips are refused.
    """

    def __init__(self, *, eps_low: float = 0.2, eps_high: float = 0.2, vf_coef: float = 0.5,
                 value_clip: float | None = 0.2, gamma: float = 1.0, lam: float = 1.0,
                 adaptive_lambda_alpha: float | None = None, critic_lambda: float = 1.0,
                 whiten_advantages: bool = True, num_iterations: int = 2, critic: CriticSettings | None = None,
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
            num_iterations: passes over each rollout (PPO's epochs; see ``RLModule``).
            critic: a separate critic network (:class:`~lit_rl.critic.CriticSettings`); ``None``: a value head on
                the policy's last hidden state.

        The loss is ``lit_rl.losses.PPOClip(eps_low, eps_high, vf_coef, value_clip)``.
        """
        for name, value in (("gamma", gamma), ("lam", lam), ("critic_lambda", critic_lambda)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1] (got {value})")
        loss = PPOClip(eps_low, eps_high, vf_coef, value_clip)
        super().__init__(num_iterations=num_iterations, **kwargs)
        self.loss, self.needs_logits = loss, loss.needs_logits
        self.gamma, self.lam, self.critic_lambda = gamma, lam, critic_lambda
        self.adaptive_lambda_alpha, self.whiten_advantages = adaptive_lambda_alpha, whiten_advantages
        self.critic_settings = critic
        if critic is None:
            self.critic, self.value_head, self.needs_hidden = None, ValueHead(self.policy), True
        else:
            hp = self.hparams
            self.critic = Critic.load(critic.model or hp["model"], hp.get("dtype", "float32"), critic.lora,
                                      critic.gradient_checkpointing, hp.get("model_kwargs"), self.policy.tokenizer)
            self.value_head, self.needs_hidden = None, False

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        optimizer = config["optimizer"] if isinstance(config, dict) else config
        if self.critic is None:
            optimizer.add_param_group({"params": list(self.value_head.parameters())})
        else:
            optimizer.add_param_group(self.critic_settings.param_group(
                [p for p in self.critic.parameters() if p.requires_grad]))
        return config

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.critic is not None:
            check_clipping(self.trainer.strategy, self.critic_settings.max_grad_norm, "critic.max_grad_norm")

    def configure_model(self) -> None:
        """Under FSDP2 the separate critic's blocks are sharded like the policy's; the base then shards the critic
        as one unit around them (embeddings, final norm, value head)."""
        if self.device_mesh is not None and self.critic is not None:
            fully_shard_blocks(self.critic.model, self.device_mesh["data_parallel"])
        super().configure_model()

    @property
    def warming_up(self) -> bool:
        """Whether this step trains the separate critic alone (its ``warmup_steps``)."""
        return self.critic is not None and self.global_step < self.critic_settings.warmup_steps

    def value_targets(self, rollout: RolloutBatch) -> tuple[Tensor, Tensor]:
        critic = self.critic.values if self.critic is not None else lambda *a: self.value_head.values(self.policy, *a)
        with self.timer("values"):
            values = self._rowwise(rollout, critic)                                               # [B, C]
        self.log("rollout/value_mean", values.sum() / rollout.loss_mask.sum().clamp(min=1), batch_size=len(rollout))
        return values, ppo_returns(rollout.rewards, values, rollout.loss_mask, self.gamma, self.critic_lambda)

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return ppo_advantages(rollout.rewards, rollout.values, rollout.loss_mask, self.gamma, self.lam,
                              self.adaptive_lambda_alpha, self.whiten_advantages)                 # [B, C]

    def token_loss(self, output: PolicyOutput, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        if self.critic is None:
            return self.loss(output, batch, self.value_head(output))
        return self.loss(output, batch, self.critic(*fields(batch)))

    def micro_loss(self, micro: RolloutBatch, normalisers: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """During the critic's warm-up, its value loss alone (no policy forward); else the base's."""
        if not self.warming_up:
            return super().micro_loss(micro, normalisers)
        value_loss = clipped_value_loss(self.critic(*fields(micro)), micro.values, micro.returns, self.loss.value_clip)
        loss = aggregate(self.loss.vf_coef * value_loss, micro.loss_mask, self.aggregation, **normalisers)
        return loss, {"tokens": micro.loss_mask.sum()}

    def clip(self, optimizer: Any) -> Tensor | None:
        """With a separate critic, each network's gradients are clipped to its own norm (the policy's to
        ``max_grad_norm``, the critic's to ``critic.max_grad_norm``) and ``train/critic_grad_norm`` is logged;
        the policy's norm is returned (``None`` when it has no gradients: the critic's warm-up, or ZeRO)."""
        if self.critic is None:
            return super().clip(optimizer)
        norms = {}
        for name, params, max_norm in (("grad_norm", self.policy.parameters(), self.max_grad_norm),
                                       ("critic_grad_norm", self.critic.parameters(),
                                        self.critic_settings.max_grad_norm)):
            params = [p for p in params if p.grad is not None]
            if not params:
                continue
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            check_finite(norm, name.replace("_", " "), self.global_step)
            if max_norm is not None:
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
            norms[name] = norm
        if "critic_grad_norm" in norms:
            self.log("train/critic_grad_norm", norms["critic_grad_norm"], batch_size=1)
        return norms.get("grad_norm")

    def on_train_end(self) -> None:
        """The policy's export (``hf_model/``), and the separate critic's to ``<run dir>/critic``: a
        sequence-classification model with merged LoRA weights, which loads as a critic or a reward model."""
        super().on_train_end()
        if self.critic is None:
            return
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        state = merged_state_dict(self.critic.model) if is_sharded(self.critic.model) else None   # every rank
        if log_dir is not None and self.trainer.is_global_zero:
            state = state if state is not None else merged_state_dict(self.critic.model)
            export_pretrained(self.critic.base, self.policy.tokenizer, f"{log_dir}/critic", state)


def fields(batch: RolloutBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ids and masks a forward reads."""
    return batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask

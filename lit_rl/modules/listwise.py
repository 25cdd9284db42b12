"""Pairwise and listwise objectives on each prompt's group of completions: REBEL, DPO, IPO and
multi-completion distribution matching. Online (sampled by the policy) or offline (``OfflineData``)."""

from dataclasses import replace
from typing import Any, Literal

from torch import Tensor

from lit_rl.modules.base import RLModule
from lit_rl.objectives import (
    best_worst,
    dpo_loss,
    ipo_loss,
    multi_completion_loss,
    pair_margins,
    rebel_loss,
    sequence_logps,
)
from lit_rl.policy import PolicyOutput
from lit_rl.rollout import RolloutBatch


class ListwiseModule(RLModule):
    """Changes the base's per-token loss to :meth:`group_loss`, a loss per prompt over the sequence log-probs
    ``L(y)`` of its completions relative to an anchor (the reference unless a subclass says otherwise),
    averaged over the step's prompts. Micro-batches hold whole groups."""

    whole_groups = True

    def __init__(self, *, beta: float = 0.1, average_logps: bool = False, **kwargs: Any) -> None:
        """
        Args:
            beta: the KL strength ``beta`` of the implicit reward ``beta (L - L_ref)``.
            average_logps: use the per-token mean of the log-probs instead of their sum.
        """
        if beta <= 0:
            raise ValueError(f"beta must be > 0 (got {beta})")
        super().__init__(**kwargs)
        self.beta, self.average_logps = beta, average_logps
        self.policy.enable_reference()

    def group_loss(self, seq_logps: Tensor, anchor_seq_logps: Tensor, batch: RolloutBatch) -> Tensor:
        """Loss per prompt ``[P]`` of a micro-batch of whole groups."""
        raise NotImplementedError

    def anchor_of(self, rollout: RolloutBatch) -> Literal["sampler", "reference"]:
        """Whose log-probs anchor the implicit reward of ``rollout``: the reference here."""
        return "reference"

    def anchor_logps(self, batch: RolloutBatch) -> Tensor:
        return batch.ref_logps

    def needs_ref_logps(self, rollout: RolloutBatch) -> bool:
        return super().needs_ref_logps(rollout) or self.anchor_of(rollout) == "reference"

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return rollout.rewards                                          # read by group_loss as rewards

    def normalisers(self, batch: RolloutBatch) -> dict[str, Any]:
        return {"num_groups": len(batch) // batch.group_size}

    def objective(self, output: PolicyOutput, micro: RolloutBatch, normalisers: dict[str, Any],
                  stats: dict[str, Tensor]) -> Tensor:
        mask = micro.loss_mask
        seq = sequence_logps(output.logps, mask, self.average_logps)                          # [b]
        anchor = sequence_logps(self.anchor_logps(micro), mask, self.average_logps)    # [b]
        return self.group_loss(seq, anchor, micro).sum() / normalisers["num_groups"]


class REBEL(ListwiseModule):
    """Changes the loss to REBEL's regression of implicit reward gaps on reward gaps over every pair of a
    group (Gao et al. 2024; Reward Distillation Through Ratio Matching eq. 9 and 13): ``((1/eta) h(y, y') - (r -
    r'))^2``.

    Anchor (``anchor``): ``sampler``, the policy that generated the data (eq. 9: online, the policy at sampling
    time; offline, the dataset's behaviour log-probs), or ``reference`` (eq. 13, offline reward distillation).
    Default: ``sampler`` online, ``reference`` offline. With the reference as anchor eq. 13 is eq. 9 with
    ``beta = 1/eta`` (times the constant ``eta^2``): the mirror-descent step is DPO's inverse temperature.
    Departure: the paper pairs two samples per prompt; lit-rl averages all ``G(G-1)/2`` pairs of a group.
    """

    def __init__(self, *, group_size: int = 4, eta: float = 1.0,
                 anchor: Literal["sampler", "reference"] | None = None, **kwargs: Any) -> None:
        """
        Args:
            eta: REBEL's step size ``eta`` (``1/beta`` of eq. 13).
            anchor: ``sampler``, ``reference``, or null for the mode's default.
        """
        if group_size < 2:
            raise ValueError(f"REBEL needs group_size >= 2 completions per prompt (got {group_size})")
        if eta <= 0:
            raise ValueError(f"eta must be > 0 (got {eta})")
        super().__init__(group_size=group_size, beta=1.0 / eta, **kwargs)
        self.eta, self.anchor = eta, anchor

    def anchor_of(self, rollout: RolloutBatch) -> Literal["sampler", "reference"]:
        return self.anchor or ("reference" if rollout.from_dataset else "sampler")

    def needs_old_logps(self, rollout: RolloutBatch) -> bool:
        return super().needs_old_logps(rollout) or (self.anchor_of(rollout) == "sampler" and not rollout.from_dataset)

    def anchor_logps(self, batch: RolloutBatch) -> Tensor:
        if self.anchor_of(batch) == "reference":
            return batch.ref_logps
        if batch.from_dataset:
            if batch.behaviour_logps is None:
                raise ValueError("anchor=sampler on a dataset needs behaviour log-probs: set "
                                 "data.init_args.behaviour_model")
            return batch.behaviour_logps
        return batch.old_logps

    def group_loss(self, seq_logps: Tensor, anchor_seq_logps: Tensor, batch: RolloutBatch) -> Tensor:
        return rebel_loss(seq_logps, anchor_seq_logps, batch.rewards, batch.group_size, self.eta).mean(-1)


class MultiCompletion(ListwiseModule):
    """Changes the loss to multi-completion distribution matching (Reward Distillation Through Ratio Matching,
    Algorithm 1):
    per prompt ``KL(softmax(r / temperature) || softmax(beta (L - L_ref)))`` over its ``G`` completions.
    Option beyond the paper: ``reward_temperature``, a temperature on the rewards' softmax."""

    def __init__(self, *, group_size: int = 4, reward_temperature: float = 1.0, **kwargs: Any) -> None:
        if group_size < 2:
            raise ValueError(f"MultiCompletion needs group_size >= 2 completions per prompt (got {group_size})")
        if reward_temperature <= 0:
            raise ValueError(f"reward_temperature must be > 0 (got {reward_temperature})")
        super().__init__(group_size=group_size, **kwargs)
        self.reward_temperature = reward_temperature

    def group_loss(self, seq_logps: Tensor, anchor_seq_logps: Tensor, batch: RolloutBatch) -> Tensor:
        return multi_completion_loss(seq_logps, anchor_seq_logps, batch.rewards, batch.group_size, self.beta,
                                     self.reward_temperature)


class DPO(ListwiseModule):
    """Changes the loss to DPO's ``-log sigmoid(beta h(y_w, y_l))`` (Rafailov et al. 2023) on each group's best
    and worst completion (a preference-pair dataset gives them directly); groups whose rewards tie are dropped."""

    def __init__(self, *, group_size: int = 4, **kwargs: Any) -> None:
        if group_size < 2:
            raise ValueError(f"{type(self).__name__} needs group_size >= 2 completions per prompt (got {group_size})")
        super().__init__(group_size=group_size, **kwargs)

    def select_rows(self, rollout: RolloutBatch) -> RolloutBatch:
        rows, keep = best_worst(rollout.scores, rollout.group_size)
        self.log("rollout/frac_tied_groups", 1 - keep.float().mean(), batch_size=len(rollout))
        return replace(rollout.select(rows), group_size=2)

    def pair_loss(self, margins: Tensor) -> Tensor:
        return dpo_loss(margins, self.beta)

    def group_loss(self, seq_logps: Tensor, anchor_seq_logps: Tensor, batch: RolloutBatch) -> Tensor:
        return self.pair_loss(pair_margins(seq_logps, anchor_seq_logps))


class IPO(DPO):
    """Changes DPO's loss to IPO's ``(h - 1/(2 beta))^2`` (Azar et al. 2023). ``average_logps: true`` uses
    per-token averaged log-probs, as TRL does (confirmed with the IPO authors)."""

    def pair_loss(self, margins: Tensor) -> Tensor:
        return ipo_loss(margins, self.beta)

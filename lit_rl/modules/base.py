"""The one training loop.

``RLModule`` adds the on-policy loop to ``PolicyModule`` (``lit_rl.modules.policy_module``: the policy, its
optimizer, engine, collector and held-out validation): ``G`` scored samples per prompt from the
collector, log-probs of the old policy and the reference, advantages (the algorithm's), then one or more
optimizer steps over micro-batches with a global normaliser. An algorithm overrides :meth:`RLModule.advantages`
and/or :meth:`RLModule.policy_loss`, nothing else; GRPO, PPO and ERPD's teachers hold their per-token loss as a
value of ``lit_rl.losses``, which :meth:`RLModule.token_loss` calls. With ``max_staleness > 0`` the samples of
the next batches are generated in a background thread while a step trains (``lit_rl.async_rollouts``).
"""

from dataclasses import replace
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_rl.async_rollouts import RolloutPipeline, check_engine, deferred_logs, read_ahead
from lit_rl.collect import replay
from lit_rl.distributed import check_clipping, deepspeed_grad_norm, gradient_sync, shards_parameters
from lit_rl.objectives import Aggregation, KLEstimator, aggregate, kl_penalty, policy_gradient_loss, zero_std_groups
from lit_rl.objectives import ImportanceSampling, logp_diff
from lit_rl.modules.policy_module import PolicyModule, check_finite, check_finite_weights, gold_metrics
from lit_rl.offline import StoredGroups
from lit_rl.policy import PolicyOutput
from lit_rl.rewards import Prompt
from lit_rl.rewards.base import each_reward
from lit_rl.rollout import RolloutBatch, Sampling, accuracy, token_budget_cuts

STEP_STATS = {"kl": "train/kl", "entropy": "train/entropy", "clipped": "train/clip_frac"}   # token sums -> metrics


class RLModule(PolicyModule):
    """On-policy RL: the loop every algorithm shares. Subclasses implement :meth:`advantages`."""

    def __init__(
        self,
        *,
        group_size: int = 4,
        sampling: Sampling = Sampling(),
        aggregation: Aggregation = "seq_mean_token_mean",
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator = "k3",
        kl_in_reward: bool = False,
        log_kl: bool = False,
        max_grad_norm: float | None = 1.0,
        micro_batch_size: int | None = None,
        num_iterations: int = 1,
        mini_batches: int = 1,
        importance_sampling: ImportanceSampling | None = None,
        importance_sampling_cap: float | None = None,
        shared_prompt_forward: bool = True,
        packed_sequences: bool = False,
        max_tokens_per_micro_batch: int | None = None,
        advantage_estimator: Callable[[Tensor, int], Tensor] | None = None,
        max_staleness: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            group_size: completions sampled per prompt (``G``).
            sampling: decoding for rollouts; log-probs use the same temperature.
            aggregation: how per-token losses become a scalar (see ``lit_rl.objectives.aggregate``).
            kl_coef: weight ``beta`` of the KL penalty to the reference (0: no penalty).
            kl_estimator: ``k1``, ``k2`` or ``k3`` for the per-token KL in the loss.
            kl_in_reward: put ``-beta * sum_t (l_old - l_ref)`` into the reward (RLOO/ReMax style) instead of
                ``beta * k`` into the loss (GRPO style).
            log_kl: log ``train/kl`` to the reference even when ``kl_coef = 0`` (a reference forward per step, and
                a frozen copy of the policy unless LoRA; off by default, as TRL logs the KL only when it is used).
            max_grad_norm: clip the gradient norm (``None``: no clipping; the norm is logged either way).
            micro_batch_size: rows per forward/backward; gradients accumulate to one optimizer step.
            num_iterations: optimisation passes over each rollout batch (GRPO's ``mu``, PPO's epochs).
            mini_batches: optimizer steps per pass (the rollout is shuffled and split). Past one pass or one
                step the batch is off-policy, so the old log-probs are computed (see :meth:`needs_old_logps`).
            importance_sampling: weight each token's policy loss by its ratio ``pi_old / pi_engine``, bounded by
                truncation, token masking or whole-sequence rejection (``{mode: truncate|mask|reject_sequence, cap,
                low, high}``, :class:`lit_rl.objectives.ImportanceSampling`); needs an engine that returns log-probs
                (``VLLMEngine``, ``VLLMServerEngine``, ``CopyEngine``). Logs ``rollout/is_weight_mean``,
                ``rollout/is_weight_max``, ``rollout/is_masked_frac`` and ``rollout/is_clipped_frac``.
            importance_sampling_cap: ``C`` of ``importance_sampling: {mode: truncate, cap: C}`` (truncated importance
                sampling, ``min(pi_old / pi_engine, C)``), as configs written before ``importance_sampling`` say it.
            shared_prompt_forward: compute each prompt once for its ``G`` samples in every forward (training, old
                and reference log-probs): the prompt runs alone and the completions on its key/value cache
                (``lit_rl.policy.shared_prompt_forward``; the one-forward-per-row values and gradients to float32
                rounding). On by default; not used under gradient checkpointing (Hugging Face models then keep
                no cache) or with ``packed_sequences`` (packed rows run without a cache).
            packed_sequences: run every forward (training, old and reference log-probs, a value head's) without
                padding: a micro-batch's rows packed into bins as wide as its longest row, position ids restarting
                at each row, attention kept within each row (``lit_rl.policy.packed_forward``), and the output
                layer on the completions' real tokens only. In place of ``shared_prompt_forward``, which runs
                completions on a cache with one row per sample.
            max_tokens_per_micro_batch: cut micro-batches (and the rows of the old/reference log-prob and value
                forwards) by a budget of real tokens, prompt and completion, instead of ``micro_batch_size``
                rows; the loss keeps the step's global normaliser, so the gradient is the same.
            advantage_estimator: replaces the algorithm's advantages with ``estimator(rewards, group_size)``
                (``lit_rl.objectives.LeaveOneOut``, ``GroupNormalized``, or any callable of that signature), to
                try another estimator with an algorithm's loss; ``rollout/advantage_mean`` and ``_std`` are logged.
            max_staleness: ``k``: sample and score the next ``k`` batches on the engine in a background thread while
                the current batch trains, so batch ``s`` is sampled by the weights synced after step ``s - k - 1``
                (``rollout/staleness`` logs the optimizer steps behind; correct for it with
                ``importance_sampling``). 0: the synchronous loop. Needs an engine with weights of its own that may
                generate from another thread (``VLLMServerEngine``, ``CopyEngine``); see ``lit_rl.async_rollouts``.
        """
        super().__init__(**kwargs)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1 (got {group_size})")
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0 (got {kl_coef})")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or null (got {micro_batch_size})")
        if max_tokens_per_micro_batch is not None and max_tokens_per_micro_batch < 1:
            raise ValueError(f"max_tokens_per_micro_batch must be >= 1 or null (got {max_tokens_per_micro_batch})")
        for name, value in (("num_iterations", num_iterations), ("mini_batches", mini_batches)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1 (got {value})")
        self.group_size, self.sampling, self.aggregation = group_size, sampling, aggregation
        self.kl_coef, self.kl_estimator, self.kl_in_reward = kl_coef, kl_estimator, kl_in_reward
        if importance_sampling_cap is not None:
            if importance_sampling_cap <= 0:
                raise ValueError(f"importance_sampling_cap must be > 0 or null (got {importance_sampling_cap})")
            if importance_sampling is not None:
                raise ValueError("set importance_sampling or importance_sampling_cap (its truncate mode), not both")
            importance_sampling = ImportanceSampling("truncate", cap=importance_sampling_cap)
        check_engine(self.engine, max_staleness)
        self.importance_sampling, self.max_staleness = importance_sampling, max_staleness
        self.rollouts: RolloutPipeline | None = None                    # the producer, while a fit with k > 0 runs
        self.max_grad_norm, self.micro_batch_size = max_grad_norm, micro_batch_size
        self.num_iterations, self.mini_batches, self.log_kl = num_iterations, mini_batches, log_kl
        self.automatic_optimization = False
        self.policy.shared_prompt_forward = shared_prompt_forward
        self.policy.packed_sequences, self.max_tokens_per_micro_batch = packed_sequences, max_tokens_per_micro_batch
        self.advantage_estimator = advantage_estimator
        if kl_coef > 0 or log_kl:
            self.policy.enable_reference()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        strategy = self.trainer.strategy
        check_clipping(strategy, self.max_grad_norm)
        longest = max(s.max_new_tokens for s in (self.sampling, self.val_sampling) if s is not None)
        each_reward((self.reward_fn, self.gold_reward_fn), "check_sampling", longest, self.policy.tokenizer)
        if self.policy.has_reference and not self.policy.is_lora and shards_parameters(strategy):
            size = sum(p.numel() * p.element_size() for p in self.policy.model.parameters()) / 2**30
            rank_zero_warn(f"the frozen reference is a full, unsharded copy of the policy on every device "
                           f"({size:.2f} GiB) under {type(strategy).__name__}, which shards the policy itself; "
                           "under LoRA the reference is the adapter-disabled policy and costs nothing")

    # ------------------------------------------------------------------------- what an algorithm overrides
    def advantages(self, rollout: RolloutBatch) -> Tensor:
        """Detached advantages ``[B]`` (sequence-level) or ``[B, C]`` (per token) of a scored rollout."""
        raise NotImplementedError

    def policy_loss(self, logps: Tensor, batch: RolloutBatch) -> tuple[Tensor, Tensor | None]:
        """Per-token loss ``[b, C]`` and a mask of clipped tokens (``None`` if the loss never clips).
        Default: the on-policy REINFORCE surrogate ``-A * l_t``."""
        return policy_gradient_loss(logps, batch.advantages), None

    def token_loss(self, output: PolicyOutput, batch: RolloutBatch) -> tuple[Tensor, Tensor | None]:
        """:meth:`policy_loss` for a loss that reads more of the forward than its log-probs (a value head on
        ``output.hidden``, which the forward returns when ``needs_hidden``; an entropy bonus on ``output.entropy``,
        which carries its gradient; ``output.logits``, ``[B, C, V]``, only when ``needs_logits``)."""
        return self.policy_loss(output.logps, batch)

    def collect(self, prompts: list[Prompt], metas: list[dict]) -> RolloutBatch:
        """``G`` scored samples per prompt from the collector (GRPO's dynamic sampling overrides this)."""
        return self.collector.collect(self.sampler, prompts, metas, self.sampling, self.group_size)

    def select_rows(self, rollout: RolloutBatch) -> RolloutBatch:
        """The rows the objective learns from: all of them here (DPO keeps each group's best and worst)."""
        return rollout

    def objective(self, output: PolicyOutput, micro: RolloutBatch, normalisers: dict[str, Any],
                  stats: dict[str, Tensor]) -> Tensor:
        """The micro-batch's scalar loss, already divided by the step's global normaliser: here the per-token
        :meth:`token_loss` plus the KL penalty, aggregated. Sequence-level objectives override this."""
        logps = output.logps
        if micro.old_logps is None:                                             # on-policy: pi_old is pi_theta
            micro = replace(micro, old_logps=logps.detach())
        token_loss, clipped = self.token_loss(output, micro)                    # [b, C]
        if micro.is_weights is not None:
            token_loss = token_loss * micro.is_weights                          # engine/trainer mismatch
        if micro.ref_logps is not None and self.kl_coef > 0 and not self.kl_in_reward:
            token_loss = token_loss + self.kl_coef * kl_penalty(logps, micro.ref_logps, self.kl_estimator)
        if clipped is not None:
            stats["clipped"] = (clipped.float() * micro.loss_mask).sum()
        return aggregate(token_loss, micro.loss_mask, self.aggregation, **normalisers)

    # ------------------------------------------------------------------------------------- the shared loop
    whole_groups = False                                                # micro-batches may cut a group
    needs_hidden = False                                                # the forward returns the last hidden state
    needs_logits = False                                                # ... and [B, C, V] logits (their memory)

    def needs_old_logps(self, rollout: RolloutBatch) -> bool:
        """Whether the rollout's ``old_logps`` need a forward of their own: when the batch is optimised more than
        once (``num_iterations`` or ``mini_batches`` > 1) or the KL is in the reward. Otherwise the policy that
        sampled it is the one being trained, and the loss sees ``old_logps = sg(logps)`` (the same values, no
        extra forward). A module whose loss needs them for another reason says so here."""
        return self.num_iterations > 1 or self.mini_batches > 1 or (self.kl_in_reward and self.kl_coef > 0)

    def needs_ref_logps(self, rollout: RolloutBatch) -> bool:
        """Whether the rollout needs the reference's log-probs (a forward of the reference): for the KL penalty
        (``kl_coef > 0``) or to log ``train/kl`` (``log_kl``). A module whose loss reads them says so here."""
        return self.kl_coef > 0 or self.log_kl

    @torch.no_grad()
    def make_rollout(self, batch: dict[str, list] | StoredGroups) -> RolloutBatch:
        """The training batch of one step, derived from the collector's samples in named steps (each returns
        what it computes; nothing is written into a batch after it is made):

        1. sample and score with the collector (or replay a batch of stored groups; or take what the background
           producer sampled and scored for this batch, :meth:`rollout_ahead`), and log them;
        2. keep the rows the objective learns from (:meth:`select_rows`);
        3. old log-probs where needed, with the engine's log-probs compared and importance weights;
        4. reference log-probs where needed;
        5. rewards: the scores, less the sequence KL when the KL is in the reward;
        6. a critic's values and value targets (:meth:`value_targets`);
        7. advantages: the module's (:meth:`advantages`) or its ``advantage_estimator``'s.
        """
        if self.max_staleness:
            samples = self.rollout_ahead(batch)
        elif isinstance(batch, StoredGroups):
            samples = replay(self.sampler, batch)
        else:
            samples = self.collect(batch["prompt"], batch["meta"])
        self.log_rollout(samples)
        samples = self.select_rows(samples)
        if len(samples) == 0:
            return samples
        old_logps, is_weights = self.old_logps(samples)
        ref_logps = self.reference_logps(samples) if self.needs_ref_logps(samples) else None
        rollout = replace(samples, old_logps=old_logps, is_weights=is_weights, ref_logps=ref_logps,
                          rewards=self.rewards(samples, old_logps, ref_logps))
        if (critic := self.value_targets(rollout)) is not None:
            rollout = replace(rollout, values=critic[0], returns=critic[1])
        rollout = replace(rollout, advantages=self.estimate_advantages(rollout))
        self.on_rollout_end(rollout)
        return rollout

    def old_logps(self, samples: RolloutBatch) -> tuple[Tensor | None, Tensor | None]:
        """Step 3: the sampling policy's log-probs when :meth:`needs_old_logps` or the engine returned its own
        (then compared with them, and the importance weights when ``importance_sampling``)."""
        engine_logps = samples.behaviour_logps is not None and not samples.from_dataset
        if not engine_logps and self.importance_sampling is not None and not samples.from_dataset:
            raise ValueError(f"importance_sampling needs an engine that returns log-probs; "
                             f"{type(self.engine).__name__} returned none")
        if not (self.needs_old_logps(samples) or engine_logps):
            return None, None
        with self.timer("old_logps"):
            old_logps = self._rowwise(samples, lambda *args: self.policy.logps(*args)[0])
        if not engine_logps:
            return old_logps, None
        mean_diff, max_diff = logp_diff(old_logps, samples.behaviour_logps, samples.loss_mask)
        self.log_dict({"rollout/logp_diff": mean_diff, "rollout/logp_diff_max": max_diff}, batch_size=len(samples))
        if self.importance_sampling is None:
            return old_logps, None
        args = (old_logps, samples.behaviour_logps, samples.loss_mask)
        weights = self.importance_sampling.weights(*args)
        stats = self.importance_sampling.stats(weights, *args)
        self.log_dict({f"rollout/is_{name}": value for name, value in stats.items()}, batch_size=len(samples))
        return old_logps, weights

    def reference_logps(self, samples: RolloutBatch) -> Tensor:
        """Step 4: the reference's log-probs."""
        with self.timer("ref_logps"):
            return self._rowwise(samples, self.policy.reference_logps)

    def rewards(self, samples: RolloutBatch, old_logps: Tensor | None, ref_logps: Tensor | None) -> Tensor:
        """Step 5: ``r = score``, or ``r = score - beta * sum_t (l_old - l_ref)`` over the trained tokens when the
        KL is in the reward."""
        if not (self.kl_in_reward and self.kl_coef > 0):
            return samples.scores
        seq_kl = (kl_penalty(old_logps, ref_logps, "k1") * samples.loss_mask).sum(-1)   # [B]
        return samples.scores - self.kl_coef * seq_kl                                  # [B]

    def estimate_advantages(self, rollout: RolloutBatch) -> Tensor:
        """Step 7: the ``advantage_estimator``'s advantages if one is set (logged), else the module's own."""
        if self.advantage_estimator is None:
            return self.advantages(rollout)
        advantages = self.advantage_estimator(rollout.rewards, rollout.group_size)
        self.log_dict({"rollout/advantage_mean": advantages.mean(), "rollout/advantage_std": advantages.std()},
                      batch_size=len(rollout))
        return advantages

    def value_targets(self, rollout: RolloutBatch) -> tuple[Tensor, Tensor] | None:
        """A critic's values and value targets ``[B, C]`` of a scored rollout, computed before the advantages
        (which may read them as ``rollout.values``); ``None``: no critic (PPO has one)."""
        return None

    def on_rollout_end(self, rollout: RolloutBatch) -> None:
        """Hook: the rollout batch is complete (scored, log-probs, advantages), before any optimizer step on it.
        Calls ``on_rollout_end(trainer, module, rollout)`` of every :class:`~lit_rl.callbacks.RolloutCallback`
        of the trainer, in the trainer's order, under Lightning's profiler as Lightning calls its own hooks."""
        from lit_rl.callbacks import RolloutCallback

        for callback in self.trainer.callbacks if self._trainer is not None else []:
            if isinstance(callback, RolloutCallback):
                with self.trainer.profiler.profile(f"[Callback]{callback.state_key}.on_rollout_end"):
                    callback.on_rollout_end(self.trainer, self, rollout)

    def _rowwise(self, rollout: RolloutBatch, logps_fn: Callable[..., Tensor]) -> Tensor:
        """``logps_fn`` over the whole rollout, ``micro_batch_size`` rows (or ``max_tokens_per_micro_batch``
        tokens) at a time, full completion width."""
        size, budget = self.micro_batch_size or len(rollout), self.max_tokens_per_micro_batch
        cuts = (token_budget_cuts(rollout.tokens_per_row(), budget) if budget is not None
                else [(s, s + size) for s in range(0, len(rollout), size)])
        fields = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
        out = [logps_fn(*(f[a:b] for f in fields), self.sampling.logit_temperature) for a, b in cuts]
        return torch.cat(out) * rollout.loss_mask

    # ------------------------------------------------------- max_staleness > 0: rollouts generated ahead
    def rollout_ahead(self, batch: dict[str, list]) -> RolloutBatch:
        """Step 1 with ``max_staleness > 0``: the rollout the background producer sampled and scored for ``batch``
        (started at the fit's first step), with the producer's phases and logs, and ``rollout/staleness``."""
        if isinstance(batch, StoredGroups):
            raise ValueError("max_staleness > 0 generates rollouts ahead of training, and stored groups are replayed, "
                             "not generated: set max_staleness: 0")
        if self.rollouts is None:
            batches = read_ahead(self.trainer.train_dataloader, batch)
            self.rollouts = RolloutPipeline(self.produce, batches, self.max_staleness, self.timer)
        with self.timer("wait_rollout"):
            produced = self.rollouts.take(batch)
        self.timer.merge(produced.seconds, produced.counts)            # time/generate: the producer's, earlier
        for name, value, args, kwargs in produced.logs:
            self.log(name, value, *args, **kwargs)
        rollout = produced.rollout
        self.log("rollout/staleness", float(self.global_step - rollout.version), batch_size=len(rollout))
        return rollout

    @torch.no_grad()
    def produce(self, batch: dict[str, list]) -> RolloutBatch:
        """On the producer thread: :meth:`collect` one batch, recording the policy version of the engine's weights."""
        version = self.synced_step                                      # no sync runs while the producer works
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)                          # a thread's current device is its own
        return replace(self.collect(batch["prompt"], batch["meta"]), version=version)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``log``; called on the producer thread (GRPO's ``rollout/resample_rounds``), the value is kept
        with its rollout and logged when the rollout is trained."""
        if (kept := deferred_logs()) is not None:
            kept.append((name, value, args, kwargs))
            return
        super().log(name, value, *args, **kwargs)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.rollouts is not None:                                   # the batches due before this sync
            self.rollouts.wait_for_schedule()
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.rollouts is not None and not 0 <= self.trainer.max_steps <= self.global_step:
            self.rollouts.permit()

    def on_validation_start(self) -> None:
        if self.rollouts is not None:
            self.rollouts.idle()                                        # the engine is validation's alone
        super().on_validation_start()

    def stop_rollouts(self) -> None:
        """Stop the producer; the rollouts generated ahead and not trained are dropped."""
        if self.rollouts is not None:
            self.rollouts.close()
            self.rollouts = None

    def on_train_start(self) -> None:
        self.stop_rollouts()                                            # one left by a fit that raised
        super().on_train_start()

    def on_train_end(self) -> None:
        self.stop_rollouts()
        super().on_train_end()

    def teardown(self, stage: str) -> None:
        self.stop_rollouts()
        super().teardown(stage)

    def training_step(self, batch: dict[str, list] | StoredGroups, batch_idx: int) -> dict[str, Tensor]:
        rollout = self.make_rollout(batch)
        stats: dict[str, Tensor] = {}
        for _ in range(self.num_iterations if len(rollout) else 0):    # none: nothing to learn (e.g. all ties)
            order = torch.randperm(len(rollout)) if self.mini_batches > 1 else torch.arange(len(rollout))
            for index in order.chunk(self.mini_batches):
                self.optimize(rollout.select(index), stats)
        self.log_step(stats)
        return stats

    def log_step(self, stats: dict[str, Tensor]) -> None:
        """The step's token-weighted ``train/kl``, ``train/entropy`` and ``train/clip_frac`` (those it has) and
        where its time went. ``stats`` holds token sums (``tokens``: the trained tokens); ``training_step`` also
        returns them, so a callback (``KLEntropyTracker``'s epoch means) can weight them."""
        if "tokens" in stats:
            tokens = stats["tokens"].clamp(min=1)
            self.log_dict({name: stats[key] / tokens for key, name in STEP_STATS.items() if key in stats},
                          batch_size=int(tokens))
        self.log_phases()

    def normalisers(self, batch: RolloutBatch) -> dict[str, Any]:
        """The global normalisers of one optimizer step's batch, shared by all its micro-batches. Under data
        parallelism the token count is the mean over ranks: DDP/FSDP average gradients over ranks, so
        ``sum_rank / mean_rank_tokens`` averaged gives ``sum_all / all_tokens``, one process's loss."""
        num_tokens = batch.loss_mask.sum().float()
        if self._trainer is not None and self.trainer.world_size > 1:
            num_tokens = self.trainer.strategy.reduce(num_tokens, reduce_op="mean")
        return {"num_seqs": len(batch), "num_tokens": num_tokens.clamp(min=1), "max_len": self.sampling.max_new_tokens}

    def micro_loss(self, micro: RolloutBatch, normalisers: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one micro-batch, already divided by the step's global normaliser, and token-sum stats."""
        output = self.policy(micro.prompt_ids, micro.prompt_mask, micro.completion_ids, micro.completion_mask,
                             self.sampling.logit_temperature, entropy=True, hidden=self.needs_hidden,
                             logits=self.needs_logits)
        mask = micro.loss_mask
        stats = {"entropy": (output.entropy * mask).sum(), "tokens": mask.sum()}
        if micro.ref_logps is not None:
            stats["kl"] = (kl_penalty(output.logps.detach(), micro.ref_logps, self.kl_estimator) * mask).sum()
        return self.objective(output, micro, normalisers, stats), stats

    def optimize(self, batch: RolloutBatch, stats: dict[str, Tensor]) -> None:
        """One optimizer step on ``batch``: micro-batches accumulate gradients under the batch's normaliser."""
        optimizer, normalisers = self.optimizers(), self.normalisers(batch)
        loss_sum = torch.zeros((), device=self.device)
        micros = batch.split(self.micro_batch_size, self.whole_groups, self.max_tokens_per_micro_batch)
        for i, micro in enumerate(micros):
            with self.timer("forward_backward"):
                loss, micro_stats = self.micro_loss(micro, normalisers)
                check_finite(loss, "loss", self.global_step)
                with gradient_sync(self.trainer.strategy, last=i == len(micros) - 1):
                    self.manual_backward(loss)
            loss_sum += loss.detach()
            for key, value in micro_stats.items():
                stats[key] = stats.get(key, 0) + value.detach()
        with self.timer("optimizer"):
            grad_norm = self.clip(optimizer)
            optimizer.step()
            if grad_norm is None:
                grad_norm = deepspeed_grad_norm(self.trainer.strategy)  # the norm DeepSpeed's step computed
            check_finite_weights(self, optimizer, self.global_step)     # manual optimization: already counted
            optimizer.zero_grad(set_to_none=True)
            if (scheduler := self.lr_schedulers()) is not None:
                scheduler.step()
        self.log("train/loss", loss_sum, prog_bar=True, batch_size=len(batch), sync_dist=True)   # the global loss
        if grad_norm is not None:
            self.log("train/grad_norm", grad_norm, batch_size=len(batch))

    def clip(self, optimizer: Any) -> Tensor | None:
        """Clip the gradients of the optimizer's parameters to ``max_grad_norm`` (through Lightning's
        precision and strategy plugins); the policy's gradient norm before clipping, checked finite (``None``:
        ZeRO holds the gradients)."""
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if grad_norm is not None:
            check_finite(grad_norm, "gradient norm", self.global_step)
        self.clip_gradients(optimizer, self.max_grad_norm or 0.0, "norm")
        return grad_norm

    def log_rollout(self, rollout: RolloutBatch) -> None:
        scores, size = rollout.scores, len(rollout)
        metrics = {
            "rollout/reward_mean": scores.mean(),
            "rollout/reward_std": scores.std() if size > 1 else torch.zeros(()),
            "rollout/completion_length": rollout.loss_mask.sum(-1).float().mean(),   # generated tokens
        }
        if (share := accuracy(rollout.correct)) is not None:           # rewards that judge correctness
            metrics["rollout/accuracy"] = share
        for name, values in rollout.components.items():                 # the parts of a combined reward
            if not values.isnan().all():
                metrics[f"reward/{name}_mean"] = values.nanmean()
        metrics.update({f"gold/{k}": v for k, v in gold_metrics(rollout).items()})
        if rollout.truncated is not None:                               # multi-turn episodes
            metrics["rollout/truncated_frac"] = rollout.truncated.float().mean()
            metrics["rollout/turns_mean"] = torch.tensor([sum(m["role"] == "assistant" for m in t)
                                                          for t in rollout.turns], dtype=torch.float32).mean()
            metrics["rollout/episode_length"] = rollout.completion_mask.sum(-1).float().mean()
        if rollout.group_size > 1:
            metrics["rollout/frac_zero_std_groups"] = zero_std_groups(scores, rollout.group_size).float().mean()
        self.log_dict(metrics, batch_size=size)

    def configure_callbacks(self) -> list:
        """Ship the callbacks the loop relies on, unless the trainer already has one of the same type."""
        from lit_rl.callbacks import CompletionLog, KLEntropyTracker

        present = {type(c) for c in self.trainer.callbacks}
        shipped = [c for c in (KLEntropyTracker(), CompletionLog()) if type(c) not in present]
        return super().configure_callbacks() + shipped


"""The one training loop.

``PolicyModule`` owns the policy, its optimizer, its rollout engine and held-out validation; SFT and every RL
algorithm subclass it. Samples come from its collector (``lit_rl.collect``: single turn, or multi-turn episodes),
never from the module itself. ``RLModule`` adds the on-policy loop: ``G`` scored samples per prompt from the
collector, log-probs of the old policy and the reference, advantages (the algorithm's), then one or more
optimizer steps over micro-batches with a global normaliser. An algorithm overrides :meth:`RLModule.advantages`
and/or :meth:`RLModule.policy_loss`, nothing else; GRPO, PPO and ERPD's teachers hold their per-token loss as a
value of ``lit_rl.losses``, which :meth:`RLModule.token_loss` calls. With ``max_staleness > 0`` the samples of
the next batches are generated in a background thread while a step trains (``lit_rl.async_rollouts``).
"""

import random
from dataclasses import replace
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from lit_rl.async_rollouts import RolloutPipeline, check_engine, deferred_logs, read_ahead
from lit_rl.chat import ChatTemplate
from lit_rl.collect import Collector, Sampler, SingleTurn, replay
from lit_rl.checkpointing import SafeCheckpoints, nonfinite
from lit_rl.distributed import (check_clipping, deepspeed_grad_norm, fully_shard_heads, fully_shard_policy, is_deepspeed,
                                shards_parameters)
from lit_rl.errors import ResumeMismatch
from lit_rl.export import adapter_weights, export_pretrained, is_sharded, merged_state_dict
from lit_rl.objectives import Aggregation, KLEstimator, aggregate, kl_penalty, policy_gradient_loss, zero_std_groups
from lit_rl.objectives import ImportanceSampling, logp_diff, mean_at_k, pass_at_k
from lit_rl.offline import StoredGroups
from lit_rl.policy import LoraSettings, Policy, PolicyOutput
from lit_rl.resume import MODULE_KEY, module_mismatch
from lit_rl.rewards import Prompt, RewardFunction
from lit_rl.rewards.base import each_reward
from lit_rl.rollout import HFEngine, RolloutBatch, RolloutEngine, Sampling, accuracy, token_budget_cuts
from lit_rl.timing import PhaseTimer

# Settings dataclasses are saved with the hyperparameters; let checkpoints load with torch's safe unpickler.
torch.serialization.add_safe_globals([Sampling, LoraSettings, ImportanceSampling])


def optimizers(optimizer_fn: Any, lr_scheduler_fn: Any, parameters: Any) -> Any:
    """``configure_optimizers``' answer: the optimizer over the trainable ``parameters``, stepped per optimizer step
    by the scheduler if any. An optimizer that refuses its settings (``lr: .nan``) is named as a setting."""
    try:
        optimizer = optimizer_fn([p for p in parameters if p.requires_grad])
    except ValueError as err:                                          # torch's "Invalid learning rate: nan"
        raise ValueError(f"the optimizer refused its settings (model.init_args.optimizer): {err}") from None
    if lr_scheduler_fn is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler_fn(optimizer), "interval": "step"}}


def check_finite(value: Tensor, what: str, step: int) -> None:
    """Stop training on NaN/inf before anything is stepped or saved: checkpoints on disk stay the last good."""
    if not torch.isfinite(value).all():
        raise FloatingPointError(f"{what} is {value.item() if value.numel() == 1 else 'not finite'} at global "
                                 f"step {step}: training stopped; the checkpoints on disk hold the last good weights")


def check_finite_weights(module: LightningModule, optimizer: Any, step: int) -> None:
    """After an optimizer step: finite losses and gradients can still give NaN/inf weights (``lr: .inf``, an
    overflowing moment), and the next sample or checkpoint would carry them. One isfinite pass over the stepped
    parameters with a single sync; under FSDP2 each rank checks its shard and the count is summed."""
    names = {id(p): name for name, p in module.named_parameters()}
    params = [(names.get(id(p), "?"), p) for group in optimizer.param_groups for p in group["params"]]
    bad = nonfinite(params)
    count = len(bad)
    if module.device_mesh is not None:
        count = int(module.trainer.strategy.reduce(torch.tensor(float(count), device=module.device), reduce_op="sum"))
    if count:
        raise FloatingPointError(
            f"the optimizer step {step} made {count} of {len(params)} weight tensors non-finite "
            f"({', '.join(bad[:3]) or 'on another rank'}) from a finite loss and gradient norm: training stopped "
            f"before anything was sampled or saved; the checkpoints on disk hold the last good weights (check "
            f"the optimizer's settings, e.g. its learning rate)")


STEP_STATS = {"kl": "train/kl", "entropy": "train/entropy", "clipped": "train/clip_frac"}   # token sums -> metrics


def gold_metrics(rollout: RolloutBatch) -> dict[str, Tensor]:
    """``reward_mean`` and (when the gold reward judges correctness) ``accuracy`` of the gold reward."""
    if rollout.gold_scores is None:
        return {}
    metrics = {"reward_mean": rollout.gold_scores.mean()}
    if (share := accuracy(rollout.gold_correct)) is not None:
        metrics["accuracy"] = share
    return metrics


class PolicyModule(LightningModule):
    """Policy, optimizer, rollout engine, collector and held-out validation shared by every lit-rl module."""

    def __init__(
        self,
        model: str,
        reward: RewardFunction | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        dtype: str = "float32",
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        engine: RolloutEngine | None = None,
        val_sampling: Sampling = Sampling(temperature=0.0, max_new_tokens=32),
        val_samples: int = 1,
        chat_template: ChatTemplate = "auto",
        system_prompt: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        gold_reward: RewardFunction | None = None,
        collector: Collector | None = None,
        sync_every_n_steps: int = 1,
    ) -> None:
        """
        Args:
            model: a local directory, a hub id, or ``builtin:NAME`` for a model shipped with lit-rl.
            reward: scores completions (``lit_rl.rewards``); needed by every module that samples.
            optimizer: the optimizer, e.g. ``torch.optim.AdamW`` with ``init_args.lr``.
            lr_scheduler: optional scheduler, stepped once per optimizer step.
            dtype: the dtype the weights are loaded in.
            lora: train a LoRA adapter instead of all weights (the reference is then the adapter-disabled model).
            gradient_checkpointing: trade compute for activation memory.
            model_kwargs: more ``from_pretrained`` settings, as in peer libraries (``attn_implementation``,
                ``revision``, ``trust_remote_code``; see :func:`lit_rl.policy.check_model_kwargs`).
            engine: the rollout engine; defaults to ``HFEngine`` (``transformers`` ``generate``).
            val_sampling: decoding used for validation on the held-out split (greedy by default).
            val_samples: completions sampled per held-out prompt (``k``). Above 1, validation also logs
                ``val/pass@k`` (Chen et al. 2021's unbiased estimate that one of ``k`` samples is correct, averaged
                over prompts) and ``val/mean@k`` (the mean correctness of the samples), and both per
                ``data_source`` column value as ``val/pass@k/<source>``; only for rewards that judge correctness.
                ``val/accuracy`` and ``val/reward_mean`` are then over all ``k`` samples of every prompt. Needs
                ``val_sampling.temperature > 0``: ``k`` greedy completions are one completion ``k`` times, so a
                greedy ``val_samples > 1`` is refused rather than run at ``k`` times the cost.
            chat_template: ``auto`` renders prompts with the tokenizer's chat template when the prompt is a list
                of messages or the tokenizer has a template; ``true`` always (an error without one); ``false``
                never (plain-text prompts as they are).
            system_prompt: a system message put before each prompt's messages (kept out when a prompt has its own).
            chat_template_kwargs: extra template variables, e.g. ``{enable_thinking: false}``.
            gold_reward: a reward that is scored and logged beside ``reward`` but never trained on (RLHF against
                a learned reward model with the task's verifier as the gold: ``gold/reward_mean``,
                ``gold/accuracy`` on rollouts, ``val/gold_reward_mean``, ``val/gold_accuracy`` held out).
            collector: what an episode is (``lit_rl.collect``): ``SingleTurn`` (the default: one completion per
                sample) or ``lit_rl.MultiTurn`` (an environment or tools answer between the model's turns).
            sync_every_n_steps: push the policy's weights to an engine that keeps its own copy (vLLM) every this
                many optimizer steps (1: every step, so samples are on-policy), on start, and before validation
                when they changed; a no-op for ``HFEngine``, which samples from the training model itself.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["reward", "gold_reward", "optimizer", "lr_scheduler", "engine", "collector",
                                           "advantage_estimator"])
        self.policy = Policy.load(model, dtype, lora, gradient_checkpointing, model_kwargs)
        self.reward_fn, self.gold_reward_fn = reward, gold_reward
        self.optimizer_fn, self.lr_scheduler_fn = optimizer, lr_scheduler
        self.engine = engine if engine is not None else HFEngine()
        self.engine.bind(self.policy.model, self.policy.tokenizer)
        if val_samples < 1:
            raise ValueError(f"val_samples must be >= 1 (got {val_samples})")
        if sync_every_n_steps < 1:
            raise ValueError(f"sync_every_n_steps must be >= 1 (got {sync_every_n_steps})")
        self.sync_every_n_steps, self.synced_step = sync_every_n_steps, 0
        if val_samples > 1 and val_sampling.temperature == 0:
            raise ValueError(f"val_samples={val_samples} needs sampled validation, but val_sampling.temperature is 0 "
                             f"(greedy): the {val_samples} completions of a prompt would all be the same one; set "
                             f"val_sampling.temperature > 0 (e.g. 1.0) or val_samples: 1")
        self.val_sampling, self.val_samples = val_sampling, val_samples
        self.val_at_k: dict[str, list[float]] = {}                      # "" or "/<source>": [pass, mean, prompts]
        self.chat = {"chat_template": chat_template, "system_prompt": system_prompt,
                     "chat_template_kwargs": chat_template_kwargs}
        self.val_accuracy, self.val_reward = MeanMetric(), MeanMetric()
        self.timer = PhaseTimer()
        self.collector = collector if collector is not None else SingleTurn()
        self.sampler = Sampler(self.policy, self.engine, reward, gold_reward, self.chat, self.timer)

    def configure_optimizers(self) -> Any:
        return optimizers(self.optimizer_fn, self.lr_scheduler_fn, self.policy.parameters())

    @classmethod
    def canonical_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` (this module's init args as a dict, from a config or a checkpoint) with those written in
        an older form rewritten in today's, so that a resume compares like with like (GRPO and ERPD: a loss named
        by a string, ``lit_rl.losses.LossAliases``). Here: as they are."""
        return settings

    def prompt_fits(self, prompt: Prompt) -> bool:
        """Whether the rendered prompt leaves room for the longest sample this module's collector takes
        (``PromptData(filter_long=true)`` drops those that do not)."""
        room = max(self.collector.room(s) for s in (self.val_sampling, getattr(self, "sampling", self.val_sampling)))
        return self.sampler.prompt_fits(prompt, room, self.collector.tools())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.timer.device = self.device
        self.timer.start()

    def log_phases(self) -> None:
        """Where the step's time went, logged at the end of ``training_step`` (before any checkpoint of the step
        is written): ``time/<phase>`` seconds (``generate``, ``score``, ``old_logps``, ``ref_logps``,
        ``forward_backward``, ``optimizer``; those the step had), ``time/step`` from the batch's start, and
        ``rollout/tokens_per_s`` (completion tokens generated over the seconds spent generating them)."""
        seconds, counts = self.timer.stop()
        metrics = {f"time/{phase}": value for phase, value in seconds.items()}
        if counts.get("generated_tokens") and seconds.get("generate"):
            metrics["rollout/tokens_per_s"] = counts["generated_tokens"] / seconds["generate"]
        self.log_dict(metrics, batch_size=1)

    def on_train_end(self) -> None:
        """Export the trained policy with ``save_pretrained`` to ``<run dir>/hf_model``: it then loads in
        ``transformers`` (or vLLM) like any hub model, and ``model: <run dir>/hf_model`` starts a next stage.
        Under LoRA it holds the merged weights, and ``hf_model/adapter`` the adapter alone (``lit_rl.export``).
        Without a logger there is no run directory and nothing is written."""
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        model, sharded = self.policy.model, is_sharded(self.policy.model)   # FSDP2, ZeRO-3: every rank gathers
        state = merged_state_dict(model) if sharded else None
        adapter = adapter_weights(model) if sharded and self.policy.is_lora else None
        if log_dir is not None and self.trainer.is_global_zero:
            export_pretrained(model, self.policy.tokenizer, f"{log_dir}/hf_model", state, adapter)

    def setup(self, stage: str) -> None:
        dtype = next(self.policy.model.parameters()).dtype
        if stage == "fit" and dtype in (torch.bfloat16, torch.float16) and not is_deepspeed(self.trainer.strategy):
            rank_zero_warn(f"training {dtype} weights in place: an optimizer update smaller than half a weight's "
                           "rounding step is lost (bfloat16 keeps 8 significant bits, so at lr 1e-6 nearly every "
                           "update is); load the weights in float32 (dtype: float32) with trainer.precision: "
                           "bf16-mixed, or use DeepSpeed, whose optimizer keeps float32 master weights")

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` shard the policy, and any head beside it, with FSDP2 over the
        data-parallel mesh."""
        if self.device_mesh is not None:
            fully_shard_policy(self.policy.model, self.device_mesh["data_parallel"])
            fully_shard_heads(self, self.policy, self.device_mesh["data_parallel"])

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Automatic optimization (SFT): Lightning's step, then the weights' finiteness check."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        check_finite_weights(self, optimizer, self.global_step + 1)      # Lightning counts the step after this hook

    def configure_callbacks(self) -> list:
        """Ship the callbacks the module relies on, unless the trainer already has one of the same type."""
        return [] if any(isinstance(c, SafeCheckpoints) for c in self.trainer.callbacks) else [SafeCheckpoints()]

    # ------------------------------------------------------------------ the engine follows the policy
    def sync_engine(self) -> None:
        """Push the policy's weights to the rollout engine (a no-op for ``HFEngine``)."""
        self.engine.sync_weights(self.policy.model)
        self.synced_step = self.global_step

    def on_train_start(self) -> None:
        self.sync_engine()                                              # a resumed run starts in sync

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step - self.synced_step >= self.sync_every_n_steps:
            self.sync_engine()

    def on_validation_start(self) -> None:
        if self.global_step != self.synced_step:                        # validate the policy, not a stale copy
            self.sync_engine()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Sampling draws from these generators: saving them makes a resumed run draw what the original would have.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        checkpoint[MODULE_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["engine_synced_step"] = self.synced_step
        # A reward's own state (RewardModel's running normalisation) lives outside the module tree: save it here.
        if callable(state := getattr(self.reward_fn, "state_dict", None)) and (reward_state := state()):
            checkpoint["reward_state"] = reward_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A fit continues the checkpoint's run or nothing: another algorithm or other settings would silently
        # train something else on these weights (the CLI checks the whole config before this point).
        if self._trainer is not None and self.trainer.state.fn == "fit":
            if reason := module_mismatch(checkpoint, type(self), dict(self.hparams)):
                raise ResumeMismatch(f"cannot resume from this checkpoint: {reason}")
        if "reward_state" in checkpoint:
            self.reward_fn.load_state_dict(checkpoint["reward_state"])
        refresh = [s for key, s in checkpoint.get("callbacks", {}).items() if key.startswith("RolloutRefresh")]
        self.synced_step = checkpoint.get("engine_synced_step", refresh[0]["last_synced_step"] if refresh else 0)
        if states := checkpoint.get("rng_states"):
            torch.set_rng_state(states["torch"])
            random.setstate(states["python"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])

    def on_validation_epoch_start(self) -> None:
        # trainer.validate runs in inference mode, fit's validation does not: fresh states made outside
        # inference mode let one module do both (inference tensors refuse in-place updates elsewhere).
        with torch.inference_mode(False):
            self.val_accuracy.reset()
            self.val_reward.reset()
        self.val_at_k = {}

    def validation_step(self, batch: dict[str, list], batch_idx: int) -> None:
        rollout = self.collector.collect(self.sampler, batch["prompt"], batch["meta"], self.val_sampling,
                                         self.val_samples)
        if self.val_samples > 1:
            self.count_at_k(rollout.correct, batch["meta"])
        judged = ~rollout.correct.isnan()
        if judged.any():                                                # a reward with a notion of correctness
            self.val_accuracy.update(rollout.correct[judged])
            self.log("val/accuracy", self.val_accuracy, prog_bar=True, batch_size=int(judged.sum()))
        self.val_reward.update(rollout.scores)
        self.log("val/reward_mean", self.val_reward, prog_bar=not judged.any(), batch_size=len(rollout))
        for key, value in gold_metrics(rollout).items():
            self.log(f"val/gold_{key}", value, batch_size=len(rollout) if key == "reward_mean"
                     else int((~rollout.gold_correct.isnan()).sum()))

    def count_at_k(self, correct: Tensor, metas: list[dict]) -> None:
        """Add a validation batch's per-prompt pass@k and mean@k (``k = val_samples``) to the epoch's sums, overall
        and under the prompt's ``data_source`` column. Only prompts whose ``k`` samples the reward all judged count:
        a reward without a notion of correctness adds nothing."""
        k = self.val_samples
        correct = correct.view(-1, k)                                   # [P, k], prompt-major as sampled
        judged = ~correct.isnan().any(-1)                               # [P]
        c = correct.nan_to_num(0.0).sum(-1)                             # [P]
        n = torch.full_like(c, k)                                       # [P]: n = k samples per prompt
        rows = torch.stack([pass_at_k(n, c, k), mean_at_k(n, c)], -1)   # [P, 2]
        for p, (passed, mean) in zip(judged.nonzero().flatten().tolist(), rows[judged].tolist()):
            source = metas[p].get("data_source")
            for key in ("",) if source is None else ("", f"/{source}"):
                sums = self.val_at_k.setdefault(key, [0.0, 0.0, 0.0])
                sums[0], sums[1], sums[2] = sums[0] + passed, sums[1] + mean, sums[2] + 1

    def on_validation_epoch_end(self) -> None:
        """Log ``val/pass@k`` and ``val/mean@k`` (and per source) over every rank's prompts: the sums are reduced
        across ranks for the union of the ranks' keys (a rank may not have seen a source; it adds zeros), so
        every rank logs the same values and no rank waits on a collective the others skip."""
        super().on_validation_epoch_end()
        keys = sorted(self.val_at_k)
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, keys)
            keys = sorted(set().union(*ranks))
        if not keys:
            return
        sums = torch.tensor([self.val_at_k.get(key, [0.0, 0.0, 0.0]) for key in keys], device=self.device)  # [K, 3]
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")      # [K, 3]: pass sum, mean sum, prompts
        k = self.val_samples
        for key, (passed, mean, prompts) in zip(keys, sums.tolist()):
            # already global: sync_dist's mean over ranks of equal values changes nothing (Lightning asks for it)
            self.log(f"val/pass@{k}{key}", passed / prompts, sync_dist=True)
            self.log(f"val/mean@{k}{key}", mean / prompts, sync_dist=True)


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
        for micro in batch.split(self.micro_batch_size, self.whole_groups, self.max_tokens_per_micro_batch):
            with self.timer("forward_backward"):
                loss, micro_stats = self.micro_loss(micro, normalisers)
                check_finite(loss, "loss", self.global_step)
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


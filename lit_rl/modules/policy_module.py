"""What every lit-rl module shares.

``PolicyModule`` owns the policy, its optimizer, its rollout engine and held-out validation; SFT and every RL
algorithm subclass it (the RL loop: ``lit_rl.modules.base.RLModule``). Samples come from its collector
(``lit_rl.collect``: single turn, or multi-turn episodes), never from the module itself.
"""

import random
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from lit_rl.chat import ChatTemplate
from lit_rl.checkpointing import SafeCheckpoints, nonfinite
from lit_rl.collect import Collector, Sampler, SingleTurn
from lit_rl.distributed import fully_shard_heads, fully_shard_policy, is_deepspeed
from lit_rl.errors import ResumeMismatch
from lit_rl.export import adapter_weights, export_pretrained, is_sharded, merged_state_dict
from lit_rl.objectives import ImportanceSampling, mean_at_k, pass_at_k
from lit_rl.policy import LoraSettings, Policy
from lit_rl.resume import MODULE_KEY, module_mismatch
from lit_rl.rewards import Prompt, RewardFunction
from lit_rl.rollout import HFEngine, RolloutBatch, RolloutEngine, Sampling, accuracy
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
            engine: the rollout engine; defaults to ``HFEngine`` (sampling on the training model by lit-rl's own
                decoding loop; ``HFEngine(fast_decode=false)``: ``transformers`` ``generate``).
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

"""Rollouts: sampling settings, the engine protocol (HF ``generate`` here; vLLM plugs in the same way),
and :class:`RolloutBatch`, the scored samples one training step learns from."""

import copy
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import StoppingCriteria, StoppingCriteriaList

from lit_rl.decode import STOP_CHECK_EVERY, sample, stopped
from lit_rl.export import is_sharded, zero3_partitioned
from lit_rl.logprobs import token_logps
from lit_rl.stopping import completion_mask, decoder, eos_token_ids, stop_mask  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Sampling:
    """Decoding settings, immutable (safe as a shared default). ``temperature = 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] | list[str] = ()
    """Stop strings (e.g. ``["</answer>"]``): a completion ends with the token that completes the first of them,
    which it keeps (``lit_rl.stopping``). Stored as a tuple."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings (got {self.stop!r})")
        object.__setattr__(self, "stop", tuple(self.stop))              # frozen and hashable
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"invalid sampling settings {self}: need temperature >= 0, 0 < top_p <= 1, top_k >= 0")

    @property
    def greedy(self) -> "Sampling":
        return replace(self, temperature=0.0)

    @property
    def logit_temperature(self) -> float:
        """The temperature the trainer divides logits by (1 for greedy decoding)."""
        return self.temperature or 1.0


@dataclass
class Generation:
    completion_ids: Tensor                                              # [B*n, C], right-padded
    completion_mask: Tensor                                             # [B*n, C], 1 up to and including EOS or stop
    logps: Tensor | None = None                                         # [B*n, C], behaviour log-probs
    version: int | None = None
    """The weights that generated these: how many times the engine had synced by then (``None``: an engine that
    samples from the training model itself)."""


class RolloutEngine:
    """Generates ``n`` completions per prompt and keeps its weights in step with the trained policy."""

    not_in_background: str | None = "it does not say that it can generate from another thread while the policy trains"
    """Why :meth:`generate` may not run in a background thread while the trainer steps the policy (a module's
    ``max_staleness > 0``, :mod:`lit_rl.async_rollouts`); ``None`` for an engine that may: one that samples from
    weights of its own, and whose ``generate`` and ``sync_weights`` may be called from two threads."""

    def bind(self, model: nn.Module, tokenizer: Any) -> None:
        """Attach the policy being trained (called once, by the module, in ``setup``)."""
        raise NotImplementedError

    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, n: int = 1) -> Generation:
        """Completions for each prompt, prompt-major: row ``p * n + i`` is sample ``i`` of prompt ``p``."""
        raise NotImplementedError

    def sync_weights(self, model: nn.Module) -> None:
        """Push the policy's current weights to the engine (a no-op where they are shared)."""


class HFEngine(RolloutEngine):
    """Samples with ``transformers`` ``generate`` on the training model itself, so weights are always in sync.

    ``return_logps`` also returns the sampled tokens' log-probs. It is off by default: it keeps every
    step's logits (``[B*n, C, V]``), and the trainer recomputes old log-probs anyway.

    Rows stop at any EOS id of the tokenizer or the model's generation config and at ``sampling.stop``, read in
    the completion alone as vLLM reads it (:class:`CompletionStop`; ``generate``'s own ``stop_strings`` would also
    match a stop string begun in the prompt, end the row there and pad it); :func:`lit_rl.stopping.stop_mask` then
    cuts them as vLLM's are cut.

    ``fast_decode`` (the default) samples by lit-rl's own loop over the model's key/value cache
    (:func:`lit_rl.decode.sample`: one prefill per prompt for its ``n`` samples, a cache reserved for the whole
    completion, the filters as tensor operations, no per-step processor objects): the same greedy tokens and the
    same sampling distribution as ``generate``, less Python per token. It draws what ``generate`` draws (one
    ``torch.multinomial`` per step over the same rows), so a seeded run samples the same tokens either way, but
    where float rounding of the probabilities moves a draw across a boundary. It reads temperature, top-k and
    top-p and no other generation setting of the model (``fast_decode: false``: ``generate``, for a repetition
    penalty). Under FSDP2 or ZeRO-3, where every forward is a collective, it leaves the ranks' lock-step to
    ``generate``."""

    not_in_background = ("it samples with the training model itself, so a background thread would read the weights "
                         "while the optimizer writes them")

    def __init__(self, return_logps: bool = False, fast_decode: bool = True) -> None:
        self.return_logps, self.fast_decode = return_logps, fast_decode

    def bind(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.eos_token_ids = eos_token_ids(model, tokenizer)

    def synced_gpus(self) -> bool | None:
        """Keep the ranks' forwards in step when every forward is a collective: ZeRO-3 gathers each layer's
        weights from all ranks, so a rank that stopped early would leave the others waiting. ``None`` leaves it
        to ``transformers``, which sees FSDP2 (``lit_rl.distributed.fully_shard_policy`` marks the model)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return True if distributed and torch.distributed.get_world_size() > 1 and zero3_partitioned(self.model) else None

    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, n: int = 1) -> Generation:
        from transformers import GenerationConfig

        do_sample = sampling.temperature > 0
        if self.fast_decode and not is_sharded(self.model):
            was_training = self.model.training
            self.model.eval()
            try:
                completion_ids, logps = sample(
                    self.model, prompt_ids, prompt_mask, n, sampling.max_new_tokens, sampling.temperature,
                    sampling.top_k, sampling.top_p, self.eos_token_ids, self.tokenizer.pad_token_id, sampling.stop,
                    decoder(self.tokenizer), do_sample and self.return_logps)
            finally:
                self.model.train(was_training)
            return self.cut(completion_ids, logps, sampling)
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=do_sample, num_beams=1,
            temperature=sampling.temperature if do_sample else None, top_p=sampling.top_p if do_sample else None,
            top_k=sampling.top_k if do_sample else None, eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True, output_logits=do_sample and self.return_logps, use_cache=True)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(input_ids=prompt_ids.repeat_interleave(n, 0),
                                      attention_mask=prompt_mask.repeat_interleave(n, 0), generation_config=config,
                                      synced_gpus=self.synced_gpus(), stopping_criteria=StoppingCriteriaList(
                                          [CompletionStop(prompt_ids.shape[1], sampling.stop, decoder(self.tokenizer))]
                                          if sampling.stop else []))
        finally:
            self.model.train(was_training)
        completion_ids = out.sequences[:, prompt_ids.shape[1]:]         # [B*n, C]
        logps = None
        if do_sample and self.return_logps:                             # raw logits: the untruncated policy
            logps = token_logps(torch.stack(out.logits, 1), completion_ids, sampling.temperature)
        return self.cut(completion_ids, logps, sampling)

    def cut(self, completion_ids: Tensor, logps: Tensor | None, sampling: Sampling) -> Generation:
        """Completions cut after their first EOS or stop string (:func:`~lit_rl.stopping.stop_mask`), padded."""
        mask = stop_mask(completion_ids, self.eos_token_ids, sampling.stop, decoder(self.tokenizer))  # [B*n, C]
        pad = self.tokenizer.pad_token_id
        return Generation(completion_ids * mask + pad * (1 - mask), mask, None if logps is None else logps * mask)


class CompletionStop(StoppingCriteria):
    """``generate``'s stopping criterion for rows that completed a stop string in their completion (the prompt's
    tail not included: a row whose prompt ends in ``"7"`` does not stop at ``"77"`` on its first ``"7"``), checked
    every ``STOP_CHECK_EVERY`` tokens (:func:`lit_rl.decode.stopped`); ``stop_mask`` cuts at the exact token."""

    def __init__(self, prompt_length: int, stop: tuple[str, ...], decode: Any) -> None:
        self.prompt_length, self.stop, self.decode = prompt_length, stop, decode

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        ended = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        if (input_ids.shape[1] - self.prompt_length) % STOP_CHECK_EVERY:
            return ended
        return stopped(input_ids[:, self.prompt_length:], ended, self.stop, self.decode)


class CopyEngine(HFEngine):
    """Samples with ``transformers`` ``generate`` on a frozen copy of the policy that ``sync_weights`` refreshes.

    The shape of a vLLM engine (weights of its own, copied from the policy on every sync) without vLLM: the
    module's ``sync_every_n_steps`` decides how stale the copy may get, and with ``max_staleness > 0`` the copy
    generates in a background thread while the policy trains (:mod:`lit_rl.async_rollouts`), on CPU as on a GPU.
    The trainer never touches the copy, and a lock makes ``generate`` and ``sync_weights`` take turns, so a
    background thread is safe. Behaviour log-probs are on by default (``return_logps``): the off-policy
    correction (``importance_sampling``) and ``rollout/logp_diff`` read them.

    Costs and limits: a second copy of the weights (made when the module is built, moved to the policy's device
    on the first sync); under LoRA the copy is of the whole adapted model and the sync copies every tensor;
    sharded policies (FSDP2, ZeRO-3) are refused, since each rank would hold a full copy gathered at every sync
    (use ``VLLMServerEngine`` there). Sampling draws from torch's global random generator, as ``HFEngine`` does:
    in a background thread it shares that stream with the trainer's thread, so an asynchronous run is not
    reproducible bit for bit (a synchronous one is). On the training GPU its kernels queue on the stream the
    training's do, so what overlaps there is the host's share of a step (decoding, scoring, Python), not the device's.
    """

    not_in_background = None

    def __init__(self, return_logps: bool = True, fast_decode: bool = True) -> None:
        super().__init__(return_logps=return_logps, fast_decode=fast_decode)
        self.lock = threading.Lock()
        self.version = 0                                                # weight syncs so far

    def bind(self, model: nn.Module, tokenizer: Any) -> None:
        """Attach the policy: the engine samples from a frozen copy of it, made now."""
        if zero3_partitioned(model):
            raise ValueError("CopyEngine keeps a full copy of the policy, and this one is partitioned by DeepSpeed "
                             "ZeRO-3; use VLLMServerEngine or HFEngine")
        super().bind(copy.deepcopy(model).eval().requires_grad_(False), tokenizer)

    def sync_weights(self, model: nn.Module) -> None:
        """Copy the policy's current weights (and its device) into the engine's copy."""
        if is_sharded(model):
            raise ValueError("CopyEngine cannot follow a sharded policy (FSDP2, ZeRO-3): every rank would gather a "
                             "full copy at each sync; use VLLMServerEngine, or HFEngine")
        with self.lock, torch.no_grad():
            self.model.to(next(model.parameters()).device)
            self.model.load_state_dict(model.state_dict())
            self.version += 1

    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, n: int = 1) -> Generation:
        with self.lock:
            generation = super().generate(prompt_ids, prompt_mask, sampling, n)
            generation.version = self.version
        return generation


def per_token(**kwargs: Any) -> Any:
    """A :class:`RolloutBatch` field with one value per completion token (``[B, C]``): cut and padded along
    the completion by ``select`` and ``cat``."""
    return field(metadata={"per_token": True}, **kwargs)


@dataclass(frozen=True)
class RolloutBatch:
    """Scored samples, prompt-major (``group_size`` consecutive rows share a prompt), immutable: a collector
    (``lit_rl.collect``) makes it, the module derives the training batch from it once (``dataclasses.replace``).

    Two masks over the completion: ``completion_mask`` is what the model attends to (every real token after the
    prompt, the environment's included in a multi-turn episode), ``loss_mask`` what is trained on (the tokens the
    policy generated; the attention mask itself when not given, as in single turn). Every loss, sequence sum and
    token count reads ``loss_mask``; only the forward reads ``completion_mask``.

    ``rewards`` are what advantages are computed from (task reward, minus a KL term when the KL penalty
    lives in the reward); ``scores`` are the task rewards as the reward function returned them, ``components``
    the parts of a combined reward by name (NaN where a part gave none), ``correct`` 1/0, or NaN where the
    reward has no notion of correctness. ``prompts`` are the dataset's prompts (text or chat messages), ``texts``
    the completions' text (a multi-turn episode's turns and observations as the model read them) and ``turns``
    an episode's turns as chat messages. ``source`` is ``policy`` (sampled now) or ``dataset`` (replayed), and
    ``version`` the policy version that sampled it, where recorded.
    """

    prompt_ids: Tensor                                                  # [B, P], left-padded
    prompt_mask: Tensor                                                 # [B, P]
    completion_ids: Tensor = per_token()                                # [B, C], right-padded
    completion_mask: Tensor = per_token()                               # [B, C], attention
    scores: Tensor                                                      # [B]
    correct: Tensor                                                     # [B] float: 1, 0, NaN (not judged)
    metas: list[dict[str, Any]]
    group_size: int
    loss_mask: Tensor | None = per_token(default=None)                  # [B, C], trained on; default: attention
    rewards: Tensor | None = None                                       # [B]
    old_logps: Tensor | None = per_token(default=None)                  # [B, C]
    ref_logps: Tensor | None = per_token(default=None)                  # [B, C]
    behaviour_logps: Tensor | None = per_token(default=None)            # [B, C]: the data's sampler (dataset or engine)
    source: Literal["policy", "dataset"] = "policy"
    advantages: Tensor | None = per_token(default=None)                 # [B] or [B, C]
    values: Tensor | None = per_token(default=None)                     # [B, C], a value head's (PPO)
    returns: Tensor | None = per_token(default=None)                    # [B, C], value targets (PPO)
    is_weights: Tensor | None = per_token(default=None)                 # [B, C], truncated importance weights
    prompts: list[Any] = field(default_factory=list)                    # [B], text or chat messages
    texts: list[str] = field(default_factory=list)                      # [B], completion (episode) text
    turns: list[Any] = field(default_factory=list)                      # [B], an episode's turns as messages
    components: dict[str, Tensor] = field(default_factory=dict)         # name -> [B]
    gold_scores: Tensor | None = None                                   # [B], logged, never trained on
    gold_correct: Tensor | None = None                                  # [B] float: 1, 0, NaN
    truncated: Tensor | None = None                                     # [B] bool: the context filled up first
    version: int | None = None
    """The policy version that sampled it: the optimizer steps behind the engine's weights (``None``: not recorded;
    rollouts generated ahead of training record it, :mod:`lit_rl.async_rollouts`). A concatenation keeps the oldest."""

    def __post_init__(self) -> None:
        if self.loss_mask is None:                                      # single turn: trained where attended
            object.__setattr__(self, "loss_mask", self.completion_mask)

    @property
    def from_dataset(self) -> bool:
        return self.source == "dataset"

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, index: Tensor | slice) -> "RolloutBatch":
        """Rows ``index``; per-token fields are trimmed to the longest selected completion."""
        index = torch.arange(len(self))[index] if isinstance(index, slice) else index.cpu()
        width = int(self.completion_mask[index].sum(-1).max().clamp(min=1)) if len(index) else 1
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v[index.to(v.device)]
                v = v[:, :width] if f.metadata.get("per_token") and v.dim() == 2 else v
            elif isinstance(v, list):                                   # metas, prompts, texts, turns
                v = [v[i] for i in index.tolist()] if v else v
            elif isinstance(v, dict):                                   # components
                v = {k: t[index.to(t.device)] for k, t in v.items()}
            values[f.name] = v
        return RolloutBatch(**values)

    def split(self, size: int | None, whole_groups: bool = False, max_tokens: int | None = None) -> list["RolloutBatch"]:
        """Consecutive chunks of ``size`` rows (all rows if ``size`` is None); ``whole_groups`` rounds
        ``size`` to a multiple of ``group_size`` so no prompt's group is cut (listwise objectives).
        ``max_tokens`` cuts by a token budget instead: as many consecutive rows (whole groups) as hold at most
        that many real tokens, prompt and completion (a row or group longer than the budget goes alone)."""
        unit = self.group_size if whole_groups else 1
        if max_tokens is not None:
            return [self.select(slice(a, b)) for a, b in token_budget_cuts(self.tokens_per_row(), max_tokens, unit)]
        size = size or len(self)
        if whole_groups:
            size = max(self.group_size, size // self.group_size * self.group_size)
        return [self.select(slice(s, s + size)) for s in range(0, len(self), size)]

    def tokens_per_row(self) -> Tensor:
        """Real tokens per row, prompt and completion ``[B]``: what a padding-free forward computes."""
        return self.prompt_mask.sum(-1) + self.completion_mask.sum(-1)

    @staticmethod
    def cat(batches: list["RolloutBatch"]) -> "RolloutBatch":
        """Stack batches; per-token fields are right-padded with zeros, prompts left-padded (a padded position
        changes no log-prob: positions count real tokens only)."""
        width = max(b.completion_ids.shape[1] for b in batches)
        prompt_width = max(b.prompt_ids.shape[1] for b in batches)
        values = {}
        for f in fields(RolloutBatch):
            parts = [getattr(b, f.name) for b in batches]
            if f.name in ("prompt_ids", "prompt_mask"):
                values[f.name] = torch.cat([nn.functional.pad(p, (prompt_width - p.shape[1], 0)) for p in parts])
            elif f.name in ("group_size", "source"):
                values[f.name] = parts[0]
            elif f.name == "version":
                values[f.name] = None if None in parts else min(parts)
            elif f.name in ("metas", "prompts", "texts", "turns"):
                values[f.name] = [m for part in parts for m in part]
            elif f.name == "components":
                values[f.name] = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
            elif parts[0] is None:
                values[f.name] = None
            elif f.metadata.get("per_token") and parts[0].dim() == 2:
                values[f.name] = torch.cat([nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
            else:
                values[f.name] = torch.cat(parts)
        return RolloutBatch(**values)


def accuracy(correct: Tensor) -> Tensor | None:
    """The share of correct samples among those the reward judged (``None`` if it judged none)."""
    judged = ~correct.float().isnan()
    return correct.float()[judged].mean() if judged.any() else None


def token_budget_cuts(tokens: Tensor, budget: int, unit: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive runs of ``unit`` rows whose ``tokens`` add up to at most ``budget`` each
    (a unit above the budget alone), in order and covering every row."""
    per_unit = tokens.view(-1, unit).sum(-1).tolist() if len(tokens) % unit == 0 else tokens.tolist()
    unit = unit if len(tokens) % unit == 0 else 1
    cuts, start, held = [], 0, 0
    for i, n in enumerate(per_unit):
        if held and held + n > budget:
            cuts.append((start * unit, i * unit))
            start, held = i, 0
        held += n
    return cuts + [(start * unit, len(per_unit) * unit)] if per_unit else cuts

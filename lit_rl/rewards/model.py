"""A learned reward model as a reward: an ``AutoModelForSequenceClassification`` with one label, frozen, with its
own tokenizer and chat template, out of the optimizer and the checkpoint."""

import math
import os
import warnings
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lit_rl.chat import ChatTemplate, render_prompt
from lit_rl.policy import check_model_dir, resolve
from lit_rl.tokenizer import token_ids
from lit_rl.rewards.base import Columns, Prompt, RewardFunction, Score


def load_reward_model(name_or_path: str, dtype: str = "float32", new_head: bool = False) -> tuple[Any, Any]:
    """The model and tokenizer of ``name_or_path`` (a directory, a hub id or ``builtin:NAME``), or a named error:
    a path that does not exist, a model with more than one label. ``new_head`` (training) loads any base model
    with a one-label head (fresh if it had none). A tokenizer without a pad token pads with its EOS token (the
    score is read at the last real token, so the pad id only has to differ from that token)."""
    path = resolve(name_or_path)
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"reward model {name_or_path!r}: no such directory")
    if os.path.isdir(os.path.expanduser(path)):
        check_model_dir(path, f"reward model {name_or_path!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype),
                                                                   **({"num_labels": 1} if new_head else {}))
    except OSError as err:
        raise FileNotFoundError(f"reward model {name_or_path!r} is neither a directory nor a hub model available "
                                f"here ({err})") from None
    if model.config.num_labels != 1:
        raise ValueError(f"reward model {name_or_path!r} has {model.config.num_labels} labels; a reward model "
                         f"scores with one (a causal LM loads with a fresh 2-label head: train it first with "
                         f"lit_rl.RewardModelTraining)")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"reward model {name_or_path!r}: its tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id                  # where HF reads the score: last non-pad token
    return model.eval().requires_grad_(False), tokenizer


def reward_inputs(tokenizer: Any, prompts: list[Prompt], completions: list[str], chat: dict[str, Any],
                  max_length: int | None, eos_id: int | None) -> list[list[int]]:
    """Token ids of each ``render(prompt) + completion (+ EOS)``, the prompt cut from the left to fit ``max_length``
    (the completion never: one that alone is longer is an error). Shared by scoring and training, so a reward
    model sees at inference exactly the texts it was trained on."""
    rows = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        head = token_ids(tokenizer, render_prompt(tokenizer, prompt, **chat))
        tail = token_ids(tokenizer, completion) + ([eos_id] if eos_id is not None else [])
        if max_length is not None and len(head) + len(tail) > max_length:
            room = max_length - len(tail)
            if room < 0:
                raise ValueError(f"completion {i} has {len(tail)} tokens, more than max_length={max_length}; "
                                 f"completions are never cut, raise max_length")
            head = head[len(head) - room:]
        rows.append(head + tail)
    return rows


def pad_right(rows: list[list[int]], pad_id: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask ``[B, T]`` (HF reads a classifier's score at the last non-pad token)."""
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        ids[j, :len(row)], mask[j, :len(row)] = torch.tensor(row, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def eos_to_append(tokenizer: Any, append_eos: bool) -> int | None:
    """The EOS id to end texts with, unless it is also the pad id (HF would take it for padding)."""
    eos = tokenizer.eos_token_id
    return eos if append_eos and eos is not None and eos != tokenizer.pad_token_id else None


class RunningMeanStd:
    """Mean and variance of every score seen so far (Chan et al. 1979's parallel update, in float64), as a
    ``state_dict`` so a resumed run normalises exactly as the uninterrupted one."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        n = len(values)
        if n == 0:
            return
        mean = sum(values) / n
        m2 = sum((v - mean) ** 2 for v in values)
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


class RewardModel(RewardFunction):
    """``r(x, y)``: the one logit of a sequence classifier read at the last token of ``render(x) + y + EOS``.

    The prompt is rendered from the dataset's prompt (text or messages) with :func:`lit_rl.render_prompt` on the
    reward model's own tokenizer and template, so a policy and a reward model with different templates each see
    their own; the completion text follows. Scores are computed in inference mode, ``micro_batch_size`` texts
    at a time, right-padded (HF reads the score at the last non-pad token). The model lives on the policy's
    device and dtype (:meth:`bind`, called by the module before each scoring) and is kept off every
    ``nn.Module`` tree: it never enters the optimizer or the checkpoint.

    Departures from a plain forward on ``prompt + completion``:
      1. Texts longer than ``max_length`` tokens lose the start of their prompt, never any of the completion
         (a completion that alone exceeds ``max_length`` is an error: raise ``max_length``).
      2. ``normalize: true`` returns ``(r - mean) / (std + eps)`` over every training score seen so far (updated
         with the batch first, as running observation normalisers do); validation scores use the statistics
         without updating them. The statistics travel in the module's checkpoint (:meth:`state_dict`).
      3. Special tokens come from the chat template and ``append_eos`` only (``add_special_tokens=False``, as the
         policy tokenises). With no pad token the tokenizer pads with EOS, and then no EOS is appended (HF would
         take it for padding).
    """

    def __init__(self, model: str, name: str | None = None, max_length: int | None = None, micro_batch_size: int = 32,
                 normalize: bool = False, eps: float = 1e-6, append_eos: bool = True,
                 chat_template: ChatTemplate = "auto", system_prompt: str | None = None,
                 chat_template_kwargs: dict[str, Any] | None = None, dtype: str | None = None) -> None:
        """
        Args:
            model: a local directory, a hub id or ``builtin:NAME`` (e.g. ``builtin:countdown-rm``).
            name: the logged component's name inside :class:`lit_rl.Rewards` (default ``reward_model``).
            max_length: the longest text in tokens (default: the model's context).
            micro_batch_size: texts per forward.
            normalize: standardise scores with running statistics (kept in checkpoints).
            eps: added to the running std.
            append_eos: end each text with the tokenizer's EOS token (where the score is read).
            chat_template: as the policy's ``chat_template``, for the reward model's tokenizer.
            system_prompt: a system message for the reward model's template.
            chat_template_kwargs: extra variables for the reward model's template.
            dtype: the reward model's dtype (default: the policy's, at :meth:`bind`).
        """
        if micro_batch_size < 1:
            raise ValueError(f"RewardModel micro_batch_size must be >= 1 (got {micro_batch_size})")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 1):
            raise ValueError(f"RewardModel max_length must be a positive number of tokens, or unset for the model's "
                             f"context (got {max_length!r})")
        if dtype is not None and not (isinstance(getattr(torch, str(dtype), None), torch.dtype)
                                      and getattr(torch, dtype).is_floating_point):
            raise ValueError(f"RewardModel dtype {dtype!r} is not a torch floating-point dtype (e.g. float32, "
                             f"bfloat16, float16), or unset for the policy's")
        self.source, self.name, self.normalize, self.eps = model, name or "reward_model", normalize, float(eps)
        self.micro_batch_size, self.dtype = micro_batch_size, dtype
        self.chat = {"chat_template": chat_template, "system_prompt": system_prompt,
                     "chat_template_kwargs": chat_template_kwargs}
        model_, self.tokenizer = load_reward_model(model, dtype or "float32")
        self._model = [model_]                                          # a list: no nn.Module tree ever holds it
        context = getattr(model_.config, "max_position_embeddings", None)
        self.max_length = context if max_length is None else max_length
        self.eos_id = eos_to_append(self.tokenizer, append_eos)
        self.stats, self.updating = RunningMeanStd(), True

    @property
    def model(self) -> Any:
        return self._model[0]

    # ----------------------------------------------------------------------------- the module's hooks
    def bind(self, device: torch.device, dtype: torch.dtype | None = None, training: bool = True) -> None:
        """Follow the policy's device and dtype (unless ``dtype`` was set); update statistics only in training."""
        dtype = getattr(torch, self.dtype) if self.dtype else dtype
        self._model[0] = self.model.to(device=device, dtype=dtype if dtype is not None and dtype.is_floating_point
                                       else None)
        self.updating = training

    def check_sampling(self, max_new_tokens: int, tokenizer: Any) -> None:
        """A completion is never cut, so ``max_length`` must hold the longest one with its EOS and a token of
        prompt. Checked where the policy shares this model's vocabulary (token counts then agree); with another
        tokenizer a too-long completion is named when it is scored."""
        need = max_new_tokens + (self.eos_id is not None) + 1
        if self.max_length is not None and self.max_length < need and tokenizer.get_vocab() == self.tokenizer.get_vocab():
            raise ValueError(f"RewardModel max_length={self.max_length} cannot hold a completion of max_new_tokens="
                             f"{max_new_tokens} tokens" + (" with its EOS" if self.eos_id is not None else "") +
                             f" and a prompt token (completions are never cut): set max_length >= {need}")

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.state_dict()} if self.normalize else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.normalize and "stats" in state:
            self.stats.load_state_dict(state["stats"])

    # ------------------------------------------------------------------------------------------ scoring
    def encode(self, prompts: list[Prompt], completions: list[str]) -> list[list[int]]:
        """Token ids of each ``render(prompt) + completion (+ EOS)``, the prompt cut from the left to fit."""
        try:
            return reward_inputs(self.tokenizer, prompts, completions, self.chat, self.max_length, self.eos_id)
        except ValueError as err:
            raise ValueError(f"reward model {self.source!r}: {err}") from None

    @torch.inference_mode()
    def raw_scores(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        """The model's logits, before any normalisation."""
        rows, out = self.encode(prompts, completions), []
        device, pad = next(self.model.parameters()).device, self.tokenizer.pad_token_id
        for start in range(0, len(rows), self.micro_batch_size):
            ids, mask = pad_right(rows[start:start + self.micro_batch_size], pad, device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits    # [b, 1]
            out.extend(logits[:, 0].float().tolist())
        return out

    def score(self, prompts: list[Prompt], completions: list[str], columns: Columns) -> list[Score]:
        scores = self.raw_scores(prompts, completions)
        if self.normalize:
            if self.updating:
                self.stats.update(scores)
            elif self.stats.count == 0:
                warnings.warn("RewardModel(normalize=true) scores a validation batch before any training batch: "
                              "its statistics are still empty (mean 0, std 1)", stacklevel=2)
            scores = [(s - self.stats.mean) / (self.stats.std + self.eps) for s in scores]
        return [Score(s, None) for s in scores]

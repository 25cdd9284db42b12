"""The policy: a Hugging Face causal LM and its tokenizer, per-token log-probs, and the reference model."""

import copy
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_rl.errors import ModelNotFound
from lit_rl.export import zero3_partitioned
from lit_rl.logprobs import CHUNK_TOKENS, hidden_token_logps, token_logps, token_logps_entropy
from lit_rl.stopping import cut_after_stop
from lit_rl.tokenizer import token_ids

ASSETS = Path(__file__).parent / "assets"
BUILTIN = "builtin:"


@dataclass
class LoraSettings:
    """PEFT LoRA adapter settings (Hu et al. 2021)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


def resolve(name_or_path: str) -> str:
    """``builtin:NAME`` is a model (or dataset) shipped inside the package (``lit_rl/assets/NAME``); anything else is
    passed to ``from_pretrained`` as given (a local directory or a hub id). ``NAME`` must be one of the shipped
    entries themselves: ``builtin:../..`` or ``builtin:/etc`` would otherwise reach outside the package."""
    if not name_or_path.startswith(BUILTIN):
        return name_or_path
    name = name_or_path[len(BUILTIN):]
    shipped = sorted(p.name for p in ASSETS.iterdir() if not p.name.startswith((".", "_")))
    if name not in shipped:
        raise FileNotFoundError(f"nothing built in is called {name_or_path!r}; shipped: {[BUILTIN + s for s in shipped]}")
    return str(ASSETS / name)


def check_model_dir(path: str, what: str) -> str:
    """``path`` if the directory holds a saved model (``config.json``, or a PEFT adapter's
    ``adapter_config.json``); else a named error that points at the models below it, such as a run directory's
    ``hf_model/``."""
    root = Path(path).expanduser()
    if (root / "config.json").is_file() or (root / "adapter_config.json").is_file():
        return path
    below = sorted(str(c.parent) for c in [*root.glob("*/config.json"), *root.glob("*/*/config.json")])[:3]
    hint = f"; the models below it: {below}" if below else (
        "; a lit-rl run directory keeps its trained model in hf_model/ (written at the end of training)")
    raise ModelNotFound(f"{what}: {path} is a directory but not a saved model (it holds no config.json){hint}")


MANAGED = {"dtype": "dtype", "torch_dtype": "dtype", "device_map": "the Lightning strategy (devices, accelerator)",
           "pretrained_model_name_or_path": "model"}                 # settings lit-rl owns: named where they live
SHARED = ("revision", "trust_remote_code", "cache_dir", "subfolder")   # passed to the tokenizer too


def check_model_kwargs(model_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``model_kwargs`` for ``from_pretrained``, refusing what lit-rl sets itself (the dtype, the devices) and
    warning about ``trust_remote_code: true``, which runs Python code from the model's repository."""
    model_kwargs = dict(model_kwargs or {})
    for key, where in MANAGED.items():
        if key in model_kwargs:
            raise ValueError(f"model_kwargs.{key} is set by lit-rl itself: use {where} instead")
    if model_kwargs.get("trust_remote_code"):
        warnings.warn("model_kwargs.trust_remote_code: true runs Python code from the model's repository (its "
                      "modeling and tokenizer files) in this process; set it only for a repository you trust",
                      stacklevel=3)
    return model_kwargs


def locate_model(name_or_path: str) -> str:
    """A local model directory, or a hub id; anything that is neither is named as such before ``from_pretrained``
    answers with a hub-id validation error. (A string shaped like a hub id is left to the hub, which in offline
    mode or without the repository says so itself.)"""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = resolve(name_or_path)
    if Path(path).is_dir():
        return check_model_dir(path, f"model {name_or_path!r}")
    if Path(path).exists():
        raise ModelNotFound(f"model {name_or_path!r} is a file, not a model directory (one holding config.json)")
    try:
        validate_repo_id(path)
    except HFValidationError:
        raise ModelNotFound(f"model {name_or_path!r}: no such directory, and it is not a hub id either (a hub id "
                            f"is NAME or OWNER/NAME)") from None
    return path


def sequence_inputs(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                    completion_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate left-padded prompts and right-padded completions. Position ids count real tokens only,
    so the amount of padding never changes a log-prob."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)                # [B, P+C]
    attention = torch.cat([prompt_mask, completion_mask], dim=1).long()  # [B, P+C]
    positions = (attention.cumsum(-1) - 1).clamp(min=0)                 # [B, P+C]
    return ids, attention, positions


def prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> Tensor | None:
    """Each row's group index ``[B]``, a group being a run of rows with the same prompt (a rollout's samples
    of one prompt sit side by side), or ``None`` when no row repeats the one before."""
    new = torch.ones(len(prompt_ids), dtype=torch.bool, device=prompt_ids.device)
    new[1:] = ((prompt_ids[1:] != prompt_ids[:-1]) | (prompt_mask[1:] != prompt_mask[:-1])).any(-1)
    return None if bool(new.all()) else new.long().cumsum(0) - 1


def model_forward(model: nn.Module, logits_to_keep: int, **inputs: Any) -> tuple[Any, Tensor]:
    """``model``'s forward, computing the logits of its last ``logits_to_keep`` positions only (0: all), and its
    decoder's last hidden state ``[B, T, H]`` (the final norm's output, which the output layer reads: the last of
    the forward's ``hidden_states``). The model is called whole, not its decoder alone, so that what wraps its
    forward runs as usual: FSDP2's and ZeRO-3's gathering of the embeddings, final norm and output layer, PEFT's
    adapters."""
    out = model(**inputs, logits_to_keep=logits_to_keep, output_hidden_states=True)
    return out, out.hidden_states[-1]


_HEAD_IS_LOGITS: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def logits_are_head_of_hidden(model: nn.Module, input_ids: Tensor) -> bool:
    """Whether ``model``'s logits are its output layer (``get_output_embeddings()``) applied to its decoder's last
    hidden state and nothing more, as log-probs from the hidden states (:func:`hidden_token_logps`) assume. Not so
    where the forward caps or scales the logits (Gemma 2's final-logit softcapping, Granite's ``logits_scaling``,
    Cohere's ``logit_scale``) or changes the states between the decoder and the output layer. Checked once per
    model, on a forward of the first row's first two tokens: the output layer applied to the last hidden state
    against the returned logits. Equal, not close: the same call on the same input, and any change of a float32
    value shows in its bits."""
    if model not in _HEAD_IS_LOGITS:
        out, states = model_forward(model, 1, input_ids=input_ids[:1, :2], use_cache=False)
        head_out = model.get_output_embeddings()(states[:, -1:])
        plain = torch.equal(head_out.to(out.logits.dtype), out.logits)
        if not plain:
            warnings.warn(f"{type(model).__name__}'s logits are not its output layer applied to the last hidden "
                          "state (its forward caps or scales them): its log-probs come from [B, C, V] logits, "
                          "not from the hidden states in chunks", stacklevel=3)
        _HEAD_IS_LOGITS[model] = plain
    return _HEAD_IS_LOGITS[model]


def completion_forward(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                       completion_mask: Tensor, logits: bool = False) -> tuple[Tensor, Tensor | None]:
    """The last hidden states ``[B, C, H]`` of a forward of prompt + completion at the positions that predict the
    completion's tokens, and with ``logits`` their logits ``[B, C, V]`` (without, the model computes one
    position's logits, ``[B, 1, V]``: a Hugging Face forward's least)."""
    ids, attention, positions = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    num_completion = completion_ids.shape[1]
    out, states = model_forward(model, num_completion + 1 if logits else 1, input_ids=ids, attention_mask=attention,
                                position_ids=positions, use_cache=False)
    states = states[:, -num_completion - 1:-1]                         # [B, C, H]: position t-1 predicts t
    return states, out.logits[:, :-1] if logits else None


def shared_prompt_forward(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                          completion_mask: Tensor, groups: Tensor,
                          logits: bool = False) -> tuple[Tensor, Tensor | None]:
    """:func:`completion_forward` (last hidden states ``[B, C, H]``, logits ``[B, C, V]`` if asked) with each
    group's prompt computed once: the prompt goes through the model alone, its key/value cache is repeated for
    the group's rows, and the completions run on top of it. Gradients reach the shared prompt states from every
    row, so values and gradients are the full forward's up to float rounding, while the prompt's tokens cost one
    forward and backward per group instead of one per sample. With dropout on, a group's samples share the
    prompt's dropout masks."""
    first = torch.ones_like(groups, dtype=torch.bool)
    first[1:] = groups[1:] != groups[:-1]
    unique_ids, unique_mask = prompt_ids[first], prompt_mask[first].long()
    prompt, prompt_states = model_forward(model, 1, input_ids=unique_ids, attention_mask=unique_mask,
                                          position_ids=(unique_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    cache = prompt.past_key_values
    cache.batch_select_indices(groups)                                 # [P, ...] -> [B, ...], differentiable
    _, attention, positions = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    out, states = model_forward(model, 0 if logits else 1, input_ids=completion_ids, attention_mask=attention,
                                position_ids=positions[:, prompt_ids.shape[1]:], past_key_values=cache, use_cache=True)
    states = torch.cat([prompt_states[:, -1:][groups], states[:, :-1]], 1)             # position t-1 predicts t
    if not logits:
        return states, None
    return states, torch.cat([prompt.logits[:, -1:][groups], out.logits[:, :-1]], 1)


def pack_rows(lengths: list[int]) -> tuple[int, list[list[int]]]:
    """Rows into bins as wide as the longest row, first-fit by decreasing length: ``(width, rows of each bin)``.
    Attention then costs at most what the padded batch's does (bins x width^2 <= rows x width^2), and the
    linear layers run on about the real tokens."""
    width, bins, room = max(lengths), [], []
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        fit = next((b for b, free in enumerate(room) if free >= lengths[row]), None)
        if fit is None:
            bins.append([]), room.append(width)
            fit = len(bins) - 1
        bins[fit].append(row)
        room[fit] -= lengths[row]
    return width, bins


def packed_forward(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                   completion_mask: Tensor, logits: bool = False) -> tuple[Tensor, Tensor | None]:
    """:func:`completion_forward` (last hidden states ``[B, C, H]``, logits ``[B, C, V]`` if asked) without padding:
    the rows' real tokens, prompt then completion, packed into bins as wide as the longest row
    (:func:`pack_rows`), position ids restarting at each row, and no attention mask and no cache, from which
    ``transformers`` builds attention that stays within each row (its packed-sequence detection; with a mask or a
    cache it would attend across rows). A bin's unused tail is one more short sequence of padding that nothing
    reads. The states come back to each row's padded positions; padding positions hold zeros."""
    ids, attention, _ = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    real = attention.bool()                                             # [B, P+C]
    lengths = real.sum(-1).tolist()
    width, bins = pack_rows(lengths)
    packed_ids = ids.new_zeros((len(bins), width))                      # [N_b, W]; a tail's ids are never read
    positions = torch.zeros_like(packed_ids)                            # [N_b, W]
    where = [0] * len(lengths)                                          # each row's first flat position
    for b, rows in enumerate(bins):
        offset = 0
        for row in rows:
            packed_ids[b, offset:offset + lengths[row]] = ids[row][real[row]]
            positions[b, offset:offset + lengths[row]] = torch.arange(lengths[row])
            where[row], offset = b * width + offset, offset + lengths[row]
        positions[b, offset:] = torch.arange(width - offset)            # the tail: a sequence of its own
    index = torch.cat([torch.arange(w, w + n) for w, n in zip(where, lengths)]).to(ids.device)   # row-major real
    out, packed = model_forward(model, 0 if logits else 1, input_ids=packed_ids, position_ids=positions,
                                use_cache=False)                        # [N_b, W, H]
    num_completion = completion_ids.shape[1]
    states = packed.new_zeros(*ids.shape, packed.shape[-1])             # [B, P+C, H]
    states[real] = packed.flatten(0, 1)[index]
    states = states[:, -num_completion - 1:-1]                          # [B, C, H]: position t-1 predicts t
    if not logits:
        return states, None
    full = out.logits.new_zeros(*ids.shape, out.logits.shape[-1])       # [B, P+C, V]
    full[real] = out.logits.flatten(0, 1)[index]
    return states, full[:, -num_completion - 1:-1]


@dataclass
class PolicyOutput:
    """What one policy forward gives a loss, completion positions only (position ``t`` is the state that
    predicts completion token ``t``): log-probs with gradient; when asked, their entropy (with gradient too: an
    entropy bonus), the last hidden state (a value head) and the logits. By default the log-probs and entropy come
    from the last hidden states and the output layer in chunks (:func:`~lit_rl.logprobs.hidden_token_logps`),
    and no ``[B, C, V]`` logits exist: ``logits`` is ``None`` unless the forward was asked for them (a module's
    or a loss's ``needs_logits``), at their memory's cost."""

    logps: Tensor                                                       # [B, C]
    logits: Tensor | None = None                                        # [B, C, V], only when asked
    entropy: Tensor | None = None                                       # [B, C]
    hidden: Tensor | None = None                                        # [B, C, H]


class Policy(nn.Module):
    """A causal LM with the pieces RL needs. ``model`` is the trainable module; the frozen reference, when
    one is needed, is kept outside the module tree (it never enters checkpoints) but follows its device."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._reference: list[nn.Module] = []                           # a list hides it from nn.Module

    @classmethod
    def load(cls, name_or_path: str, dtype: str = "float32", lora: LoraSettings | None = None,
             gradient_checkpointing: bool = False, model_kwargs: dict[str, Any] | None = None) -> "Policy":
        model_kwargs = check_model_kwargs(model_kwargs)
        path = locate_model(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in model_kwargs.items() if k in SHARED})
        except OSError as err:
            if Path(path).is_dir():
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelNotFound(f"model {name_or_path!r}: no such directory, and the hub could not provide it "
                                f"({first})") from err
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **model_kwargs).train()
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=lora.target_modules, task_type="CAUSAL_LM")
            model = get_peft_model(model, config)
        return cls(model, tokenizer)

    # ---------------------------------------------------------------------------------------- reference
    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def enable_reference(self) -> None:
        """Under LoRA the reference is the adapter-disabled model (no copy); otherwise a frozen copy."""
        if self.is_lora or self._reference:
            return
        ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._reference.append(ref)

    @property
    def has_reference(self) -> bool:
        return self.is_lora or bool(self._reference)

    def _apply(self, fn, recurse=True):                                 # .to(device) moves the reference too
        super()._apply(fn, recurse)
        for ref in self._reference:
            ref._apply(fn, recurse)
        return self

    @torch.no_grad()
    def reference_logps(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                        completion_mask: Tensor, temperature: float = 1.0) -> Tensor:
        if self.is_lora:
            with self.model.disable_adapter():
                return self.logps(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)[0]
        if not self._reference:
            raise RuntimeError("no reference model: call enable_reference() first")
        return self.logps(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                          model=self._reference[0])[0]

    # ------------------------------------------------------------------------------------------ log-probs
    shared_prompt_forward = False                                       # RLModule's setting of that name
    packed_sequences = False                                            # and this one
    logps_chunk_tokens: int | None = CHUNK_TOKENS                       # None: log-probs from [B, C, V] logits

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                temperature: float = 1.0, entropy: bool = False, hidden: bool = False, logits: bool = False,
                model: nn.Module | None = None) -> "PolicyOutput":
        """One forward of prompt + completion: everything a loss may read (:class:`PolicyOutput`). The log-probs
        (and with ``entropy`` their entropy) come from the completion's last hidden states and the output layer,
        ``logps_chunk_tokens`` tokens at a time (:func:`~lit_rl.logprobs.hidden_token_logps`), so no ``[B, C, V]``
        logits exist; ``logits`` asks for them, and log-probs then come from them. So they do with
        ``logps_chunk_tokens = None``, for a model whose logits are more than its output layer's
        (:func:`logits_are_head_of_hidden`), and under DeepSpeed ZeRO-3: it gathers the output layer's weight
        anew for each chunk's call (the forward's and the backward's recomputation, a vocabulary-sized all-gather
        each), and it releases a frozen weight (LoRA's base) right after the recomputing call, before the
        backward reads it. With ``shared_prompt_forward``, rows that repeat the row before's prompt (a group's
        samples) share one prompt forward (:func:`shared_prompt_forward`; not under gradient checkpointing, where
        the model keeps no cache); with ``packed_sequences``, the rows run padding-free (:func:`packed_forward`),
        in place of the shared prompt forward."""
        model = model or self.model
        shared = (self.shared_prompt_forward and not self.packed_sequences
                  and not getattr(model, "is_gradient_checkpointing", False))
        groups = prompt_groups(prompt_ids, prompt_mask) if shared else None
        chunked = (self.logps_chunk_tokens is not None and not logits and not zero3_partitioned(model)
                   and logits_are_head_of_hidden(model, completion_ids))
        args = (model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        if groups is not None:
            states, full = shared_prompt_forward(*args, groups, logits=not chunked)
        elif self.packed_sequences:
            states, full = packed_forward(*args, logits=not chunked)
        else:
            states, full = completion_forward(*args, logits=not chunked)
        if chunked and self.packed_sequences:                           # the output layer on real positions only
            keep = completion_mask.bool()                                   # [B, C]
            logps, ent = hidden_token_logps(states[keep], model.get_output_embeddings(), completion_ids[keep],
                                            temperature, self.logps_chunk_tokens, entropy)     # [M] each
            logps, ent = (None if t is None else t.new_zeros(keep.shape).masked_scatter(keep, t) for t in (logps, ent))
        elif chunked:
            logps, ent = hidden_token_logps(states, model.get_output_embeddings(), completion_ids, temperature,
                                            self.logps_chunk_tokens, entropy)                  # [B, C] each
        elif entropy:
            logps, ent = token_logps_entropy(full, completion_ids, temperature)
        else:
            logps, ent = token_logps(full, completion_ids, temperature), None
        return PolicyOutput(logps=logps, logits=full if logits else None, entropy=ent,
                            hidden=states if hidden else None)

    def logps(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
              temperature: float = 1.0, entropy: bool = False,
              model: nn.Module | None = None) -> tuple[Tensor, Tensor | None]:
        """Per-token log-probs ``[B, C]`` of the completion tokens under ``logits / temperature``, and their
        entropy ``[B, C]`` if asked (the forward's two most used fields)."""
        out = self(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, entropy, model=model)
        return out.logps, out.entropy

    # ----------------------------------------------------------------------------------------- tokenising
    def prompt_budget(self, max_new_tokens: int) -> int | None:
        """How many prompt tokens fit beside ``max_new_tokens`` in the model's context (``None``: no limit known)."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is None:
            return None
        if context - max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                             f"context of {context} tokens")
        return context - max_new_tokens

    def tokenize(self, text: str) -> list[int]:
        """Token ids of rendered text; special tokens come from the chat template, never added here."""
        return token_ids(self.tokenizer, text)

    def encode_prompts(self, texts: list[str], max_new_tokens: int) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids and mask of rendered prompts. Prompts that would not leave room for
        ``max_new_tokens`` inside the model's context are cut from the left with a warning (never silently
        misaligned; ``PromptData(filter_long=true)`` drops them instead)."""
        budget = self.prompt_budget(max_new_tokens)
        encoded = [self.tokenize(t) for t in texts]
        if budget is not None and any(len(e) > budget for e in encoded):
            warnings.warn(f"prompts of up to {max(map(len, encoded))} tokens exceed the {budget} that fit beside "
                          f"max_new_tokens={max_new_tokens} in the model's context; keeping their last {budget} "
                          f"tokens (PromptData's filter_long drops such prompts instead)", stacklevel=2)
            encoded = [e[-budget:] for e in encoded]
        return self.pad(encoded, left=True)

    def encode_completions(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Right-padded completion ids (each ending in EOS) and mask, for supervised targets."""
        eos = self.tokenizer.eos_token_id
        return self.pad([token_ids(self.tokenizer, t) + [eos] for t in texts],
                         left=False)

    def decode(self, completion_ids: Tensor, completion_mask: Tensor, stop: Sequence[str] = ()) -> list[str]:
        """Completion texts; with stop strings, each ends right after the first one (a token may run past it)."""
        texts = self.tokenizer.batch_decode([ids[m.bool()] for ids, m in zip(completion_ids, completion_mask)],
                                            skip_special_tokens=True)
        return [cut_after_stop(t, stop) for t in texts] if stop else texts

    def pad(self, rows: list[list[int]], left: bool) -> tuple[Tensor, Tensor]:
        width = max(1, max(map(len, rows)))
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), 1
        device = next(self.model.parameters()).device
        return ids.to(device), mask.to(device)

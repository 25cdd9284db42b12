"""Rollouts from running vLLM servers (``lit-rl serve``), their weights refreshed from files the trainer writes.

Generation leaves the training process: one or more OpenAI-compatible vLLM servers sample, the trainer only
trains. Nothing here imports ``vllm``; the trainer talks to the servers over HTTP with the standard library.
"""

import json
import shutil
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor, nn

from lit_rl.errors import BadServerAnswer, ServerUnavailable
from lit_rl.export import is_sharded, merged_state_dict
from lit_rl.http_client import fetch, parse_json
from lit_rl.rollout import Generation, RolloutEngine, Sampling
from lit_rl.stopping import eos_token_ids
from lit_rl.vllm_engine import pack, sampling_settings

WHO = "vLLM server"
MAX_REQUESTS = 64                                                       # at once, all servers together
START_HINT = ("start it with `lit-rl serve --model MODEL` (docs/engines-and-scale.md, \"vLLM servers\"), which sets "
              "VLLM_SERVER_DEV_MODE=1 and --logprobs-mode processed_logprobs")


class VLLMServerEngine(RolloutEngine):
    """Samples on running vLLM servers (``vllm serve`` / ``lit-rl serve``) and reloads their weights from files.

    **Generation.** A batch's prompts are split into one contiguous share per server (data-parallel; a prompt's
    ``n`` samples stay on one server, which computes the prompt once for all of them), the shares are sent at
    the same time, one ``POST /v1/completions`` each, and the rows come back in the batch's order. Token ids go
    in and come out (``return_token_ids``; no detokenise/retokenise round trip), with the sampled tokens'
    log-probs (``logprobs: 0``) as behaviour log-probs; the answer's prompt ids are checked against those sent.
    Rows stop at every EOS id and stop string, and :func:`lit_rl.stopping.stop_mask` cuts them exactly as
    ``HFEngine``'s and ``VLLMEngine``'s are cut (:func:`lit_rl.vllm_engine.sampling_settings` and
    :func:`~lit_rl.vllm_engine.pack` are shared with ``VLLMEngine``).

    **Weight sync** (``sync_weights``, called by the module every ``sync_every_n_steps`` optimizer steps, on
    start and before validation): rank 0 writes the merged weights (:func:`lit_rl.export.merged_state_dict`: LoRA
    merged, FSDP2/ZeRO-3 shards gathered, every rank taking part in the gathering) as ``model.safetensors`` into a
    fresh directory under ``sync_dir``, asks each server to ``reload_weights`` from it (``POST /collective_rpc``)
    and to drop its cached prompt blocks, computed with the old weights (``POST /reset_prefix_cache``), then
    removes the previous directory; the other ranks wait for it. ``version`` counts the syncs, and every
    :class:`~lit_rl.rollout.Generation` records the version that generated it.

    **Checks.** Before its first use the engine asks each server for ``/health`` and its configuration
    (``/server_info``, there only with ``VLLM_SERVER_DEV_MODE=1``, which ``/collective_rpc`` needs too) and refuses
    a server that returns raw instead of processed log-probs. Each request waits at most ``timeout_s`` for an
    answer and is retried ``retries`` times when the server fails to answer; a server that cannot be reached, or
    that answers something other than what was asked (not JSON, another number of completions, other prompts),
    stops the call with one paragraph naming its URL and what happened
    (:class:`~lit_rl.errors.ServerUnavailable`, :class:`~lit_rl.errors.BadServerAnswer`).

    Departures from ``VLLMEngine`` and why:
      1. Weights travel through files, not memory: the servers are other processes (other machines, given a
         ``sync_dir`` they can read). vLLM's NCCL/IPC weight transfer needs GPUs, and sleep mode is refused on CPU.
      2. The output head is written even when it is tied to the input embeddings: ``save_pretrained`` leaves it
         out of tied models, and vLLM's reload then keeps the old head (its log-probs match "new embeddings in,
         old head out": on the built-in model, 23 nats off the trainer's after scaling the embeddings by 1.3).
      3. A fresh directory per sync: a reload from a path already loaded has been reported to serve stale weights
         (vllm-project/vllm#32718).
      4. By default sampling uses the servers' random generators, which every request served draws from: a run is
         not reproducible. With ``seeded`` each prompt goes as a request of its own with a seed drawn from torch's
         global generator (set by ``seed_everything``, saved in checkpoints), its ``n`` samples seeded ``seed + j``
         by vLLM: the same run on the same servers and weights samples the same completions again (up to the
         server's batch-dependent rounding), and a resumed run goes on with the seeds the uninterrupted one drew.
         One seed for a request of several prompts would give every prompt the same random draws.

    ``generate`` keeps no state between calls other than the one-time check, so a background producer may call it
    while the trainer trains; a sync while a request runs changes the weights under it (``version`` is read when
    the request starts).
    """

    not_in_background = None

    def __init__(self, urls: list[str], timeout_s: float = 600.0, retries: int = 2, backoff_s: float = 1.0,
                 sync_dir: str | None = None, return_logps: bool = True, seeded: bool = False) -> None:
        """
        Args:
            urls: the servers' base addresses, e.g. ``["http://127.0.0.1:8000"]`` (a trailing ``/v1`` is dropped).
            timeout_s: seconds to wait for one answer (a share of a batch's completions, or a reload) before
                trying again.
            retries: further tries after a timeout, a dropped or refused connection, or an HTTP 429/5xx.
            backoff_s: seconds before the first retry, doubled before each next one.
            sync_dir: where weights are written for the servers to read (a filesystem they share with rank 0);
                default: a temporary directory, removed when the engine is.
            return_logps: return the sampled tokens' log-probs (needed for ``rollout/logp_diff`` and
                ``importance_sampling_cap``).
            seeded: send each prompt as its own request with a seed from torch's global generator, so that a
                seeded run samples reproducibly (departure 4).
        """
        if isinstance(urls, str) or not urls:
            raise ValueError(f"VLLMServerEngine needs a list of one or more server addresses (got {urls!r}), e.g. "
                             f"urls: [http://127.0.0.1:8000]")
        self.urls = [base_url(u) for u in urls]
        if len(set(self.urls)) < len(self.urls):
            raise ValueError(f"VLLMServerEngine: a server is listed twice in {urls}; each would get a share of the "
                             f"batch and reload the same weights twice")
        if not timeout_s > 0 or retries < 0 or backoff_s < 0:
            raise ValueError(f"VLLMServerEngine: need timeout_s > 0, retries >= 0 and backoff_s >= 0 (got "
                             f"timeout_s={timeout_s}, retries={retries}, backoff_s={backoff_s})")
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), retries, float(backoff_s)
        self.sync_dir, self.return_logps, self.seeded = sync_dir, return_logps, seeded
        self.version = 0                                                # weight syncs so far
        self.served_names: dict[str, str] | None = None                # url -> the name it serves its model under
        self.weights_dir: Path | None = None                            # the servers' current weights
        self._root: Path | None = None
        self.eos_token_ids: list[int] | None = None                     # set by bind

    def bind(self, model: nn.Module, tokenizer: Any) -> None:
        """Attach the policy. No server is contacted yet: the module is built before the servers need to be up."""
        self.model, self.tokenizer = model, tokenizer
        self.eos_token_ids = eos_token_ids(model, tokenizer)

    # ------------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, n: int = 1) -> Generation:
        self.check()
        if self.version == 0:                                           # the servers hold the policy's weights
            self.sync_weights(self.model)
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
        settings = {k: v for k, v in sampling_settings(sampling, n, self.eos_token_ids, self.return_logps).items()
                    if v is not None}
        version, with_logps = self.version, "logprobs" in settings
        shares = [(self.urls[i], a, b) for i, (a, b) in enumerate(split(len(prompts), len(self.urls)))]
        if self.seeded and sampling.temperature > 0:                    # one request per prompt, each its seed
            seeds = torch.randint(0, 2**31 - n, (len(prompts),)).tolist()
            requests = [(url, prompts[p:p + 1], {**settings, "seed": seeds[p]}) for url, a, b in shares
                        for p in range(a, b)]
        else:
            requests = [(url, prompts[a:b], settings) for url, a, b in shares]
        with ThreadPoolExecutor(min(len(requests), MAX_REQUESTS)) as pool:
            answers = list(pool.map(lambda r: self.complete(*r), requests))
        rows = [row for answer in answers for row in answer]            # prompt-major, in the batch's order
        logps = [lp for _, lp in rows] if with_logps else None
        return pack([ids for ids, _ in rows], logps, self.eos_token_ids, sampling.stop, self.tokenizer,
                    prompt_ids.device, version=version)

    def complete(self, url: str, prompts: list[list[int]], settings: dict[str, Any]) -> list[tuple[list[int], list]]:
        """One server's share: ``settings["n"]`` completions of each prompt as (token ids, sampled-token log-probs)."""
        body = {"model": self.served_names[url], "prompt": prompts, **settings, "return_token_ids": True}
        answer = self.request(url, "/v1/completions", body)
        return read_completions(answer, prompts, settings["n"], "logprobs" in settings, url)

    # ------------------------------------------------------------------------------------------ weight sync
    def sync_weights(self, model: nn.Module) -> None:
        """Write ``model``'s merged weights to a fresh directory and have every server reload them (rank 0; the
        other ranks join the gathering of sharded weights and wait)."""
        rank, world = _rank_and_world()
        state = merged_state_dict(model) if is_sharded(model) or rank == 0 else None
        if rank == 0:
            self.check()
            directory = self._write(with_output_head(state, model))
            self._each(lambda url: self._reload(url, directory))
            previous, self.weights_dir = self.weights_dir, directory
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
        if world > 1:
            torch.distributed.barrier()                                 # no rank samples before the servers reloaded
        self.version += 1

    def _write(self, state: dict[str, Tensor]) -> Path:
        from safetensors.torch import save_file

        if self._root is None:
            self._root = Path(self.sync_dir or tempfile.mkdtemp(prefix="lit-rl-weights-")).resolve()
            self._root.mkdir(parents=True, exist_ok=True)
            if self.sync_dir is None:
                weakref.finalize(self, shutil.rmtree, str(self._root), True)
        directory = Path(tempfile.mkdtemp(prefix=f"v{self.version + 1}-", dir=self._root))
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory

    def _reload(self, url: str, directory: Path) -> None:
        self.request(url, "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(directory)}})
        self.request(url, "/reset_prefix_cache", {})

    # ------------------------------------------------------------------------------------------ the servers
    def check(self) -> None:
        """Once: every server is up (``/health``), in development mode and returning processed log-probs; the
        names they serve their model under are kept for the requests."""
        if self.served_names is None:
            self.served_names = dict(zip(self.urls, self._each(self._check)))

    def _check(self, url: str) -> str:
        fetch(f"{url}/health", None, WHO, self.timeout_s, self.retries, self.backoff_s)
        try:
            info = self.request(url, "/server_info?config_format=json")
        except ServerUnavailable as err:
            if err.status != 404:
                raise
            raise ServerUnavailable(f"{WHO} {url} has no /server_info: it runs without VLLM_SERVER_DEV_MODE=1, so "
                                    f"it cannot reload weights either (/collective_rpc); {START_HINT}", 404) from None
        mode = (info.get("vllm_config") or {}).get("model_config", {}).get("logprobs_mode") \
            if isinstance(info, dict) else None
        if self.return_logps and mode != "processed_logprobs":
            raise ValueError(f"{WHO} {url} returns {mode} log-probs: behaviour log-probs must be those of the "
                             f"distribution sampled from (temperature, top-k, top-p applied), as the trainer's are; "
                             f"{START_HINT}")
        models = self.request(url, "/v1/models")
        try:
            return models["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise BadServerAnswer(f"{WHO}: {url}/v1/models answered {str(models)[:200]}, which names no model") from None

    def request(self, url: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer of ``url + path`` to ``body`` (POSTed; a GET when None); an empty answer is None."""
        data = None if body is None else json.dumps(body).encode()
        text = fetch(f"{url}{path}", data, WHO, self.timeout_s, self.retries, self.backoff_s)
        return parse_json(text, f"{url}{path}", WHO, "a JSON object") if text.strip() else None

    def _each(self, call) -> list:
        """``call(url)`` for every server at the same time, in the servers' order."""
        with ThreadPoolExecutor(len(self.urls)) as pool:
            return list(pool.map(call, self.urls))


def base_url(url: str) -> str:
    """``url`` without a trailing ``/`` or ``/v1`` (both are common ways to write a vLLM server's address)."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"VLLMServerEngine: {url!r} is not an http:// or https:// address with a host (e.g. "
                         f"http://127.0.0.1:8000)")
    return url.rstrip("/").removesuffix("/v1")


def split(rows: int, parts: int) -> list[tuple[int, int]]:
    """``rows`` as at most ``parts`` contiguous, non-empty ranges whose sizes differ by at most one."""
    size, extra = divmod(rows, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds


def read_completions(answer: Any, prompts: list[list[int]], n: int, with_logps: bool,
                     url: str) -> list[tuple[list[int], list[float] | None]]:
    """(token ids, log-probs) of each choice of a ``/v1/completions`` answer, or :class:`BadServerAnswer` naming
    what does not fit: ``n`` choices per prompt, in the prompts' order (checked by their ``prompt_token_ids``),
    each with its ``token_ids`` and one log-prob per token."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != len(prompts) * n:
        got = f"{len(choices)} choices" if isinstance(choices, list) else f"no list of choices ({str(answer)[:200]})"
        raise BadServerAnswer(f"{WHO}: {url} answered {got} for {len(prompts)} prompts x n={n}")
    rows = []
    for i, choice in enumerate(choices):
        ids = choice.get("token_ids") if isinstance(choice, dict) else None
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise BadServerAnswer(f"{WHO}: {url} answered choice {i} without token ids ({str(choice)[:200]}); it "
                                  f"must accept return_token_ids (vLLM >= 0.10.2)")
        if choice.get("prompt_token_ids") != prompts[i // n]:
            raise BadServerAnswer(f"{WHO}: {url} answered choice {i} for the prompt {choice.get('prompt_token_ids')}, "
                                  f"not for the prompt sent ({prompts[i // n]}): rows would be misattributed")
        logps = None
        if with_logps:
            logps = ((choice.get("logprobs") or {}).get("token_logprobs")
                     if isinstance(choice.get("logprobs"), dict) else None)
            if not isinstance(logps, list) or len(logps) != len(ids) or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in logps):
                raise BadServerAnswer(f"{WHO}: {url} answered choice {i} without one log-prob per token "
                                      f"({str(choice.get('logprobs'))[:200]})")
        rows.append((ids, logps))
    return rows


def with_output_head(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``state`` ready for ``safetensors``: the output head included under its own name even when it is tied to the
    input embeddings (vLLM's reload keeps the old head otherwise), and no two entries sharing memory (which
    ``safetensors`` refuses: a tied head is written as a copy)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = {id(m): name for name, m in base.named_modules()}
    head, embeddings = base.get_output_embeddings(), base.get_input_embeddings()
    state = dict(state)
    if head is not None and embeddings is not None and id(head) in names and id(embeddings) in names:
        tied = f"{names[id(embeddings)]}.weight"
        if tied in state:
            state.setdefault(f"{names[id(head)]}.weight", state[tied])
    out, seen = {}, set()
    for name, t in state.items():
        storage = t.untyped_storage().data_ptr()
        out[name] = t.clone().contiguous() if storage in seen else t.contiguous()
        seen.add(storage)
    return out


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1

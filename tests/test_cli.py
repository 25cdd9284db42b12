"""The lit-rl command: every shipped YAML parses against the signatures; bad keys are named; a run writes
its config, CSV and TensorBoard logs and checkpoints into its own directory."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lit_rl.cli import LitRLCLI
from lit_rl.policy import Policy

from conftest import ROOT

CONFIGS = sorted(p for p in (ROOT / "cli_configs").rglob("*.yaml")
                 if p.stem != "generate" and p.parent.name != "strategies")  # fit configs; fragments: test_strategies.py


def test_there_are_configs_for_every_core_algorithm():
    names = {p.stem for p in CONFIGS}
    assert {"sft", "reinforce", "remax", "rloo", "grpo", "topr", "rebel", "dpo", "ipo", "mc"} <= names


class ParseOnly(LitRLCLI):
    """Parses and validates against the signatures, instantiates nothing (hub models need a network)."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_parses(config):
    cli = ParseOnly(run=False, args=["--config", str(config)])
    assert cli.config.model.class_path.startswith("lit_rl.")
    assert cli.config.data.class_path.startswith("lit_rl.")


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lit_rl.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "cli_configs" / "rloo.yaml").read_text().replace("group_size:", "grop_size:"))
    result = run_cli("fit", "--config", str(bad), "--print_config", cwd=tmp_path)
    assert result.returncode != 0 and "grop_size" in result.stderr


def test_print_config(tmp_path):
    result = run_cli("fit", "--config", str(ROOT / "cli_configs" / "grpo.yaml"), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "class_path: lit_rl.GRPO" in result.stdout and "eps_high: 0.28" in result.stdout


def test_fit_writes_its_own_run_directory(tmp_path, tiny_model_dir):
    result = run_cli("fit", "--config", str(ROOT / "cli_configs" / "rloo.yaml"), "--trainer.max_steps", "2",
                     "--model.init_args.model", tiny_model_dir, "--trainer.default_root_dir", str(tmp_path / "runs"),
                     "--model.init_args.sampling.max_new_tokens", "8", "--data.init_args.batch_size", "2",
                     "--model.init_args.val_sampling.max_new_tokens", "8", "--data.init_args.val_size", "4",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "rloo").iterdir()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    assert list(run_dir.glob("events.out.tfevents.*")) and list((run_dir / "checkpoints").glob("*.ckpt"))
    assert "rollout/reward_mean" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    summary = (run_dir / "summary.txt").read_text()
    assert re.fullmatch(r"rloo: accuracy \d\.\d{3} -> \d\.\d{3}, mean reward -?\d\.\d{3} -> -?\d\.\d{3}, "
                        r"2 steps, \d+ s\n", summary), summary
    assert summary.strip() in result.stdout
    learning = importlib.import_module("benchmarks.learning")             # the benchmark parses this line
    assert learning.SUMMARY.search(result.stdout).group(1) == "rloo"
    exported = Policy.load(str(run_dir / "hf_model"))                     # loads like a hub model
    assert sum(p.numel() for p in exported.parameters()) > 0


def test_a_wandb_logger_writes_beside_the_run_directorys_logs(tmp_path, tiny_model_dir):
    """A ``trainer.logger`` (here W&B, offline) joins the run directory's CSV and TensorBoard logs instead of
    replacing them: metrics.csv, the events, completions.jsonl, summary.txt and hf_model/ stay in
    runs/<algo>/<timestamp>/, and W&B writes its offline run with the same metrics."""
    pytest.importorskip("wandb", reason="the W&B test needs wandb: `make venv` installs it")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}
    (tmp_path / "wandb").mkdir()
    result = run_cli("fit", "--config", str(ROOT / "cli_configs" / "rloo.yaml"), "--trainer.max_steps", "2",
                     "--model.init_args.model", tiny_model_dir, "--trainer.default_root_dir", str(tmp_path / "runs"),
                     "--model.init_args.sampling.max_new_tokens", "8", "--data.init_args.batch_size", "2",
                     "--model.init_args.val_sampling.max_new_tokens", "8", "--data.init_args.val_size", "4",
                     "--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.init_args.offline",
                     "true", "--trainer.logger.init_args.project", "lit-rl-test", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "rloo").iterdir()
    for name in ("config.yaml", "metrics.csv", "completions.jsonl", "summary.txt", "hf_model/config.json"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    (history,) = offline.glob("run-*.wandb")
    assert b"rollout/reward_mean" in history.read_bytes()


def test_the_prompt_file_config_runs_and_logs_its_samples(tmp_path, tiny_model_dir):
    """cli_configs/countdown_prompts.yaml: PromptData on the shipped file, FunctionReward by dotted path, a stop
    string; the samples are written to completions.jsonl and the output carries no Lightning tip."""
    result = run_cli("fit", "--config", str(ROOT / "cli_configs" / "countdown_prompts.yaml"), "--trainer.max_steps",
                     "2", "--model.init_args.model", tiny_model_dir, "--trainer.default_root_dir", str(tmp_path / "runs"),
                     "--model.init_args.sampling.max_new_tokens", "8", "--data.init_args.batch_size", "2",
                     "--model.init_args.val_sampling.max_new_tokens", "8", "--data.init_args.val_batch_size", "4",
                     "--trainer.limit_val_batches", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "rloo").iterdir()
    lines = (run_dir / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 8 and set(json.loads(lines[0])) == {"step", "prompt", "completion", "reward", "correct",
                                                                  "components", "advantage"}
    assert re.search(r"rloo: accuracy \d\.\d{3} -> \d\.\d{3}, mean reward", result.stdout)
    assert "litlogger" not in result.stdout + result.stderr and "LeafSpec" not in result.stderr

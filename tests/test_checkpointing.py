"""Checkpoints are never torn and never poisoned: atomic writes (a kill -9 during a save leaves only readable
checkpoints), no checkpoint of non-finite weights, a step that makes weights non-finite stops by name, and the
behaviour log-prob cache is written the same way."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_rl import RLOO, SFT, CountdownData, CountdownReward, OfflineData, offline
from lit_rl.checkpointing import AtomicCheckpointIO, atomic_write
from lit_rl.rollout import Sampling

from conftest import ROOT



def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_write(target, lambda f: f.write(b"old"))

    def torn(f):
        f.write(b"new but only half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, torn)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_checkpoint_with_non_finite_weights_is_not_written(tmp_path):
    checkpoint = {"global_step": 3, "state_dict": {"w": torch.tensor([1.0, float("nan")]), "b": torch.ones(2)},
                  "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2)}}}]}
    with pytest.raises(FloatingPointError, match=r"not writing .*x.ckpt: 1 tensors are not finite \(e.g. state_dict.w"):
        AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / "x.ckpt")
    assert not list(tmp_path.iterdir())
    checkpoint["state_dict"]["w"] = torch.zeros(2)
    AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / "x.ckpt")
    assert torch.equal(torch.load(tmp_path / "x.ckpt")["state_dict"]["w"], torch.zeros(2))


def infinite_lr(params):
    return torch.optim.AdamW(params, lr=float("inf"))


@pytest.mark.parametrize("make", [
    lambda m: RLOO(model=m, group_size=2, sampling=Sampling(max_new_tokens=8), optimizer=infinite_lr,
                   reward=CountdownReward()),
    lambda m: SFT(model=m, optimizer=infinite_lr, reward=CountdownReward()),
], ids=["RLOO", "SFT"])
def test_a_step_that_makes_weights_non_finite_stops_and_saves_nothing(tiny_model_dir, tmp_path, make):
    """``lr: .inf``: the loss and gradient norm of step 1 are finite, the weights after it are not."""
    torch.manual_seed(0)
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, limit_val_batches=0,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)])
    with pytest.raises(FloatingPointError, match=r"the optimizer step 1 made \d+ of \d+ weight tensors non-finite"):
        trainer.fit(make(tiny_model_dir), datamodule=CountdownData(batch_size=2, train_size=16, val_size=4,
                                                                 demonstrations=True))
    assert not list(tmp_path.glob("*.ckpt"))


def small_rl_config(path: Path) -> Path:
    """The shipped RLOO config on the shipped 8 MB model, a checkpoint every step, a few seconds a step."""
    config = yaml.safe_load((ROOT / "cli_configs" / "rloo.yaml").read_text())
    config["trainer"].update(max_steps=4, limit_val_batches=0, enable_progress_bar=False)
    config["trainer"].pop("val_check_interval")
    config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 1
    init = config["model"]["init_args"]
    init.update(group_size=2, sampling={**init["sampling"], "max_new_tokens": 8})
    config["data"]["init_args"]["batch_size"] = 2
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_kill_during_a_save_leaves_only_readable_checkpoints(tmp_path):
    """A real ``lit-rl fit`` child whose temporary directory is on another filesystem (``/dev/shm``) than its
    run, killed with SIGKILL the moment its step-2 checkpoint starts to appear (its final name or a temporary
    file): every ``*.ckpt`` left behind loads, and the run resumes from ``last.ckpt``."""
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's temporary directory")
    tmpdir = Path("/dev/shm") / f"lit-rl-test-{os.getpid()}"
    tmpdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}
    config = small_rl_config(tmp_path / "rloo.yaml")
    args = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(config), "--summary", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs")]
    try:
        child = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        try:
            while not any("step=2" in p.name for p in (tmp_path / "runs").glob("rloo/*/checkpoints/*")):
                assert child.poll() is None and time.monotonic() < deadline, "the child ended before its 2nd save"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
    finally:
        for p in tmpdir.iterdir():
            p.unlink()
        tmpdir.rmdir()
    (run_dir,) = (tmp_path / "runs" / "rloo").iterdir()
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert checkpoints                                                  # step 1's, at least
    for path in checkpoints:
        torch.load(path, map_location="cpu", weights_only=True)         # raises on a torn file
    resumed = subprocess.run(args + ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resuming the lit_rl.RLOO run" in resumed.stderr, resumed.stderr[-2000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))          # the killed save's temporary is cleaned up


def test_the_behaviour_cache_is_written_atomically_and_a_torn_one_recomputed(tiny_model_dir, tmp_path, monkeypatch):
    from lit_rl.generate import generate

    monkeypatch.setattr(offline, "CACHE", tmp_path / "cache")
    out = generate(output=str(tmp_path / "rollouts"), model=tiny_model_dir, sampling=Sampling(max_new_tokens=8),
                   data=CountdownData(train_size=16, val_size=4), reward=CountdownReward(), group_size=2,
                   num_prompts=4, batch_size=4)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    stripped = tmp_path / "stripped.jsonl"
    stripped.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("behaviour_logps",)}) + "\n"
                                for r in rows))

    def load():
        data = OfflineData(str(stripped), batch_size=2, behaviour_model=tiny_model_dir,
                           validation=CountdownData(val_size=4))
        data.setup("fit")
        return [v for g in data.groups for v in g["behaviour_logps"]]

    first = load()
    (cache,) = (tmp_path / "cache").iterdir()                           # one file, no temporary beside it
    cache.write_bytes(cache.read_bytes()[:100])                         # torn by a pre-atomic writer
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        assert load() == first
    assert torch.load(cache) is not None and len(list((tmp_path / "cache").iterdir())) == 1


class Loud:
    """Unpickling it would run code: only an unsafe ``torch.load`` accepts it."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_resume_loads_with_the_safe_unpickler_whatever_torchs_default(tmp_path, monkeypatch):
    """Lightning passes ``weights_only=None`` on a Python-side resume; with torch 2.5 (allowed by pyproject) that
    meant the unsafe unpickler. The checkpoint IO asks for the safe one itself, so a checkpoint carrying code is
    refused by name rather than run."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Loud()}, path)
    asked, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: asked.append(k.get("weights_only")) or real_load(*a, **k))
    with pytest.raises(OSError, match=r"evil\.ckpt is not a readable checkpoint .*UnpicklingError"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=None)
    assert asked == [True]                                             # not torch's default: True, explicitly

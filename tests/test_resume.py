"""Resuming: a checkpoint continues exactly the run that wrote it or is refused by name; a changed trainer setting
is honoured and said; metrics after a resume are the uninterrupted run's; an unreadable checkpoint is named."""

import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from benchmarks.resume_sweep import rows, small_config
from lit_rl import RLOO, TOPR, ReMax, CountdownData, CountdownReward, KLEntropyTracker, RewardFunction, Score
from lit_rl.cli import LitRLCLI
from lit_rl.errors import ResumeMismatch, UnreadableCheckpoint
from lit_rl.resume import plan_resume
from lit_rl.rollout import Sampling

from conftest import SAMPLING



def fit(config: Path, root: Path, *args: str) -> LitRLCLI:
    return LitRLCLI(args=["fit", "--config", str(config), "--summary", "false", "--trainer.default_root_dir",
                          str(root), *args])


@pytest.fixture(scope="module")
def remax_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A 1-step ReMax run of the tiny model (its config and its last.ckpt)."""
    work = tmp_path_factory.mktemp("remax")
    config = small_config("rl", work / "remax.yaml", seed=0, model=tiny_model_dir, steps=1)
    config.write_text(config.read_text().replace("lit_rl.RLOO", "lit_rl.ReMax"))
    cli = fit(config, work / "runs")
    return config, Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("change, named", [
    (("--config", "topr"), "algorithm: 'lit_rl.ReMax' in the checkpoint, 'lit_rl.TOPR' now"),
    (("--config", "erpd"), "algorithm: 'lit_rl.ReMax' in the checkpoint, 'lit_rl.ERPD' now"),
    (("--model.init_args.sampling.max_new_tokens", "6"),
     "model.init_args.sampling.max_new_tokens: 16 in the checkpoint, 6 now"),
    (("--model.init_args.optimizer.init_args.lr", "0.5"),
     "model.init_args.optimizer.init_args.lr: 0.0001 in the checkpoint, 0.5 now"),
    (("--model.init_args.model", "builtin:countdown-init"), "model.init_args.model: "),
    (("--data.init_args.batch_size", "3"), "data.init_args.batch_size: 2 in the checkpoint, 3 now"),
    (("--seed_everything", "5"), "seed_everything: 0 in the checkpoint, 5 now"),
])
def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(remax_run, tiny_model_dir, tmp_path, run_main,
                                                                    change, named):
    config, ckpt = remax_run
    if change[0] == "--config":
        kind = {"topr": "offline", "erpd": "erpd"}[change[1]]
        args = ["--config", str(small_config(kind, tmp_path / f"{kind}.yaml", seed=0, model=tiny_model_dir, steps=2))]
    else:
        args = ["--config", str(config), *change]
    code, err = run_main("fit", *args, "--summary", "false", "--trainer.default_root_dir",
                         str(tmp_path / "runs"), "--ckpt_path", str(ckpt))
    assert code == 1 and named in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()                             # refused before anything was made


def test_a_longer_max_steps_is_honoured_said_and_continues_the_run(remax_run, tmp_path, capsys):
    config, original = remax_run
    run_dir = tmp_path / "runs" / "remax" / original.parents[1].name
    shutil.copytree(original.parents[1], run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cli = fit(config, tmp_path / "runs", "--trainer.max_steps", "2", "--ckpt_path", str(ckpt))
    err = capsys.readouterr().err
    assert "resuming the lit_rl.ReMax run" in err and "trainer.max_steps 1 -> 2" in err, err
    assert cli.trainer.global_step == 2 and Path(cli.trainer.log_dir).resolve() == ckpt.parents[1].resolve()
    assert [int(r["step"]) for r in rows(ckpt.parents[1] / "metrics.csv") if "train/loss" in r] == [0, 1]
    moved = fit(config, tmp_path / "elsewhere", "--trainer.max_steps", "3", "--ckpt_path", str(ckpt))
    assert Path(moved.trainer.log_dir).parent.parent == tmp_path / "elsewhere"   # a new run directory there,
    assert [int(r["step"]) for r in rows(Path(moved.trainer.log_dir) / "metrics.csv") if "train/loss" in r] == [0, 1, 2]


def test_a_resumed_summary_starts_where_the_run_started(tiny_model_dir, tmp_path):
    """The validation before training is the run's, saved in its checkpoints: a resume does not validate again
    before fitting, so metrics.csv holds the uninterrupted run's validation rows."""
    config = small_config("rl", tmp_path / "rloo.yaml", seed=0, model=tiny_model_dir, steps=1)
    args = ["fit", "--config", str(config), "--trainer.limit_val_batches", "1"]

    def val_rows(cli):
        return [r for r in rows(Path(cli.trainer.log_dir) / "metrics.csv") if "val/accuracy" in r]

    straight = LitRLCLI(args=args + ["--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "a")])
    first = LitRLCLI(args=args + ["--trainer.default_root_dir", str(tmp_path / "b")])
    resumed = LitRLCLI(args=args + ["--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "b"),
                                    "--ckpt_path", str(Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt")])
    assert [int(r["step"]) for r in val_rows(straight)] == [0, 2] and val_rows(resumed) == val_rows(straight)
    before = (Path(straight.trainer.log_dir) / "summary.txt").read_text().split(" -> ")[0]
    assert (Path(resumed.trainer.log_dir) / "summary.txt").read_text().startswith(before)


def test_python_resumes_refuse_another_algorithm_or_setting(remax_run, tiny_model_dir, tmp_path):
    _, ckpt = remax_run
    data = CountdownData(batch_size=2, train_size=16, val_size=4)
    same = {"model": tiny_model_dir, "group_size": 2, "sampling": Sampling(max_new_tokens=16),
            "val_sampling": Sampling(temperature=0.0, max_new_tokens=16), "aggregation": "seq_mean_token_sum",
            "reward": CountdownReward()}
    for module, match in ((TOPR(model=tiny_model_dir), r"written by lit_rl\..*ReMax, and this module is TOPR"),
                          (ReMax(**{**same, "group_size": 3}), "group_size: 2 in the checkpoint, 3 now")):
        trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                          default_root_dir=tmp_path, enable_progress_bar=False, limit_val_batches=0)
        with pytest.raises(ResumeMismatch, match=match):
            trainer.fit(module, datamodule=data, ckpt_path=str(ckpt))
    for log_kl in (False, True):                                        # log_kl changes the logs, not the run
        trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                          default_root_dir=tmp_path, enable_progress_bar=False, limit_val_batches=0)
        trainer.fit(ReMax(**same, log_kl=log_kl), datamodule=data, ckpt_path=str(ckpt))   # the same run: resumes
        assert trainer.global_step == 2


def test_an_unreadable_checkpoint_is_named(remax_run, tiny_model_dir, tmp_path, run_main):
    config, ckpt = remax_run
    torn = tmp_path / "checkpoints" / "torn.ckpt"
    torn.parent.mkdir()
    torn.write_bytes(ckpt.read_bytes()[:65536])                          # what a kill during a copy leaves
    code, err = run_main("fit", "--config", str(config), "--summary", "false",
                         "--trainer.default_root_dir", str(tmp_path / "runs"), "--ckpt_path", str(torn))
    assert code == 1 and f"{torn} is not a readable checkpoint" in err and "Traceback" not in err, err
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      default_root_dir=tmp_path, enable_progress_bar=False, limit_val_batches=0)
    with pytest.raises(UnreadableCheckpoint, match="torn.ckpt is not a readable checkpoint"):
        trainer.fit(RLOO(model=tiny_model_dir), ckpt_path=str(torn),
                    datamodule=CountdownData(batch_size=2, train_size=16, val_size=4))


class DigitShare(RewardFunction):
    """Varied rewards from an untrained model, so entropy and KL move."""

    def __call__(self, completion, meta):
        return Score(sum(c.isdigit() for c in completion) / max(1, len(completion)))


def test_epoch_means_after_a_resume_cover_the_whole_epoch(tiny_model_dir, tmp_path):
    """``train/entropy_epoch`` of 4 steps straight, or of 2 steps, a checkpoint and 2 more: the same value."""
    def run(steps, ckpt_path=None, every=None):
        torch.manual_seed(0)
        module = RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=DigitShare(),
                      optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
        logged = {}
        saves = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_last=True)] if every else []
        callbacks = [KLEntropyTracker(), *saves]
        trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                          enable_checkpointing=bool(every), callbacks=callbacks, limit_val_batches=0,
                          default_root_dir=tmp_path, enable_model_summary=False)
        trainer.fit(module, datamodule=CountdownData(batch_size=2, train_size=16, val_size=4), ckpt_path=ckpt_path)
        logged.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_epoch")})
        return logged

    straight = run(4)
    run(2, every=2)
    resumed = run(4, ckpt_path=str(tmp_path / "last.ckpt"))
    assert straight.keys() == resumed.keys() and "train/entropy_epoch" in straight
    assert straight == pytest.approx(resumed, abs=0, rel=1e-6)


def test_an_older_checkpoint_is_checked_on_what_it_records():
    """Checkpoints of an older lit-rl hold only the module's hyperparameters (Lightning's form): those are
    compared, and the announcement says what could not be."""
    old = {"global_step": 7, "hyper_parameters": {"_class_path": "lit_rl.ReMax", "group_size": 4, "model": "m",
                                                  "sampling": {"temperature": 1.0}, "_instantiator": "x"}}
    current = {"trainer": {"max_steps": 9}, "model": {"class_path": "lit_rl.ReMax", "init_args": {
        "group_size": 4, "model": "m", "sampling": {"temperature": 1.0}, "optimizer": {"class_path": "AdamW"}}}}
    plan = plan_resume("x.ckpt", old, current)
    assert plan.global_step == 7 and "data and optimizer are unchecked" in plan.announcement("fit")
    current["model"]["init_args"]["group_size"] = 2
    with pytest.raises(ResumeMismatch, match="model.init_args.group_size: 4 in the checkpoint, 2 now"):
        plan_resume("x.ckpt", old, current)
    with pytest.raises(ResumeMismatch, match="holds no record of the run that wrote it"):
        plan_resume("x.ckpt", {"global_step": 1, "hyper_parameters": {"group_size": 4}}, current)


def test_a_logging_setting_may_change_on_a_resume_and_the_run_may_not():
    """``log_kl`` only decides what is logged: switching it continues the run; switching ``kl_coef`` is refused."""
    def config(**init_args):
        return {"trainer": {"max_steps": 9}, "model": {"class_path": "lit_rl.RLOO", "init_args": {
            "group_size": 4, "kl_coef": 0.0, "log_kl": True, **init_args}}}
    checkpoint = {"global_step": 3, "hyper_parameters": {"_class_path": "lit_rl.RLOO", "group_size": 4,
                                                         "kl_coef": 0.0, "log_kl": True}}
    assert plan_resume("x.ckpt", checkpoint, config(log_kl=False)).global_step == 3
    with pytest.raises(ResumeMismatch, match="model.init_args.kl_coef: 0.0 in the checkpoint, 0.1 now"):
        plan_resume("x.ckpt", checkpoint, config(log_kl=False, kl_coef=0.1))


def test_settings_added_inside_a_list_of_rewards_resume_at_their_defaults():
    """A checkpoint written before FunctionReward had ``conversational``, ``timeout`` and ``warn_after`` (all unset
    by default) resumes a run whose ``Rewards`` lists one: lists are compared entry by entry, so a new unset
    setting inside one is no difference, while a changed weight is named by its index."""
    from lit_rl.resume import differences

    def config(weight, **added):
        function = {"class_path": "lit_rl.FunctionReward", "init_args": {"function": "m:f", **added}}
        return {"model": {"class_path": "lit_rl.GRPO", "init_args": {"reward": {
            "class_path": "lit_rl.Rewards", "init_args": {"rewards": [function], "weights": [weight]}}}}}

    new = {"conversational": None, "timeout": None, "warn_after": None}
    assert differences(config(1.0), config(1.0, **new), ("model",)) == []
    assert differences(config(1.0), config(2.0, **new), ("model",)) == [
        ("model.init_args.reward.init_args.weights.0", 1.0, 2.0)]


def test_a_server_engine_checkpointed_before_seeded_existed_resumes_unseeded():
    """``VLLMServerEngine(seeded=...)`` is newer than some checkpoints: one without the setting ran unseeded, so it
    resumes with ``seeded: false`` and is refused, by name, with ``seeded: true``."""
    from lit_rl.resume import differences

    def config(**added):
        engine = {"class_path": "lit_rl.VLLMServerEngine", "init_args": {"urls": ["http://127.0.0.1:8000"], **added}}
        return {"model": {"class_path": "lit_rl.GRPO", "init_args": {"engine": engine}}}

    assert differences(config(), config(seeded=False), ("model",)) == []
    assert differences(config(), config(seeded=True), ("model",)) == [
        ("model.init_args.engine.init_args.seeded", False, True)]

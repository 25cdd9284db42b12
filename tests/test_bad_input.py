"""The last bad inputs get named errors: a model path that is neither a directory nor a hub id, ``builtin:``
names outside the shipped assets, an unwritable run directory (reported before training, no empty run
directory left by an early failure), ``lit-rl generate`` appending to rows made with other settings; and the
CLI prints configuration and input errors as one paragraph."""

import sys
from pathlib import Path

import pytest

from lit_rl import CountdownData, CountdownReward
from lit_rl.cli import main
from lit_rl.errors import ModelNotFound
from lit_rl.generate import generate
from lit_rl.rows import read_rows
from lit_rl.policy import ASSETS, Policy, resolve
from lit_rl.rollout import Sampling

from conftest import ROOT

SHIPPED = str(sorted(f"builtin:{p.name}" for p in ASSETS.iterdir()))         # what the message must list


def test_a_missing_model_directory_is_named(tmp_path):
    with pytest.raises(ModelNotFound, match=f"'{tmp_path}/nope/model': no such directory, and it is not a hub id"):
        Policy.load(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelNotFound, match="no such directory, and the hub could not provide it"):
        Policy.load("nobody/no-such-model")                             # HF_HUB_OFFLINE=1 (conftest)


@pytest.mark.parametrize("name", ["builtin:../../..", "builtin:/etc", "builtin:../../../../../etc/passwd",
                                  "builtin:countdown-sft/../countdown-init", "builtin:", "builtin:."])
def test_builtin_names_outside_the_shipped_assets_are_refused(name):
    with pytest.raises(FileNotFoundError) as err:
        resolve(name)
    assert str(err.value) == f"nothing built in is called '{name}'; shipped: {SHIPPED}"
    with pytest.raises(FileNotFoundError, match="nothing built in"):
        read_rows(name)


def tiny_fit(tiny_model_dir: str, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "cli_configs" / "rloo.yaml"), "--trainer.max_steps", "1", "--summary",
            "false", "--model.init_args.model", tiny_model_dir, "--model.init_args.sampling.max_new_tokens", "4",
            "--data.init_args.batch_size", "2", "--trainer.default_root_dir", str(root), *extra]


def test_an_unwritable_run_directory_is_reported_before_training(tiny_model_dir, tmp_path, run_main):
    (tmp_path / "a_file").write_text("")
    code, err = run_main(*tiny_fit(tiny_model_dir, tmp_path / "a_file" / "runs"))
    assert code == 1 and "cannot create or write the run directory" in err and "a_file/runs/rloo/" in err, err
    assert "Traceback" not in err


def test_a_run_that_fails_before_its_first_step_leaves_no_run_directory(tiny_model_dir, tmp_path, run_main):
    missing = tmp_path / "missing.jsonl"
    args = ["fit", "--config", str(ROOT / "cli_configs" / "topr.yaml"), "--summary", "false",
            "--model.init_args.model", tiny_model_dir, "--data.init_args.path", str(missing),
            "--trainer.default_root_dir", str(tmp_path / "runs")]
    code, err = run_main(*args)
    assert code == 1 and "no dataset file" in err and str(missing) in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (("--model.init_args.group_size", "1"), "RLOO needs group_size >= 2"),
    (("--model.init_args.model", "/no/such/model"), "model '/no/such/model': no such directory"),
])
def test_input_errors_are_one_paragraph(tiny_model_dir, tmp_path, monkeypatch, run_main, args, message):
    code, err = run_main(*tiny_fit(tiny_model_dir, tmp_path / "runs"), *args)
    assert code == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert "LIT_RL_TRACEBACK=1" in err
    monkeypatch.setenv("LIT_RL_TRACEBACK", "1")
    monkeypatch.setattr(sys, "argv", ["lit-rl", *tiny_fit(tiny_model_dir, tmp_path / "runs"), *args])
    with pytest.raises(ValueError, match="Does not validate"):          # the full chain, for debugging
        main()


@pytest.mark.parametrize("edit, message", [
    (("group_size:", "grop_size:"), "Option 'grop_size' is not accepted"),
    (("group_size: 4", "group_size: four"), "Parser key \"group_size\": Expected a <class 'int'>. Got value: four"),
])
def test_configuration_errors_are_one_paragraph(tmp_path, run_main, edit, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "cli_configs" / "rloo.yaml").read_text().replace(*edit))
    code, err = run_main("fit", "--config", str(bad))
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 3, err


# ------------------------------------------------------------------------------------------- lit-rl generate
def make(tiny_model_dir, out, **kwargs):
    settings = {"model": tiny_model_dir, "data": CountdownData(train_size=32, val_size=4), "group_size": 2,
                "reward": CountdownReward(),
                "sampling": Sampling(max_new_tokens=4), "num_prompts": 4, "batch_size": 2, "seed": 0, **kwargs}
    return generate(output=str(out), **settings)


@pytest.mark.parametrize("change, named", [
    ({"reward": CountdownReward("B")}, "reward.init_args.scheme: 'original' in the file, 'B' now"),
    ({"group_size": 3}, "group_size: 2 in the file, 3 now"),
    ({"data": CountdownData(train_size=32, val_size=4, max_number=9)},
     "data.init_args.max_number: 20 in the file, 9 now"),
    ({"batch_size": 4}, "batch_size: 2 in the file, 4 now"),
    ({"seed": 1}, "seed: 0 in the file, 1 now"),
    ({"sampling": Sampling(max_new_tokens=5)}, "sampling.max_new_tokens: 4 in the file, 5 now"),
])
def test_generate_refuses_to_append_rows_of_other_settings(tiny_model_dir, tmp_path, change, named):
    out = make(tiny_model_dir, tmp_path / "rollouts")
    before = out.read_bytes()
    with pytest.raises(ValueError, match="generated with other settings") as err:
        make(tiny_model_dir, tmp_path / "rollouts", **change)
    assert named in str(err.value) and out.read_bytes() == before


def test_generate_may_extend_num_prompts(tiny_model_dir, tmp_path):
    make(tiny_model_dir, tmp_path / "rollouts")
    extended = make(tiny_model_dir, tmp_path / "rollouts", num_prompts=6)
    assert extended.read_text() == make(tiny_model_dir, tmp_path / "straight", num_prompts=6).read_text()


def test_an_optimizer_that_refuses_its_settings_is_named_as_a_setting(tiny_model_dir, tmp_path, run_main):
    code, err = run_main(*tiny_fit(tiny_model_dir, tmp_path, "--model.init_args.optimizer.init_args.lr", ".nan"))
    assert code == 1 and "Traceback" not in err, err
    assert "the optimizer refused its settings (model.init_args.optimizer): Invalid learning rate: nan" in err


def test_generate_parser_errors_are_one_paragraph(run_main):
    code, err = run_main("generate", "--no_such_option", "1")
    assert code == 2 and err.startswith("lit-rl: invalid configuration: ") and "usage:" not in err, err
    assert "`lit-rl generate --help` lists every option" in err


def test_a_directory_that_is_not_a_model_is_named_with_the_models_below_it(tiny_model_dir, tmp_path):
    """The run directory given as ``model:`` instead of its ``hf_model/``: say what is missing and where the
    model is, not transformers' 30-frame traceback."""
    import shutil

    run = tmp_path / "runs" / "remax" / "20261205-120000"
    shutil.copytree(tiny_model_dir, run / "hf_model")
    (run / "metrics.csv").write_text("step\n")
    with pytest.raises(ModelNotFound, match=rf"model '{run}': {run} is a directory but not a saved model \(it holds "
                                            rf"no config.json\); the models below it: \['{run}/hf_model'\]"):
        Policy.load(str(run))
    with pytest.raises(ModelNotFound, match=r"hf_model/ \(written at the end of training\)"):
        Policy.load(str(tmp_path / "runs"))
    from lit_rl.rewards.model import load_reward_model

    with pytest.raises(ModelNotFound, match=rf"reward model '{run}': .* the models below it"):
        load_reward_model(str(run))

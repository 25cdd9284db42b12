"""Offline datasets (generation, resumption, reading, checking, behaviour log-probs, relabelling) and the
off-policy and preference modules trained from them, online and offline."""

import copy
import json
import shutil

import pytest
import torch
from lightning.pytorch import Trainer
from torch.testing import assert_close

from lit_rl import DPO, IPO, REBEL, TOPR, CountdownData, CountdownReward, MultiCompletion, OfflineData, RewardFunction, Score
from lit_rl import offline
from lit_rl.generate import generate
from lit_rl.offline import StoredGroups, group_rows, read_rows

from conftest import SAMPLING, VAL
from conftest import fit as shared_fit


class DigitShare(RewardFunction):
    """Share of digits in the text: varied rewards even from an untrained model."""

    def __call__(self, completion, meta):
        return Score(round(sum(c.isdigit() for c in completion) / max(1, len(completion)), 1))


def countdown(**kwargs) -> CountdownData:
    return CountdownData(**{"batch_size": 4, "val_batch_size": 8, "train_size": 64, "val_size": 8, **kwargs})


def make(tiny_model_dir, out, **kwargs):
    settings = {"model": tiny_model_dir, "data": countdown(), "reward": DigitShare(), "sampling": SAMPLING,
                "group_size": 4, "num_prompts": 12, "batch_size": 4, "seed": 3, **kwargs}
    return generate(output=str(out), **settings)


@pytest.fixture(scope="module")
def dataset(tiny_model_dir, tmp_path_factory):
    return make(tiny_model_dir, tmp_path_factory.mktemp("offline") / "rollouts")


def test_generated_rows_carry_everything_and_are_deterministic(dataset, tiny_model_dir, tmp_path):
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert len(rows) == 12 * 4 and [r["sample_index"] for r in rows[:5]] == [0, 1, 2, 3, 0]
    row = rows[0]
    for key in ("prompt", "meta", "completion", "prompt_ids", "completion_ids", "reward", "correct",
                "behaviour_logps", "behaviour_logp", "sampling", "model", "seed"):
        assert key in row, key
    assert len(row["behaviour_logps"]) == len(row["completion_ids"])
    assert row["behaviour_logp"] == pytest.approx(sum(row["behaviour_logps"]))
    assert row["sampling"]["temperature"] == 1.0 and row["seed"] == 3
    assert make(tiny_model_dir, tmp_path / "again").read_text() == dataset.read_text()
    parquet = [r for _, r in read_rows(str(dataset.with_suffix(".parquet")))]
    assert parquet == rows


def test_the_generate_config_parses_against_the_signature():
    from pathlib import Path

    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_function_arguments(generate)
    config = parser.parse_args(["--config", str(Path(__file__).parents[1] / "cli_configs" / "generate.yaml")])
    assert config.group_size == 4 and config.num_prompts == 1024 and config.data.class_path == "lit_rl.CountdownData"


def test_an_interrupted_generation_resumes_without_duplicates(dataset, tiny_model_dir, tmp_path):
    """A crash mid-batch leaves 1.5 batches and a torn line: the rerun keeps batch 1, redoes the rest, and ends
    with the uninterrupted file, byte for byte."""
    lines = dataset.read_text().splitlines(keepends=True)
    partial = tmp_path / "rollouts.jsonl"
    partial.write_text("".join(lines[:24]) + lines[24][:30])
    shutil.copy(dataset.with_suffix(".settings.json"), tmp_path)        # written before the first row
    assert make(tiny_model_dir, tmp_path / "rollouts").read_text() == dataset.read_text()
    with pytest.raises(ValueError, match="other settings"):
        make(tiny_model_dir, tmp_path / "rollouts", seed=4)


def test_malformed_lines_are_named(tmp_path, dataset):
    good = dataset.read_text().splitlines()
    cases = {
        "{not json": "not valid JSON",
        json.dumps({**json.loads(good[0]), "reward": "high"}): "field 'reward' must be",
        json.dumps({k: v for k, v in json.loads(good[0]).items() if k != "completion"}): "missing field 'completion'",
        json.dumps({**json.loads(good[0]), "behaviour_logps": [0.0]}): "same length",
    }
    for bad, message in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join([good[0], good[1], bad]) + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl:3: .*{message}"):
            group_rows(read_rows(str(path)))
    path.write_text("\n".join(good[:5]) + "\n")
    with pytest.raises(ValueError, match="different numbers of completions"):
        group_rows(read_rows(str(path)))


def test_preference_pairs_and_hf_datasets(tmp_path):
    import datasets

    pairs = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p1", "chosen": "c", "rejected": "d"}]
    datasets.Dataset.from_list(pairs).save_to_disk(str(tmp_path / "prefs"))
    groups = group_rows(read_rows(str(tmp_path / "prefs")))
    assert [g["completions"] for g in groups] == [["a", "b"], ["c", "d"]]
    assert groups[0]["rewards"] == [1.0, 0.0] and groups[0]["behaviour_logps"] is None


def test_missing_behaviour_logps_are_recomputed_once_and_cached(dataset, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "CACHE", tmp_path / "cache")
    stripped = tmp_path / "stripped.jsonl"
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    stripped.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "behaviour_logps"}) + "\n"
                                for r in rows))
    data = OfflineData(str(stripped), batch_size=2, behaviour_model=tiny_model_dir, validation=countdown())
    data.setup("fit")
    recomputed = [v for g in data.groups for v in g["behaviour_logps"]]
    for r, lp in zip(rows, recomputed):
        assert_close(torch.tensor(lp), torch.tensor(r["behaviour_logps"]), rtol=1e-4, atol=1e-5)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    monkeypatch.setattr("lit_rl.policy.Policy.load", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    again = OfflineData(str(stripped), batch_size=2, behaviour_model=tiny_model_dir, validation=countdown())
    again.setup("fit")
    assert again.groups[0]["behaviour_logps"] == data.groups[0]["behaviour_logps"]


def test_the_behaviour_cache_is_keyed_on_content_and_loaded_safely(dataset, tiny_model_dir, tmp_path, monkeypatch):
    """An edit of the same size (one digit of a completion changed) is another dataset: the cache must not
    answer for it. The cache is read with torch's safe unpickler, whatever torch's default."""
    monkeypatch.setattr(offline, "CACHE", tmp_path / "cache")
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    stripped = [{k: v for k, v in r.items() if k not in ("behaviour_logps", "completion_ids")} for r in rows]
    path = tmp_path / "stripped.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in stripped))
    first = OfflineData(str(path), batch_size=2, behaviour_model=tiny_model_dir, validation=countdown())
    first.setup("fit")
    edited = copy.deepcopy(stripped)
    text = edited[0]["completion"]
    edited[0]["completion"] = text[:-1] + ("1" if text[-1] != "1" else "2")     # same length, other text
    path.write_text("".join(json.dumps(r) + "\n" for r in edited))
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    second = OfflineData(str(path), batch_size=2, behaviour_model=tiny_model_dir, validation=countdown())
    second.setup("fit")
    assert len(list((tmp_path / "cache").iterdir())) == 2                    # computed again, for the new content
    assert second.groups[0]["completion_ids"][0] != first.groups[0]["completion_ids"][0]
    third = OfflineData(str(path), batch_size=2, behaviour_model=tiny_model_dir, validation=countdown())
    third.setup("fit")
    assert loads == [True]                                                  # the third read the cache, safely


def test_relabelling_rescores_without_regenerating(dataset):
    data = OfflineData(str(dataset), batch_size=2, reward=CountdownReward("B"), validation=countdown())
    data.setup("fit")
    assert {r for g in data.groups for r in g["rewards"]} <= {1.0, 0.0, -0.1, -0.2}
    assert -0.2 in {r for g in data.groups for r in g["rewards"]}    # an untrained model rarely answers


def test_stored_batches_are_typed_and_replayed_by_type(dataset, tiny_model_dir):
    """Training batches of stored groups are ``StoredGroups`` (prompt-major), and ``make_rollout`` replays them by
    their type: a prompt batch that happens to carry a ``completions`` column is sampled, not replayed."""
    data = OfflineData(str(dataset), batch_size=2, validation=countdown())
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, StoredGroups) and len(batch) == 2 and len(batch.completions[0]) == data.group_size
    module = TOPR(model=tiny_model_dir, reward=CountdownReward(), sampling=SAMPLING, group_size=data.group_size)
    replayed = module.make_rollout(batch)
    assert replayed.from_dataset and torch.equal(replayed.scores, torch.tensor([r for g in batch.rewards for r in g]))
    prompts = {"prompt": batch.prompt, "meta": batch.meta, "completions": batch.completions}
    assert not module.make_rollout(prompts).from_dataset


def fit(module, data, steps: int) -> Trainer:
    return shared_fit(module, data, steps, limit_val_batches=1, val_check_interval=2)


OFFLINE = [
    (TOPR, {"threshold": 0.3}, "train/clip_frac"),
    (REBEL, {}, None),
    (DPO, {}, "rollout/frac_tied_groups"),
    (IPO, {"average_logps": True}, None),
    (MultiCompletion, {"reward_temperature": 0.5}, None),
]


@pytest.mark.parametrize("cls, kwargs, extra", OFFLINE, ids=lambda x: getattr(x, "__name__", ""))
def test_every_offline_objective_trains_from_a_dataset(dataset, tiny_model_dir, cls, kwargs, extra):
    torch.manual_seed(0)
    module = cls(model=tiny_model_dir, sampling=SAMPLING, val_sampling=VAL, reward=DigitShare(), **kwargs)
    before = [p.detach().clone() for p in module.policy.parameters()]
    trainer = fit(module, OfflineData(str(dataset), batch_size=2, validation=countdown()), 3)
    assert trainer.global_step == 3
    assert any(not torch.equal(b, p) for b, p in zip(before, module.policy.parameters()))
    for key in ("rollout/reward_mean", "train/loss", "train/entropy", "train/grad_norm", "val/reward_mean",
                *([extra] if extra else [])):
        assert key in trainer.callback_metrics, key


@pytest.mark.parametrize("cls", [REBEL, MultiCompletion, DPO])
def test_online_listwise_objectives_sample_their_own_groups(tiny_model_dir, cls):
    torch.manual_seed(0)
    module = cls(model=tiny_model_dir, sampling=SAMPLING, val_sampling=VAL, reward=DigitShare(), group_size=4)
    trainer = fit(module, countdown(), 2)
    assert "rollout/reward_mean" in trainer.callback_metrics


@pytest.mark.parametrize("cls", [REBEL, MultiCompletion, IPO])
def test_micro_batches_of_whole_groups_give_the_full_gradient(dataset, tiny_model_dir, cls):
    """A micro-batch size of 5 rows is rounded down to whole groups; the accumulated gradient is the full one."""
    torch.manual_seed(0)
    module = cls(model=tiny_model_dir, reward=CountdownReward(), sampling=SAMPLING, micro_batch_size=5)
    data = OfflineData(str(dataset), batch_size=3, validation=countdown())
    data.setup("fit")
    rollout = module.make_rollout(next(iter(data.train_dataloader())))
    with torch.no_grad():                                               # move away from the reference
        for p in module.policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    params = [p for p in module.policy.parameters() if p.requires_grad]
    normalisers = module.normalisers(rollout)
    full = torch.autograd.grad(module.micro_loss(rollout, normalisers)[0], params)
    micros = rollout.split(module.micro_batch_size, module.whole_groups)
    assert len(micros) > 1 and all(len(m) % m.group_size == 0 for m in micros)
    accumulated = [torch.zeros_like(p) for p in params]
    for micro in micros:
        for acc, g in zip(accumulated, torch.autograd.grad(module.micro_loss(micro, normalisers)[0], params)):
            acc += g
    for a, f in zip(accumulated, full):
        assert_close(a, f, rtol=1e-4, atol=1e-6 * max(1.0, float(f.abs().max())))   # float32 sums: ~8 eps of the scale


def test_online_rebel_anchors_at_the_sampling_policy_and_offline_at_the_reference(dataset, tiny_model_dir):
    """Online, right after sampling, the anchor is the policy itself: every implicit reward gap is 0, so the
    loss is the mean squared reward gap. Offline the anchor is the reference."""
    torch.manual_seed(0)
    module = REBEL(model=tiny_model_dir, sampling=SAMPLING, reward=DigitShare(), group_size=4, eta=0.5)
    data = countdown()
    data.setup("fit")
    rollout = module.make_rollout(next(iter(data.train_dataloader())))
    assert_close(module.anchor_logps(rollout), rollout.old_logps)
    loss, _ = module.micro_loss(rollout, module.normalisers(rollout))
    r = rollout.rewards.view(-1, 4)
    i, j = torch.triu_indices(4, 4, offset=1)
    assert_close(loss, ((r[:, i] - r[:, j]) ** 2).mean(), rtol=1e-4, atol=1e-6)
    stored = OfflineData(str(dataset), batch_size=2, validation=countdown())
    stored.setup("fit")
    replayed = module.make_rollout(next(iter(stored.train_dataloader())))
    assert replayed.old_logps is None and module.anchor_logps(replayed) is replayed.ref_logps


def test_dpo_skips_a_step_whose_groups_all_tie(tiny_model_dir):
    class Flat(RewardFunction):
        def __call__(self, completion, meta):
            return Score(0.5)

    module = DPO(model=tiny_model_dir, sampling=SAMPLING, val_sampling=VAL, reward=Flat(), group_size=2)
    before = [p.detach().clone() for p in module.policy.parameters()]
    data = countdown()
    data.setup("fit")
    assert module.training_step(next(iter(data.train_dataloader())), 0) == {}
    assert all(torch.equal(b, p) for b, p in zip(before, module.policy.parameters()))


def test_topr_needs_behaviour_logps_from_a_dataset(dataset, tiny_model_dir, tmp_path):
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    stripped = tmp_path / "stripped.jsonl"
    stripped.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "behaviour_logps"}) + "\n"
                                for r in rows))
    module = TOPR(model=tiny_model_dir, reward=CountdownReward(), sampling=SAMPLING, val_sampling=VAL)
    with pytest.raises(ValueError, match="behaviour_model"):
        fit(module, OfflineData(str(stripped), batch_size=2, validation=countdown()), 1)


def test_topr_threshold_separates_learning_from_tapering(dataset, tiny_model_dir):
    """On stored data with the behaviour policy equal to the current one (the generator is the start model),
    every ratio is 1 and TOPR's loss is REINFORCE's -R L(y), averaged over sequences."""
    module = TOPR(model=tiny_model_dir, reward=CountdownReward(), sampling=SAMPLING, threshold=1.0)
    data = OfflineData(str(dataset), batch_size=2, validation=countdown())
    data.setup("fit")
    rollout = module.make_rollout(next(iter(data.train_dataloader())))
    logps, _ = module.policy.logps(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                   rollout.completion_mask, 1.0)
    assert_close(logps * rollout.completion_mask, rollout.behaviour_logps, rtol=1e-4, atol=1e-5)
    loss, _ = module.micro_loss(rollout, module.normalisers(rollout))
    expected = -(rollout.rewards * (logps * rollout.completion_mask).sum(-1)).mean()
    assert_close(loss, expected, rtol=1e-4, atol=1e-6)


def test_resuming_offline_training_reproduces_the_uninterrupted_run(dataset, tiny_model_dir, tmp_path):
    """TOPR from stored data: 4 steps straight equal 2 steps, a checkpoint, and 2 more (the data's position
    in its epoch is restored, so the same stored groups are replayed)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(steps, ckpt_path=None, every=None):
        torch.manual_seed(0)
        module = TOPR(model=tiny_model_dir, reward=CountdownReward(), sampling=SAMPLING, val_sampling=VAL, threshold=0.3,
                      optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0))
        callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_last=True)] if every else []
        trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
                          num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(module, datamodule=OfflineData(str(dataset), batch_size=2, validation=countdown()),
                    ckpt_path=ckpt_path)
        return module

    straight = run(4)
    run(2, every=2)
    resumed = run(4, ckpt_path=str(tmp_path / "last.ckpt"))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

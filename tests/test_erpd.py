"""ERPD end to end on a tiny model: the stage schedule, what each transition leaves behind (pi_old restored,
a whitened signal, pi_un, an earlier student), every teacher loss, ensembles, the validation criterion,
exact resume mid-stage, bad settings, the YAML configs; and PPO / SAPO as on-policy algorithms."""

from dataclasses import replace
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.testing import assert_close

from lit_rl import ERPD, GRPO, PPO, CountdownData, CountdownReward, ERPDStageSwitch, RewardFunction, Score, Teacher
from lit_rl.policy import sequence_inputs

from conftest import ROOT, SAMPLING, VAL
from conftest import fit as shared_fit


class DigitShare(RewardFunction):
    """Share of digits, and "correct" when at least half the characters are digits: both vary from sample to
    sample even for an untrained model, so every teacher loss gets a signal."""

    def __call__(self, completion, meta):
        share = sum(c.isdigit() for c in completion) / max(1, len(completion))
        return Score(share, correct=share >= 0.5)


def data(**kwargs) -> CountdownData:
    return CountdownData(**{"batch_size": 2, "val_batch_size": 4, "train_size": 64, "val_size": 4, **kwargs})


def erpd(tiny_model_dir, teachers=(Teacher(loss="ce", epochs=2, mini_batch_size=2),), **kwargs) -> ERPD:
    """2 prompts x 2 samples = 4 rows; a teacher of 2 epochs x 2 steps; 2 student steps of the whole batch."""
    settings = {"group_size": 2, "sampling": SAMPLING, "val_sampling": VAL, "reward": DigitShare(), "eval_size": 4,
                "student_steps": 2, "optimizer": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0), **kwargs}
    return ERPD(model=tiny_model_dir, teachers=list(teachers), **settings)


def fit(module, steps, tmp_path=None, **kwargs) -> Trainer:
    return shared_fit(module, data(), steps, root=tmp_path, **kwargs)


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.policy.model.state_dict().items()}


def test_one_iteration_runs_each_stage_and_restores_pi_old(tiny_model_dir):
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, online_steps=1)
    assert module.schedule.stages() == [("teacher", 0), ("student", 0), ("online", 0)]
    fit(module, 4)                                                      # exactly the teacher stage
    assert module.schedule.stage == ("student", 0) and module.schedule.stage_step == 0    # on_train_end closed the stage
    for name, value in weights(module).items():                        # stage 2 starts from pi_old
        assert torch.equal(value, module.schedule.old_state[name]), name
    signal, mask = module.schedule.rollout.advantages, module.schedule.rollout.completion_mask.bool()
    assert signal.shape == mask.shape and signal[mask].mean().abs() < 1e-5
    assert signal[mask].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4) and (signal[~mask] == 0).all()
    assert [h["stage"] for h in module.schedule.history] == ["base", "teacher"]
    assert module.schedule.history[1]["kl_base"] > module.schedule.history[0]["kl_base"] == pytest.approx(0.0, abs=1e-6)
    assert module.schedule.switches == [{"step": 4, "iteration": 1, "stage": "teacher", "teacher": 0, "steps": 4, "early": False}]


def test_full_iterations_log_metrics_and_the_student_becomes_pi_old(tiny_model_dir):
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, online_steps=1)
    trainer = fit(module, 7 + 4)                                       # iteration 1 (4 + 2 + 1), then iteration 2's teacher
    assert [(h["iteration"], h["stage"]) for h in module.schedule.history] == [
        (1, "base"), (1, "teacher"), (1, "student"), (1, "online"), (2, "teacher")]
    for key in ("erpd/stage", "erpd/iteration", "erpd/teacher", "erpd/accuracy", "erpd/ratio", "erpd/entropy",
                "train/kl_base", "train/kl", "train/loss", "train/entropy", "rollout/reward_mean"):
        assert key in trainer.callback_metrics, key
    student = module.schedule.history[2]
    assert 0 < student["ratio"] and 0 <= student["accuracy"] <= 1 and student["entropy"] > 0
    assert module.schedule.iteration == 2 and module.schedule.rollout is not None         # iteration 2 sampled from the new pi_old


@pytest.mark.parametrize("loss", ["grpo", "ppo", "sapo", "ce", "mse"])
def test_every_teacher_loss_trains(tiny_model_dir, loss):
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, teachers=[Teacher(loss=loss, epochs=1, mini_batch_size=4, kl_coef=0.1)],
                  student_steps=1)
    trainer = fit(module, 1)                                           # one teacher step
    assert trainer.global_step == 1 and module.schedule.stage == ("student", 0)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    moved = module.schedule.teacher_logps[0] - module.schedule.rollout.old_logps
    assert moved.abs().sum() > 0, "the teacher step changed nothing"
    if loss == "ppo":
        assert module.schedule.rollout.values is not None and module.schedule.rollout.returns is not None


def test_kl_to_base_is_k3_and_never_negative_where_k1_is(tiny_model_dir):
    """A teacher and a student at lr 1e-4 barely move from the base: on their 2 own samples (2 prompts x
    ``kl_samples`` 1) the paper's k1 mean of ``log pi - log pi_base`` lands below zero (the construction,
    checked first); ``train/kl_base``, the k3 estimate of the same samples, does not."""
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, teachers=[Teacher(loss="ce", epochs=1, mini_batch_size=4, lr=1e-4)], student_lr=1e-4)
    trainer = fit(module, 1 + 2 + 1)                                   # teacher, student, iteration 2's teacher
    records = module.schedule.history[1:]                                       # the base's own KL is exactly 0
    assert [(r["iteration"], r["stage"]) for r in records] == [(1, "teacher"), (1, "student"), (2, "teacher")]
    assert min(r["kl_base_k1"] for r in records) < 0, "the construction no longer gives a negative k1"
    assert all(r["kl_base"] > 0 for r in records)                     # k3: the policies moved, and it cannot go below 0
    student = records[1]                                               # logged when iteration 2 began
    assert trainer.callback_metrics["train/kl_base"].item() == pytest.approx(student["kl_base"])


def test_no_distillation_keeps_the_teacher_and_strategy_3_uses_an_earlier_student(tiny_model_dir):
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, teachers=[Teacher(loss="ce", epochs=1, mini_batch_size=4, strategy=3,
                                                    earlier_student=1)], student_steps=1)
    fit(module, 2 * 2)
    assert [h.get("strategy") for h in module.schedule.history if h["stage"] == "teacher"] == [1, 3]   # 1: not yet there
    assert set(module.schedule.students) == {1}
    torch.manual_seed(0)
    plain = erpd(tiny_model_dir, teachers=[Teacher(loss="ce", epochs=1, mini_batch_size=4)], student_steps=0)
    fit(plain, 1)                                                       # teacher only: it becomes the next pi_old
    assert plain.schedule.iteration == 2 and plain.schedule.rollout is None
    assert any(not torch.equal(v, plain.schedule.old_state[k]) for k, v in weights(plain).items())


def test_strategy_2_divides_by_the_unlearned_checkpoint(tiny_model_dir):
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, teachers=[Teacher(loss="mse", epochs=2, mini_batch_size=4, strategy=2,
                                                    unlearned_step=1)], student_steps=1)
    fit(module, 1)
    assert 0 in module.schedule.unlearned                                        # pi_un kept on CPU after step 1
    assert all(v.device.type == "cpu" for v in module.schedule.unlearned[0].values())
    fit(module, 1)                                                      # the teacher's last step; then the switch
    assert module.schedule.history[-1]["strategy"] == 2 and not module.schedule.unlearned  # consumed into the signal
    for name, value in weights(module).items():                        # and pi_old, not pi_un, is restored
        assert torch.equal(value, module.schedule.old_state[name]), name


@pytest.mark.parametrize("ensemble, stages", [
    ("sequential", [("teacher", 0), ("teacher", 1), ("student", 0), ("student", 1)]),
    ("simultaneous", [("teacher", 0), ("teacher", 1), ("student", -1)]),
])
def test_teacher_ensembles(tiny_model_dir, ensemble, stages):
    torch.manual_seed(0)
    teachers = [Teacher(loss="ce", epochs=1, mini_batch_size=4), Teacher(loss="mse", epochs=2, mini_batch_size=4,
                                                                         strategy=2, unlearned_step=1, weight=0.5)]
    module = erpd(tiny_model_dir, teachers=teachers, ensemble=ensemble, student_steps=1)
    assert module.schedule.stages() == stages
    fit(module, 1 + 2)                                                  # both teachers; then the first student stage
    assert module.schedule.stage == stages[2] and set(module.schedule.signals) == {0, 1}
    mask = module.schedule.rollout.completion_mask.bool()
    assert module.schedule.rollout.advantages[mask].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_validation_criterion_ends_a_stage_early(tiny_model_dir):
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, teachers=[Teacher(loss="ce", epochs=4, mini_batch_size=2)],   # 8 steps
                  reward=CountdownReward())
    switch = ERPDStageSwitch(monitor="val/accuracy", patience=1)
    fit(module, 3, callbacks=[switch], limit_val_batches=1, val_check_interval=1)
    # the tiny model never solves a puzzle: the 2nd validation does not improve, so stage 1 ends after 2 steps
    assert module.schedule.switches[0] | {"step": 2} == {"step": 2, "iteration": 1, "stage": "teacher", "teacher": 0,
                                                "steps": 2, "early": True}
    assert module.schedule.stage == ("student", 0) and module.schedule.stage_step == 1


def test_resume_mid_stage_2_reproduces_the_uninterrupted_run(tiny_model_dir, tmp_path, stop=5):
    """8 steps straight, or ``stop`` steps, a checkpoint, a fresh module and RNG state, and the rest: the same
    weights, signal and history. Steps: teacher 1-4 (pi_un after 1), student 5-6, iteration 2's teacher 7-8."""
    teachers = [Teacher(loss="ce", epochs=2, mini_batch_size=2, strategy=2, unlearned_step=1)]

    def run(steps, ckpt_path=None, every=None):
        torch.manual_seed(0)
        module = erpd(tiny_model_dir, teachers=teachers)
        callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_last=True)] if every else []
        torch.manual_seed(123 if ckpt_path else 0)                     # the resumed process starts elsewhere
        fit(module, steps, tmp_path, callbacks=callbacks, ckpt_path=ckpt_path)
        return module

    straight = run(8)
    stopped = run(stop, every=stop)
    assert stopped.schedule.iteration == 1 and stopped.schedule.stage == ("student", 0) and stopped.schedule.stage_step == 1
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)       # loads with torch's safe unpickler
    assert (saved["erpd"]["iteration"], saved["erpd"]["phase"], saved["erpd"]["stage_step"]) == (1, 1, 1)
    assert_close(saved["erpd"]["rollout"]["advantages"], stopped.schedule.rollout.advantages)
    resumed = run(8, ckpt_path=str(tmp_path / "last.ckpt"))
    for (name, a), b in zip(weights(straight).items(), weights(resumed).values()):
        assert torch.equal(a, b), name
    assert [{k: v for k, v in h.items()} for h in straight.schedule.history] == resumed.schedule.history
    assert torch.equal(straight.schedule.rollout.completion_ids, resumed.schedule.rollout.completion_ids)
    assert resumed.schedule.iteration == 2 and len(resumed.schedule.history) == 3        # base, teacher, student


def test_a_checkpoint_of_the_earlier_layout_resumes_to_the_same_run(tiny_model_dir, tmp_path):
    """``tests/data/erpd_mid_stage2_c017ccb.ckpt`` was written by the code before the schedule object (commit
    c017ccb: ERPD's state as module attributes, the stage switches in ``ERPDStageSwitch``'s state) at step 5 of
    the run above (``stop=5``), on this same tiny model, on another machine. Its weights are that machine's
    float32 sums, so they cannot be compared with 5 steps computed here (AdamW turns rounding-level gradient
    differences into visible weight differences). Instead the same checkpoint, rewritten by hand in today's
    layout (the switches moved from the callback's state into the schedule's), is resumed here too: both
    resumes run on this machine from the same numbers and must end bitwise equal; that today's layout resumes
    to the uninterrupted run is the test above."""
    teachers = [Teacher(loss="ce", epochs=2, mini_batch_size=2, strategy=2, unlearned_step=1)]

    def resume(checkpoint, name):
        torch.save(checkpoint, tmp_path / name)
        torch.manual_seed(0)
        module = erpd(tiny_model_dir, teachers=teachers, shared_prompt_forward=False)     # as that run did
        torch.manual_seed(123)
        fit(module, 8, tmp_path, ckpt_path=str(tmp_path / name))
        return module

    old = torch.load(ROOT / "tests" / "data" / "erpd_mid_stage2_c017ccb.ckpt", weights_only=True)
    old["hyper_parameters"]["model"] = tiny_model_dir                  # it was made on a copy built elsewhere
    today = copy.deepcopy(old)
    switch = today["callbacks"]["ERPDStageSwitch"]
    today["erpd"] |= {"switches": switch.pop("switches"), "switch_requested": switch.pop("switch_requested")}
    from_old, from_today = resume(old, "old.ckpt"), resume(today, "today.ckpt")
    for (name, a), b in zip(weights(from_today).items(), weights(from_old).values()):
        assert torch.equal(a, b), name
    assert from_today.schedule.history == from_old.schedule.history and len(from_old.schedule.history) == 3
    assert torch.equal(from_today.schedule.rollout.completion_ids, from_old.schedule.rollout.completion_ids)
    assert from_today.schedule.switches == from_old.schedule.switches
    assert [s["step"] for s in from_old.schedule.switches] == [4, 6]    # the old switch at 4 was carried over


@pytest.mark.parametrize("unlearned_step, match", [
    (9, r"teachers\[0\]\.unlearned_step=9 makes pi_un past the end of its stage: teacher 0 runs 2 steps"),
    (2, r"teachers\[0\]\.unlearned_step=2 makes pi_un the teacher itself: teacher 0 runs 2 steps \(epochs 2 x "
        r"ceil\(4 rows / mini_batch_size 4\)\).*choose unlearned_step < 2"),
])
def test_a_pi_un_at_or_past_the_teachers_last_step_is_refused(tiny_model_dir, unlearned_step, match):
    teacher = Teacher(loss="mse", epochs=2, mini_batch_size=4, strategy=2, unlearned_step=unlearned_step)
    module = erpd(tiny_model_dir, teachers=[teacher])
    with pytest.raises(ValueError, match=match):
        fit(module, 1)
    assert module.global_step == 0                                      # refused before any teacher step
    torch.manual_seed(0)                                                # without distillation pi_un is never used
    fit(erpd(tiny_model_dir, teachers=[teacher], student_steps=0), 2)


class Constant(RewardFunction):
    """Every sample scores the same: GRPO's group advantages are all zero, so a GRPO teacher cannot move."""

    def __call__(self, completion, meta):
        return Score(0.5, correct=False)


def test_an_all_zero_signal_stops_stage_2_with_a_message(tiny_model_dir):
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, teachers=[Teacher(loss="grpo", epochs=2, mini_batch_size=4)], reward=Constant())
    match = (r"ERPD iteration 1: teacher 0's distillation signal log pi_e - log pi_old is zero on every valid token"
             r".*stage 2 would train on nothing\. The teacher ran 2 steps and moved at most 0\.00e\+00")
    with pytest.raises(RuntimeError, match=match):
        fit(module, 3)                                                  # 2 teacher steps, then the switch
    assert module.global_step == 2 and module.schedule.stage == ("teacher", 0) and not module.schedule.signals


def test_a_stage_ended_before_pi_un_is_named(tiny_model_dir):
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, teachers=[Teacher(loss="ce", epochs=4, mini_batch_size=2, strategy=2,
                                                    unlearned_step=5)], reward=CountdownReward())
    switch = ERPDStageSwitch(monitor="val/accuracy", patience=1)       # ends stage 1 after 2 steps (see above)
    with pytest.raises(RuntimeError, match=r"teacher 0's stage ended after 2 steps, before its unlearned_step=5"):
        fit(module, 3, callbacks=[switch], limit_val_batches=1, val_check_interval=1)


@pytest.mark.parametrize("make, match", [
    (lambda: Teacher(loss="dpo"), "loss"),
    (lambda: Teacher(strategy=4), "strategy"),
    (lambda: Teacher(epochs=0), "epochs"),
    (lambda: Teacher(outliers="abs"), "outliers"),
    (lambda: Teacher(beta=0.0), "beta"),
])
def test_bad_teacher_settings_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("kwargs, match", [
    ({"student_steps": -1}, "student_steps"), ({"group_size": 1}, "group_size"), ({"kl_samples": 0}, "kl_samples"),
    ({"ensemble": "vote"}, "ensemble"), ({"student_mini_batch_size": 0}, "student_mini_batch_size"),
])
def test_bad_erpd_settings_are_named(tiny_model_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        erpd(tiny_model_dir, **kwargs)


def test_micro_batches_give_the_full_batch_gradient_for_ce_and_student_losses(tiny_model_dir):
    """1x4 and 4x1 accumulate to the same gradient: CE's sequence loss spread over tokens, and the student's
    clipped surrogate with KL to pi_old and the entropy bonus."""
    torch.manual_seed(0)
    module = erpd(tiny_model_dir, student_kl_coef=0.1, student_entropy_coef=0.5)
    fit(module, 4)                                                      # now at the start of stage 2
    rollout = module.schedule.rollout
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    params = [p for p in module.policy.parameters() if p.requires_grad]
    for phase in (0, 1):                                                # teacher (CE), student
        module.schedule.phase = phase
        if phase == 0:
            rollout = replace(rollout, advantages=torch.zeros(len(rollout)))
        normalisers = module.normalisers(rollout)
        full = torch.autograd.grad(module.micro_loss(rollout, normalisers)[0], params, allow_unused=True)
        parts = [torch.autograd.grad(module.micro_loss(m, normalisers)[0], params, allow_unused=True)
                 for m in rollout.split(1)]
        for i, f in enumerate(full):
            if f is not None:
                assert_close(sum(p[i] for p in parts), f, rtol=1e-4, atol=1e-6)
        assert sum(f.abs().sum() for f in full if f is not None) > 0


def test_ppo_trains_with_its_value_head_and_sapo_as_a_grpo_loss(tiny_model_dir):
    torch.manual_seed(0)
    ppo = PPO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, val_sampling=VAL, reward=DigitShare(),
              num_iterations=2, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    head = ppo.value_head.linear.weight.detach().clone()
    trainer = fit(ppo, 4)
    assert trainer.global_step == 4 and not torch.equal(head, ppo.value_head.linear.weight)
    assert "rollout/value_mean" in trainer.callback_metrics and "train/clip_frac" in trainer.callback_metrics
    sapo = GRPO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=DigitShare(), loss="sapo", num_iterations=2)
    trainer = fit(sapo, 2)
    assert trainer.global_step == 2 and "train/clip_frac" not in trainer.callback_metrics   # SAPO never clips
    with pytest.raises(ValueError, match="loss"):
        GRPO(model=tiny_model_dir, reward=CountdownReward(), loss="cispo")
    with pytest.raises(ValueError, match="lam"):
        PPO(model=tiny_model_dir, reward=CountdownReward(), lam=1.5)


def test_value_head_reads_the_same_hidden_states_as_the_training_forward(tiny_model_dir):
    torch.manual_seed(0)
    ppo = PPO(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING)
    torch.nn.init.normal_(ppo.value_head.linear.weight)
    dm = data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    rollout = ppo.collector.collect(ppo.sampler, batch["prompt"], batch["meta"], SAMPLING, 2)
    fields = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    ids, attention, positions = sequence_inputs(*fields)                # the decoder alone, outside the forward
    hidden = ppo.policy.model.get_decoder()(input_ids=ids, attention_mask=attention, position_ids=positions,
                                            use_cache=False).last_hidden_state
    direct = ppo.value_head.linear(hidden[:, -rollout.completion_ids.shape[1] - 1:-1].float()).squeeze(-1)
    training = ppo.value_head(ppo.policy(*fields, hidden=True))        # what the training forward gives the loss
    assert_close(training, direct, rtol=1e-5, atol=1e-6)


ERPD_CONFIGS = sorted(p.stem for p in (ROOT / "cli_configs").glob("erpd*.yaml"))


def test_erpd_and_ppo_configs_exist():
    assert {"erpd", "erpd_sapo", "erpd_grpo", "erpd_ppo", "erpd_mse", "erpd_ensemble"} <= set(ERPD_CONFIGS)
    assert (ROOT / "cli_configs" / "ppo.yaml").is_file()


def test_erpd_runs_from_yaml_end_to_end(tmp_path, tiny_model_dir):
    """One ERPD iteration through the ``lit-rl`` command on the tiny model: history and checkpoints in the run dir."""
    args = ["fit", "--config", str(ROOT / "cli_configs" / "erpd_mse.yaml"), "--model.init_args.model", tiny_model_dir,
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_steps", "3", "--summary", "false",
            "--model.init_args.sampling.max_new_tokens", "8", "--model.init_args.val_sampling.max_new_tokens", "8",
            "--data.init_args.batch_size", "2", "--model.init_args.group_size", "2", "--data.init_args.val_size", "4",
            "--model.init_args.eval_size", "4", "--model.init_args.student_steps", "1",
            "--model.init_args.teachers", '[{"loss": "mse", "epochs": 1, "mini_batch_size": 2, "strategy": 2, "unlearned_step": 1, "save_steps": [1]}]']
    result = subprocess.run([sys.executable, "-m", "lit_rl.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "erpd").iterdir()
    history = [json.loads(line) for line in (run_dir / "erpd_history.jsonl").read_text().splitlines()]
    assert [(h["stage"], h.get("strategy")) for h in history] == [("base", None), ("teacher", 2), ("student", None)]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "erpd" / "iteration1" / "teacher0" / "step1" / "config.json").is_file()   # a saved teacher step


def test_the_benchmark_keeps_pi_un_at_the_configs_share_of_a_shorter_teacher_stage():
    """``benchmarks/erpd.py --quick``: 64 rows give erpd_mse.yaml's teacher 2 x ceil(64 / 32) = 4 steps, where its
    ``unlearned_step: 4`` (a quarter of the configs' 16) would be the teacher itself; a quarter of 4 is step 1."""
    from benchmarks.erpd import scale_unlearned

    mse, ce = Teacher(loss="mse", epochs=2, mini_batch_size=32, strategy=2, unlearned_step=4), Teacher(loss="ce")
    assert scale_unlearned([ce, mse], 16 * 4) == [ce, Teacher(loss="mse", epochs=2, mini_batch_size=32, strategy=2,
                                                               unlearned_step=1)]
    assert scale_unlearned([ce, mse], 32 * 8) is None                  # the configs' own batch: unchanged
    assert scale_unlearned([mse], 64 * 8)[0].unlearned_step == 8        # a 32-step stage: step 8

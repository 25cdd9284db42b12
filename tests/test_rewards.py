"""The reward layer: batched scoring, reward functions by dotted path, combined rewards, and named errors."""

import math
import textwrap

import pytest

from lit_rl.rewards import FunctionReward, RewardFunction, Rewards, Score, reward_name, score_batch
from lit_rl.rewards.combine import group_normalize
from lit_rl.tasks.countdown import CountdownReward


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    """A user's own module of reward functions, importable by dotted path as on their machine."""
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent('''
        import functools

        from lit_rl import Score

        def length(prompts, completions, **columns):
            return [float(len(c)) for c in completions]

        def exact(prompts, completions, answer, **columns):
            return [Score(float(c == a), c == a) for c, a in zip(completions, answer)]

        def sees_prompts(prompts, completions, **columns):
            return [float(p == "p0") for p in prompts]

        def too_few(prompts, completions, **columns):
            return [1.0]

        def text(prompts, completions, **columns):
            return ["1.0" for _ in completions]

        def not_a_number(prompts, completions, **columns):
            return [float("nan") for _ in completions]

        def huge(prompts, completions, **columns):
            return [1e308 for _ in completions]

        def maybe(prompts, completions, kind, **columns):
            return [1.0 if k == "math" else None for k in kind]

        def raises(prompts, completions, **columns):
            raise KeyError("answer")

        def scaled(prompts, completions, factor, **columns):
            return [factor * len(c) for c in completions]

        class Exact:
            def __call__(self, prompts, completions, answer, **columns):
                return [float(c == a) for c, a in zip(completions, answer)]

        def vandal(prompts, completions, answer, **columns):
            prompts.append("extra")
            prompts[0] = "edited"
            completions[0] = "edited"
            answer[0].append("edited")
            return [0.0 for _ in completions]

        def sees(prompts, completions, answer, **columns):
            return [float(p == "p0" and c == "42" and a == ["42"]) for p, c, a in zip(prompts, completions, answer)]

        half_length = functools.partial(scaled, factor=0.5)
        exact_object = Exact()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


PROMPTS, COMPLETIONS, METAS = ["p0", "p0", "p1"], ["42", "7", "abc"], [{"answer": "42"}, {"answer": "42"}, {"answer": "x"}]


def test_a_function_reward_gets_prompts_completions_and_columns(user_rewards):
    scores = score_batch(FunctionReward(f"{user_rewards}:exact"), PROMPTS, COMPLETIONS, METAS)
    assert scores == [Score(1.0, True), Score(0.0, False), Score(0.0, False)]
    assert [s.reward for s in score_batch(FunctionReward(f"{user_rewards}:sees_prompts"), PROMPTS, COMPLETIONS,
                                          METAS)] == [1.0, 1.0, 0.0]
    plain = score_batch(FunctionReward(f"{user_rewards}.length"), PROMPTS, COMPLETIONS, METAS)   # dots work too
    assert [s.reward for s in plain] == [2.0, 1.0, 3.0] and all(s.correct is None for s in plain)
    assert FunctionReward(f"{user_rewards}:length").name == "length"


def test_a_partial_and_a_callable_object_are_named_from_the_object(user_rewards):
    """Neither has a ``__name__``: a partial takes its function's name, a callable object its class name."""
    partial, instance = FunctionReward(f"{user_rewards}:half_length"), FunctionReward(f"{user_rewards}:exact_object")
    assert (partial.name, instance.name) == ("scaled", "Exact")
    assert [s.reward for s in score_batch(partial, PROMPTS, COMPLETIONS, METAS)] == [1.0, 0.5, 1.5]
    assert [s.reward for s in score_batch(instance, PROMPTS, COMPLETIONS, METAS)] == [1.0, 0.0, 0.0]


def test_per_sample_rewards_keep_working_through_the_default_score():
    """A reward written for one completion and its row's columns (CountdownReward) is batched by the base."""
    metas = [{"numbers": [1, 2], "target": 3}, {"numbers": [1, 2], "target": 3}]
    scores = score_batch(CountdownReward(), ["q", "q"], ["<answer>1 + 2</answer>", "<answer>2 - 1</answer>"], metas)
    assert scores == [Score(1.0, True), Score(0.1, False)]
    assert reward_name(CountdownReward()) == "countdown"


def test_rewards_sum_weights_and_skip_none(user_rewards):
    """sum: R = 1.0 * exact + 0.5 * length, with `maybe` None (no opinion) on the non-math row:
    row 0: 1 + 0.5 * 2 + 1 = 3;  row 1: 0 + 0.5 * 1 + 1 = 1.5;  row 2: 0 + 0.5 * 3 + (None) = 1.5."""
    reward = Rewards([FunctionReward(f"{user_rewards}:exact"), FunctionReward(f"{user_rewards}:length"),
                      FunctionReward(f"{user_rewards}:maybe")], weights=[1.0, 0.5, 1.0])
    metas = [{**m, "kind": k} for m, k in zip(METAS, ["math", "math", "code"])]
    scores = score_batch(reward, PROMPTS, COMPLETIONS, metas)
    assert [s.reward for s in scores] == [3.0, 1.5, 1.5]
    assert [s.correct for s in scores] == [True, False, False]              # only `exact` judges correctness
    assert scores[0].components == {"exact": 1.0, "length": 2.0, "maybe": 1.0}
    assert math.isnan(scores[2].components["maybe"])


def test_group_normalize_by_hand():
    """Group p0 = [1, 0]: mean 0.5, Bessel std sqrt(0.25 + 0.25) = 0.70711, z = +-0.70711.
    Group p1 = [3, 3]: std 0, z = 0. Group p2 = [5] alone: 0. None stays None."""
    z = group_normalize([1.0, 0.0, 3.0, 3.0, 5.0, None], ["p0", "p0", "p1", "p1", "p2", "p2"])
    assert z[:5] == pytest.approx([0.70711, -0.70711, 0.0, 0.0, 0.0], abs=1e-5) and z[5] is None


def test_normalize_then_sum_by_hand(user_rewards):
    """exact = [1, 0 | 0] and length = [2, 1 | 3] over groups p0 = rows 0-1 and p1 = row 2, weights [2, 1]:
    in p0 both become [+0.70711, -0.70711]: 2 * 0.70711 + 0.70711 = 2.12132 and -2.12132; p1 is alone: 0."""
    reward = Rewards([FunctionReward(f"{user_rewards}:exact"), FunctionReward(f"{user_rewards}:length")],
                     weights=[2.0, 1.0], mode="normalize_then_sum")
    scores = score_batch(reward, PROMPTS, COMPLETIONS, METAS)
    assert [s.reward for s in scores] == pytest.approx([2.12132, -2.12132, 0.0], abs=1e-5)
    assert scores[0].components == {"exact": 1.0, "length": 2.0}              # raw values are kept


def test_two_rows_with_the_same_prompt_are_normalised_apart(user_rewards):
    """Rows 0 and 1 share the prompt "p0" and are sampled twice each: lengths [2, 1 | 4, 2] (groups 0 and 1).
    Row 0: mean 1.5, std sqrt(0.5) = 0.70711, z = +-0.70711. Row 1: mean 3, std sqrt(2) = 1.41421, z = +-0.70711.
    Grouped by prompt text instead, [2, 1, 4, 2] has mean 2.25, std sqrt(4.75 / 3) = 1.25831 and
    z = [-0.19868, -0.99340, 1.39076, -0.19868]."""
    reward = Rewards([FunctionReward(f"{user_rewards}:length")], mode="normalize_then_sum")
    completions = ["ab", "a", "abcd", "ab"]
    scores = score_batch(reward, ["p0"] * 4, completions, [{}] * 4, groups=[0, 0, 1, 1])
    assert [s.reward for s in scores] == pytest.approx([0.70711, -0.70711, 0.70711, -0.70711], abs=1e-5)
    by_text = score_batch(reward, ["p0"] * 4, completions, [{}] * 4)            # no groups: by prompt text
    assert [s.reward for s in by_text] == pytest.approx([-0.19868, -0.99340, 1.39076, -0.19868], abs=1e-5)


def test_a_reward_that_edits_its_inputs_changes_nothing_another_sees(user_rewards):
    """The vandal edits the prompts, the completions and a column's lists in place; the next component, a
    gold reward scored after it, and the caller's lists (the completion log) still hold the originals."""
    prompts, completions, metas = ["p0"], ["42"], [{"answer": ["42"]}]
    combined = Rewards([FunctionReward(f"{user_rewards}:vandal"), FunctionReward(f"{user_rewards}:sees")])
    assert score_batch(combined, prompts, completions, metas)[0].components == {"vandal": 0.0, "sees": 1.0}
    assert score_batch(FunctionReward(f"{user_rewards}:vandal"), prompts, completions, metas)[0].reward == 0.0
    assert score_batch(FunctionReward(f"{user_rewards}:sees"), prompts, completions, metas)[0].reward == 1.0
    assert (prompts, completions, metas) == (["p0"], ["42"], [{"answer": ["42"]}])


def test_duplicate_component_names_get_a_suffix(user_rewards):
    reward = Rewards([FunctionReward(f"{user_rewards}:length"), FunctionReward(f"{user_rewards}:length")])
    assert reward.names == ["length", "length_2"]


@pytest.mark.parametrize("function, message", [
    ("too_few", "returned 1 scores for 3 completions"),
    ("text", "returned '1.0' for sample 0 .* a reward must be a number"),
    ("not_a_number", "returned nan for sample 0"),
    ("huge", "returned 1e\\+308 for sample 0 .*beyond float32's range"),
    ("maybe", "returned None for sample 2 .*allowed only inside lit_rl.Rewards"),
    ("raises", "my_rewards:raises failed on a batch of 3 completions .*KeyError"),
])
def test_bad_reward_output_is_named(user_rewards, function, message):
    metas = [{**m, "kind": "math" if i < 2 else "code"} for i, m in enumerate(METAS)]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        score_batch(FunctionReward(f"{user_rewards}:{function}"), PROMPTS, COMPLETIONS, metas)


def test_a_component_beyond_float32_is_named_inside_rewards(user_rewards):
    with pytest.raises(ValueError, match="reward huge returned 1e\\+308 for sample 0 .*float32"):
        score_batch(Rewards([FunctionReward(f"{user_rewards}:length"), FunctionReward(f"{user_rewards}:huge")]),
                    PROMPTS, COMPLETIONS, METAS)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), "1.0", None])
def test_a_weight_that_is_not_a_finite_number_is_named(user_rewards, weight):
    with pytest.raises(ValueError, match=r"Rewards weight 1 \(for length\) is .*finite numbers"):
        Rewards([FunctionReward(f"{user_rewards}:exact"), FunctionReward(f"{user_rewards}:length")],
                weights=[1.0, weight])


def test_a_sample_no_component_scores_is_an_error(user_rewards):
    metas = [{**m, "kind": "code"} for m in METAS]
    with pytest.raises(ValueError, match=r"no reward of \['maybe'\] scored sample 0"):
        score_batch(Rewards([FunctionReward(f"{user_rewards}:maybe")]), PROMPTS, COMPLETIONS, metas)


@pytest.mark.parametrize("path, message", [
    ("no_such_module:fn", "cannot import module 'no_such_module'"),
    ("my_rewards:nothing", "module 'my_rewards' has no function 'nothing'"),
    ("justaname", "is not a dotted path"),
])
def test_unknown_reward_path_is_named(user_rewards, path, message):
    with pytest.raises(ValueError, match=message):
        FunctionReward(path)


def test_columns_that_clash_with_the_signature_are_named(user_rewards):
    with pytest.raises(ValueError, match=r"columns or kwargs \['prompts'\] clash"):
        score_batch(FunctionReward(f"{user_rewards}:length"), ["p"], ["c"], [{"prompts": 1}])


def test_a_missing_reward_is_named():
    with pytest.raises(ValueError, match="no reward is set"):
        score_batch(None, ["p"], ["c"], [{}])


def test_a_reward_implementing_nothing_is_named():
    with pytest.raises(RuntimeError, match="implements neither score"):
        score_batch(RewardFunction(), ["p"], ["c"], [{}])

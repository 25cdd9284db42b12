"""CountdownFeedback, the multi-turn Countdown environment: verdicts, observations, rewards, per-episode state.

Puzzles are small enough to check by hand; every expected value is worked out in the comment beside it.
"""

import copy
import json
from fractions import Fraction

import pytest
from transformers import AutoTokenizer

import lit_rl
from lit_rl.environment import EnvStep, Environment
from lit_rl.tasks.countdown import CountdownFeedback, evaluate, make_split, verify

ASSETS = lit_rl.__path__[0] + "/assets"
PROMPT = "Using the numbers [3, 5, 7], create an equation that equals 22.\n"          # 3 * 5 + 7 = 22
META = {"numbers": [3, 5, 7], "target": 22}


def answer(expression: str) -> str:
    return f"<answer>{expression}</answer>"


def started(**settings) -> CountdownFeedback:
    env = CountdownFeedback(**settings)
    env.reset(PROMPT, META)
    return env


def test_is_an_exported_environment():
    assert lit_rl.CountdownFeedback is CountdownFeedback and "CountdownFeedback" in lit_rl.__all__
    assert isinstance(CountdownFeedback(), Environment)


def test_correct_answer_ends_the_episode_with_reward_one():
    assert started().step(answer("3 * 5 + 7")) == EnvStep(observation=None, reward=1.0, done=True, correct=True)
    assert started().step("so <answer>(5 * 3) + 7 = 22</answer>") == EnvStep(None, 1.0, True, True)   # "= target"


@pytest.mark.parametrize(("expression", "observation"), [
    ("(3 + 5) * 7", "= 56, not 22.\n"),                                 # 8 * 7 = 56
    ("3 - 5 * 7", "= -32, not 22.\n"),                                  # 3 - 35 = -32
    ("(3 + 5) / 7", "= 8/7, not 22.\n"),                                # an exact fraction, as the vocabulary allows
    ("7 / 5 + 3", "= 22/5, not 22.\n"),                                 # 7/5 + 15/5 = 22/5
    ("5 + 7", "= 12, not 22.\n"),                                       # a number left out is allowed, and wrong
])
def test_wrong_answer_says_what_it_evaluates_to(expression, observation):
    step = started().step(answer(expression))
    assert step == EnvStep(observation=observation, reward=0.0, done=False, correct=False)


def test_division_by_zero_is_wrong_without_a_value():
    env = CountdownFeedback()
    env.reset("Using the numbers [4, 4, 7], create an equation that equals 23.\n", {"numbers": [4, 4, 7],
                                                                               "target": 23})
    assert env.step(answer("7 / (4 - 4)")) == EnvStep("divides by zero, not 23.\n", 0.0, False, False)


@pytest.mark.parametrize("completion", [
    answer("3 * 5 + 8"),                                                # 8 is not given
    answer("5 * 5 - 3"),                                                # 5 used twice
    answer("3 ** 5"),                                                   # not + - * /
    answer("(3 + 5"),                                                   # unparsable
    answer("3 * 5 + 7 = 21"),                                           # "= R" with R not the target
])
def test_invalid_answer(completion):
    assert started().step(completion) == EnvStep("invalid answer.\n", 0.0, False, False)


@pytest.mark.parametrize("completion", ["", "3 * 5 + 7", "<answer>3 * 5 + 7"])
def test_no_answer(completion):
    assert started().step(completion) == EnvStep("no answer.\n", 0.0, False, False)


def test_restate_repeats_the_prompt_after_the_verdict():
    env = started(restate=True)
    assert env.step(answer("(3 + 5) * 7")).observation == "= 56, not 22.\n" + PROMPT
    assert env.step("").observation == "no answer.\n" + PROMPT
    chat = CountdownFeedback(restate=True)                              # a chat prompt: its last user message
    chat.reset([{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}], META)
    assert chat.step(answer("3 * 5 + 8")).observation == "invalid answer.\n" + PROMPT


def test_wrong_reward_sums_so_that_solving_sooner_is_best():
    """wrong_reward -0.1: a hit at once returns 1.0, at the third turn 1 - 0.1 - 0.1 = 0.8, three misses -0.3."""
    def episode_return(completions):
        env = started(wrong_reward=-0.1)
        return sum(env.step(c).reward for c in completions)

    hit, miss = answer("3 * 5 + 7"), answer("5 + 7")
    assert episode_return([hit]) == pytest.approx(1.0, abs=1e-12)
    assert episode_return([miss, miss, hit]) == pytest.approx(0.8, abs=1e-12)
    assert episode_return([miss, miss, miss]) == pytest.approx(-0.3, abs=1e-12)
    with pytest.raises(ValueError, match="wrong_reward must be <= 0"):
        CountdownFeedback(wrong_reward=0.1)                             # 0.1 + 0.1 + 1 = 1.2 > 1: misses would pay


def test_reset_starts_a_new_episode():
    env = started(restate=True)
    env.step(answer("5 + 7"))
    other = "Using the numbers [2, 9, 4], create an equation that equals 14.\n"   # 2 * 9 - 4 = 14
    env.reset(other, {"numbers": [2, 9, 4], "target": 14})
    assert env.step(answer("3 * 5 + 7")).observation == "invalid answer.\n" + other   # 3, 5, 7 are gone
    assert env.step(answer("2 + 9")).observation == "= 11, not 14.\n" + other
    assert env.step(answer("2 * 9 - 4")) == EnvStep(None, 1.0, True, True)


def test_deep_copies_are_independent_episodes():
    """The collector deep-copies the configured environment per episode: settings travel, state does not leak."""
    configured = CountdownFeedback(restate=True, wrong_reward=-0.5)
    first, second = copy.deepcopy(configured), copy.deepcopy(configured)
    first.reset(PROMPT, META)
    other = "Using the numbers [2, 9, 4], create an equation that equals 14.\n"
    second.reset(other, {"numbers": [2, 9, 4], "target": 14})
    assert first.step(answer("3 * 5 + 7")) == EnvStep(None, 1.0, True, True)
    assert second.step(answer("3 * 5 + 7")).reward == -0.5                         # invalid there
    assert second.step(answer("9 - 2 + 4")).observation == "= 11, not 14.\n" + other
    assert (configured.restate, configured.wrong_reward, configured.target) == (True, -0.5, None)
    first.numbers.append(99)
    assert second.numbers == [2, 9, 4] and configured.numbers == []
    with pytest.raises(RuntimeError, match="before reset"):
        configured.step(answer("3 * 5 + 7"))


def test_reset_needs_numbers_and_target():
    with pytest.raises(ValueError, match=r"lacks \['target'\].*has \['numbers'\]"):
        CountdownFeedback().reset(PROMPT, {"numbers": [3, 5, 7]})


def test_built_in_rows_reset_it():
    """CountdownData's rows carry numbers and target in ``meta``; the shipped prompt file as its own columns."""
    for puzzle in make_split("val", 20, seed=0):
        env = CountdownFeedback()
        env.reset(puzzle.prompt("paper"), puzzle.meta)
        assert env.step(answer(puzzle.solution)).correct is True
    with open(f"{ASSETS}/countdown-prompts.jsonl") as f:
        row = json.loads(f.readline())
    env = CountdownFeedback()
    env.reset(row.pop("prompt"), row)
    assert env.step("").observation == "no answer.\n"


def test_evaluate_gives_the_verdict_and_the_exact_value():
    assert evaluate(answer("(3 + 5) / 7"), [3, 5, 7], 22) == ("wrong", Fraction(8, 7))
    assert evaluate(answer("3 * 5 + 7"), [3, 5, 7], 22) == ("correct", Fraction(22))
    assert evaluate(answer("7 / (4 - 4)"), [4, 4, 7], 23) == ("wrong", None)
    assert evaluate(answer("3 * 5 + 8"), [3, 5, 7], 22) == ("invalid", None)
    assert evaluate("22", [3, 5, 7], 22) == ("no_answer", None)
    for puzzle in make_split("val", 20, seed=0):                    # agrees with verify
        for expression in (puzzle.solution, puzzle.solution + " + 1", puzzle.solution[::-1]):
            completion = answer(expression)
            assert evaluate(completion, list(puzzle.numbers), puzzle.target)[0] == verify(
                completion, list(puzzle.numbers), puzzle.target)


def test_observations_use_only_the_built_in_vocabulary():
    """Every observation encodes without ``<pad>`` (what an unknown character becomes) and decodes back to itself:
    each kind of verdict (negative, fractional and large values too), bare and restated after 50 held-out prompts."""
    tokenizer = AutoTokenizer.from_pretrained(f"{ASSETS}/countdown-sft")
    zero = CountdownFeedback()
    zero.reset("", {"numbers": [4, 4, 7], "target": 23})
    observations = [zero.step(answer("7 / (4 - 4)")).observation]
    for puzzle in make_split("val", 50, seed=0, max_number=20):
        for restate in (False, True):
            env = CountdownFeedback(restate=restate)
            env.reset(puzzle.prompt("paper"), puzzle.meta)
            a, b, c = puzzle.numbers
            for completion in (answer(f"{a} - {b} * {c}"), answer(f"{a} / ({b} + {c})"), answer(f"{a} * {b} * {c}"),
                               answer(f"{a} + 21"), "nothing"):
                step = env.step(completion)
                observations += [] if step.done else [step.observation]          # an expression may solve it
    firsts = {o.split("\n")[0] for o in observations}
    assert {"divides by zero, not 23.", "no answer."} <= firsts and any(o.startswith("= -") for o in firsts)
    assert any("/" in o for o in firsts) and any(o.startswith("invalid") for o in firsts)
    for text in observations:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.pad_token_id not in ids, text
        assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text

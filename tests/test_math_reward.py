"""MathReward on real answer formats, asserting what math-verify 0.9 actually does on each; its time limit off
the main thread and on hostile input; FormatReward. Each MathReward starts its own worker (an interpreter
that imports math-verify: about a second), so the answer tests share one."""

import copy
import json
import logging
import pickle
import random
import re
import threading
import time
from types import SimpleNamespace

import pytest

from lit_rl import PromptData, Rewards
from lit_rl.rewards.base import Score
from lit_rl.rewards.format import FormatReward
from lit_rl.rewards.math import MathReward, gold_text

GSM8K = "Maya sold 48 / 2 = <<48/2=24>>24 clips in May.\nShe sold 48 + 24 = <<48+24=72>>72 clips in all.\n#### 72"
TOWER = r"The answer is \boxed{9^{9^{9^{9}}}}"                      # parses; sympy then never finishes the power


def judge(reward: MathReward, gold, completions: list[str]) -> list[bool | None]:
    n = len(completions)
    return [s.correct for s in reward.score([""] * n, completions, {"answer": [gold] * n})]


@pytest.fixture(scope="module")
def reward():
    return MathReward(timeout=60)                                   # generous: these tests are about answers


def test_gsm8k_gold(reward):
    scores = reward.score(["q"] * 2, [r"48 + 24 = 72. The answer is \boxed{72}", r"The answer is \boxed{73}"],
                          {"answer": [GSM8K] * 2})
    assert scores == [Score(1.0, True), Score(0.0, False)]
    assert judge(reward, 72, [r"\boxed{72}"]) == [True]             # a bare number (not text) as gold


def test_gsm8k_gold_is_the_text_after_the_marker(reward):
    """math-verify knows no ``####``: on this whole solution it picks "answer is 5"; the reward reads 10."""
    gold = "The answer is 5 apples each, so 2 * 5 = <<2*5=10>>10 apples.\n#### 10"
    assert judge(reward, gold, [r"\boxed{10}", r"\boxed{5}"]) == [True, False]


def test_fractions(reward):
    """``\\frac{3}{4}`` equals 0.75, 6/8 and 3/4 whether boxed or bare; 0.7 is wrong."""
    completions = ["0.75", r"So it is \boxed{0.75}.", r"\boxed{\frac{6}{8}}", "3/4", r"\boxed{0.7}"]
    assert judge(reward, r"\frac{3}{4}", completions) == [True, True, True, True, False]
    assert judge(reward, r"\boxed{\frac{3}{4}}", ["0.75"]) == [True]


# MATH / MATH-500 ``answer`` column formats: bare LaTeX, no $...$. Outside math mode math-verify read 3\sqrt{2}
# as 3 (so \boxed{3} scored right and \boxed{3\sqrt{2}} wrong) and \sqrt{51}, \pi, [-2,7] as nothing.
MATH_ANSWERS = [   # gold, a right answer, a tempting wrong one
    (r"\frac{14}{3}", r"\boxed{\frac{14}{3}}", r"\boxed{14}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\boxed{3}"),
    (r"(-\infty, 3]", r"\boxed{(-\infty, 3]}", r"\boxed{(-\infty, 3)}"),
    (r"3\sqrt{2}", r"\boxed{3\sqrt{2}}", r"\boxed{3}"),
    (r"12\sqrt{3}", r"The area is $\boxed{12\sqrt{3}}$.", r"\boxed{12}"),
    (r"\sqrt{51}", r"\boxed{\sqrt{51}}", r"\boxed{51}"),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\frac{\sqrt{3}}{2}}", r"\boxed{3}"),
    (r"\pi", r"\boxed{\pi}", r"\boxed{3}"),
    (r"6 - 5i", r"\boxed{6-5i}", r"\boxed{6}"),
    (r"[-2,7]", r"\boxed{[-2, 7]}", r"\boxed{(-2,7)}"),
    (r"\dfrac{9}{7}", r"\boxed{\frac{9}{7}}", r"\boxed{9}"),
    (r"10\%", r"\boxed{10\%}", r"\boxed{20\%}"),
    (r"\text{Evelyn}", r"\boxed{\text{Evelyn}}", r"\boxed{\text{Ben}}"),
    (r"\text{(C)}", r"\boxed{\text{(C)}}", r"\boxed{\text{(A)}}"),
    (r"x^2 + 7x + 10", r"\boxed{x^2+7x+10}", r"\boxed{x^2 + 7x}"),
    (r"2, -2", r"\boxed{2, -2}", r"\boxed{2}"),
    (r"y = 2x + 3", r"\boxed{y = 2x + 3}", r"\boxed{3}"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\boxed{1}"),
    (r"\$32", r"\boxed{32}", r"\boxed{3}"),
]


@pytest.mark.parametrize("gold, right, wrong", MATH_ANSWERS)
def test_math_answers_in_bare_latex(reward, gold, right, wrong):
    assert judge(reward, gold, [right, wrong]) == [True, False]


def test_golds_in_math_mode_or_words_are_kept():
    """Only bare LaTeX is put in $...$: a gold already in math mode, a GSM8K marker's number, a worked solution."""
    assert [gold_text(g) for g in [r"$\frac{1}{2}$", r"\boxed{5}", "#### 72", 72, "The answer is 5 apples"]] == [
        r"$\frac{1}{2}$", r"\boxed{5}", "$72$", "$72$", "The answer is 5 apples"]


def test_thousands_separators(reward):
    assert judge(reward, "1,000", ["1000", r"\boxed{1000}"]) == [True, True]
    assert judge(reward, "1000", [r"\boxed{1,000}", "The answer is 1,000."]) == [True, True]


def test_units_and_currency(reward):
    """math-verify drops ``\\text{}`` units and dollar signs: all of these count as 72."""
    completions = [r"\boxed{72 \text{ dollars}}", "It costs $72.", r"\boxed{\$72}", "It is 72 dollars.", "$72.00"]
    assert judge(reward, "#### 72", completions) == [True] * 5


def test_no_answer_and_ambiguous_answers(reward):
    """No number: wrong. Two boxes parse as the set {72, 73}: wrong. A box outranks a later number: 73, wrong."""
    completions = ["I don't know.", "", "seventy-two", r"\boxed{72} \boxed{73}", r"\boxed{73}. Oops, it is 72."]
    assert judge(reward, "72", completions) == [False] * 5


def test_missing_column_and_bad_gold(reward):
    with pytest.raises(ValueError, match=r"column 'answer'.*\['question', 'solution'\]"):
        MathReward().score(["q"], ["1"], {"question": ["q"], "solution": ["1"]})
    with pytest.raises(ValueError, match=r"sample 1: 'see the figure'"):
        reward.score(["q"] * 2, ["1", "2"], {"answer": ["#### 1", "see the figure"]})


def test_unparsable_golds_are_refused_at_setup_by_file_and_line(tmp_path, reward):
    """PromptData's setup hands every row to the module's rewards (a Rewards forwards to its components) before
    any step: MathReward parses each distinct gold once and names the bad rows by file:line, with the count."""
    golds = [r"\frac{14}{3}", "#### 72", "", r"3\sqrt{2}", "yes", "see the figure", "yes", r"\frac{14}{3}"]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps({"problem": f"p{i}", "answer": g}) + "\n" for i, g in enumerate(golds)))
    data = PromptData(str(path), prompt="problem", batch_size=2)
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(
        reward_fn=Rewards([FormatReward(), reward]), gold_reward_fn=None))
    message = (f"cannot parse 4 of the 8 gold answers in column 'answer': {path}:3: ''; {path}:5: 'yes'; "
               f"{path}:6: 'see the figure'; {path}:7: 'yes'. Fix those rows")
    with pytest.raises(ValueError, match=re.escape(message)):
        data.setup("fit")
    reward.check_rows([(f"{path}:{i + 1}", {"answer": g}) for i, g in enumerate(golds[:2])])   # good rows pass
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: MathReward reads the gold answer from column 'answer', "
                                                   f"which this row lacks; its columns are ['solution']")):
        reward.check_rows([(f"{path}:1", {"solution": "1"})])


def test_copies_and_pickles(reward):
    """Lightning's save_hyperparameters deep-copies what it is given; a copy starts a worker of its own."""
    fresh = MathReward(answer_column="gold", timeout=3)
    for other in (copy.deepcopy(fresh), pickle.loads(pickle.dumps(fresh))):
        assert (other.answer_column, other.timeout, other._worker) == ("gold", 3.0, None)
    assert reward._worker is not None and copy.deepcopy(reward)._worker is None


def test_scores_off_the_main_thread():
    """math-verify's own time limit (signal.alarm) would raise here; the worker starts and scores in the thread."""
    reward, out = MathReward(correct_reward=2.0, wrong_reward=-1.0, timeout=60), []
    completions = [r"\boxed{72}", "71"]
    thread = threading.Thread(target=lambda: out.append(reward.score(["q"] * 2, completions, {"answer": [GSM8K] * 2})))
    thread.start()
    thread.join()
    assert out == [[Score(2.0, True), Score(-1.0, False)]]


def test_hostile_completions_return_within_the_timeout(caplog):
    """A power tower and 100k characters of "7 7 ..." hang math-verify (sympy's power; its extraction regexes);
    deep braces, 100k letters and null bytes return at once. Each must be wrong, none may hang."""
    reward = MathReward(timeout=2)
    start = time.monotonic()
    assert judge(reward, "72", [r"\boxed{72}"]) == [True]
    startup = time.monotonic() - start                              # a cold worker: the cost of each restart
    hostile = [TOWER, "\\boxed{" * 5000 + "1" + "}" * 5000, "x" * 100_000, "\x00" * 1000 + "\\boxed{\x00}",
               "7 " * 50_000]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lit_rl.rewards.math"):
        scores = reward.score([""] * len(hostile), hostile, {"answer": ["72"] * len(hostile)})
    elapsed = time.monotonic() - start
    assert scores == [Score(0.0, False)] * len(hostile)
    assert elapsed < 15 + 2 * startup                               # two 2 s timeouts and one restart between
    assert re.findall(r"sample (\d) timed out", caplog.text) == ["0", "4"]


def test_a_timeout_kills_and_restarts_the_worker(caplog):
    reward = MathReward(timeout=2)
    assert judge(reward, "72", [r"\boxed{72}"]) == [True]
    first = reward._worker
    with caplog.at_level(logging.WARNING, logger="lit_rl.rewards.math"):
        assert judge(reward, "#### 72", [TOWER, r"\boxed{72}", r"\boxed{7}"]) == [False, True, False]
    assert "sample 0 timed out after 2 s" in caplog.text and r"\\boxed{9^{9^{9^{9}}}}" in caplog.text
    assert first.poll() is not None and reward._worker.pid != first.pid   # killed, and a new one serves


def test_a_worker_killed_while_idle_is_restarted_and_the_sample_sent_again(caplog):
    """Killed between two calls (the OOM killer, a stray signal), the worker's pipe is broken: the next call
    starts a fresh worker and sends the sample again, scoring it for real; the reward keeps working."""
    reward = MathReward(timeout=60)
    assert judge(reward, "72", [r"\boxed{72}"]) == [True]
    first = reward._worker
    first.kill()
    first.wait()
    with caplog.at_level(logging.WARNING, logger="lit_rl.rewards.math"):
        assert judge(reward, "72", [r"\boxed{72}", r"\boxed{7}"]) == [True, False]
    assert reward._worker.pid != first.pid and "restarted" in caplog.text
    assert judge(reward, "#### 5", [r"\boxed{5}"]) == [True]


def test_format_reward():
    good = "<think>48 / 2 = 24\n48 + 24 = 72</think>\n<answer>72</answer>"
    reward = FormatReward()
    assert reward.score([""] * 4, [good, good + "\n", "The answer is 72", "<answer>72</answer>"], {}) == [
        Score(1.0, None), Score(1.0, None), Score(0.0, None), Score(0.0, None)]
    assert FormatReward(match="fullmatch", reward=0.5).score([""] * 2, [good, good + "\n"], {}) == [
        Score(0.5, None), Score(0.0, None)]
    multiline = FormatReward(pattern="^answer: \\d+$", flags=["MULTILINE", "IGNORECASE"])
    assert multiline.score([""], ["let me think\nANSWER: 72\n"], {}) == [Score(1.0, None)]
    with pytest.raises(ValueError, match=re.escape("pattern '<think>(.*' is not a valid")):
        FormatReward(pattern="<think>(.*")
    with pytest.raises(ValueError, match="DOTAL"):
        FormatReward(flags=["DOTAL"])


OLD_FORMAT = r"^<think>.*?</think>\s*<answer>.*?</answer>$"         # the default before R1_FORMAT: quadratic


@pytest.mark.parametrize("completion, matches", [
    ("<think>48 / 2 = 24</think>\n<answer>72</answer>", True),
    ("<think>a</think><answer>72</answer>\n", True),                # $ allows one trailing newline
    ("<think>\n\n</think>  \n <answer></answer>", True),             # empty parts, any whitespace between
    ("<think>I wrote </think> too early</think>\n<answer>72</answer>", True),
    ("<think>a</think><answer>1</answer> and <answer>2</answer>", True),
    ("<think>a</think>\n<answer>1</answer></think><answer>2</answer>", True),
    ("<think>a</think>\n<answer>72</answer>\n\n", False),            # two trailing newlines
    (" <think>a</think><answer>72</answer>", False),                 # text before <think>
    ("<think>a</think> so <answer>72</answer>", False),              # words between the parts
    ("<think>a</think><answer>72", False),
    ("<think>a<answer>72</answer>", False),
    ("<answer>72</answer>", False),
    ("<think>a</think><answer>72</answer> done", False),
    ("", False),
])
def test_the_default_format_keeps_its_meaning(completion, matches):
    assert FormatReward().score([""], [completion], {}) == [Score(float(matches), None)]
    assert bool(re.search(OLD_FORMAT, completion, re.DOTALL)) == matches


def test_the_default_format_agrees_with_the_old_pattern_on_random_layouts():
    """Seeded random strings of the tags, whitespace and text: the linear pattern matches exactly where the
    plain one does, under both match modes."""
    rng, pieces = random.Random(0), ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "<", ">"]
    texts = [rng.choice(["", "<think>"]) + "".join(rng.choices(pieces, k=rng.randint(0, 8))) +
             rng.choice(["", "</answer>", "</answer>\n"]) for _ in range(3000)]
    for match in ("search", "fullmatch"):
        new = [s.reward for s in FormatReward(match=match).score([""] * len(texts), texts, {})]
        old = [s.reward for s in FormatReward(OLD_FORMAT, match=match).score([""] * len(texts), texts, {})]
        assert new == old and 0 < sum(new) < len(texts)


@pytest.mark.parametrize("unit", ["<think></think><answer>", "<think></think><answer></answer>x", "</think>",
                                  "</answer>x"])
def test_the_default_format_is_linear_on_adversarial_text(unit):
    """256 kB of each: the old pattern took 9.4 and 6.5 s on the first two (it rescans the rest after every
    "</think> <answer>"; benchmarks/format_reward.py); the default must finish well within 2 s."""
    text = ("<think>" if unit.startswith("</") else "") + unit * (256_000 // len(unit))
    reward = FormatReward()
    start = time.monotonic()
    assert reward.score([""], [text], {}) == [Score(0.0, None)]
    assert time.monotonic() - start < 2

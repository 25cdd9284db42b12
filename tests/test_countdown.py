"""Countdown task: puzzle generator, train/held-out splits, the data module, the verifier and the reward schemes.

Everything here is pure Python (no model); expected values are exact and derived by hand in the comments.
"""

import builtins
import random
import re
import time

import pytest

from lit_rl.rewards import Score
from lit_rl.tasks.countdown import (
    CountdownData,
    CountdownReward,
    Puzzle,
    is_held_out,
    make_puzzle,
    make_split,
    verify,
    wrong_answer,
)
from lit_rl.tasks.countdown.verify import MAX_ANSWER_CHARS, MAX_DEPTH

PAPER_PROMPT = re.compile(r"Using the numbers \[(\d+(?:, \d+)*)\], create an equation that equals (\d+)\.\n?")


def answer(expression: str) -> str:
    return f"<answer>{expression}</answer>"


def verdict_of(completion: str, meta: dict) -> str:
    return verify(completion, meta["numbers"], meta["target"])


def key(puzzle) -> tuple:
    return tuple(sorted(puzzle.numbers)), puzzle.target


# --------------------------------------------------------------------------------------------------- generator
@pytest.mark.parametrize("num_numbers", [2, 3, 4])
@pytest.mark.parametrize(("min_number", "max_number", "max_target"), [(1, 20, 1000), (5, 12, 60)])
def test_generated_puzzles_are_solvable_and_in_range(num_numbers, min_number, max_number, max_target):
    """Every generated puzzle's own solution verifies as correct (so every puzzle is solvable), its numbers lie in
    [min_number, max_number] and its target is a positive int <= max_target. 6 settings x 5 seeds x 25 = 750."""
    for seed in range(5):
        rng = random.Random(seed)
        for _ in range(25):
            p = make_puzzle(rng, num_numbers=num_numbers, min_number=min_number, max_number=max_number,
                            max_target=max_target)
            assert len(p.numbers) == num_numbers
            assert all(type(n) is int and min_number <= n <= max_number for n in p.numbers), p
            assert type(p.target) is int and 0 < p.target <= max_target, p
            assert verify(answer(p.solution), list(p.numbers), p.target) == "correct", p


@pytest.mark.parametrize("num_numbers", [2, 3, 4])
def test_generator_is_deterministic_per_seed(num_numbers):
    """The same seed reproduces the same 50 puzzles; a different seed gives a different sequence."""
    def draw(seed):
        rng = random.Random(seed)
        return [make_puzzle(rng, num_numbers=num_numbers) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    assert len({key(p) for p in draw(7)} - {key(p) for p in draw(8)}) > 0


# ------------------------------------------------------------------------------------------------------ splits
@pytest.mark.parametrize("seed", [0, 3])
def test_splits_are_disjoint_distinct_and_match_is_held_out(seed):
    """train and val never share a (sorted numbers, target) puzzle, neither split repeats one, and each puzzle
    lands in the split that is_held_out assigns it to (order of the numbers does not matter)."""
    train = make_split("train", 600, seed=seed)
    val = make_split("val", 100, seed=seed)
    assert (len(train), len(val)) == (600, 100)
    train_keys, val_keys = [key(p) for p in train], [key(p) for p in val]
    assert len(set(train_keys)) == len(train_keys)
    assert len(set(val_keys)) == len(val_keys)
    assert not set(train_keys) & set(val_keys)
    assert not any(is_held_out(p.numbers, p.target) for p in train)
    assert all(is_held_out(p.numbers, p.target) for p in val)
    # the split is a property of the multiset of numbers, so a permuted puzzle cannot cross over
    for p in train[:50] + val:
        assert is_held_out(tuple(reversed(p.numbers)), p.target) == is_held_out(p.numbers, p.target)


def test_splits_are_deterministic_per_seed():
    """Same seed -> same split; another seed -> a different one."""
    assert make_split("val", 40, seed=1) == make_split("val", 40, seed=1)
    assert make_split("val", 40, seed=1) != make_split("val", 40, seed=2)


# ------------------------------------------------------------------------------------------------- data module
def test_data_module_sizes_and_paper_prompts():
    """setup() builds exactly the requested number of rows, every prompt is the paper's sentence naming the row's
    own numbers and target, and without demonstrations there is no completion column."""
    data = CountdownData(train_size=300, val_size=40, num_numbers=4, min_number=2, max_number=9)
    data.setup()
    assert (len(data.train_rows), len(data.val_rows)) == (300, 40)
    for row in data.train_rows + data.val_rows:
        match = PAPER_PROMPT.fullmatch(row["prompt"])
        assert match, row["prompt"]
        numbers = [int(n) for n in match.group(1).split(", ")]
        assert numbers == row["meta"]["numbers"] and len(numbers) == 4
        assert all(2 <= n <= 9 for n in numbers)
        assert int(match.group(2)) == row["meta"]["target"]
        assert set(row) == {"prompt", "meta"}


def test_paper_prompt_exact_text():
    """A hand-built example of the paper's prompt: numbers [a, b, c] and target T."""
    prompt = Puzzle((3, 5, 2), 16, "(3 + 5) * 2").prompt()
    assert prompt.rstrip("\n") == "Using the numbers [3, 5, 2], create an equation that equals 16."


def test_half_wrong_demonstrations():
    """wrong_fraction=0.5 over n=2000 rows: the number of wrong demonstrations is Binomial(2000, 0.5), sd =
    sqrt(2000 * 0.25) = 22.4 rows = 0.0112 of the fraction, so 0.5 +- 0.05 is a ~4.5 sd band (a correct
    implementation falls outside it with probability < 1e-5). Every demonstration is either correct or wrong
    (well-formed, only the puzzle's numbers), never invalid or missing; validation rows carry no completion."""
    data = CountdownData(train_size=2000, val_size=20, demonstrations=True, wrong_fraction=0.5, seed=1)
    data.setup()
    verdicts = [verdict_of(row["completion"], row["meta"]) for row in data.train_rows]
    assert set(verdicts) == {"correct", "wrong"}
    assert 0.45 <= verdicts.count("wrong") / len(verdicts) <= 0.55
    assert all("completion" not in row for row in data.val_rows)


@pytest.mark.parametrize(("wrong_fraction", "expected"), [(0.0, "correct"), (1.0, "wrong")])
def test_all_or_no_wrong_demonstrations(wrong_fraction, expected):
    """wrong_fraction=0 gives only correct demonstrations; wrong_fraction=1 only wrong ones."""
    data = CountdownData(train_size=300, val_size=10, demonstrations=True, wrong_fraction=wrong_fraction)
    data.setup()
    assert {verdict_of(row["completion"], row["meta"]) for row in data.train_rows} == {expected}


@pytest.mark.parametrize("kwargs", [
    {"min_number": 10, "max_number": 5},
    {"min_number": -1},
    {"num_numbers": 0},
    {"wrong_fraction": 1.5},
    {"wrong_fraction": -0.1},
], ids=["min>max", "negative-min", "no-numbers", "wrong>1", "wrong<0"])
def test_bad_settings_raise(kwargs):
    """Impossible puzzle settings are refused at construction, not discovered later."""
    with pytest.raises(ValueError):
        CountdownData(**kwargs)


# ---------------------------------------------------------------------------------------------------- verifier
NUMS, TARGET = [2, 3, 5], 16                                           # (3 + 5) * 2 = 16

VERDICTS = [
    # (completion, numbers, target, verdict)
    (answer("(3 + 5) * 2"), NUMS, TARGET, "correct"),
    (answer("8 * 2"), [2, 8, 5], 16, "correct"),                           # a number may be left unused
    (answer("\n (3 + 5) * 2 \n"), NUMS, TARGET, "correct"),                # whitespace around the answer
    (answer("3 + 5 + 2"), NUMS, TARGET, "wrong"),                          # 10 != 16
    (answer("(3 + 7) * 2"), NUMS, 20, "invalid"),                          # 7 not given (value would match)
    (answer("(3 + 3) * 2"), NUMS, 12, "invalid"),                          # 3 used twice, given once
    (answer("(3 + 3) * 2"), [2, 3, 3], 12, "correct"),                     # 3 given twice: twice is fine
    (answer("(3 + 3 + 3) * 2"), [2, 3, 3], 18, "invalid"),                 # ... but not three times
    (answer("(3.0 + 5) * 2"), NUMS, TARGET, "invalid"),                    # float constant (3.0 == 3 in Python)
    (answer("2 ** 3 + 5 + 3"), [2, 3, 5, 3], 16, "invalid"),               # power
    (answer("abs(3 - 5) * 8"), [3, 5, 8], 16, "invalid"),                  # function call
    (answer("max(3, 5) + 11"), [3, 5, 11], 16, "invalid"),
    (answer("x + 3"), [3], 3, "invalid"),                                  # name
    (answer("(3).real * 5 + 1"), [1, 3, 5], 16, "invalid"),                # attribute
    (answer("5 - -3"), [3, 5], 8, "invalid"),                              # unary minus
    (answer("-3 + 5"), [3, 5], 2, "invalid"),
    (answer("+3 + 5"), [3, 5], 8, "invalid"),                              # unary plus
    (answer("'3' + 5"), [3, 5], 8, "invalid"),                             # string
    (answer("lambda: 3 + 5"), [3, 5], 8, "invalid"),                       # lambda
    (answer("True + 2"), [1, 2], 3, "invalid"),                            # bool is not a number here
    (answer("16 // 2"), [2, 16], 8, "invalid"),                            # floor division is not "/"
    (answer("17 % 9"), [9, 17], 8, "invalid"),                             # modulo
    (answer("3 < 5"), [3, 5], 1, "invalid"),                               # comparison
    (answer("(3 + 5"), [3, 5], 8, "invalid"),                              # unparsable
    (answer("3 +"), [3], 3, "invalid"),
    (answer(""), [3], 3, "invalid"),                                       # empty answer
    ("(3 + 5) * 2 = 16", NUMS, TARGET, "no_answer"),                       # no tag at all
    ("<answer>(3 + 5) * 2", NUMS, TARGET, "no_answer"),                    # never closed
    (answer("3 + 5 + 2") + " no, " + answer("(3 + 5) * 2"), NUMS, TARGET, "correct"),  # last span counts
    (answer("(3 + 5) * 2") + " no, " + answer("3 + 5 + 2"), NUMS, TARGET, "wrong"),
    (answer("(3 + 5) * 2 = 16"), NUMS, TARGET, "correct"),                 # "expr = target" form
    (answer("(3 + 5) * 2 = 17"), NUMS, TARGET, "invalid"),                 # the right side must be the target
    (answer("3 + 5 = 16"), NUMS, TARGET, "wrong"),                         # right side is the target, left is not
    (answer("(3 + 5) * 2 = 16 = 16"), NUMS, TARGET, "invalid"),            # one "=" at most
    (answer("0x3 + 5"), [3, 5], 8, "invalid"),                             # hex literal of an available number
    (answer("1_0 - 2"), [10, 2], 8, "invalid"),                            # underscore literal
    (answer("5 / (3 - 3)"), [3, 3, 5], 1, "wrong"),                        # division by zero
    # exact fractions: in floats 1 / 49 * 49 == 0.9999999999999999 (would be wrong), exactly it is 1
    (answer("1 / 49 * 49"), [1, 49, 49], 1, "correct"),
    # ... and 1 + 1 / 10**17 == 1.0 in floats (would be correct), exactly it is 1 + 1e-17 != 1
    (answer("1 + 1 / 100000000000000000"), [1, 1, 100000000000000000], 1, "wrong"),
    (answer("(5 - 3) / 3 * 3"), [3, 3, 3, 5], 2, "correct"),                 # non-integer intermediate 2/3 is fine
]


@pytest.mark.parametrize(("completion", "numbers", "target", "expected"), VERDICTS,
                         ids=[f"{i}-{v}" for i, (*_, v) in enumerate(VERDICTS)])
def test_verdicts(completion, numbers, target, expected):
    """verify() classifies each hand-written completion as stated in the table's comment."""
    assert verify(completion, numbers, target) == expected


def test_float_arithmetic_would_disagree():
    """Guard for the two exactness rows above: they really are cases where float arithmetic gets it wrong."""
    assert 1 / 49 * 49 != 1
    assert 1 + 1 / 100000000000000000 == 1


@pytest.mark.parametrize("expression", [
    "(" * 1000 + "1" + ")" * 1000,                                     # 1000-deep parentheses
    "-" * 1000 + "1",                                                  # 1000 nested unary minuses
    "-" * (MAX_ANSWER_CHARS - 1) + "1",                                # as deep as fits in the length limit
    "(" * 90 + "1 +" + ")" * 90,                                       # deep and unparsable (183 chars)
    "9 ** 9 ** 9 ** 9",                                                # never evaluated, so never computed
], ids=["parens-1000", "unary-1000", "unary-at-limit", "parens-unparsable", "power-tower"])
def test_hostile_shapes_are_invalid_fast(expression):
    """Deeply nested or explosive answers are rejected as invalid in well under a second, without raising
    (a RecursionError or MemoryError would propagate out of verify and fail this test)."""
    start = time.perf_counter()
    assert verify(answer(expression), [1, 9, 9, 9, 9], 1) == "invalid"
    assert time.perf_counter() - start < 0.5


def test_answer_length_limit():
    """A correct answer padded with inner spaces to exactly MAX_ANSWER_CHARS still counts; one more char makes it
    invalid (padding is inside the expression, so the .strip() of the answer does not remove it)."""
    def padded(length):
        expression = "(3 + 5)" + " " * (length - len("(3 + 5)* 2")) + "* 2"
        assert len(expression) == length
        return answer(expression)

    assert verify(padded(MAX_ANSWER_CHARS), NUMS, TARGET) == "correct"
    assert verify(padded(MAX_ANSWER_CHARS + 1), NUMS, TARGET) == "invalid"


def test_nesting_depth_limit():
    """A left-deep chain 1 + 1 + ... of k ones has k - 1 BinOps, so its leftmost 1 sits at depth k - 1: with
    k = MAX_DEPTH + 1 ones the depth is MAX_DEPTH (allowed, sum = k = target), one more is over the limit."""
    k = MAX_DEPTH + 1
    assert verify(answer(" + ".join(["1"] * k)), [1] * k, k) == "correct"
    assert verify(answer(" + ".join(["1"] * (k + 1))), [1] * (k + 1), k + 1) == "invalid"


@pytest.mark.parametrize("template", [
    "__import__('os').system('touch {path}')",
    "open('{path}', 'w')",
    "exec(\"open('{path}', 'w')\")",
    "eval(\"__import__('os').system('touch {path}')\")",
])
def test_hostile_text_is_never_executed(tmp_path, monkeypatch, template):
    """Code in an answer is classified invalid and has no side effect: the file it would create does not exist.
    eval/exec/open/__import__-via-builtins are also made to explode, so any path that ran the text would fail."""
    target_file = tmp_path / "pwned"

    def boom(*args, **kwargs):
        raise AssertionError("verify executed completion text")

    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, boom)
    completion = answer(template.format(path=target_file))
    assert verify(completion, [1, 2, 3], 6) == "invalid"
    monkeypatch.undo()
    assert not target_file.exists()
    # sanity: the verifier still works with eval/exec unavailable, i.e. it does not depend on them
    monkeypatch.setattr(builtins, "eval", boom)
    assert verify(answer("1 + 2 + 3"), [1, 2, 3], 6) == "correct"


# ------------------------------------------------------------------------------------------------------ rewards
META = {"numbers": NUMS, "target": TARGET}
COMPLETIONS = {
    "correct": answer("(3 + 5) * 2"),
    "wrong": "I think " + answer("3 + 5 + 2"),                          # 7 words, no penalty outside no_answer
    "invalid": answer("(3 + 7) * 2"),
    "no_answer": "I give up",                                             # 3 words
}
REWARD_TABLE = {
    "original": {"correct": 1.0, "wrong": 0.1, "invalid": 0.1, "no_answer": 0.0},
    "A": {"correct": 1.0, "wrong": 0.1, "invalid": 0.1, "no_answer": -0.0009},   # -0.0003 x 3 words
    "B": {"correct": 1.0, "wrong": 0.0, "invalid": -0.1, "no_answer": -0.2},
}


def test_reward_fixture_completions_have_the_intended_verdicts():
    """The completions used for the reward table really produce the verdict they are filed under."""
    assert {v: verdict_of(c, META) for v, c in COMPLETIONS.items()} == {v: v for v in COMPLETIONS}


@pytest.mark.parametrize("scheme", list(REWARD_TABLE))
@pytest.mark.parametrize("verdict", list(COMPLETIONS))
def test_reward_table(scheme, verdict):
    """Each scheme's reward for each verdict (the Countdown study, sec. 3.3); `correct` is set only for a correct answer."""
    score = CountdownReward(scheme)(COMPLETIONS[verdict], META)
    assert isinstance(score, Score)
    assert abs(score.reward - REWARD_TABLE[scheme][verdict]) <= 1e-12
    assert score.correct is (verdict == "correct")


@pytest.mark.parametrize(("completion", "words"), [
    ("", 0),
    ("hmm", 1),
    ("a  b\n\tc", 3),                                                   # any whitespace run separates words
    ("<answer>(3 + 5) * 2", 5),                                         # an unclosed tag is still no answer
    (" ".join(["word"] * 100), 100),                                    # -0.03
])
def test_scheme_a_no_answer_penalty_scales_with_words(completion, words):
    """Scheme A's no-answer reward is -0.0003 x word count; original gives 0 and B -0.2 regardless of length."""
    assert abs(CountdownReward("A")(completion, META).reward - (-0.0003 * words)) <= 1e-12
    assert CountdownReward("original")(completion, META).reward == 0.0
    assert CountdownReward("B")(completion, META).reward == -0.2


@pytest.mark.parametrize("scheme", ["C", "a", "", "paper"])
def test_unknown_scheme_raises(scheme):
    """Only "original", "A" and "B" exist."""
    with pytest.raises(ValueError):
        CountdownReward(scheme)


def test_too_small_a_puzzle_space_is_an_error_not_a_hang():
    """Two numbers in [1, 1] allow only two puzzles (targets 1 and 2): asking for five must fail fast."""
    with pytest.raises(ValueError, match="found only"):
        make_split("train", 5, num_numbers=2, min_number=1, max_number=1)
    with pytest.raises(ValueError, match="no puzzle with a target"):
        make_split("train", 1, num_numbers=2, min_number=0, max_number=0)


def test_one_number_puzzles_have_no_wrong_demonstration():
    with pytest.raises(ValueError, match="num_numbers >= 2"):
        CountdownData(num_numbers=1, wrong_fraction=0.5)
    with pytest.raises(ValueError, match="no wrong answer"):
        wrong_answer(random.Random(0), Puzzle((2,), 2, "2"))

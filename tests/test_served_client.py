"""`hf_distill.served.protocol` and `.client`, alone and against a real HTTP server (tests/served_server.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from served_server import start_server
from tiny_models import VOCAB, save_tiny_teacher

from hf_distill.served.client import ServedClient, ServedTeacherError, _server_message
from hf_distill.served.protocol import (
    RowScores,
    ServedModelNotFoundError,
    ServedResponseError,
    completion_request,
    model_entry,
    parse_scores,
    probe_request,
    probe_token_ids,
)

NAME = "tiny-teacher"
SECRET = "sk-test-SECRET-0123456789"


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("served")
    save_tiny_teacher(folder / "teacher", folder / "corpus.txt")
    return folder / "teacher"


@pytest.fixture(scope="module")
def server(teacher_folder):
    handle = start_server(teacher_folder, NAME, revision="abc123")
    yield handle
    handle.stop()


@pytest.fixture
def make_server(teacher_folder):
    """Starts a server with knobs for one test (the model is loaded once per folder and shared)."""
    handles = []

    def make(**knobs):
        handles.append(start_server(teacher_folder, NAME, **knobs))
        return handles[-1]

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture(scope="module")
def reference(teacher_folder):
    """`ids -> (L, V)` log_softmax of the same model, in process."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher_folder, torch_dtype=torch.float32).eval()

    def log_softmax(ids):
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)

    return log_softmax


@contextlib.contextmanager
def warnings_logged():
    """Records of the `hf_distill` logger (it does not propagate to the root logger pytest captures)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("hf_distill")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def rows_of(*lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def raw_post(url, body):
    request = urllib.request.Request(url + "/completions", data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


# -- against the server -----------------------------------------------------------------------------------------------


def test_full_vocab_scores_equal_the_models_log_softmax_aligned_like_logits(server, reference):
    rows = rows_of(9, 4)
    scores = ServedClient(server.url, NAME).score(rows, VOCAB)
    assert len(scores) == 2
    for row, got in zip(rows, scores):
        assert isinstance(got, RowScores) and len(got) == len(row)
        assert got.ids.shape == got.logprobs.shape == (len(row), VOCAB)
        assert got.ids.dtype == torch.long and got.logprobs.dtype == torch.float32
        expected = reference(row)  # (L, V): position t = distribution of token t + 1
        for t in range(len(row) - 1):
            assert torch.equal(got.ids[t], expected[t].argsort(descending=True))
            torch.testing.assert_close(got.logprobs[t], expected[t][got.ids[t]], atol=1e-5, rtol=0)
        assert not got.ids[-1].any() and not got.logprobs[-1].any()  # beyond the row: zero-filled


def test_top_k_drops_the_actual_token_outside_it_and_is_sorted(server, reference):
    rows = rows_of(12, seed=1)
    raw = raw_post(server.url, completion_request(NAME, rows, 5))["choices"][0]["prompt_logprobs"]
    assert raw[0] is None
    widths = [len(entry) for entry in raw[1:]]
    assert 6 in widths, "the test needs a position whose actual token is outside the top 5"
    for j, entry in enumerate(raw[1:], 1):  # the actual token is always there, with its true rank
        actual = entry[str(rows[0][j])]
        assert actual["rank"] == int((reference(rows[0])[j - 1] > actual["logprob"]).sum()) + 1
    (got,) = ServedClient(server.url, NAME).score(rows, 5)
    assert got.ids.shape == (12, 5)
    expected = reference(rows[0])[:-1].topk(5, dim=-1)
    assert torch.equal(got.ids[:-1], expected.indices)
    torch.testing.assert_close(got.logprobs[:-1], expected.values, atol=1e-5, rtol=0)
    assert (got.logprobs[:-1].diff(dim=-1) <= 0).all()


def test_next_logprob_is_the_actual_tokens_log_probability_even_outside_the_top_k(server, reference):
    rows = rows_of(12, seed=1)
    (got,) = ServedClient(server.url, NAME).score(rows, 5)
    expected = reference(rows[0])[:-1].gather(-1, torch.tensor(rows[0][1:]).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got.next_logprob[:-1], expected, atol=1e-5, rtol=0)
    assert got.next_logprob[-1] == 0


def test_rows_of_different_lengths_are_matched_by_index_when_choices_come_back_out_of_order(server, make_server):
    rows = rows_of(3, 8, 1, 5, seed=2)
    shuffled = make_server(shuffle_choices=True)
    assert [c["index"] for c in raw_post(shuffled.url, completion_request(NAME, rows, 4))["choices"]] == [3, 2, 1, 0]
    expected = ServedClient(server.url, NAME).score(rows, 4)
    got = ServedClient(shuffled.url, NAME).score(rows, 4)
    assert [len(s) for s in got] == [3, 8, 1, 5]
    for a, b in zip(got, expected):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.logprobs, b.logprobs)


def test_echoed_ids_that_differ_are_refused_naming_row_and_position(make_server):
    handle = make_server(wrong_ids=True)
    with pytest.raises(ServedResponseError, match=r"row 1, position 3 was sent id \d+ but the server echoed"):
        ServedClient(handle.url, NAME).score(rows_of(4, 6), 3)
    assert handle.state.requests == 1  # not retried


def test_a_malformed_answer_is_refused_without_retry(make_server):
    handle = make_server(malformed=True)
    with pytest.raises(ServedResponseError, match="no prompt_logprobs list for row 0.*prompt_logprobs"):
        ServedClient(handle.url, NAME, backoff=0).score(rows_of(4), 3)
    assert handle.state.requests == 1


def test_server_errors_are_retried_with_a_warning_then_given_up(make_server):
    handle = make_server(fail_first=2)
    with warnings_logged() as records:
        scores = ServedClient(handle.url, NAME, max_retries=3, backoff=0.01).score(rows_of(4), 3)
    assert len(scores) == 1 and handle.state.requests == 3
    messages = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(messages) == 2 and "attempt 1 of 4" in messages[0] and "HTTP 503" in messages[0]

    handle = make_server(fail_first=5)
    with pytest.raises(ServedTeacherError, match="failed after 3 attempts; last error: HTTP 503: the test server"):
        ServedClient(handle.url, NAME, max_retries=2, backoff=0.01).score(rows_of(4), 3)
    assert handle.state.requests == 3


def test_nothing_listening_fails_fast(make_server):
    handle = make_server()
    handle.stop()
    start = time.perf_counter()
    with pytest.raises(ServedTeacherError, match=rf"POST {handle.url}/completions .*2 attempts.*connection refused"):
        ServedClient(handle.url, NAME, max_retries=1, backoff=0.01).score(rows_of(4), 3)
    assert time.perf_counter() - start < 1.5


def test_a_server_that_dies_mid_run_is_reported(make_server):
    handle = make_server(die_after=1)
    client = ServedClient(handle.url, NAME, max_retries=1, backoff=0.01)
    client.score(rows_of(4), 3)
    with pytest.raises(ServedTeacherError, match="failed after 2 attempts"):
        client.score(rows_of(4), 3)


def test_a_refusal_is_not_retried_and_quotes_the_server(make_server):
    handle = make_server(max_logprobs=10)
    with pytest.raises(ServedTeacherError, match="HTTP 400: Requested prompt logprobs of 20, which is greater than"):
        ServedClient(handle.url, NAME, backoff=0).score(rows_of(4), 20)
    assert handle.state.requests == 1
    assert len(ServedClient(handle.url, NAME).score(rows_of(4), 10)) == 1


def test_the_api_key_goes_only_into_the_authorization_header(make_server, server):
    clients = []
    for knobs, k in [({"max_logprobs": 2}, 3), ({"fail_first": 10}, 2), ({"malformed": True}, 2)]:
        url = make_server(**knobs).url
        clients.append((ServedClient(url, NAME, api_key=SECRET, max_retries=1, backoff=0), k))
    stopped = make_server()
    stopped.stop()
    clients.append((ServedClient(stopped.url, NAME, api_key=SECRET, max_retries=1, backoff=0), 2))
    with_userinfo = f"http://user:{SECRET}@127.0.0.1:{server.port}/v1"
    clients.append((ServedClient(with_userinfo, "no-such-model", max_retries=0), 2))
    with warnings_logged() as records:
        for client, k in clients:
            assert SECRET not in repr(client) and "auth=<set>" in repr(client)
            with pytest.raises((ServedTeacherError, ServedResponseError)) as caught:
                client.score(rows_of(3), k)
            assert SECRET not in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert records and not [r for r in records if SECRET in r.getMessage()]
    handle = make_server()
    ServedClient(handle.url, NAME, api_key=SECRET).models()
    ServedClient(f"http://u:p%40ss@127.0.0.1:{handle.port}/v1", NAME).models()
    assert handle.state.authorization == [f"Bearer {SECRET}", "Basic dTpwQHNz"]  # base64("u:p@ss")


def test_probe_returns_the_servers_token_ids(server, teacher_folder):
    from transformers import AutoTokenizer

    text = "w3 w17 w80 w3"
    assert (
        ServedClient(server.url, NAME).probe(text) == AutoTokenizer.from_pretrained(teacher_folder)(text)["input_ids"]
    )


def test_models_finds_the_entry_or_lists_the_served_names(server):
    entry = ServedClient(server.url, NAME).models()
    assert entry["id"] == NAME and entry["revision"] == "abc123" and entry["max_model_len"] == 64
    with pytest.raises(ServedTeacherError, match=rf"does not serve a model named 'other'; it serves \['{NAME}'\]"):
        ServedClient(server.url, "other").models()
    with pytest.raises(ServedTeacherError, match="HTTP 404: The model `other` does not exist"):
        ServedClient(server.url, "other").score(rows_of(3), 2)


def test_a_timeout_is_named(make_server):
    handle = make_server(delay=2)
    start = time.perf_counter()
    with pytest.raises(ServedTeacherError, match=r"1 attempt; last error: timed out: no answer within timeout=0.3 s"):
        ServedClient(handle.url, NAME, timeout=0.3, max_retries=0).score(rows_of(3), 2)
    assert time.perf_counter() - start < 1.5


def test_concurrent_calls_from_threads(server):
    from concurrent.futures import ThreadPoolExecutor

    client = ServedClient(server.url, NAME)
    batches = [rows_of(5, 3, seed=seed) for seed in range(6)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda rows: client.score(rows, 4), batches))
    for rows, got in zip(batches, results):
        assert torch.equal(got[0].ids, client.score(rows, 4)[0].ids)


@pytest.mark.slow
def test_the_server_runs_as_a_script(teacher_folder, tmp_path):
    script = Path(__file__).parent / "served_server.py"
    port_file = tmp_path / "port"
    command = [sys.executable, str(script), "--model", str(teacher_folder), "--served-model-name", NAME]
    command += ["--port-file", str(port_file), "--die-after", "1", "--revision", "r1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = process.stdout.readline()
        assert line.startswith("PORT "), line
        port = int(line.split()[1])
        assert port_file.read_text() == str(port)
        client = ServedClient(f"http://127.0.0.1:{port}/v1", NAME, max_retries=0)
        assert client.models()["revision"] == "r1"
        (scores,) = client.score(rows_of(6), 4)
        assert scores.ids.shape == (6, 4)
        with pytest.raises(ServedTeacherError):  # --die-after 1: the second scoring request kills the process
            client.score(rows_of(6), 4)
        assert process.wait(timeout=10) == 1
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        process.stdout.close()


# -- protocol (no server) ----------------------------------------------------------------------------------------


def test_completion_request_refuses_bad_input():
    body = completion_request(NAME, [[1, 2], torch.tensor([3])], 4)
    assert body["prompt"] == [[1, 2], [3]] and body["prompt_logprobs"] == 4 and body["return_token_ids"] is True
    assert body["add_special_tokens"] is False and body["max_tokens"] == 1
    for rows, k, match in [
        ([], 2, "rows is empty"),
        ([[1], []], 2, r"rows\[1\] is empty"),
        ([[1.5]], 2, r"rows\[0\] must be a list of int"),
        ([[1, -100]], 2, "negative token id"),
        ([[1]], 0, "k .* must be an int >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            completion_request(NAME, rows, k)
    assert probe_request(NAME, "hi")["add_special_tokens"] is True


def _entry(pairs):
    return {str(i): {"logprob": lp, "rank": r, "decoded_token": "x"} for r, (i, lp) in enumerate(pairs, 1)}


def _response(rows, k, **override):
    choices = []
    for index, row in enumerate(rows):
        entries = [None] + [_entry([(row[j], -0.1)] + [((row[j] + d) % VOCAB, -1.0 - d) for d in range(1, k)])
                            for j in range(1, len(row))]  # fmt: skip
        choices.append({"index": index, "prompt_token_ids": list(row), "prompt_logprobs": entries, **override})
    return {"choices": choices}


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r.pop("choices"), "without a `choices` list"),
        (lambda r: r["choices"].pop(), "returned 1 choices for the 2 rows"),
        (lambda r: r["choices"][1].update(index=0), "choice index 0 twice"),
        (
            lambda r: r["choices"][0].pop("prompt_token_ids"),
            r"did not echo prompt_token_ids.*return_token_ids.*0\.10\.2",
        ),
        (lambda r: r["choices"][1]["prompt_token_ids"].pop(), "echoed 3 ids in prompt_token_ids of row 1; 4 were"),
        (lambda r: r["choices"][1]["prompt_logprobs"].pop(), "3 prompt_logprobs entries for row 1, which has 4"),
        (lambda r: r["choices"][0]["prompt_logprobs"][2].popitem(), r"row 0, prompt_logprobs\[2\] holds 2 entries"),
        (lambda r: r["choices"][0]["prompt_logprobs"][1]["5"].update(logprob=float("nan")), "logprob.*nan"),
        (lambda r: r["choices"][0]["prompt_logprobs"][1]["5"].update(logprob=0.5), r"prompt_logprobs\[1\].*0\.5"),
        (lambda r: r["choices"][0]["prompt_logprobs"][1]["5"].update(logprob=None), r"\['5'\] is \{'logprob': None"),
        (lambda r: r["choices"][0]["prompt_logprobs"][1].update(x={"logprob": -9.0}), "has key 'x', not a token id"),
        (lambda r: r["choices"][0]["prompt_logprobs"].__setitem__(2, [1]), r"prompt_logprobs\[2\] is \[1\]"),
        (
            lambda r: r["choices"][0]["prompt_logprobs"][2].update({"200": {"logprob": -9.0}}),
            r"200, outside \[0, 97\)",
        ),
        (
            lambda r: (
                r["choices"][0]["prompt_logprobs"][1].pop("5")
                and r["choices"][0]["prompt_logprobs"][1].update({"50": {"logprob": -0.2}})
            ),
            "lacks the actual prompt token 5",
        ),
    ],
)
def test_parse_scores_refuses_what_does_not_match(mutate, match):
    rows = [[4, 5, 6, 7], [8, 9, 10, 11]]
    response = _response(rows, 3)
    mutate(response)
    with pytest.raises(ServedResponseError, match=match):
        parse_scores(response, rows, 3, NAME, vocab_size=VOCAB, url="http://h/v1")


def test_parse_scores_sorts_and_cuts_to_k():
    rows = [[1, 2, 3]]
    response = _response(rows, 3)
    entry = response["choices"][0]["prompt_logprobs"][2]
    entry["3"]["logprob"] = -50.0  # the actual token now falls outside the top 2 (and is listed first)
    (got,) = parse_scores(response, rows, 2, NAME)
    assert got.ids.tolist() == [[2, 3], [4, 5], [0, 0]]
    assert got.logprobs.tolist() == [[-0.10000000149011612, -2.0], [-2.0, -3.0], [0.0, 0.0]]
    (single,) = parse_scores(_response([[7]], 2), [[7]], 2, NAME)
    assert single.ids.tolist() == [[0, 0]]


def test_parse_scores_is_fast():
    rows = rows_of(*[512] * 8, seed=3)
    k = 64
    rng = random.Random(0)
    choices = []
    for index, row in enumerate(rows):
        entries = [None]
        for j in range(1, len(row)):
            ids = rng.sample(range(VOCAB), k + 1)
            if row[j] not in ids:
                ids[-1] = row[j]
            entries.append({str(i): {"logprob": -0.01 * (r + 1), "rank": r + 1} for r, i in enumerate(ids)})
        choices.append({"index": index, "prompt_token_ids": row, "prompt_logprobs": entries})
    response = {"choices": choices}
    best = math.inf
    for _ in range(3):
        start = time.process_time()  # CPU time: the suite shares its cores with other work
        scores = parse_scores(response, rows, k, NAME, vocab_size=VOCAB)
        best = min(best, time.process_time() - start)
    assert [s.ids.shape for s in scores] == [(512, k)] * 8
    assert best < 0.3, f"parse_scores took {best * 1000:.0f} ms of CPU for 8 x 512 x {k} (about 30 ms expected)"


def test_probe_and_model_entry_parsing():
    assert probe_token_ids({"choices": [{"prompt_token_ids": [1, 2]}]}) == [1, 2]
    with pytest.raises(ServedResponseError, match="return_token_ids"):
        probe_token_ids({"choices": [{"prompt_token_ids": None}]}, model=NAME, url="http://h/v1")
    with pytest.raises(ServedResponseError, match="without a `data` list"):
        model_entry({"object": "list"}, NAME)
    with pytest.raises(
        ServedModelNotFoundError, match=r"at http://h/v1 does not serve a model named 'b'; it serves \['a'\]"
    ):
        model_entry({"data": [{"id": "a"}]}, "b", url="http://h/v1")


def test_client_helpers():
    assert _server_message(b'{"error": {"message": "too big", "code": 400}}') == "too big"
    assert _server_message(b'{"object": "error", "message": "old style"}') == "old style"
    assert _server_message(b"x" * 1000) == "x" * 300 + "..."
    with pytest.raises(ValueError, match="base_url must be an http"):
        ServedClient("127.0.0.1:8000/v1", NAME)
    client = ServedClient(f"http://user:{SECRET}@example.invalid:8000/v1/", NAME)
    assert client.url == "http://example.invalid:8000/v1" and SECRET not in repr(client)

"""The LLM checker and refiner: reply parsing and the refiner's acceptance rules by hand, then the plumbing against a
real OpenAI-compatible server (llama.cpp's, serving SmolLM2-135M-Instruct from PyPI), a server that is down, one
that never answers and one that answers nonsense."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.data import read_samples, write_samples
from dyme_cli.recipe import SupervisionSection
from dyme_cli.supervision import (PARSE_RETRIES, Checker, parse_rating, refiner_for, rejection,
                                  template_version)
from dyme_cli.trainer import train

from conftest import small_recipe


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("reply, score", [
    ("high", 1.0), ("Medium.", 0.5), ("rating: LOW", 0.0), ("I'd say medium, maybe high", 0.5),
    ("banana", None), ("highly unclear", None), ("", None),
])
def test_a_rating_is_the_first_level_a_reply_names(reply, score):
    assert parse_rating(reply) == score


@pytest.fixture(scope="module")
def chart_sample(chart_data):
    """A chart sample whose facts hold the bars' values."""
    return next(s for s in read_samples(chart_data / "train.jsonl") if s.meta.get("kind") == "sum")


def test_a_refined_trace_is_kept_only_when_grounded_and_concluding_the_gold_answer(chart_sample):
    bars = chart_sample.facts["values"]  # {"red": 7, "green": 1, ...}
    readings = " ".join(f"The {label} bar is {value}." for label, value in bars.items())
    total = " + ".join(str(v) for v in bars.values())
    good = f"The question asks for the sum of all bar values. {readings} {total} = {chart_sample.answer}."
    assert rejection(chart_sample, good, "Answer:") is None, good
    assert rejection(chart_sample, "", "Answer:") == "empty"
    assert "not the gold answer" in rejection(chart_sample, good + " Answer: 999", "Answer:")
    misread = good.replace(f"is {next(iter(bars.values()))}.", "is 77.", 1)
    assert rejection(chart_sample, misread, "Answer:").startswith(("ungrounded-value", "conclusion-mismatch"))


# ---------------------------------------------------------------- servers that misbehave


class _FakeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint whose reply is `answer(system prompt, user message)`."""

    def answer(self, system: str, user: str) -> str:
        raise NotImplementedError

    def do_POST(self):  # noqa: N802 (http.server's name)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = self.answer(request["messages"][0]["content"], request["messages"][-1]["content"])
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Nonsense(_FakeServer):
    """Answers every chat request with a word that is no rating."""

    requests = 0

    def answer(self, system, user):
        type(self).requests += 1
        return "banana"


def _checker(url: str, tmp_path: Path, messages: list, **section) -> Checker:
    settings = {"checker": "llm", "base_url": url, "model": "m", "max_retries": 0, "timeout_s": 2.0, **section}
    from dyme_cli.supervision import checker_for

    return checker_for(SupervisionSection(**settings), tmp_path / "supervision", 0, messages.append)


def test_a_server_that_is_down_leaves_the_local_reward_says_so_once_and_counts_it(tmp_path, chart_sample):
    messages = []
    checker = _checker(f"http://127.0.0.1:{_free_port()}/v1", tmp_path, messages)
    assert checker.rate([(chart_sample, "a"), (chart_sample, "b")]) == [None, None]
    assert checker.rate([(chart_sample, "c")]) == [None]
    assert checker.counts.fallbacks == 3 and checker.counts.cache_hits == 0
    assert len(messages) == 1 and "cannot be reached (APIConnectionError: Connection error.)" in messages[0]


def test_a_server_that_never_answers_is_given_up_within_the_step_budget(tmp_path, chart_sample):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        messages = []
        checker = _checker(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", tmp_path, messages, timeout_s=30.0,
                           step_budget_s=1.0)
        started = time.monotonic()
        assert checker.rate([(chart_sample, "a"), (chart_sample, "b")]) == [None, None]
        assert time.monotonic() - started < 5 and checker.counts.fallbacks == 2
        assert len(messages) == 1 and "did not rate every rollout within the step's budget" in messages[0]


class _Trickle:
    """A server that accepts every connection and sends one byte of a reply every half second, forever: each read
    gets a byte well within any per-read timeout, and no reply ever ends."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/v1"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection):
        with connection:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
                if self.closed.wait(0.5):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self):
        self.closed.set()
        self.socket.close()


@pytest.fixture
def trickle():
    server = _Trickle()
    yield server
    server.close()


def test_a_request_to_a_server_that_trickles_bytes_ends_at_its_total_deadline(trickle, tmp_path, chart_sample):
    messages = []
    checker = _checker(trickle.url, tmp_path, messages, timeout_s=1.0, step_budget_s=3600.0)  # no retries
    started = time.monotonic()
    assert checker.rate([(chart_sample, "a")]) == [None]  # every read got a byte within 1 s; the reply never ended
    assert time.monotonic() - started < 60  # the 1 s deadline, not the hour the step's budget allows
    assert len(messages) == 1 and "cannot be reached (ReplyTimeout: no complete reply within 1 s)" in messages[0]


def test_requests_given_up_on_never_hold_the_process_at_exit(trickle, tmp_path):
    """The step's budget abandons a request whose own deadline is 10 minutes away; the process still exits."""
    script = (
        "from dyme_cli.data import Sample\n"
        "from dyme_cli.recipe import SupervisionSection\n"
        "from dyme_cli.supervision import checker_for\n"
        f"section = SupervisionSection(checker='llm', base_url='{trickle.url}', model='m', timeout_s=600, "
        "max_retries=0, step_budget_s=1)\n"
        f"checker = checker_for(section, __import__('pathlib').Path(r'{tmp_path}'), 0, print)\n"
        "print(checker.rate([(Sample(id='s', task='chart', question='q', answer='1'), 'a')]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[None]"


class _Failing(_FakeServer):
    """Answers every request with HTTP 500."""

    requests = 0

    def do_POST(self):  # noqa: N802
        type(self).requests += 1
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        body = b'{"error": {"message": "the model crashed"}}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_server_that_answers_with_errors_is_said_once_and_counted(tmp_path, chart_sample):
    server = HTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        messages = []
        checker = _checker(f"http://127.0.0.1:{server.server_port}/v1", tmp_path, messages)
        assert checker.rate([(chart_sample, "a"), (chart_sample, "b")]) == [None, None]
        assert checker.rate([(chart_sample, "c")]) == [None]
        assert checker.counts.fallbacks == 3 and _Failing.requests == 3
        assert len(messages) == 1 and "answers with an error (HTTP 500: " in messages[0], messages
    finally:
        server.shutdown()


def test_replies_that_name_no_level_are_asked_again_then_fall_back(tmp_path, chart_sample):
    server = HTTPServer(("127.0.0.1", 0), _Nonsense)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Nonsense.requests = 0
        checker = _checker(f"http://127.0.0.1:{server.server_port}/v1", tmp_path, [], concurrency=1)
        assert checker.rate([(chart_sample, "a")]) == [None]
        assert _Nonsense.requests == checker.counts.calls == checker.counts.unparseable == 1 + PARSE_RETRIES
        assert checker.counts.fallbacks == 1
    finally:
        server.shutdown()


# ---------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def llm_server(smollm2_gguf):
    """llama.cpp's OpenAI-compatible server on a free loopback port, serving SmolLM2-135M-Instruct."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (pip install -e '.[dev]')")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 900  # a busy 2-core machine loads the model slowly; a quiet one takes seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=10).read()
            break
        except OSError:
            assert server.poll() is None, "the llama.cpp server exited at start"
            assert time.monotonic() < deadline, "the llama.cpp server did not answer within 15 minutes"
            time.sleep(0.5)
    warm_up = json.dumps({"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
    urllib.request.urlopen(urllib.request.Request(f"{url}/chat/completions", warm_up.encode(), {
        "Content-Type": "application/json"}), timeout=900).read()  # the first reply, whose start is slowest
    yield url
    server.terminate()
    server.wait(timeout=30)


def _subset(chart_data: Path, folder: Path, n: int) -> Path:
    """The first `n` chart training samples with their images, in a folder of their own."""
    samples = read_samples(chart_data / "train.jsonl")[:n]
    for image in {name for s in samples for name in s.images}:
        (folder / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(chart_data / image, folder / image)
    write_samples(folder / "train.jsonl", samples)
    return folder / "train.jsonl"


def _section(url: str, **settings) -> SupervisionSection:
    return SupervisionSection(**{"base_url": url, "model": "smollm2", "timeout_s": 600.0, "step_budget_s": 3600.0, "max_retries": 1,
                                 "concurrency": 2, **settings})


def test_the_checker_rates_through_a_real_server_and_asks_nothing_twice(llm_server, tmp_path, chart_sample):
    from dyme_cli.supervision import checker_for

    requests = [(chart_sample, "The red bar is 3. 3 + 4 = 7."), (chart_sample, "I like charts."), (chart_sample, "")]
    checker = checker_for(_section(llm_server, checker="llm"), tmp_path, 0, lambda m: None)
    scores = checker.rate(requests)
    assert all(score in (0.0, 0.5, 1.0, None) for score in scores)
    counts = checker.counts
    assert counts.fallbacks == scores.count(None) and counts.calls >= len(requests)
    assert counts.calls - counts.unparseable - counts.failed == len(requests) - counts.fallbacks  # each parsed reply rated one
    again = checker_for(_section(llm_server, checker="llm"), tmp_path, 0, lambda m: None)  # a resumed run
    assert again.rate(requests) == scores
    assert again.counts.calls == 0 and again.counts.cache_hits == len(requests) - scores.count(None)


def test_the_refiner_and_prepare_refine_through_a_real_server_resume_from_their_cache(llm_server, tmp_path, chart_data):
    source = _subset(chart_data, tmp_path / "data", 3)
    args = ["prepare", "refine", "--input", str(source), "--out", str(tmp_path / "refined"), "--base-url", llm_server,
            "--model", "smollm2", "--concurrency", "2", "--timeout", "900"]  # a busy machine answers slowly
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    refined = read_samples(tmp_path / "refined" / "train.jsonl")  # images copied beside it
    assert [s.id for s in refined] == [s.id for s in read_samples(source)]
    cache = [json.loads(line) for line in (tmp_path / "refined" / ".refine-cache.jsonl").read_text().splitlines()]
    assert len(cache) == 3 and {c["template"] for c in cache} == {template_version(refiner_for(_section(llm_server), None, "Answer:").template)}
    for sample, record in zip(refined, cache):  # accepted ones replaced the reference, rejected ones kept it
        assert (sample.reference == record["reference"]) == (record["status"] == "accepted")
    second = CliRunner().invoke(app, [*args, "--overwrite"])  # the finished output is only replaced when asked
    assert "3 of them from the cache" in " ".join(second.output.split())


def test_two_dyme_steps_with_the_llm_checker_and_refiner(llm_server, tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=2, prompts_per_step=2)
    recipe.data.train, recipe.data.test = _subset(chart_data, tmp_path / "data", 2), None
    recipe.supervision = _section(llm_server, checker="llm", refiner="llm")
    messages = []
    train(recipe, on_message=messages.append)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rollouts = recipe.train.prompts_per_step * recipe.rollout.num_generations
    for m in metrics:
        assert m["checker_cache_hits"] + m["checker_calls"] - m["checker_unparseable"] + m["checker_fallbacks"] >= rollouts
    assert any("refined references:" in m for m in messages)
    assert "refiner: 2/2" in messages  # the pass says how far it is (a line per tenth)
    recipe.train.max_steps = 3
    resumed = []
    train(recipe, resume=True, on_message=resumed.append)
    assert any("2 of them from the cache" in m for m in resumed)


@pytest.mark.parametrize("reply, facts", [
    ('{"red": 7, "green": 1}', {"red": 7, "green": 1}),
    ('Here they are: {"lesion": true, "side": "left", "sizes": [1, 2]} Hope this helps.', {"lesion": True, "side": "left"}),
    ("no facts", None), ("{not json}", None), ('{"nested": {"a": 1}}', None), ("[1, 2]", None),
])
def test_facts_are_the_plain_values_of_the_json_object_in_a_reply(reply, facts):
    from dyme_cli.supervision import parse_facts

    assert parse_facts(reply) == facts


def test_a_sample_without_facts_gets_them_from_its_reference_before_refining(tmp_path, chart_data):
    """One request reads the facts out of the reference, the next refines with them; both are remembered."""
    sample = read_samples(chart_data / "train.jsonl")[0].model_copy(update={"facts": {}})
    bars = read_samples(chart_data / "train.jsonl")[0].facts["values"]
    replies = iter([json.dumps(bars), "Some reasoning."])

    class Scripted:
        base_url = "scripted"

        def reply(self, messages, max_tokens):
            return next(replies)

    from dyme_cli.supervision import Refiner

    report = Refiner(Scripted(), "template", "Answer:", 1, tmp_path / "refined.jsonl").refine([sample])
    assert report.samples[0].facts == bars
    again = Refiner(Scripted(), "template", "Answer:", 1, tmp_path / "refined.jsonl").refine([sample])  # no request
    assert again.samples[0].facts == bars and again.cached == 1


def test_a_proposed_template_is_kept_with_its_provenance_only_when_the_comparison_prefers_it(tmp_path):
    from dyme_cli.supervision import TemplateStore

    class Scripted:
        def __init__(self, *replies):
            self.replies = iter(replies)

        def reply(self, messages, max_tokens):
            return next(self.replies)

    store = TemplateStore(tmp_path / "templates", "Read, then compute.")
    assert store.evolve(Scripted("Read each bar, then compute.", "A"), "thinking", step=4, source="p1#0") is None
    new = store.evolve(Scripted("Read each bar, then compute.", "B."), "thinking", step=8, source="p2#1")
    assert new.version == 1 and new.text == "Read each bar, then compute."
    resumed = TemplateStore(tmp_path / "templates", "ignored: the run has its own")
    assert resumed.current == new
    assert [(r["version"], r["step"], r["source"]) for r in resumed.history] == [(0, 0, "recipe"), (1, 8, "p2#1")]
    assert (tmp_path / "templates" / "v001.txt").read_text().strip() == new.text


class _Judge(_FakeServer):
    """Replies that follow the request's system prompt: a generous judge that rates everything high, proposes a
    template, prefers it, and refines with the values it is given."""

    def answer(self, system, user):
        if system.startswith("You check"):
            return "high"
        if system.startswith("You maintain"):
            return "Say what is asked, read the values, compute, conclude."
        if system.startswith("Two templates"):
            return "B"
        return "The values are " + user.split("Facts: ", 1)[1].split("\n", 1)[0] + "."  # the refiner


def test_template_evolution_in_a_run_refines_the_samples_again_with_the_new_template(tmp_path, chart_data, monkeypatch):
    from dyme_cli.verify_pool import VerifierPool

    real = VerifierPool.verify_groups

    def all_correct(self, requests):  # a policy that answers everything right: any rollout can be the best
        verdicts, failures = real(self, requests)
        for group in verdicts:
            for verdict in group:
                verdict.correct = True
        return verdicts, failures

    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        recipe = small_recipe(chart_data, tmp_path / "run", max_steps=2, prompts_per_step=2)
        recipe.data.train, recipe.data.test = _subset(chart_data, tmp_path / "data", 2), None
        recipe.supervision = _section(f"http://127.0.0.1:{server.server_port}/v1", checker="llm", refiner="llm",
                                      evolve_every=1)
        monkeypatch.setattr(VerifierPool, "verify_groups", all_correct)
        messages = []
        train(recipe, on_message=messages.append)
    finally:
        server.shutdown()
    templates = tmp_path / "run" / "supervision" / "templates"
    history = [json.loads(line) for line in (templates / "history.jsonl").read_text().splitlines()]
    assert [h["version"] for h in history] == [0, 1] and history[1]["step"] == 1  # step 2 proposed the same: kept
    assert any(m.startswith("step 1: the refiner's template is now v1") for m in messages)
    refined = [json.loads(line) for line in (tmp_path / "run" / "supervision" / "refined.jsonl").read_text().splitlines()]
    assert len({r["template"] for r in refined}) == 2 and len(refined) == 4  # both samples, under both templates


def test_inspect_traces_reports_where_the_llm_checker_and_the_detectors_disagree(tmp_path, chart_data):
    from dyme_cli.inspect_run import GROUNDING_FLAGS

    train(small_recipe(chart_data, tmp_path / "run", max_steps=2))
    server = HTTPServer(("127.0.0.1", 0), _Judge)  # rates every rollout high
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        plain = CliRunner().invoke(app, ["inspect-traces", str(tmp_path / "run"), "--json"])
        checked = CliRunner().invoke(app, ["inspect-traces", str(tmp_path / "run"), "--json", "--checker-url",
                                           f"http://127.0.0.1:{server.server_port}/v1", "--checker-model", "m"])
    finally:
        server.shutdown()
    assert checked.exit_code == 0, checked.output
    traces = json.loads(plain.output)["traces"]
    agreement = json.loads(checked.output)["checker"]
    flagged = sum(any(f["name"] in GROUNDING_FLAGS for f in t["flags"]) for t in traces)
    assert agreement["rated"] == len(traces) and agreement["unrated"] == 0 and agreement["mean_rating"] == 1.0
    assert agreement["high_but_flagged"] == flagged and agreement["low_but_unflagged"] == 0
    assert (tmp_path / "run" / "supervision" / "checker.0.jsonl").is_file()  # a run's ratings are kept


def test_facts_are_read_only_for_samples_with_a_reference_and_none_of_their_own(tmp_path, chart_data):
    from dyme_cli.supervision import with_facts

    first, second, third = read_samples(chart_data / "train.jsonl")[:3]
    asked = []

    class Reader:
        def reply(self, messages, max_tokens):
            asked.append(messages[-1]["content"])
            return '{"red": 7}'

    samples = [first.model_copy(update={"facts": {}}), second, third.model_copy(update={"facts": {}, "reference": ""})]
    out = with_facts(samples, Reader(), 2, tmp_path / "facts.jsonl")
    assert [s.facts for s in out] == [{"red": 7}, second.facts, {}] and len(asked) == 1
    assert with_facts(samples, Reader(), 2, tmp_path / "facts.jsonl")[0].facts == {"red": 7} and len(asked) == 1


class _AnswersOnceThenStops(_FakeServer):
    """Refines the first sample, then the job is stopped (SIGTERM, as a scheduler sends) while the next is asked."""

    requests = 0
    released = threading.Event()  # set by the test once the command has ended

    def answer(self, system, user):
        type(self).requests += 1
        if type(self).requests > 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
            type(self).released.wait(600)
        return "The question asks for a value. The answer follows."


def test_prepare_refine_stopped_by_sigterm_keeps_what_it_refined_and_goes_on_from_there(tmp_path, chart_data):
    server = HTTPServer(("127.0.0.1", 0), _AnswersOnceThenStops)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _AnswersOnceThenStops.requests = 0
        source = _subset(chart_data, tmp_path / "data", 3)
        out = tmp_path / "refined"
        args = ["prepare", "refine", "--input", str(source), "--out", str(out), "--base-url",
                f"http://127.0.0.1:{server.server_port}/v1", "--model", "m", "--concurrency", "1"]
        stopped = CliRunner().invoke(app, args)
        assert stopped.exit_code == 143, stopped.output
        assert "interrupted: the references refined so far are kept in" in " ".join(stopped.output.split())
        cache = (out / ".refine-cache.jsonl").read_text().splitlines()
        assert len(cache) == 1 and not (out / "train.jsonl").exists()  # the one reply received, no half dataset
    finally:
        _AnswersOnceThenStops.released.set()
        server.shutdown()

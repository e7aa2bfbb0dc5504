"""Verifier calls run in worker processes under a deadline: hangs, exceptions and crashes become failed
verdicts, from whichever thread asks, and the pool keeps working afterwards."""

import threading
import time

import pytest

from dyme_cli.data import Sample
from dyme_cli.plugins import load_verifier
from dyme_cli.verdict import Verdict
from dyme_cli.verify_pool import VerifierPool


def _sample(answer="5"):
    return Sample(id="s", task="exact", question="q", answer=answer)


@pytest.fixture
def pool(example_plugin):
    names = ("exact", "hang", "crash", "die", "interrupt", "huge")
    with VerifierPool({n: load_verifier(n) for n in names}, timeout_s=1.0, workers=2) as pool:
        yield pool


def _in_thread(fn):
    """Run fn in a non-main thread (where signal.alarm-based timeouts cannot work) and return its result."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn()))
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    return box["result"]


def test_results_keep_job_order_across_workers(pool):
    jobs = [("exact", f"x. Answer: {i % 3}", _sample("1")) for i in range(12)]
    results = pool.verify(jobs)
    assert [v.correct for v, _ in results] == [i % 3 == 1 for i in range(12)]
    assert not any(failed for _, failed in results)


def test_a_hanging_plugin_times_out_from_a_worker_thread_and_the_pool_recovers(pool):
    start = time.monotonic()
    results = _in_thread(lambda: pool.verify([
        ("hang", "x. Answer: 5", _sample()), ("exact", "x. Answer: 5", _sample()), ("hang", "Answer: 5", _sample()),
    ]))
    elapsed = time.monotonic() - start
    (hung, hung_failed), (ok, ok_failed), (hung2, _) = results
    assert hung_failed and not hung.correct and hung.rewards == {"format": 0.0, "accuracy": 0.0}
    assert hung.detail == "verifier 'hang' timed out after 1 s" and hung2.detail == hung.detail
    assert ok.correct and not ok_failed
    assert elapsed < 30  # the two hangs ran side by side on two workers, each cut at 1 s (plus restarts)
    again = pool.verify([("exact", "x. Answer: 5", _sample())])
    assert again[0][0].correct  # the replaced workers serve new calls


def test_an_exception_becomes_a_failed_verdict_naming_it(pool):
    (verdict, failed), = _in_thread(lambda: pool.verify([("crash", "x. Answer: 5", _sample())]))
    assert failed and not verdict.correct and verdict.answer is None
    assert verdict.detail == "verifier 'crash' raised RuntimeError: boom"


def test_a_plugin_that_kills_its_process_is_contained(pool):
    (dead, failed), (ok, _) = pool.verify([("die", "x. Answer: 5", _sample()), ("exact", "x. Answer: 5", _sample())])
    assert failed and dead.detail == "verifier 'die' worker exited (code 3)"
    assert ok.correct


def test_a_plugin_raising_keyboard_interrupt_is_a_failed_verdict_and_its_worker_lives(pool, capfd):
    (verdict, failed), (ok, _) = pool.verify([("interrupt", "x. Answer: 5", _sample()), ("exact", "x. Answer: 5", _sample())])
    assert failed and verdict.detail == "verifier 'interrupt' raised KeyboardInterrupt: "
    assert ok.correct and "Traceback" not in capfd.readouterr().err  # no worker died printing one


def test_rewards_whose_mean_and_spread_would_overflow_are_a_failed_verdict(pool):
    (verdict, failed), = pool.verify([("huge", "x. Answer: 5", _sample())])
    assert failed and not verdict.correct and verdict.rewards == {"format": 0.0, "accuracy": 0.0}
    assert verdict.detail == "verifier 'huge' returned reward 'format' = 1e+308, not a finite number within ±1e+06"


@pytest.mark.parametrize("value, shown", [
    (float("nan"), "nan"), (float("-inf"), "-inf"), (1e6 + 1, "1000001.0"), (10**5000, "an integer of 16610 bits"),
], ids=["nan", "-inf", "just-beyond", "5000-digit-int"])
def test_a_reward_beyond_the_bound_is_named_in_one_short_line(value, shown):
    from dyme_cli.verify_pool import contract_problem

    problem = contract_problem(Verdict(True, None, {"accuracy": value}, ""))
    assert problem == f"reward 'accuracy' = {shown}, not a finite number within ±1e+06"
    assert contract_problem(Verdict(True, None, {"accuracy": -1e6, "format": 10**6}, "")) is None  # the bound itself


def test_math_verifier_in_a_pool_from_a_worker_thread():
    with VerifierPool({"math": load_verifier("math")}, timeout_s=30) as pool:
        results = _in_thread(lambda: pool.verify([
            ("math", "Half of it. Answer: \\frac{1}{2}", Sample(id="m", task="math", question="q", answer="0.5")),
            ("math", "Answer: 0.51", Sample(id="m", task="math", question="q", answer="0.5")),
        ]))
    assert [(v.correct, failed) for v, failed in results] == [(True, False), (False, False)]


def test_an_unpicklable_verifier_is_a_one_line_error():
    import threading as th

    from dyme_cli.plugins import VerifierError

    class Local:  # defined in a function: cannot be pickled into a worker
        lock = th.Lock()

        def verify(self, completion, sample):
            return None

    with VerifierPool({"local": Local()}) as pool, pytest.raises(VerifierError, match="must be picklable"):
        pool.verify([("local", "x", _sample())])


def test_workers_leave_stop_signals_to_the_parent_which_finishes_the_step(pool):
    import os
    import signal

    jobs = [("exact", f"x. Answer: {i}", _sample("1")) for i in range(4)]
    pool.verify(jobs)  # starts the workers
    workers = [w.process.pid for w in pool._workers]
    for pid in workers:  # what a scheduler's SIGTERM (or a terminal's SIGHUP) to the whole job does
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGHUP)
    time.sleep(0.2)
    results = pool.verify(jobs)
    assert not any(failed for _, failed in results) and [w.process.pid for w in pool._workers] == workers


class BrokenContract:
    """Returns what the `verdict` option says, instead of a proper Verdict."""

    name = "broken"

    def __init__(self, verdict):
        self.verdict = verdict

    def verify(self, completion, sample):
        return self.verdict


@pytest.mark.parametrize("returned, problem", [
    (None, "a NoneType instead of a Verdict"),
    ({"correct": True}, "a dict instead of a Verdict"),
    (Verdict("no", "5", {"accuracy": 0.0}), "correct = 'no', not a bool"),
    (Verdict(True, "5", {"accuracy": float("nan")}), "reward 'accuracy' = nan, not a finite number within ±1e+06"),
    (Verdict(True, "5", {"format": float("inf")}), "reward 'format' = inf, not a finite number within ±1e+06"),
    (Verdict(True, "5", {"accuracy": "high"}), "reward 'accuracy' = 'high', not a number"),
])
def test_a_verdict_that_breaks_the_contract_is_a_counted_failure_not_a_crash(returned, problem):
    with VerifierPool({"broken": BrokenContract(returned)}, timeout_s=5.0) as pool:
        (verdict, failed), = pool.verify([("broken", "x. Answer: 5", _sample())])
    assert failed and verdict.correct is False and verdict.rewards == {"format": 0.0, "accuracy": 0.0}
    assert verdict.detail == f"verifier 'broken' returned {problem}"


def test_a_verdict_that_keeps_the_contract_passes_unchanged():
    good = Verdict(True, "5", {"accuracy": 1, "format": 0.5}, "ok")
    with VerifierPool({"broken": BrokenContract(good)}, timeout_s=5.0) as pool:
        (verdict, failed), = pool.verify([("broken", "x. Answer: 5", _sample())])
    assert not failed and verdict == good

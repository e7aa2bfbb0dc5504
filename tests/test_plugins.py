"""Plugin discovery and options: a third-party distribution is found through the entry-point group exactly
like the built-ins, listed by `dyme verifiers list`, and used by a training step by name."""

import json

import pytest
from typer.testing import CliRunner

from dyme_cli import ui
from dyme_cli.cli import app
from dyme_cli.data import Sample, read_samples, write_samples
from dyme_cli.plugins import VerifierError, load_verifier, load_verifiers, validate_options
from dyme_cli.trainer import train

from conftest import REPO, small_recipe

runner = CliRunner()


def test_list_shows_builtins_and_the_third_party_plugin(example_plugin, monkeypatch):
    result = runner.invoke(app, ["verifiers", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.output)}
    assert {"chart", "math", "medvqa", "exact"} <= set(listed)
    assert listed["exact"]["package"] == "dyme-example-plugin" and listed["exact"]["version"] == "0.1.0"
    assert listed["exact"]["options"] == {"strip": True}
    assert listed["chart"]["package"] == "dyme-cli" and listed["chart"]["options"] == {"tolerance": 0.05, "exact_years": True}
    assert all(p["error"] is None and p["description"] for p in listed.values())
    monkeypatch.setattr(ui.console, "width", 250)
    table = runner.invoke(app, ["verifiers", "list"]).output
    assert "dyme-example-plugin" in table and "Character-exact match with the gold answer" in table


def test_list_without_the_plugin_does_not_show_it():
    result = runner.invoke(app, ["verifiers", "list", "--json"])
    assert "exact" not in {p["name"] for p in json.loads(result.output)}


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("chart", {"tolerence": 0.1}, "[verifier.options.chart].tolerence: unknown option (options: tolerance, exact_years)"),
        ("chart", {"tolerance": "lots"}, "[verifier.options.chart].tolerance: Input should be a valid number"),
        ("chart", {"tolerance": -1}, "[verifier.options.chart]: tolerance must be >= 0"),
        ("medvqa", {"open_recall": 0}, "[verifier.options.medvqa]: "),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_key(name, options, message):
    with pytest.raises(VerifierError) as info:
        load_verifier(name, options=options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_options_are_validated_and_converted():
    assert load_verifier("chart", options={"tolerance": "0.2"}).tolerance == 0.2
    verifiers = load_verifiers(["chart", "medvqa"], "Answer:", {"chart": {"exact_years": False}})
    assert verifiers["chart"].exact_years is False and verifiers["medvqa"].open_recall == 1.0
    with pytest.raises(VerifierError, match=r"\[verifier.options.nope\]: unknown verifier 'nope'"):
        load_verifiers(["chart"], "Answer:", {"nope": {}})


def test_a_plugin_whose_constructor_raises_is_a_one_line_error(example_plugin, tmp_path):
    with pytest.raises(VerifierError) as info:
        load_verifier("broken")
    assert str(info.value) == "verifier 'broken' failed to start: RuntimeError: cannot open the answer key"
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"completion": "Answer: 1", "expect": True, "sample": {
        "id": "a", "task": "broken", "question": "q", "answer": "1"}}) + "\n")
    result = runner.invoke(app, ["verifiers", "check", "broken", "--cases", str(cases)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == ["error: verifier 'broken' failed to start: RuntimeError: cannot open the answer key"]


def test_two_packages_registering_one_name_are_named_in_a_warning(example_plugin, monkeypatch, tmp_path):
    """A second distribution that registers `exact` must not silently replace (or be replaced by) the first."""
    dist = tmp_path / "other_exact-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: other-exact\nVersion: 2.0\n")
    (dist / "entry_points.txt").write_text("[dyme.verifiers]\nexact = other_exact:Exact\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = runner.invoke(app, ["verifiers", "list", "--json"])
    assert result.exit_code == 0
    warning = " ".join(result.output.split())
    assert "note: two installed packages register the verifier 'exact':" in warning
    assert "other-exact (other_exact:Exact)" in warning and "dyme-example-plugin (dyme_example_plugin:ExactVerifier)" in warning


def _data_for(task, chart_data, tmp_path):
    """The chart data relabelled so that `task` verifies it."""
    samples = read_samples(chart_data / "train.jsonl")[:8]
    for s in samples:
        s.task = task
    path = tmp_path / "data" / "train.jsonl"
    write_samples(path, samples)
    for image in {i for s in samples for i in s.images}:
        (path.parent / image).parent.mkdir(parents=True, exist_ok=True)
        (path.parent / image).write_bytes((chart_data / image).read_bytes())
    return path


def _recipe(chart_data, tmp_path, task, **verifier):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=1)
    recipe.data.train, recipe.data.test = _data_for(task, chart_data, tmp_path), None
    for key, value in verifier.items():
        setattr(recipe.verifier, key, value)
    return recipe


def test_a_training_step_uses_the_third_party_plugin_by_name(example_plugin, chart_data, tmp_path):
    recipe = _recipe(chart_data, tmp_path, "exact", options={"exact": {"strip": True}})
    result = train(recipe)
    assert result.steps == 1
    traces = [json.loads(line) for line in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    rollouts = [t for t in traces if t["kind"] == "rollout"]
    assert rollouts and all(t["task"] == "exact" for t in rollouts)
    assert all(t["detail"].startswith("exact: ") or t["detail"].startswith("no 'Answer:'") or
               t["detail"].startswith("nothing after") for t in rollouts)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["verifier_errors"] == 0


def test_a_hanging_plugin_does_not_stop_training(example_plugin, chart_data, tmp_path):
    recipe = _recipe(chart_data, tmp_path, "hang", timeout_s=0.5)
    messages = []
    result = train(recipe, on_message=messages.append)
    assert result.steps == 1
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    rollouts = recipe.train.prompts_per_step * recipe.rollout.num_generations
    assert metrics["verifier_errors"] == rollouts and metrics["accuracy"] == 0.0
    assert metrics["n_memorize"] == recipe.train.prompts_per_step  # nothing correct: every prompt memorizes
    assert any(f"{rollouts} verifier call(s) failed" in m and "timed out after 0.5 s" in m for m in messages)


def test_the_documented_plugin_example_works():
    guide = (REPO / "docs" / "verifiers.md").read_text(encoding="utf-8")
    section = guide[guide.index("## Writing a verifier plugin"):]
    code = section[section.index("```python") + len("```python"): section.index("```\n", section.index("```python") + 9)]
    namespace: dict = {}
    exec(compile(code, "docs/verifiers.md example", "exec"), namespace)
    verifier = namespace["UnitsVerifier"]()
    sample = Sample(id="s", task="units", question="q", answer="3000 m")
    assert verifier.verify("3 km is 3000 m. Answer: 3 km", sample).correct
    assert not verifier.verify("Answer: 3 m", sample).correct
    assert not verifier.verify("Answer: three", sample).correct
    assert validate_options("units", namespace["UnitsVerifier"], {"relative_tolerance": "0.1"}) == {"relative_tolerance": 0.1}


SECRET = "sk-live-0123456789"


def test_a_secret_option_is_read_from_the_environment_and_never_written(example_plugin, chart_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DYME_TEST_KEY", SECRET)
    recipe = _recipe(chart_data, tmp_path, "keyed", options={"keyed": {"api_key": {"env": "DYME_TEST_KEY"}}})
    train(recipe)
    run = tmp_path / "run"
    traces = [json.loads(line) for line in (run / "traces.jsonl").read_text().splitlines()]
    details = {t["detail"] for t in traces if t["kind"] == "rollout"}
    assert details == {f"called with a key of {len(SECRET)} characters"}  # the plugin got the value
    written = [path for path in run.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert written == [] and 'api_key" = {"env" = "DYME_TEST_KEY"}' in (run / "recipe.toml").read_text()


def test_a_secret_written_into_a_recipe_or_a_missing_variable_is_a_one_line_error(example_plugin, chart_data, tmp_path):
    from dyme_cli.recipe import RecipeError, recipe_from_dict, recipe_to_toml

    recipe = _recipe(chart_data, tmp_path, "keyed", options={"keyed": {"api_key": {"env": "DYME_TEST_UNSET_KEY"}}})
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(recipe_to_toml(recipe))
    result = runner.invoke(app, ["train", str(recipe_file), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "[verifier.options.keyed].api_key: the environment variable DYME_TEST_UNSET_KEY is not set" in result.output
    with pytest.raises(RecipeError, match=r'keyed.api_key looks like a secret: write api_key = \{ env = "VARIABLE" \}'):
        recipe_from_dict({**recipe.model_dump(mode="json"), "verifier": {"options": {"keyed": {"api_key": SECRET}}}})


# ---------------------------------------------------------------- plugins that never start


def _hanging_import_plugin(tmp_path, monkeypatch) -> None:
    """A distribution whose verifier module never finishes importing (a network call at import time)."""
    dist = tmp_path / "stuck_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stuck-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dyme.verifiers]\nstuck = stuck_plugin:Stuck\n")
    (tmp_path / "stuck_plugin.py").write_text("import time\ntime.sleep(3600)\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("case, message", [
    ("slowstart", "starting the verifiers slowstart: no answer within 3 s"),
    ("exitstart", "starting the verifiers exitstart: the process ended (exit code 7) without an answer"),
    ("stuck", "starting the verifiers stuck: no answer within 3 s"),
])
def test_a_plugin_whose_import_or_constructor_never_returns_or_exits_is_one_line(case, message, example_plugin,
                                                                                 monkeypatch, tmp_path):
    import time

    import dyme_cli.plugins

    _hanging_import_plugin(tmp_path, monkeypatch)
    monkeypatch.setattr(dyme_cli.plugins, "START_DEADLINE_S", 3.0)
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"completion": "Answer: 1", "expect": True, "sample": {
        "id": "a", "task": case, "question": "q", "answer": "1"}}) + "\n")
    started = time.monotonic()
    result = runner.invoke(app, ["verifiers", "check", case, "--cases", str(cases)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert " ".join(result.output.split()).startswith(f"error: {message}")
    assert time.monotonic() - started < 60  # the deadline, the child's start and its kill; not the plugin's hour


def test_listing_with_a_plugin_whose_import_never_returns_ends_in_one_line(example_plugin, monkeypatch, tmp_path):
    import dyme_cli.plugins

    _hanging_import_plugin(tmp_path, monkeypatch)
    monkeypatch.setattr(dyme_cli.plugins, "START_DEADLINE_S", 3.0)
    result = runner.invoke(app, ["verifiers", "list", "--json"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: listing the installed verifiers: no answer within 3 s" in " ".join(result.output.split())


def test_a_second_sigterm_gives_up_a_step_that_does_not_end(example_plugin, chart_data, tmp_path, monkeypatch):
    """A step stuck in a plugin past every deadline the user set: the first SIGTERM asks for a stop after the step,
    a second one (past the grace that tells it from a launcher's forwarded copy) ends the step at once."""
    import os
    import signal
    import threading
    import time

    from dyme_cli.trainer import StepAbandoned, StopRequest
    from dyme_cli.verify_pool import VerifierPool

    recipe = _recipe(chart_data, tmp_path, "hang", timeout_s=3600.0)
    verifying, real_verify = threading.Event(), VerifierPool.verify

    def verify(self, jobs):
        verifying.set()
        return real_verify(self, jobs)

    def signal_twice():
        assert verifying.wait(600)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2 * StopRequest.REPEAT_GRACE_S)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(VerifierPool, "verify", verify)
    monkeypatch.setattr(StopRequest, "REPEAT_GRACE_S", 1.0)
    threading.Thread(target=signal_twice, daemon=True).start()
    messages = []
    with pytest.raises(StepAbandoned) as info:
        train(recipe, on_message=messages.append)
    assert str(info.value) == "SIGTERM: stopped during step 1, which was not saved; no checkpoint was saved"
    assert info.value.exit_code == 143 and "SIGTERM: stopping after the current step" in messages[-1]
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


def test_a_sigterm_repeated_within_the_grace_is_a_forwarded_copy_and_changes_nothing(monkeypatch):
    import signal

    import dyme_cli.trainer as trainer
    from dyme_cli.errors import Interrupted

    clock = [100.0]
    monkeypatch.setattr(trainer.time, "monotonic", lambda: clock[0])
    stop = trainer.StopRequest()
    stop._handle(signal.SIGTERM, None)
    clock[0] += trainer.StopRequest.REPEAT_GRACE_S - 0.1
    stop._handle(signal.SIGTERM, None)  # the launcher forwarding the scheduler's signal: ignored
    assert stop.signum == signal.SIGTERM
    clock[0] += 0.1
    with pytest.raises(Interrupted):
        stop._handle(signal.SIGHUP, None)


def test_a_reward_weight_no_verdict_returns_is_said_once(chart_data, tmp_path):
    recipe = _recipe(chart_data, tmp_path, "chart")
    recipe.train.max_steps = 2
    recipe.train.reward_weights = {"acuracy": 1.0, "format": 0.5}  # misspelt: accuracy would weigh nothing
    messages = []
    train(recipe, on_message=messages.append)
    said = [m for m in messages if m.startswith("[train].reward_weights")]
    assert said == ["[train].reward_weights: no verdict of step 1 returned 'acuracy' (they returned 'accuracy', "
                    "'format', 'thinking'); a reward without a weight counts zero"]

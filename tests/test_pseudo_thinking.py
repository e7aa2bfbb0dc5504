"""Pseudo-thinking detectors, the reference index, the summary and trace loading, on hand-written traces."""

from __future__ import annotations

import json

import pytest

from dyme_cli.data import DataError, Sample
from dyme_cli.pseudo_thinking import (
    FLAGS,
    Flag,
    ReferenceIndex,
    SampleContext,
    context_from_trace,
    filter_traces,
    flag_trace,
    flag_traces,
    load_traces,
    sample_contexts,
    summarize,
)

DIFF = SampleContext(
    question="How much larger is the red bar than the blue bar?",
    reference="Compare the red and blue bars. red = 7, green = 1, blue = 3. The red bar is 7 and the blue bar is 3. "
    "7 - 3 = 4.",
    facts={"chart": "bar", "values": {"red": 7, "green": 1, "blue": 3}},
)
LARGEST = SampleContext(
    question="Which bar has the largest value?",
    reference="Find the largest bar. red = 1, green = 3, blue = 5. The largest is blue (5).",
    facts={"chart": "bar", "values": {"red": 1, "green": 3, "blue": 5}},
)
INDEX = ReferenceIndex({"diff": DIFF.reference, "largest": LARGEST.reference})


def rollout(completion: str, *, correct: bool = False, truncated: bool = False, prompt_id: str = "diff", **extra):
    return {"kind": "rollout", "prompt_id": prompt_id, "completion": completion, "correct": correct,
            "truncated": truncated, "tokens": 10, **extra}


def flags_of(completion: str, sample: SampleContext | None = DIFF, index: ReferenceIndex | None = INDEX, **kw):
    return {f.name: f for f in flag_trace(rollout(completion, **kw), sample, index)}


def span_texts(completion: str, flag: Flag) -> list[str]:
    return [completion[a:b] for a, b in flag.spans]


# ------------------------------------------------------------------ answer flag, empty, truncated


def test_missing_answer_flag_fires_no_answer():
    found = flags_of("red = 7, blue = 3. 7 - 3 = 4.")
    assert "no-answer" in found
    assert "'Answer:'" in found["no-answer"].reason


def test_two_answer_flags_fire_no_answer_with_both_spans():
    text = "Answer: 3. red = 7, blue = 3. 7 - 3 = 4. answer: 4"
    found = flags_of(text)
    assert "2 times" in found["no-answer"].reason
    assert span_texts(text, found["no-answer"]) == ["Answer:", "answer:"]


def test_one_answer_flag_is_not_no_answer():
    assert "no-answer" not in flags_of("red = 7, blue = 3. 7 - 3 = 4. Answer: 4")


def test_empty_thinking_fires_on_whitespace_before_flag():
    text = "  \n Answer: 4"
    found = flags_of(text)
    assert span_texts(text, found["empty-thinking"]) == ["Answer:"]
    assert "empty-thinking" not in flags_of("red = 7. Answer: 4")


def test_truncated_follows_the_trace_field():
    assert "truncated" in flags_of("red = 7, blue = 3", truncated=True)
    assert "truncated" not in flags_of("red = 7, blue = 3", truncated=False)


# ------------------------------------------------------------------ conclusion-mismatch


def test_conclusion_mismatch_on_numbers_names_both_and_points_at_them():
    text = "7 - 3 = 4. Answer: 5"
    flag = flags_of(text)["conclusion-mismatch"]
    assert "4" in flag.reason and "5" in flag.reason
    assert flag.spans == ((8, 9), (19, 20))
    assert span_texts(text, flag) == ["4", "5"]


@pytest.mark.parametrize("text", [
    "red = 7, blue = 3. 7 - 3 = 4. Answer: 4",
    "red = 7, blue = 3. 7 - 3 = 4. Answer: 4.0",  # compared as numbers
    "I looked at the chart closely. Answer: 4",  # no result stated
    "red = 7, green = 1, blue = 3. Answer: 4",  # a list of readings states no result
    "The red bar is the tallest. Answer: red",
])
def test_conclusion_mismatch_near_misses(text):
    assert "conclusion-mismatch" not in flags_of(text)


def test_conclusion_mismatch_on_entities():
    text = "The blue bar is tallest. Answer: red"
    flag = flags_of(text, sample=LARGEST, prompt_id="largest")["conclusion-mismatch"]
    assert "'blue'" in flag.reason and "'red'" in flag.reason
    assert span_texts(text, flag) == ["blue", "red"]


@pytest.mark.parametrize("text, concluded", [
    ("red = 7 and blue = 3, so the difference is 4. Answer: 5", "4"),
    ("The red bar is 7 and the blue bar is 3, which gives 4. Answer: 5", "4"),
    ("red is 7, blue is 3, therefore 4. Answer: 5", "4"),
])
def test_a_conclusion_after_readings_in_one_sentence_is_compared(text, concluded):
    flag = flags_of(text)["conclusion-mismatch"]
    assert flag.reason == f"thinking concludes {concluded} but the answer is 5"
    assert "conclusion-mismatch" not in flags_of(text.replace("Answer: 5", f"Answer: {concluded}"))


def test_an_entity_conclusion_after_readings_in_one_sentence_is_compared():
    text = "red is 1 and blue is 5, so blue is the largest. Answer: red"
    flag = flags_of(text, sample=LARGEST, prompt_id="largest")["conclusion-mismatch"]
    assert flag.reason == "thinking concludes 'blue' but the answer is 'red'"


def test_conclusion_compares_last_result_of_the_chain():
    assert "conclusion-mismatch" in flags_of("red = 7, blue = 3. 7 - 3 = 4, 4 + 1 = 5. Answer: 4")


# ------------------------------------------------------------------ misread-value


@pytest.mark.parametrize("statement", [
    "red = 9.", "red: 9.", "red is 9.", "red equals 9.", "The red bar is 9.", "The red bar has a value of 9.",
    "The red bar's value is 9.", "The tallest is red (9).", "9 (red) is the tallest.", "There is 9 for the red bar.",
])
def test_a_value_bound_to_a_label_against_the_facts_is_a_misread(statement):
    text = f"Look at the bars. {statement} 7 - 3 = 4. Answer: 4"
    flags = flags_of(text, correct=True)
    assert flags["misread-value"].reason == "thinking reads red 9 (the facts: 7)"
    assert "9" in "".join(span_texts(text, flags["misread-value"]))
    assert "misread-value" in flags["right-for-wrong-reasons"].reason


@pytest.mark.parametrize("text", [
    "red = 7, green = 1, blue = 3. The red bar is 7 and the blue bar is 3. 7 - 3 = 4. Answer: 4",  # right readings
    "The red bar is 4 more than the blue bar. Answer: 4",  # a comparison, not a reading
    "The difference between red and blue is 4. Answer: 4",
    "The red and blue bars together: red and blue is 10. Answer: 4",
    "red - blue = 7 - 3 = 4. Answer: 4",  # an expression
    "red = 7 - 3 is not the question. Answer: 4",
])
def test_statements_that_read_no_single_value_are_not_misreads(text):
    assert "misread-value" not in flags_of(text)


def test_a_misread_value_that_happens_to_be_derivable_is_still_caught():
    text = "red = 4, blue = 3. 4 + 3 = 7. Answer: 4"  # 4 and 7 are grounded numbers; red is 7, not 4
    flags = flags_of(text)
    assert "ungrounded-value" not in flags and flags["misread-value"].reason == "thinking reads red 4 (the facts: 7)"


MEDICAL = SampleContext(question="How many lesions are there?", reference="",
                        facts={"organ": "lungs", "count": 2, "lesions": [{"region": "upper left"}, {"region": "lower right"}]})
HEALTHY = SampleContext(question="Is there any abnormality?", reference="", facts={"organ": "brain", "count": 0, "lesions": []})


@pytest.mark.parametrize("sample, text, reason", [
    (MEDICAL, "The scan shows two lungs. There are three bright lesions. Answer: 2", "lesion count three (the facts: 2)"),
    (MEDICAL, "I count 1 lesion. Answer: 2", "lesion count 1 (the facts: 2)"),
    (MEDICAL, "There are no lesions, nothing looks abnormal. Answer: no",
     "lesion count no (the facts: 2) and finding nothing looks abnormal (the facts: abnormal)"),
    (HEALTHY, "There is one bright lesion, so it looks abnormal. Answer: yes",
     "lesion count one (the facts: 0) and finding looks abnormal (the facts: normal)"),
])
def test_lesion_counts_and_findings_against_the_facts(sample, text, reason):
    assert flags_of(text, sample=sample, index=None)["misread-value"].reason == f"thinking reads {reason}"


@pytest.mark.parametrize("sample, text", [
    (MEDICAL, "The scan shows two lungs. There are two bright lesions: one in the upper left region. Answer: 2"),
    (HEALTHY, "There are no bright lesions. Nothing looks abnormal, so no. Answer: no"),
])
def test_right_lesion_counts_and_findings_are_not_misreads(sample, text):
    assert "misread-value" not in flags_of(text, sample=sample, index=None)


# ------------------------------------------------------------------ ungrounded-value


def test_invented_number_is_ungrounded_and_named():
    text = "red = 7, blue = 3. 9 - 3 = 6. Answer: 4"
    flag = flags_of(text)["ungrounded-value"]
    assert flag.reason.startswith("thinking uses 9, which is in neither the question, the facts nor the reference")
    assert span_texts(text, flag) == ["9"]
    assert flag.spans == ((19, 20),)


def test_wrong_written_arithmetic_is_ungrounded_even_when_its_result_is_a_source_number():
    text = "red = 7, blue = 3. 7 - 3 = 1. Answer: 4"  # 1 is green's value, and 4 - 3: grounded by (a) and (c)
    flag = flags_of(text)["ungrounded-value"]
    assert flag.reason == "1 is not what the written arithmetic before it gives" and span_texts(text, flag) == ["1"]


def test_correct_difference_is_grounded():
    assert "ungrounded-value" not in flags_of("red = 7, blue = 3. 7 − 3 = 4. Answer: 4")


def test_restated_question_number_is_grounded():
    facts = {"values": {"red": 7, "green": 1, "blue": 3}}
    text = "The question adds 12. red = 7. 7 + 12 = 19. Answer: 19"
    asks = SampleContext(question="What is the red bar plus 12?", facts=facts)
    does_not_ask = SampleContext(question="What is the red bar plus something?", facts=facts)
    assert "ungrounded-value" not in flags_of(text, sample=asks)
    assert "12" in flags_of(text, sample=does_not_ask)["ungrounded-value"].reason


def test_number_from_facts_is_grounded():
    facts = SampleContext(facts={"values": {"red": 17, "green": 40, "blue": 3}})
    assert "ungrounded-value" not in flags_of("The green bar is 40. Answer: 40", sample=facts)
    assert "29" in flags_of("The green bar is 29. Answer: 29", sample=facts)["ungrounded-value"].reason


def test_percentage_of_grounded_numbers_is_grounded():
    facts = SampleContext(facts={"values": {"red": 3, "blue": 4}})
    assert "ungrounded-value" not in flags_of("red = 3, blue = 4. 3 / 4 = 75%. Answer: 75", sample=facts)
    assert "ungrounded-value" not in flags_of("red = 3, blue = 4. Red is 75% of blue. Answer: 75", sample=facts)
    assert "80%" in flags_of("red = 3, blue = 4. 3 / 4 = 80%. Answer: 80", sample=facts)["ungrounded-value"].reason


def test_rounded_ratio_is_grounded():
    facts = SampleContext(facts={"values": {"red": 2, "blue": 3}})
    assert "ungrounded-value" not in flags_of("red = 2, blue = 3. 2 / 3 = 66.7%. Answer: 66.7", sample=facts)


def test_chain_sum_of_three_grounded_numbers_is_grounded():
    facts = SampleContext(facts={"values": {"red": 3, "green": 2, "blue": 4}})
    assert "ungrounded-value" not in flags_of("3 + 2 + 4 = 9. Answer: 9", sample=facts)
    assert "10" in flags_of("3 + 2 + 4 = 10. Answer: 10", sample=facts)["ungrounded-value"].reason


def test_derived_results_ground_later_steps():
    facts = SampleContext(facts={"values": {"red": 7, "green": 2, "blue": 3}})
    assert "ungrounded-value" not in flags_of("7 - 3 = 4, 4 + 2 = 6. Answer: 6", sample=facts)
    # 8 = 4 * 2 only once the derived 4 is grounded; from 7, 3, 2 alone 8 is no sum, difference, product or ratio
    assert "ungrounded-value" not in flags_of("7 - 3 = 4, so twice that is 8. Answer: 8", sample=facts)
    assert "8" in flags_of("Twice the difference is 8. Answer: 8", sample=facts)["ungrounded-value"].reason


def test_invented_category_label_is_ungrounded():
    text = "The purple bar is 7 and the red bar is 3. Answer: 4"
    flag = flags_of(text)["ungrounded-value"]
    assert "'purple'" in flag.reason
    assert span_texts(text, flag) == ["purple"]


def test_capitalised_name_mid_sentence_is_ungrounded_but_sentence_start_is_not():
    text = "The red bar is 7 like in Germany. Compare it with blue = 3. Answer: 4"
    flag = flags_of(text)["ungrounded-value"]
    assert "'Germany'" in flag.reason
    assert "Compare" not in flag.reason


def test_ungrounded_needs_a_sample_context():
    assert "ungrounded-value" not in flags_of("red = 7, blue = 3. 9 - 3 = 6. Answer: 4", sample=None)


# ------------------------------------------------------------------ ignores-image


def test_ignores_image_when_no_fact_is_mentioned():
    text = "I think the answer is clear. Answer: 4"
    flag = flags_of(text)["ignores-image"]
    assert "red" in flag.reason
    assert span_texts(text, flag) == ["I think the answer is clear."]


@pytest.mark.parametrize("text", ["The red one is big. Answer: 4", "It is 7.0 high. Answer: 4"])
def test_mentioning_a_fact_key_or_value_is_not_ignoring(text):
    assert "ignores-image" not in flags_of(text)


def test_no_facts_no_ignores_image():
    assert "ignores-image" not in flags_of("I think the answer is clear. Answer: 4", sample=SampleContext("q?"))


# ------------------------------------------------------------------ repetition


def test_repetition_quotes_the_repeated_ngram():
    text = "the red bar is 7 " * 5  # 25 words, 22 4-grams, 5 distinct: 77% repeats
    flag = flags_of(text)["repetition"]
    assert "'the red bar is' repeats 5 times (77%" in flag.reason
    assert span_texts(text, flag) == ["the red bar is"] * 5


def test_no_repetition_in_an_honest_trace_or_a_short_loop():
    honest = ("Let me look at the chart. " + DIFF.reference + " So the red bar is taller by that much, which matches "
              "the question about how much larger it is. Answer: 4")
    assert "repetition" not in flags_of(honest)
    assert "repetition" not in flags_of("yes " * 11)  # under 12 words
    assert "repetition" in flags_of("yes " * 12)


# ------------------------------------------------------------------ parroted-reference


def test_copy_of_another_samples_reference_is_parroting():
    text = LARGEST.reference + " Answer: blue"
    flag = flags_of(text)["parroted-reference"]
    assert "largest" in flag.reason and "1.00" in flag.reason
    assert span_texts(text, flag) == [LARGEST.reference]


def test_copy_of_its_own_reference_is_not_parroting():
    assert "parroted-reference" not in flags_of(DIFF.reference + " Answer: 4")


def test_copy_of_a_reference_identical_to_its_own_is_not_parroting():
    index = ReferenceIndex({"diff": DIFF.reference, "twin": DIFF.reference})
    assert "parroted-reference" not in flags_of(DIFF.reference + " Answer: 4", index=index)


def test_near_verbatim_copy_of_a_long_reference_is_parroting():
    long_ref = ("Okay so let me think about this chart, there are some coloured bars here and I need to look at them "
                "carefully, the red one looks like about 1 and then the blue one looks like about 5, hmm, so going "
                "back to the question, the largest is blue (5). I think that is it, yes.")
    index = ReferenceIndex({"diff": DIFF.reference, "long": long_ref})
    near = long_ref.replace("I think that is it, yes.", "I believe that is it, yes.")
    assert "long" in flags_of(near + " Answer: blue", index=index)["parroted-reference"].reason


def test_reference_index_best_match():
    index = ReferenceIndex({"a": "one two three four five six", "b": "one two three four five seven",
                            "c": "eight nine ten eleven twelve thirteen"})
    assert index.best_match("eight nine ten eleven twelve thirteen") == ("c", 1.0)
    assert index.best_match("eight nine ten eleven twelve thirteen", exclude="c") is None
    # a: shingles {123, 234, 345, 456}; b shares 3 of them and adds 457: Jaccard 3/5 < 0.8
    assert index.best_match("one two three four five six", exclude="a") is None
    assert ReferenceIndex(index_refs := {"a": "one two three four five six"}, threshold=0.5).best_match(
        "one two three four five seven") == ("a", 0.6)
    assert "a" in ReferenceIndex(index_refs)


# ------------------------------------------------------------------ right-for-wrong-reasons


def test_right_for_wrong_reasons_only_when_correct():
    text = "red = 7, blue = 3. 9 - 3 = 6. 7 - 3 = 4. Answer: 4"
    right = flags_of(text, correct=True)
    assert "right-for-wrong-reasons" in right
    assert "9" in right["right-for-wrong-reasons"].reason
    assert span_texts(text, right["right-for-wrong-reasons"]) == ["9"]
    assert "right-for-wrong-reasons" not in flags_of(text, correct=False)
    assert "right-for-wrong-reasons" not in flags_of("red = 7, blue = 3. 7 - 3 = 4. Answer: 4", correct=True)


def test_right_for_wrong_reasons_from_a_conclusion_mismatch():
    assert "right-for-wrong-reasons" in flags_of("red = 7, blue = 3. 7 - 3 = 5. Answer: 4", correct=True)


def test_flags_come_in_flags_order_once_each():
    names = [f.name for f in flag_trace(rollout("the red bar is 7 " * 5, truncated=True, correct=True), DIFF, INDEX)]
    assert names == ["no-answer", "truncated", "repetition"]


# ------------------------------------------------------------------ contexts


def test_sample_contexts_and_trace_contexts():
    sample = Sample(id="s1", task="chart", question="Q?", answer="4", images=["a.png"], reference="R.",
                    facts={"values": {"red": 7}})
    assert sample_contexts([sample]) == {"s1": SampleContext("Q?", "R.", {"values": {"red": 7}})}
    eval_trace = rollout("x", question="Q?", reference="R.", facts={"values": {"red": 7}}, images=[])
    assert context_from_trace(eval_trace) == SampleContext("Q?", "R.", {"values": {"red": 7}})
    assert context_from_trace(rollout("x")) is None


def test_flag_traces_uses_a_trace_context_and_skips_targets():
    eval_trace = rollout("red = 7, blue = 3. 9 - 3 = 6. Answer: 4", mode="eval", question=DIFF.question,
                         reference=DIFF.reference, facts=DIFF.facts)
    target = {**rollout("red = 7, blue = 3. 9 - 3 = 6. Answer: 4"), "kind": "target"}
    out = flag_traces([eval_trace, target])
    assert "ungrounded-value" in {f.name for f in out[0]}
    assert out[1] == []


# ------------------------------------------------------------------ summary


def summary_fixture():
    def r(step, pid, mode, index, correct, reward):
        return {"run": "r", "step": step, "prompt_id": pid, "kind": "rollout", "mode": mode, "rollout": index,
                "correct": correct, "reward": reward, "completion": ""}

    traces = [
        r(1, "p1", "explore", 0, True, 1.0),
        r(1, "p1", "explore", 1, False, 0.0),
        r(1, "p2", "memorize", 0, False, 0.0),
        r(1, "p2", "memorize", 1, False, 0.0),
        {"run": "r", "step": 1, "prompt_id": "p2", "kind": "target", "mode": "memorize", "reward": None,
         "correct": True, "completion": ""},
        r(2, "p1", "skip", 0, True, 1.5),
        r(2, "p1", "skip", 1, True, 1.5),
        r(2, "p3", "explore", 0, True, 1.0),
        r(2, "p3", "explore", 1, False, 1.0),
        r(None, "p9", "eval", 0, True, None),
    ]
    ungrounded = Flag("ungrounded-value", "x")
    rfwr = Flag("right-for-wrong-reasons", "x")
    no_answer = Flag("no-answer", "x")
    flags = [[ungrounded, rfwr], [], [], [no_answer], [no_answer], [], [], [], [], [no_answer]]
    return traces, flags


def test_summary_counts_against_hand_counts():
    traces, flags = summary_fixture()
    s = summarize(traces, flags, windows=2)
    assert set(s) == {"traces", "flagged", "flags", "by_mode", "windows", "advantage_collapse"}
    assert s["traces"] == 9  # the target line is not a rollout
    assert s["flagged"] == 3
    assert set(s["flags"]) == set(FLAGS)
    assert s["flags"]["no-answer"] == {"count": 2, "rate": pytest.approx(2 / 9)}
    assert s["flags"]["ungrounded-value"] == {"count": 1, "rate": pytest.approx(1 / 9)}
    assert s["flags"]["repetition"] == {"count": 0, "rate": 0.0}
    assert {m: v["traces"] for m, v in s["by_mode"].items()} == {"explore": 4, "memorize": 2, "skip": 2, "eval": 1}
    assert s["by_mode"]["memorize"]["flags"]["no-answer"] == 1
    assert s["by_mode"]["explore"]["flags"]["right-for-wrong-reasons"] == 1
    assert set(s["by_mode"]["skip"]["flags"]) == set(FLAGS)


def test_summary_windows_and_mode_fractions():
    traces, flags = summary_fixture()
    first, second = summarize(traces, flags, windows=2)["windows"]
    # steps 0 (eval, step None), 1, 2 in two windows: [0] and [1, 2]
    assert first["steps"] == [0, 0] and first["traces"] == 1
    assert first["accuracy"] == 1.0 and first["reward_mean"] is None
    assert first["flag_rates"]["no-answer"] == 1.0
    assert first["modes"] == {"eval": 1.0}
    assert second["steps"] == [1, 2] and second["traces"] == 8
    assert second["accuracy"] == pytest.approx(4 / 8)
    assert second["reward_mean"] == pytest.approx(6.0 / 8)
    assert second["flag_rates"]["no-answer"] == pytest.approx(1 / 8)
    assert second["flag_rates"]["ungrounded-value"] == pytest.approx(1 / 8)
    assert second["modes"] == {"explore": 0.5, "memorize": 0.25, "skip": 0.25}
    assert [w["steps"] for w in summarize(traces, flags, windows=10)["windows"]] == [[0, 0], [1, 1], [2, 2]]


def test_summary_advantage_collapse_by_cause():
    traces, flags = summary_fixture()
    # groups with rewards: (1,p1) spread; (1,p2) all wrong; (2,p1) all correct; (2,p3) mixed, same reward.
    # (None,p9) has a None reward and is skipped.
    assert summarize(traces, flags)["advantage_collapse"] == {
        "groups": 4, "zero_std": 0.75, "all_correct": 0.25, "all_wrong": 0.25, "mixed": 0.25,
    }


def test_summary_of_nothing_and_mismatched_lengths():
    empty = summarize([], [])
    assert empty["traces"] == 0 and empty["windows"] == [] and empty["advantage_collapse"]["groups"] == 0
    with pytest.raises(ValueError):
        summarize([rollout("x")], [])


# ------------------------------------------------------------------ loading and filtering


def test_load_traces_reads_lines_and_names_bad_line(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n\n" + json.dumps({"step": 2}) + "\n", encoding="utf-8")
    assert load_traces(path) == [{"step": 1}, {"step": 2}]
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3"):
        load_traces(path)
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:1"):
        load_traces(path)


def test_filter_traces_by_steps_and_mode():
    traces = [{"step": None, "mode": "eval"}, {"step": 1, "mode": "explore"}, {"step": 2, "mode": "memorize"},
              {"step": 3, "mode": "explore"}]
    assert filter_traces(traces, (1, 2), None) == traces[1:3]
    assert filter_traces(traces, (None, 0), None) == traces[:1]
    assert filter_traces(traces, (2, None), "explore") == traces[3:]
    assert filter_traces(traces, None, "explore") == [traces[1], traces[3]]


def test_the_labelled_faults_of_bench_flags_quality_are_found():
    """bench/flags_quality.py on a small set of its own kind (another generator seed than the benchmark's and the
    tuning seed): every fault's grounding labels are found, and no unperturbed trace is flagged."""
    import flags_quality

    cases = flags_quality.labelled_set(seed=5, n=6)
    assert {c.fault for c in cases} >= {"misread-asked", "misread-count", "hidden-conclusion", "wrong-arithmetic"}
    for case in cases:
        fired = {f.name for f in flag_trace(flags_quality.trace_of(case), flags_quality.context_of(case), None)}
        scored = set(flags_quality.GROUNDING) | {"right-for-wrong-reasons"}
        assert case.labels & scored <= fired, (case.fault, case.thinking)
        if case.fault == "none":
            assert not fired & scored, case.thinking

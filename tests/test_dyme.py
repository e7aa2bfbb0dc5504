"""The DyME gate and GRPO advantages on groups computed by hand."""

import math

import pytest

from dyme_cli.dyme import Mode, Switch, anneal_probability, decide, gate, group_advantages, total_reward, zero_std_cause

EPS = 1e-4


def test_all_wrong_group_is_memorized_and_its_rollouts_get_no_advantage():
    (d,) = decide([[False] * 4], [[0.0, 0.5, 0.0, 0.0]], eps=EPS)
    assert d.mode is Mode.MEMORIZE
    assert d.advantages == [0.0, 0.0, 0.0, 0.0]


def test_mixed_group_explores_with_group_normalised_advantages():
    rewards = [1.5, 0.5, 0.0, 0.5]
    (d,) = decide([[True, False, False, False]], [rewards], eps=EPS)
    # mean 0.625; deviations .875 -.125 -.625 -.125; sample variance 1.1875 / 3
    sd = math.sqrt(1.1875 / 3)
    assert d.mode is Mode.EXPLORE
    assert d.advantages == pytest.approx([0.875 / (sd + EPS), -0.125 / (sd + EPS), -0.625 / (sd + EPS), -0.125 / (sd + EPS)])
    assert sum(d.advantages) == pytest.approx(0.0, abs=1e-9)


def test_k2_group():
    (d,) = decide([[True, False]], [[1.0, 0.0]], eps=EPS)
    sd = math.sqrt(0.5)  # ((.5)^2 + (.5)^2) / (2 - 1)
    assert d.advantages == pytest.approx([0.5 / (sd + EPS), -0.5 / (sd + EPS)])


def test_all_correct_group_is_skipped_by_default():
    (d,) = decide([[True, True, True]], [[1.5, 1.0, 1.5]], eps=EPS)
    assert d.mode is Mode.SKIP and d.advantages == [0.0, 0.0, 0.0]


def test_all_correct_group_can_explore():
    (d,) = decide([[True, True, True]], [[1.5, 1.0, 1.5]], all_correct="explore", eps=EPS)
    sd = math.sqrt((2 * (1 / 6) ** 2 + (1 / 3) ** 2) / 2)
    assert d.mode is Mode.EXPLORE
    assert d.advantages == pytest.approx([(1 / 6) / (sd + EPS), (-1 / 3) / (sd + EPS), (1 / 6) / (sd + EPS)])


def test_ties_give_zero_advantages_without_nan():
    (d,) = decide([[True, False]], [[0.5, 0.5]], eps=EPS)
    assert d.mode is Mode.EXPLORE and d.advantages == [0.0, 0.0]
    (e,) = decide([[True, True]], [[1.0, 1.0]], all_correct="explore", eps=EPS)
    assert all(math.isfinite(a) and a == 0.0 for a in e.advantages)
    assert zero_std_cause([True, False], [0.5, 0.5]) == "mixed"
    assert zero_std_cause([True, True], [1.0, 1.0]) == "all_correct"
    assert zero_std_cause([False, False], [0.0, 0.0]) == "all_wrong"
    assert zero_std_cause([True, False], [1.0, 0.0]) is None


def test_scale_none_and_batch():
    assert group_advantages([1.0, 0.0, 0.0, 0.0], "none", EPS, batch_std=9.0) == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert group_advantages([1.0, 0.0], "batch", EPS, batch_std=2.0) == pytest.approx([0.5 / (2 + EPS), -0.5 / (2 + EPS)])
    groups = [[1.0, 0.0], [2.0, 0.0]]
    d1, d2 = decide([[True, False], [True, False]], groups, scale_rewards="batch", eps=EPS)
    # batch: values 1, 0, 2, 0 -> mean .75, sample variance (.0625 + .5625 + 1.5625 + .5625) / 3
    sd = math.sqrt(2.75 / 3)
    assert d1.advantages == pytest.approx([0.5 / (sd + EPS), -0.5 / (sd + EPS)])
    assert d2.advantages == pytest.approx([1.0 / (sd + EPS), -1.0 / (sd + EPS)])


def test_baseline_algorithms():
    assert gate([True, False], "sft", "skip") is Mode.MEMORIZE
    assert gate([], "sft", "skip") is Mode.MEMORIZE
    assert gate([False, False], "grpo", "skip") is Mode.EXPLORE  # GRPO never memorizes
    assert gate([True, True], "grpo", "skip") is Mode.SKIP
    assert gate([False, False], "dyme", "skip") is Mode.MEMORIZE


def test_threshold_switch_memorizes_below_the_fraction_correct():
    half = Switch(threshold=0.5)
    assert gate([True, False, False, False], "threshold", "skip", half) is Mode.MEMORIZE  # 1/4 < 0.5
    assert gate([True, True, False, False], "threshold", "skip", half) is Mode.EXPLORE  # 2/4 is not below 0.5
    assert gate([True, True], "threshold", "skip", half) is Mode.SKIP
    assert gate([True, False, False], "threshold", "skip", Switch(threshold=0.34)) is Mode.MEMORIZE  # 1/3 < 0.34
    # threshold 0 never memorizes: GRPO; DyME's rule is "none correct", whatever the threshold
    assert gate([False, False], "threshold", "skip", Switch(threshold=0.0)) is Mode.EXPLORE
    assert gate([True, False, False, False], "dyme", "skip", half) is Mode.EXPLORE


def test_sft_annealing_memorizes_by_its_draw_whatever_the_rollouts():
    switch = Switch(memorize_probability=0.3)
    assert gate([True, True], "anneal", "skip", switch, draw=0.29) is Mode.MEMORIZE
    assert gate([True, True], "anneal", "skip", switch, draw=0.3) is Mode.SKIP
    assert gate([False, False], "anneal", "skip", switch, draw=0.9) is Mode.EXPLORE  # GRPO on the rest
    modes = [d.mode for d in decide([[False, True]] * 3, [[0.0, 1.0]] * 3, algorithm="anneal",
                                    switch=Switch(memorize_probability=0.5, draws=[0.1, 0.7, 0.49]))]
    assert modes == [Mode.MEMORIZE, Mode.EXPLORE, Mode.MEMORIZE]


def test_anneal_probability_falls_linearly_from_one_at_the_first_step_to_zero_at_the_last():
    assert [anneal_probability(step, 5) for step in range(1, 6)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert anneal_probability(1, 1) == 1.0


def test_total_reward_weights_components():
    assert total_reward({"accuracy": 1.0, "format": 1.0, "thinking": 0.4}, {"accuracy": 1.0, "format": 0.5}) == 1.5

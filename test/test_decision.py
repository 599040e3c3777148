"""Conformal p-values, the power martingale and CUSUM on controlled score streams."""

from dataclasses import replace

import numpy as np
import pytest

from vae_ood_monitor.decision import P_FLOOR, ConformalDecider, DecisionParams, pareto_tail_index

CALIBRATION = np.random.default_rng(0).normal(10.0, 1.0, 2000)


def _stream(decider, scores):
    return [decider.update(float(s)) for s in scores]


def test_p_values_are_uniform_on_in_distribution_scores():
    decider = ConformalDecider(CALIBRATION, DecisionParams(tail="upper"))
    fresh = np.random.default_rng(1).normal(10.0, 1.0, 5000)
    p = np.array([decider.p_value(s) for s in fresh])
    assert abs(np.mean(p <= 0.05) - 0.05) < 0.01
    assert abs(np.mean(p <= 0.5) - 0.5) < 0.03


def test_two_sided_p_value_catches_collapsed_scores():
    upper = ConformalDecider(CALIBRATION, DecisionParams(tail="upper"))
    both = ConformalDecider(CALIBRATION, DecisionParams(tail="both"))
    assert upper.p_value(0.1) == 1.0  # far below: "very normal" to a one-sided test
    assert both.p_value(0.1) == pytest.approx(2 / 2001)
    assert both.p_value(100.0) == pytest.approx(2 / 2001)
    assert both.p_value(float(np.median(CALIBRATION))) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("tail", ["upper", "both"])
def test_cusum_stays_quiet_on_id_and_fires_within_frames_of_an_onset(tail):
    params = DecisionParams(tail=tail, epsilon=0.04, window=10, threshold=10.0)
    decider = ConformalDecider(CALIBRATION, params)
    rng = np.random.default_rng(2)
    id_part = _stream(decider, rng.normal(10.0, 1.0, 3000))
    assert not any(d.ood for d in id_part)
    ood_part = _stream(decider, rng.normal(16.0, 1.0, 30))
    first = next(i for i, d in enumerate(ood_part) if d.ood)
    assert first <= 10


def test_cusum_recovers_after_the_ood_stretch():
    decider = ConformalDecider(CALIBRATION, DecisionParams(window=5, threshold=10.0))
    rng = np.random.default_rng(3)
    _stream(decider, rng.normal(16.0, 1.0, 20))
    tail = _stream(decider, rng.normal(10.0, 1.0, 60))
    assert tail[0].ood and not tail[-1].ood and tail[-1].cusum == 0.0


def test_threshold_mode_is_a_plain_score_threshold():
    decider = ConformalDecider(CALIBRATION, DecisionParams(mode="threshold", threshold=12.5))
    assert [d.ood for d in _stream(decider, [12.4, 12.6, 3.0])] == [False, True, False]


def test_reset_forgets_the_evidence():
    decider = ConformalDecider(CALIBRATION, DecisionParams(window=5, threshold=10.0))
    _stream(decider, [20.0] * 10)
    decider.reset()
    assert decider.update(10.0).cusum == 0.0


def test_hill_estimate_recovers_a_pareto_tail_index():
    sample = np.sort(np.random.default_rng(4).pareto(3.0, 20000) + 1.0)  # P(X > x) = x^-3
    assert pareto_tail_index(sample) == pytest.approx(3.0, rel=0.2)
    assert pareto_tail_index(np.ones(500)) is None, "all tied at the top: no tail to fit"
    assert pareto_tail_index(np.arange(5.0)) is None, "too few scores"


def test_extrapolated_p_values_go_on_below_the_conformal_floor_only_beyond_the_calibration_range():
    plain = ConformalDecider(CALIBRATION, DecisionParams(tail="upper"))
    tail = ConformalDecider(CALIBRATION, DecisionParams(tail="upper", extrapolate=True))
    top = float(CALIBRATION.max())
    inside = np.linspace(CALIBRATION.min(), top, 50)
    assert [tail.p_value(s) for s in inside] == [plain.p_value(s) for s in inside]
    beyond = [tail.p_value(s) for s in (top * 1.01, top * 2, top * 100, top * 1e9)]
    assert beyond[0] < 1 / 2001 and beyond == sorted(beyond, reverse=True) and beyond[-1] == P_FLOOR
    assert plain.p_value(top * 100) == pytest.approx(1 / 2001)


def test_extrapolation_flags_far_out_frames_sooner_and_edge_frames_no_sooner():
    def first_alarm(params, score):
        decider = ConformalDecider(CALIBRATION, params)
        return next(i for i, d in enumerate(_stream(decider, [score] * 100)) if d.ood)

    params = DecisionParams(tail="upper", epsilon=0.1, window=5, threshold=200.0)
    far, edge = float(CALIBRATION.max()) * 50, float(CALIBRATION.max())
    assert first_alarm(replace(params, extrapolate=True), far) < first_alarm(params, far) - 3
    assert first_alarm(replace(params, extrapolate=True), edge) == first_alarm(params, edge)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "vote"}, "decision mode"),
        ({"tail": "lower"}, "tail"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"window": 0}, "window"),
        ({"extrapolate": "yes"}, "extrapolate"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecisionParams(**kwargs)


def test_bad_scores_and_calibration_are_refused():
    with pytest.raises(ValueError, match="finite"):
        ConformalDecider(CALIBRATION, DecisionParams()).update(float("nan"))
    with pytest.raises(ValueError, match="calibration"):
        ConformalDecider(np.array([]), DecisionParams())


def _episode(name, category, onset, shift, rng):
    from training.calibrate import ScoredEpisode

    scores = rng.normal(10.0, 1.0, 300)
    if onset is not None:
        scores[onset:] += shift
    return ScoredEpisode(name, scores, onset, category)


def test_decision_is_tuned_on_the_onsets_of_the_detector_s_own_categories():
    """A flow detector cannot see fog: its miss would cost every candidate alike. Tuned on its own
    categories, it is timed on the motion onset it does see; without data of them, on every onset."""
    from training.calibrate import tune_decision

    rng = np.random.default_rng(3)
    validation = [
        _episode("id", "id", None, 0.0, rng),
        _episode("spin", "motion", 100, 3.0, rng),
        _episode("fog", "appearance", 120, 0.0, rng),
    ]
    own = tune_decision(CALIBRATION, validation, ("upper",), ("motion", "sensor"))
    every = tune_decision(CALIBRATION, validation, ("upper",))
    assert own.missed == 0 and own.mean_delay < 15
    assert every.missed == 1 and every.mean_delay > 80, (
        "the invisible fog onset counts as its 180 frames left"
    )
    fallback = tune_decision(CALIBRATION, validation, ("upper",), ("sensor",))
    assert fallback.missed == 1 and fallback.mean_delay == every.mean_delay
    with pytest.raises(ValueError, match="onset episodes"):
        tune_decision(CALIBRATION, validation[:1], ("upper",), ("motion",))


def test_decision_tuning_stops_the_most_onsets_within_the_bar_first():
    """Among the candidates, the most onsets flagged within 15 frames wins before the mean delay:
    here a candidate with as small a mean delay stops one onset fewer within the bar."""
    from training.calibrate import DELAY_BAR_FRAMES, tune_decision

    rng = np.random.default_rng(33)
    validation = [_episode("id", "id", None, 0.0, rng), _episode("id2", "id", None, 0.0, rng)]
    validation += [_episode(f"spin{i}", "motion", 100, 3.0, rng) for i in range(3)] + [
        _episode("slow", "motion", 100, 1.2, rng)
    ]
    tuned = tune_decision(CALIBRATION, validation, ("upper",), ("motion",))
    assert DELAY_BAR_FRAMES == 15
    assert tuned.within_bar == max(row["within_bar"] for row in tuned.table) == 4
    assert tuned.mean_delay == min(
        row["mean_delay"] for row in tuned.table if row["within_bar"] == tuned.within_bar
    )
    assert any(
        row["within_bar"] < tuned.within_bar and row["mean_delay"] <= tuned.mean_delay
        for row in tuned.table
    )


def test_an_id_budget_keeps_one_odd_moment_from_setting_the_alarm_level():
    """Eight ID frames far out (a robot put down facing the road's edge) lift every candidate's level
    above an onset's evidence; a budget of 1 % of the ID frames leaves them (and the CUSUM's decay
    after them) above the level, and the onset is stopped within the bar. A larger budget is refused."""
    from training.calibrate import DELAY_BAR_FRAMES, cusum_trace, tune_decision

    rng = np.random.default_rng(11)
    validation = [_episode(f"id{i}", "id", None, 0.0, rng) for i in range(4)] + [
        _episode("rain", "appearance", 150, 3.0, rng)
    ]
    validation[0].scores[:8] += 8.0
    strict = tune_decision(CALIBRATION, validation, ("upper",), ("appearance",))
    budget = tune_decision(CALIBRATION, validation, ("upper",), ("appearance",), id_budget=0.01)
    assert budget.params.threshold < strict.params.threshold
    assert budget.mean_delay <= DELAY_BAR_FRAMES < strict.mean_delay  # measured: 3 and 19 frames
    flagged = [
        cusum_trace(e.scores[: e.onset_frame], CALIBRATION, budget.params)
        >= budget.params.threshold
        for e in validation
    ]
    assert 0 < np.mean(np.concatenate(flagged)) <= 0.01
    assert (
        tune_decision(CALIBRATION, validation, ("upper",), ("appearance",), id_budget=0.0).params
        == strict.params
    )
    with pytest.raises(ValueError, match="id_budget"):
        tune_decision(CALIBRATION, validation, ("upper",), ("appearance",), id_budget=0.05)


def test_tuning_with_the_tail_catches_a_far_out_onset_sooner():
    from training.calibrate import tune_decision

    rng = np.random.default_rng(5)
    validation = [
        _episode("id", "id", None, 0.0, rng),
        _episode("fog", "appearance", 100, 0.0, rng),
    ]
    validation[1].scores[100:] *= 50.0  # far beyond every calibration score
    plain = tune_decision(CALIBRATION, validation, ("upper",), ("appearance",))
    tail = tune_decision(CALIBRATION, validation, ("upper",), ("appearance",), extrapolate=True)
    assert tail.params.extrapolate and not plain.params.extrapolate
    assert tail.mean_delay < plain.mean_delay


def test_the_swept_decision_at_its_own_level_is_the_onboard_decision():
    """The trade-off sweep replays the CUSUM from the scores: at the decision's own alarm level it
    flags what the onboard decider flagged, and a higher level never flags more ID frames."""
    from training.tradeoff import ID_BAR, alarm_statistic, best_within_id_bar, sweep

    rng = np.random.default_rng(7)
    params = DecisionParams(tail="upper", epsilon=0.1, window=5, threshold=20.0)
    episodes, statistics, delays, id_flags = [], [], {"[motion]": [], "[sensor]": []}, []
    for scenario, category, onset, shift in (
        ("id", "id", None, 0.0),
        ("spin", "motion", 150, 2.5),
        ("speedup", "motion", 200, 4.0),
        ("noise", "sensor", 120, 1.5),
        ("id", "id", None, 0.0),
    ):
        scores = rng.normal(10.0, 1.0, 300)
        if onset is not None:
            scores[onset:] += shift
        scores[:6] = np.nan  # a flow detector still filling its stack
        decider = ConformalDecider(CALIBRATION, params)
        flags = np.array([np.isfinite(s) and decider.update(float(s)).ood for s in scores])
        if onset is not None:
            delay = int(np.flatnonzero(flags[onset:])[0])
            delays[f"[{category}]"].append(delay)
            delays[scenario] = [delay]
        id_frames = onset or 300  # ID driving: the whole episode, or up to its onset
        id_flags.append(flags[:id_frames])
        episodes.append((scenario, category, onset, id_frames, np.zeros(300, bool)))
        statistics.append(alarm_statistic(scores, CALIBRATION, params))
    points = sweep(episodes, statistics, "flow", params.threshold, bar_frames=15)
    shipped = [p for p in points if p.shipped]
    assert len(shipped) == 1
    assert shipped[0].id_flagged == pytest.approx(np.concatenate(id_flags).mean())
    assert shipped[0].median_delay == {
        c: pytest.approx(float(np.median(d))) for c, d in delays.items()
    }
    by_level = sorted(points, key=lambda p: p.level)
    assert [p.id_flagged for p in by_level] == sorted(
        (p.id_flagged for p in by_level), reverse=True
    )
    assert (
        by_level[0].level < params.threshold < by_level[-1].level and by_level[-1].id_flagged == 0.0
    ), "levels on both sides, up to flagging nothing"
    assert by_level[0].within_bar > shipped[0].within_bar, "a lower level is sooner"
    best = best_within_id_bar(points)
    assert best is not None and best.id_flagged <= ID_BAR

"""Decision tuning (training/calibrate, training/tradeoff) against the onboard decider."""

import numpy as np
import pytest

from vae_ood_monitor.decision import ConformalDecider, DecisionParams

CALIBRATION = np.random.default_rng(0).normal(10.0, 1.0, 2000)


def _episode(name, category, onset, shift, rng):
    from training.calibrate import ScoredEpisode

    scores = rng.normal(10.0, 1.0, 300)
    if onset is not None:
        scores[onset:] += shift
    return ScoredEpisode(name, scores, onset, category)


def test_decision_is_tuned_on_the_onsets_of_the_detector_s_own_categories():
    """A flow detector cannot see fog: its miss would cost every candidate alike. Tuned on its own
    categories, it is timed on the motion onset it does see; without data of them, on every
    onset."""
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
    """Eight ID frames far out (a robot put down facing the road's edge) lift every candidate's
    level above an onset's evidence; a budget of 1 % of the ID frames leaves them (and the CUSUM's
    decay after them) above the level, and the onset is stopped within the bar. A larger budget is
    refused."""
    from training.calibrate import DELAY_BAR_FRAMES, tune_decision
    from vae_ood_monitor.decision import cusum_trace

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


def test_the_swept_statistic_is_not_held_at_the_shipped_decision_s_ceiling():
    """The onboard CUSUM stops at 2 alarm levels (bounded recovery); the trade-off sweep looks at
    levels above that too, so its statistic runs on without the ceiling."""
    from training.tradeoff import alarm_statistic

    decision = DecisionParams(threshold=5.0)
    far_out = np.full(200, 1e6)
    decider = ConformalDecider(CALIBRATION, decision)
    onboard = [decider.update(s).cusum for s in far_out][-1]
    assert onboard == decision.ceiling * decision.threshold
    assert alarm_statistic(far_out, CALIBRATION, decision)[-1] > 10 * onboard

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

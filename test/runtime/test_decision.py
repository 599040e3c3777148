"""Conformal p-values, the power martingale and CUSUM on controlled score streams."""

from dataclasses import replace
from pathlib import Path

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


# Settings of the shipped bundles' kind: a decaying CUSUM (β-VAE student) and a drift-free one
# (the flow teacher's: the slowest to come down from a high CUSUM).
DECAYING = DecisionParams(
    tail="upper", epsilon=0.1, window=5, drift=5.0, threshold=11.66, extrapolate=True
)
DRIFT_FREE = DecisionParams(tail="upper", epsilon=0.1, window=5, drift=0.0, threshold=111.4)
TOP = float(CALIBRATION.max())


def recovery_s(params, rate_hz, ood_s, ood_score, seed=5):
    """Seconds of in-distribution frames after an OOD episode until the decision is ID for good
    (checked over the next 20 s); every decision during the episode after the first alarm is OOD."""
    rng = np.random.default_rng(seed)
    decider = ConformalDecider(CALIBRATION, params)
    _stream(decider, rng.normal(10.0, 1.0, 5 * rate_hz))
    episode = [d.ood for d in _stream(decider, [ood_score] * int(ood_s * rate_hz))]
    assert all(episode[episode.index(True) :]), "OOD throughout the episode once flagged"
    after = [d.ood for d in _stream(decider, rng.normal(10.0, 1.0, 20 * rate_hz))]
    last_ood = max((i for i, ood in enumerate(after) if ood), default=-1)
    return (last_ood + 1) / rate_hz


@pytest.mark.parametrize("rate_hz", [30, 15])
@pytest.mark.parametrize("params", [DECAYING, DRIFT_FREE], ids=["decaying", "drift_free"])
def test_recovery_is_bounded_however_long_and_strong_the_episode(params, rate_hz):
    episodes = [(2.5, TOP * 3), (60.0, TOP * 3), (60.0, TOP * 1000)]
    times = [recovery_s(params, rate_hz, seconds, score) for seconds, score in episodes]
    assert max(times) <= 3.0, times
    assert max(times) - min(times) <= params.window / rate_hz, (
        f"recovery depends on the episode: {times}"
    )
    uncapped = replace(params, ceiling=0.0)
    assert recovery_s(uncapped, rate_hz, 60.0, TOP * 3) > 3.0, (
        "without the ceiling a long episode holds the alarm for longer (the problem fixed here)"
    )


@pytest.mark.parametrize("shift", [2.0, 3.0, 6.0, 100.0])
@pytest.mark.parametrize("params", [DECAYING, DRIFT_FREE], ids=["decaying", "drift_free"])
def test_the_ceiling_leaves_onset_detection_unchanged(params, shift):
    rng = np.random.default_rng(6)
    scores = np.concatenate([rng.normal(10.0, 1.0, 300), rng.normal(10.0 + shift, 1.0, 300)])
    capped = _stream(ConformalDecider(CALIBRATION, params), scores)
    uncapped = _stream(ConformalDecider(CALIBRATION, replace(params, ceiling=0.0)), scores)
    first = next(i for i, d in enumerate(uncapped) if d.ood)
    assert first >= 300, "no alarm before the onset"
    assert next(i for i, d in enumerate(capped) if d.ood) == first
    # the same numbers up to the alarm, which may itself jump past the ceiling
    assert [d.cusum for d in capped[:first]] == [d.cusum for d in uncapped[:first]]
    assert max(d.cusum for d in capped) <= params.ceiling * params.threshold


def test_the_ceiling_is_derived_from_the_alarm_level_so_shipped_bundles_need_no_new_field():
    from vae_ood_monitor.bundle import load_bundle, models_dir

    bundles = sorted(p for p in models_dir().iterdir() if (p / "bundle.json").is_file())
    assert bundles, "shipped bundles under models/"
    for path in bundles:
        decision = load_bundle(path).decision
        assert decision.ceiling == 2.0
        assert decision.cusum_cap == pytest.approx(2.0 * decision.threshold)
    assert DecisionParams(threshold=np.inf).cusum_cap == np.inf, "tuning probes stay uncapped"
    assert DecisionParams(ceiling=0.0).cusum_cap == np.inf


@pytest.mark.parametrize("ceiling", [0.5, 1.0, -2.0])
def test_a_ceiling_at_or_below_the_alarm_level_is_refused(ceiling):
    with pytest.raises(ValueError, match="ceiling must be > 1"):
        DecisionParams(ceiling=ceiling)


DEMO_BAG = Path(__file__).resolve().parents[2] / "demo" / "demo_fog_onset"


def default_bundle_exists() -> bool:
    from vae_ood_monitor.bundle import default_bundle

    try:
        return all(default_bundle(kind).is_dir() for kind in ("bvae", "flow"))
    except Exception:  # noqa: BLE001 (no models/defaults.json or a default missing: skip)
        return False


def fog_recovery_s(
    calibration: np.ndarray,
    params: DecisionParams,
    driving: np.ndarray,
    fog: np.ndarray,
    fog_s: float,
    rate_hz: float,
) -> float:
    """Driving, `fog_s` of fog (its scores repeated), then the driving twice: seconds until the
    decision is in distribution for good."""
    decider = ConformalDecider(calibration, params)
    assert _stream(decider, driving)[-1].ood is False, "in distribution before the fog"
    assert _stream(decider, np.resize(fog, int(fog_s * rate_hz)))[-1].ood, "the fog is flagged"
    after = [d.ood for d in _stream(decider, np.concatenate([driving, driving]))]
    return (max((i for i, ood in enumerate(after) if ood), default=-1) + 1) / rate_hz


@pytest.mark.skipif(
    not (DEMO_BAG / "ground_truth.csv").exists() or not default_bundle_exists(),
    reason="needs the shipped bundles (models/) and the demo bag (demo/demo_fog_onset)",
)
@pytest.mark.parametrize("every", [1, 2], ids=["30Hz", "15Hz"])
def test_shipped_bvae_recovers_within_3_s_of_a_long_fog_on_the_demo_bag(every):
    """Real scores: the shipped β-VAE (the fog's detector) on the demo bag (3 s of driving, then
    fog), replayed at 30 or 15 Hz. In the score domain the fog is repeated to a 2.5 s or a 60 s
    episode, then the driving follows: in distribution for good within 3 s after either episode,
    which without the ceiling is not so after 60 s."""
    from vae_ood_monitor.bundle import default_bundle
    from vae_ood_monitor.detector import OODDetector
    from vae_ood_monitor.ground_truth import read_ground_truth
    from vae_ood_monitor.offline import score_bag, thinned

    onset = read_ground_truth(DEMO_BAG)[0].onset_frame
    rate_hz = 30.0 / every
    detector = OODDetector.from_path(str(default_bundle("bvae")))
    chunks = score_bag(DEMO_BAG, {"bvae": detector}, select=lambda m: thinned(m, every=every))
    scores = np.concatenate([chunk.scores["bvae"] for _, chunk in chunks])
    split = -(-onset // every)  # the first fog frame among the replayed ones
    driving, fog = scores[:split], scores[split:]
    bundle = detector.bundle
    times = [
        fog_recovery_s(bundle.calibration_scores, bundle.decision, driving, fog, s, rate_hz)
        for s in (2.5, 60.0)
    ]
    uncapped = replace(bundle.decision, ceiling=0.0)
    slow = fog_recovery_s(bundle.calibration_scores, uncapped, driving, fog, 60.0, rate_hz)
    print(
        f"bvae at {rate_hz:.0f} Hz: in distribution again {times[0]:.2f} s / {times[1]:.2f} s "
        f"after 2.5 s / 60 s of fog; without the ceiling after 60 s: {slow:.2f} s"
    )
    assert max(times) <= 3.0, times
    assert slow > 3.0, slow

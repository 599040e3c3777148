"""The numpy metrics of the onboard `eval` agree with scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from vae_ood_monitor.metrics import auroc, detection_delay, fpr_at_tpr, rising_edges


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_fpr_at_95_tpr_matches_the_roc_curve():
    rng = np.random.default_rng(7)
    labels = rng.random(2000) < 0.5
    scores = rng.normal(labels * 1.5, 1.0)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fpr_at_tpr(labels, scores) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=0.002)


def test_nan_scores_are_left_out_and_single_class_is_nan():
    assert auroc(np.array([0, 1, 1]), np.array([0.1, np.nan, 0.9])) == 1.0
    assert np.isnan(auroc(np.array([0, 0]), np.array([0.1, 0.2])))


def test_edges_and_delays():
    flags = np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)
    assert rising_edges(flags) == 3
    assert detection_delay(flags, 5) == 2
    assert detection_delay(np.zeros(5, bool), 1) is None


def _episode_result(name, scenario, onset, surprise, flags, map_name=None):
    """An evaluated episode: surprise per detector, decisions of bvae / flow / the frozen check
    (missing ones never fire) and the fused stop as their union, as in training.evaluate."""
    from pathlib import Path

    from training.dataset import Episode
    from training.evaluate import SCORED, EpisodeResult

    frames = len(next(iter({**surprise, **flags}.values())))
    ood = np.zeros(frames, bool) if onset is None else np.arange(frames) >= onset
    scores = {key: np.zeros(frames) for key in SCORED}
    scores.update({key: np.asarray(values, float) for key, values in surprise.items()})
    decided = {
        key: np.asarray(flags.get(key, np.zeros(frames)), bool)
        for key in ("bvae", "flow", "frozen")
    }
    decided["fused"] = decided["bvae"] | decided["flow"] | decided["frozen"]
    category = "id" if scenario == "id" else "motion"
    return EpisodeResult(
        Episode(Path(name), name, "test", scenario, category, onset, 30.0, map_name),
        ood,
        scores,
        decided,
    )


def test_evaluation_separates_evidence_detector_decisions_and_the_stop():
    from training.evaluate import id_alarm_summary, metrics_table, onset_table

    onset, frames = 10, 40
    flow = [0.5] * onset + [1.0] * 2 + [2.5] * (frames - onset - 2)
    spin = _episode_result(
        "spin_onset",
        "spin",
        onset,
        {"bvae": [0.5] * frames, "flow": flow},
        {"flow": np.arange(frames) >= onset + 7, "frozen": np.arange(frames) >= onset + 3},
    )
    bump = [0.5] * 5 + [3.0] * 15 + [0.5] * 20  # the β-VAE's strongest stretch of normal driving
    normal = _episode_result("id", "id", None, {"bvae": bump, "flow": [0.5] * frames}, {})
    rows = {row["scenario"]: row for row in metrics_table([normal, spin])}
    assert (
        rows["spin"]["median_evidence_delay"] == 2
    )  # flow reaches p <= 0.01 two frames after the onset
    assert rows["spin"]["median_delay_detectors"] == 7
    assert rows["spin"]["median_delay_fused"] == 3  # the frozen-camera check stopped first
    assert rows["spin"]["early_evidence_flow"] == pytest.approx((2 * 1.0 + 13 * 2.5) / 15)
    assert rows["spin"]["early_evidence_bvae"] == pytest.approx(0.5)
    summary = id_alarm_summary([normal, spin])
    assert summary["id_ceiling_early_evidence_bvae"] == pytest.approx(3.0)
    assert summary["id_ceiling_early_evidence_flow"] == pytest.approx(0.5), (
        "frames after the onset are not ID driving"
    )
    # past the start: windows from frames 15-29 on, which hold only the bump's last 5 frames
    assert summary["id_ceiling_early_evidence_bvae_past_start"] == pytest.approx(
        (5 * 3.0 + 10 * 0.5) / 15
    )
    assert summary["frozen_flagged_id_frames"] == 0.0
    late = _episode_result(
        "spin_late", "spin", onset, {"bvae": [0.5] * frames, "flow": [0.5] * frames}, {}
    )
    assert onset_table([normal, spin, late]) == [  # per drive, ID drives left out; None: never
        {
            "episode": "spin_onset",
            "scenario": "spin",
            "onset_frame": onset,
            "effect_began": None,
            "delay_evidence": 2,
            "delay_detectors": 7,
            "delay_fused": 3,
        },
        {
            "episode": "spin_late",
            "scenario": "spin",
            "onset_frame": onset,
            "effect_began": None,
            "delay_evidence": None,
            "delay_detectors": None,
            "delay_fused": None,
        },
    ]


def test_false_alarms_are_broken_down_by_map():
    from training.evaluate import id_alarm_summary

    def result(name, map_name, onset, fused_flags):
        return _episode_result(
            name, "id" if onset is None else "fog", onset, {}, {"bvae": fused_flags}, map_name
        )

    summary = id_alarm_summary(
        [
            result("a", "loop", None, [0, 0, 1, 1]),
            result("b", "4way", None, [0, 0, 0, 0]),
            result("c", "4way", 2, [1, 0, 1, 1]),  # only the two pre-onset frames are ID driving
        ]
    )
    assert summary["fused_flagged_id_frames"] == 3 / 10
    assert summary["fused_flagged_id_frames[loop]"] == 0.5
    assert summary["fused_flagged_id_frames[4way]"] == 1 / 6


def test_learned_scores_rank_past_the_capped_surprise_against_the_baseline():
    """An ID frame beyond the calibration maximum ties with the OOD frames in surprise (capped);
    the latent score still ranks it below them, so the comparison with the baseline takes it."""
    from training.evaluate import metrics_table

    capped = [0.5, 0.5, 3.0]  # the third ID frame is as surprising as the fog frames can be
    normal = _episode_result(
        "id",
        "id",
        None,
        {"bvae": capped, "bvae_raw": [1.0, 1.0, 50.0], "baseline": [0.0, 0.0, 1.0]},
        {},
    )
    fog = _episode_result(
        "fog_full", "fog", 0, {"bvae": [3.0] * 3, "bvae_raw": [90.0] * 3, "baseline": [2.0] * 3}, {}
    )
    row = {r["scenario"]: r for r in metrics_table([normal, fog])}["fog"]
    assert row["auroc_bvae"] == pytest.approx(1 - 0.5 / 3)  # the tie counts half
    assert row["auroc_bvae_raw"] == row["auroc_baseline"] == 1.0
    assert row["learned_minus_baseline"] == 0.0

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


def test_evaluation_separates_when_evidence_arrives_from_when_the_decision_stops():
    from pathlib import Path

    from training.dataset import Episode
    from training.evaluate import SCORED, EpisodeResult, metrics_table

    def result(name, scenario, onset, surprise_bvae, surprise_flow, fused_flags):
        frames = len(surprise_bvae)
        ood = np.zeros(frames, bool) if onset is None else np.arange(frames) >= onset
        scores = {key: np.zeros(frames) for key in SCORED}
        scores["bvae"], scores["flow"] = np.asarray(surprise_bvae, float), np.asarray(surprise_flow, float)
        flags = {key: np.zeros(frames, bool) for key in ("bvae", "flow")}
        flags["fused"] = np.asarray(fused_flags, bool)
        episode = Episode(Path(name), name, "test", scenario, "id" if scenario == "id" else "motion", onset, 30.0)
        return EpisodeResult(episode, ood, scores, flags)

    quiet = [0.5] * 10
    onset = result("spin_onset", "spin", 2, quiet, [np.nan, 0.5, 0.5, 1.0, 2.5, 3.0, 3.0, 3.0, 3.0, 3.0], [0] * 7 + [1] * 3)
    rows = {row["scenario"]: row for row in metrics_table([result("id", "id", None, quiet, quiet, [0] * 10), onset])}
    assert rows["spin"]["median_evidence_delay"] == 2  # flow reaches p <= 0.01 two frames after the onset
    assert rows["spin"]["median_delay_fused"] == 5


def test_false_alarms_are_broken_down_by_map():
    from pathlib import Path

    from training.dataset import Episode
    from training.evaluate import SCORED, EpisodeResult, id_alarm_summary

    def result(name, map_name, onset, fused_flags):
        frames = len(fused_flags)
        ood = np.zeros(frames, bool) if onset is None else np.arange(frames) >= onset
        flags = {"bvae": np.zeros(frames, bool), "flow": np.zeros(frames, bool), "fused": np.asarray(fused_flags, bool)}
        episode = Episode(Path(name), name, "test", "id" if onset is None else "fog", "appearance", onset, 30.0, map_name)
        return EpisodeResult(episode, ood, {key: np.zeros(frames) for key in SCORED}, flags)

    summary = id_alarm_summary([
        result("a", "loop", None, [0, 0, 1, 1]),
        result("b", "4way", None, [0, 0, 0, 0]),
        result("c", "4way", 2, [1, 0, 1, 1]),  # only the two pre-onset frames are ID driving
    ])
    assert summary["fused_flagged_id_frames"] == 3 / 10
    assert summary["fused_flagged_id_frames[loop]"] == 0.5
    assert summary["fused_flagged_id_frames[4way]"] == 1 / 6

"""Latent scores (KL, Mahalanobis, Mahalanobis and Gaussian mixture with pooled conv features):
fitting on calibration latents, selection on validation, storage."""

import json

import numpy as np
import pytest
from training_support import build_image_bundle

from training.calibrate import (
    MIXTURE_COMPONENTS,
    SCORE_CANDIDATES,
    fit_scores,
    select_score,
)
from vae_ood_monitor.bundle import BundleError, load_bundle, write_sums
from vae_ood_monitor.scoring import BandPeak, EncoderOutputs, LatentScore, Mixture, kl_per_dimension


def _id_latents(rng: np.random.Generator, frames: int) -> dict[str, EncoderOutputs]:
    """Posteriors of a trained β-VAE on normal frames: informative dims far from the prior
    (confident, spread-out μ), one switched-off dim at the prior."""
    mu = np.concatenate(
        [rng.normal(0.0, 2.0, (frames, 3)), rng.normal(0.0, 0.01, (frames, 1))], axis=1
    )
    logvar = np.concatenate(
        [rng.normal(-3.0, 0.2, (frames, 3)), rng.normal(0.0, 0.01, (frames, 1))], axis=1
    )
    return {"image": EncoderOutputs(mu, logvar)}


def _collapsed_latents(frames: int) -> dict[str, EncoderOutputs]:
    """What fog does to the encoder: the posterior falls back to the prior, so the KL *drops*."""
    return {"image": EncoderOutputs(np.zeros((frames, 4)), np.zeros((frames, 4)))}


def test_kl_score_sums_the_chosen_dimensions():
    mu, logvar = np.array([[1.0, 2.0, 0.0]]), np.array([[0.0, 0.0, 1.0]])
    score = LatentScore("kl", {"image": [0, 2]})
    expected = kl_per_dimension(mu, logvar)[0, [0, 2]].sum()
    assert score({"image": EncoderOutputs(mu, logvar)})[0] == pytest.approx(expected)


def test_fitted_scores_keep_only_informative_dims_and_cross_fit_the_calibration():
    rng = np.random.default_rng(0)
    calibration = [_id_latents(rng, 200) for _ in range(4)]
    fitted = {f.name: f for f in fit_scores(calibration)}
    assert fitted["kl"].score.dims == {"image": [0, 1, 2]}
    for candidate in fitted.values():
        assert candidate.calibration_scores.shape == (800,) and np.all(
            np.isfinite(candidate.calibration_scores)
        )
    # held-out Mahalanobis scores of 8 Gaussian features average about 8 (χ² with 8 dof)
    assert 6.0 < fitted["mahalanobis"].calibration_scores.mean() < 10.0


def test_leaving_one_episode_out_keeps_a_manoeuvre_two_episodes_share():
    """Episodes 0 and 2 both hold a rare manoeuvre (a sharp turn). Cross-fitted on halves (0, 2, 4
    against 1, 3, 5) neither half's fit has seen it, and it scores far beyond its in-sample score;
    left one episode out, the other episode with the manoeuvre keeps it in the fit."""
    rng = np.random.default_rng(5)
    calibration = [_id_latents(rng, 200) for _ in range(6)]
    for episode in (0, 2):
        mu = calibration[episode]["image"].mu
        mu[:20, :3] += 20.0  # ten standard deviations
    held_out = {}
    for cross_fit in ("halves", "episodes"):
        mahalanobis = next(
            f for f in fit_scores(calibration, cross_fit=cross_fit) if f.name == "mahalanobis"
        )
        held_out[cross_fit] = np.median(mahalanobis.calibration_scores[:20]) / np.median(
            mahalanobis.score(calibration[0])[:20]
        )
    assert held_out["halves"] > 5.0 and held_out["episodes"] < 2.0  # measured: 8.9 and 1.5


def test_split_conformal_scores_the_calibration_with_the_fit_the_robot_runs():
    """cross_fit="train": fitted on other drives only, and every calibration frame's score is
    what that deployed fit gives it — a frame the fit has seen rarely still scores high, as it
    will on the robot, and the calibration frames do not move the fit."""
    rng = np.random.default_rng(7)
    train = [_id_latents(rng, 300) for _ in range(4)]
    calibration = [_id_latents(rng, 200) for _ in range(2)]
    calibration[1]["image"].mu[:10, :3] += 20.0  # a manoeuvre no train drive holds
    fitted = next(
        f
        for f in fit_scores(calibration, cross_fit="train", fit_on=train)
        if f.name == "mahalanobis"
    )
    frames = np.concatenate([c["image"].mu for c in calibration])
    np.testing.assert_allclose(
        fitted.calibration_scores,
        fitted.score(
            {
                "image": EncoderOutputs(
                    frames, np.concatenate([c["image"].logvar for c in calibration])
                )
            }
        ),
    )
    train_mu = np.concatenate([t["image"].mu for t in train])
    np.testing.assert_allclose(fitted.score.mean[:4], train_mu.mean(axis=0))
    assert np.median(fitted.calibration_scores[200:210]) > 20 * np.median(
        fitted.calibration_scores[:200]
    )
    with pytest.raises(ValueError, match="needs frames to fit on"):
        fit_scores(calibration, cross_fit="train")


def test_the_mixture_seed_reaches_the_mixture_fits():
    """8 components over two kinds of driving leave EM many equally good fits: the same seed
    gives the same fit, another seed another (the shipped β-VAE's ducks depend on it:
    docs/results.md)."""
    rng = np.random.default_rng(16)
    calibration = [_two_kinds_of_driving(rng, 300) for _ in range(2)]
    fits = [
        next(f for f in fit_scores(calibration, candidates=("mixture_pooled",), mixture_seed=seed))
        for seed in (0, 0, 1)
    ]
    np.testing.assert_array_equal(fits[0].calibration_scores, fits[1].calibration_scores)
    assert not np.allclose(fits[0].score.mean, fits[2].score.mean), "another seed, another fit"


def test_unknown_cross_fitting_is_a_clear_error():
    with pytest.raises(ValueError, match="cross_fit must be one of"):
        fit_scores([_id_latents(np.random.default_rng(6), 50)], cross_fit="thirds")


def _correlated_latents(
    rng: np.random.Generator, frames: int, sign: float
) -> dict[str, EncoderOutputs]:
    """Two dimensions that move together on normal frames (sign +1) or against each other (-1):
    the same marginals and the same KL, only the joint is unusual."""
    base = rng.normal(0.0, 2.0, frames)
    mu = np.stack([base, sign * base + rng.normal(0.0, 0.1, frames)], axis=1)
    return {
        "image": EncoderOutputs(mu, np.full((frames, 2), -3.0) + rng.normal(0.0, 0.1, (frames, 2)))
    }


def test_validation_picks_the_score_that_sees_the_unusual_joint():
    rng = np.random.default_rng(1)
    candidates = fit_scores([_correlated_latents(rng, 300, 1.0) for _ in range(2)])
    validation = [
        (_correlated_latents(rng, 200, 1.0), np.zeros(200, bool)),
        (_correlated_latents(rng, 200, -1.0), np.ones(200, bool)),
    ]
    chosen, _, table = select_score(candidates, validation)
    assert table["kl"] < 0.7 and table["mahalanobis_diag"] < 0.7
    assert (
        chosen.name == "mahalanobis" and table["mahalanobis"] > 0.85
    )  # frames near the origin look alike either way


def test_two_sided_kl_catches_posteriors_collapsed_onto_the_prior():
    rng = np.random.default_rng(4)
    candidates = fit_scores([_id_latents(rng, 300) for _ in range(2)])
    _, tail, table = select_score(
        candidates,
        [
            (_id_latents(rng, 200), np.zeros(200, bool)),
            (_collapsed_latents(100), np.ones(100, bool)),
        ],
    )
    assert table["kl"] > 0.99 and tail == "both"


def _with_pooled(
    latents: dict[str, EncoderOutputs], rng: np.random.Generator, shift: float = 0.0
) -> dict[str, EncoderOutputs]:
    """The same posteriors plus 5 pooled conv features (two that co-vary), `shift` standard
    deviations off on the first: a local change (a bus in view) that leaves the latent code
    alone."""
    frames = len(latents["image"].mu)
    pooled = rng.normal(1.0, 0.2, (frames, 5))
    pooled[:, 1] = pooled[:, 0] + rng.normal(0.0, 0.02, frames)
    pooled[:, 0] += shift * 0.2
    return {"image": latents["image"]._replace(pooled=pooled)}


def test_pooled_features_catch_what_the_latent_code_misses():
    rng = np.random.default_rng(7)
    candidates = fit_scores([_with_pooled(_id_latents(rng, 300), rng) for _ in range(2)])
    assert [c.name for c in candidates] == [
        "kl",
        "mahalanobis",
        "mahalanobis_diag",
        "mahalanobis_pooled",
    ], "the mixture only when asked for"
    validation = [
        (_with_pooled(_id_latents(rng, 200), rng), np.zeros(200, bool)),
        (_with_pooled(_id_latents(rng, 200), rng, shift=3.0), np.ones(200, bool)),
    ]
    chosen, tail, table = select_score(candidates, validation)
    assert (
        chosen.name == "mahalanobis_pooled"
        and tail == "upper"
        and table["mahalanobis_pooled"] > 0.99
    )
    assert table["mahalanobis"] < 0.7 and chosen.score.pooled == {"image": 5}
    restored = LatentScore.from_dict(json.loads(json.dumps(chosen.score.to_dict())))
    np.testing.assert_allclose(
        restored(validation[1][0]), chosen.score(validation[1][0]), rtol=1e-5
    )


def test_the_pooled_scores_are_candidates_only_where_every_encoder_exports_pooled_features():
    rng = np.random.default_rng(8)
    calibration = [_with_pooled(_id_latents(rng, 100), rng), _id_latents(rng, 100)]
    assert [c.name for c in fit_scores(calibration, candidates=SCORE_CANDIDATES)] == [
        "kl",
        "mahalanobis",
        "mahalanobis_diag",
    ]


def test_the_mixture_is_a_candidate_only_where_each_fit_has_enough_frames():
    """13 features × 8 components: a half of 100 frames cannot pin a full covariance per
    component."""
    rng = np.random.default_rng(10)
    assert MIXTURE_COMPONENTS * 13 > 100
    calibration = [_with_pooled(_id_latents(rng, 100), rng) for _ in range(2)]
    assert [c.name for c in fit_scores(calibration, candidates=SCORE_CANDIDATES)] == [
        "kl",
        "mahalanobis",
        "mahalanobis_diag",
        "mahalanobis_pooled",
    ]
    with pytest.raises(
        ValueError,
        match="none of the score candidates mixture_pooled fits these encoders and frames",
    ):
        fit_scores(calibration, candidates=("mixture_pooled",))


def test_unknown_score_candidates_are_a_clear_error():
    with pytest.raises(ValueError, match="score candidates must be among kl, .*, got energy"):
        fit_scores([_id_latents(np.random.default_rng(13), 50)], candidates=("energy",))


def _two_kinds_of_driving(
    rng: np.random.Generator, frames: int, between: bool = False
) -> dict[str, EncoderOutputs]:
    """Normal driving of two kinds (unlit streets, a traffic light in view) that lie apart in
    the pooled features; `between`: frames halfway between them, which neither kind shows."""
    latents = _with_pooled(_id_latents(rng, frames), rng)
    pooled = latents["image"].pooled
    pooled[:, 2] += 3.0 if between else np.where(np.arange(frames) % 2 == 0, 0.0, 6.0)
    return latents


def test_a_mixture_sees_what_lies_between_two_kinds_of_normal_driving():
    """One Gaussian stretched over both kinds puts its mean where no normal frame is: the frames
    in between look more normal to it than normal frames do. The mixture keeps the kinds apart."""
    rng = np.random.default_rng(11)
    candidates = fit_scores(
        [_two_kinds_of_driving(rng, 300) for _ in range(2)], candidates=SCORE_CANDIDATES
    )
    validation = [
        (_two_kinds_of_driving(rng, 200), np.zeros(200, bool)),
        (_two_kinds_of_driving(rng, 200, between=True), np.ones(200, bool)),
    ]
    chosen, tail, table = select_score(candidates, validation)
    assert chosen.name == "mixture_pooled" and tail == "upper" and table["mixture_pooled"] > 0.99
    assert table["mahalanobis_pooled"] < 0.6
    restored = LatentScore.from_dict(json.loads(json.dumps(chosen.score.to_dict())))
    np.testing.assert_allclose(
        restored(validation[1][0]), chosen.score(validation[1][0]), rtol=1e-5
    )


def test_a_one_component_mixture_is_the_mahalanobis_distance_and_more_never_score_below_the_nearest():  # noqa: E501 descriptive test name
    rng = np.random.default_rng(12)
    latents = _with_pooled(_id_latents(rng, 50), rng)
    size = 13
    mean, precision = rng.normal(0.0, 1.0, size), np.eye(size) * rng.uniform(0.5, 2.0, size)
    mahalanobis = LatentScore(
        "mahalanobis_pooled", {"image": [0, 1, 2, 3]}, mean, precision, {"image": 5}
    )
    single = LatentScore(
        "mixture_pooled",
        {"image": [0, 1, 2, 3]},
        mean[None],
        precision[None],
        {"image": 5},
        np.ones(1),
    )
    np.testing.assert_allclose(single(latents), mahalanobis(latents), rtol=1e-9)
    means, precisions = np.stack([mean, mean + 1.0]), np.stack([precision, 2.0 * precision])
    pair = LatentScore(
        "mixture_pooled",
        {"image": [0, 1, 2, 3]},
        means,
        precisions,
        {"image": 5},
        np.array([0.3, 0.7]),
    )
    nearest = np.min(
        [
            LatentScore("mahalanobis_pooled", {"image": [0, 1, 2, 3]}, m, p, {"image": 5})(latents)
            for m, p in zip(means, precisions)
        ],
        axis=0,
    )
    assert np.all(pair(latents) >= nearest - 1e-9)


def test_a_frame_far_from_every_component_keeps_a_finite_score():
    """exp(−d/2) underflows to 0 for d beyond ~1500; the score must still grow with the distance
    (a black frame lies that far out) rather than turn infinite, which the decision refuses."""
    size = 13
    means, precisions = (
        np.stack([np.zeros(size), np.ones(size)]),
        np.stack([np.eye(size), np.eye(size)]),
    )
    mixture = LatentScore(
        "mixture_pooled",
        {"image": [0, 1, 2, 3]},
        means,
        precisions,
        {"image": 5},
        np.array([0.5, 0.5]),
    )
    far = {
        "image": EncoderOutputs(
            np.full((2, 4), 0.0), np.full((2, 4), 0.0), np.array([[1e3] * 5, [1e4] * 5])
        )
    }
    scores = mixture(far)
    assert np.all(np.isfinite(scores)) and scores[1] > scores[0] > 1e6


def _random_mixture(rng: np.random.Generator, components: int, size: int) -> Mixture:
    precisions = np.stack([np.eye(size) * rng.uniform(0.5, 2.0, size) for _ in range(components)])
    return Mixture(
        rng.normal(0.0, 1.0, (components, size)), precisions, rng.dirichlet(np.ones(components))
    )


def test_the_band_mixture_score_adds_a_mixture_over_the_band_maxima_to_one_over_the_rest():
    """Pooled features 0..2 are block means, 3..4 band maxima: the score is the rest's mixture
    score plus the band maxima's, each as a mixture_pooled score over just those features would
    give."""
    rng = np.random.default_rng(14)
    latents = _with_pooled(_id_latents(rng, 50), rng)
    rest, band = _random_mixture(rng, 3, 11), _random_mixture(rng, 2, 2)
    score = LatentScore(
        "mixture_bands",
        {"image": [0, 1, 2, 3]},
        rest.mean,
        rest.precision,
        {"image": 5},
        rest.weights,
        {"image": 2},
        band,
    )
    outputs = latents["image"]
    rest_only = LatentScore(
        "mixture_pooled",
        {"image": [0, 1, 2, 3]},
        rest.mean,
        rest.precision,
        {"image": 3},
        rest.weights,
    )
    band_only = LatentScore(
        "mixture_pooled", {"image": []}, band.mean, band.precision, {"image": 2}, band.weights
    )
    expected = rest_only({"image": outputs._replace(pooled=outputs.pooled[:, :3])}) + band_only(
        {"image": outputs._replace(pooled=outputs.pooled[:, 3:])}
    )
    np.testing.assert_allclose(score(latents), expected, rtol=1e-12)
    restored = LatentScore.from_dict(json.loads(json.dumps(score.to_dict())))
    np.testing.assert_allclose(restored(latents), score(latents), rtol=1e-5)


def test_the_band_mixture_is_a_candidate_only_where_the_pooled_features_end_in_band_maxima():
    rng = np.random.default_rng(15)
    calibration = [_with_pooled(_id_latents(rng, 300), rng) for _ in range(2)]
    assert "mixture_bands" not in [
        c.name for c in fit_scores(calibration, candidates=SCORE_CANDIDATES)
    ]
    with pytest.raises(ValueError, match="the band kinds band maxima in it"):
        fit_scores(calibration, candidates=("mixture_bands",))
    (fitted,) = fit_scores(calibration, candidates=("mixture_bands",), bands={"image": 2})
    assert fitted.score.bands == {"image": 2} and fitted.calibration_scores.shape == (600,)
    assert fitted.score.mean.shape == (
        MIXTURE_COMPONENTS,
        11,
    ) and fitted.score.band_mixture.mean.shape == (MIXTURE_COMPONENTS, 2)
    in_sample = fitted.score(calibration[0])
    assert np.median(fitted.calibration_scores[:300]) > np.median(in_sample), (
        "each half scored by the fit on the other half"
    )


def test_the_band_peak_score_adds_the_most_raised_band_maximum_to_the_rest_s_mixture():
    """Pooled features 3..4 are band maxima: the score is the rest's mixture score plus the
    largest squared rise of a band maximum above its mean, in its standard deviations; falls count
    nothing."""
    rng = np.random.default_rng(16)
    latents = _with_pooled(_id_latents(rng, 50), rng)
    rest = _random_mixture(rng, 3, 11)
    peak = BandPeak(np.array([1.0, -2.0]), np.array([0.5, 4.0]))
    score = LatentScore(
        "mixture_band_peak",
        {"image": [0, 1, 2, 3]},
        rest.mean,
        rest.precision,
        {"image": 5},
        rest.weights,
        {"image": 2},
        band_peak=peak,
    )
    outputs = latents["image"]
    rest_only = LatentScore(
        "mixture_pooled",
        {"image": [0, 1, 2, 3]},
        rest.mean,
        rest.precision,
        {"image": 3},
        rest.weights,
    )({"image": outputs._replace(pooled=outputs.pooled[:, :3])})
    rises = np.maximum(
        0.0,
        np.stack([(outputs.pooled[:, 3] - 1.0) / 0.5, (outputs.pooled[:, 4] + 2.0) / 4.0], axis=1),
    )
    np.testing.assert_allclose(score(latents), rest_only + (rises**2).max(axis=1), rtol=1e-12)
    raised = outputs.pooled.copy()
    raised[:, 3] = 1.0 + 0.5 * 10.0  # ten standard deviations up in one band maximum
    lowered = outputs.pooled.copy()
    lowered[:, 3:] = [1.0 - 0.5 * 10.0, -2.0 - 4.0 * 10.0]  # ten down in both: no rise
    np.testing.assert_allclose(
        score({"image": outputs._replace(pooled=raised)}) - rest_only, 100.0, rtol=1e-12
    )
    np.testing.assert_allclose(
        score({"image": outputs._replace(pooled=lowered)}), rest_only, rtol=1e-12
    )
    restored = LatentScore.from_dict(json.loads(json.dumps(score.to_dict())))
    np.testing.assert_allclose(restored(latents), score(latents), rtol=1e-5)


def test_the_band_peak_fit_needs_no_seed_and_scores_an_object_at_the_horizon_above_calibration():
    rng = np.random.default_rng(17)
    calibration = [_with_pooled(_id_latents(rng, 300), rng) for _ in range(2)]
    fits = [
        fit_scores(
            calibration, candidates=("mixture_band_peak",), bands={"image": 2}, mixture_seed=seed
        )[0]
        for seed in (0, 1)
    ]
    for fitted in fits:
        assert (
            fitted.score.bands == {"image": 2}
            and fitted.score.band_mixture is None
            and fitted.calibration_scores.shape == (600,)
        )
        np.testing.assert_allclose(
            fitted.score.band_peak.mean,
            np.concatenate([c["image"].pooled for c in calibration])[:, 3:].mean(axis=0),
            rtol=1e-12,
        )
    np.testing.assert_array_equal(fits[0].score.band_peak.scale, fits[1].score.band_peak.scale)
    ahead = _with_pooled(_id_latents(rng, 50), rng)
    outputs = ahead["image"]
    obstacle = outputs.pooled.copy()
    obstacle[:, 4] += (
        8.0 * fits[0].score.band_peak.scale[1]
    )  # one band maximum far up, everything else as usual
    normal, flagged = (
        fits[0].score(ahead),
        fits[0].score({"image": outputs._replace(pooled=obstacle)}),
    )
    assert np.all(flagged > normal) and np.median(flagged) > np.quantile(
        fits[0].calibration_scores, 0.99
    )


def test_a_pooled_score_names_missing_or_mismatched_pooled_features():
    rng = np.random.default_rng(9)
    fitted = next(
        f
        for f in fit_scores([_with_pooled(_id_latents(rng, 100), rng) for _ in range(2)])
        if f.name == "mahalanobis_pooled"
    )
    with pytest.raises(
        ValueError,
        match="needs encoder 'image's pooled features, but its model has no 'pooled' output",
    ):
        fitted.score(_id_latents(rng, 5))
    wider = _id_latents(rng, 5)["image"]._replace(pooled=np.zeros((5, 7)))
    with pytest.raises(
        ValueError, match="expects 5 pooled features from encoder 'image', its model gives 7"
    ):
        fitted.score({"image": wider})


def test_selection_needs_both_classes():
    rng = np.random.default_rng(2)
    candidates = fit_scores([_id_latents(rng, 100)])
    with pytest.raises(ValueError, match="both in-distribution and OOD"):
        select_score(candidates, [(_id_latents(rng, 50), np.zeros(50, bool))])


def test_mahalanobis_score_round_trips_through_json():
    rng = np.random.default_rng(3)
    fitted = next(
        f for f in fit_scores([_id_latents(rng, 100) for _ in range(2)]) if f.name == "mahalanobis"
    )
    restored = LatentScore.from_dict(json.loads(json.dumps(fitted.score.to_dict())))
    latents = _id_latents(rng, 20)
    np.testing.assert_allclose(restored(latents), fitted.score(latents), rtol=1e-5)


@pytest.mark.parametrize(
    ("score", "message"),
    [
        ({"kind": "energy", "dims": {"image": [0]}}, "unknown score kind 'energy'"),
        (
            {
                "kind": "mahalanobis",
                "dims": {"image": [0, 1]},
                "mean": [0.0, 0.0],
                "precision": [[1.0]],
            },
            "needs a mean of 4 values",
        ),
        (
            {"kind": "kl", "dims": {"horizontal": [0]}},
            r"score reads encoders \['horizontal'\], expected \['image'\]",
        ),
        (
            {
                "kind": "mahalanobis_pooled",
                "dims": {"image": [0]},
                "mean": [0.0, 0.0],
                "precision": [[1.0, 0.0], [0.0, 1.0]],
            },
            "needs the pooled feature count of every encoder it reads",
        ),
        (
            {
                "kind": "mahalanobis_pooled",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "mean": [0.0, 0.0],
                "precision": [[1.0, 0.0], [0.0, 1.0]],
            },
            "needs a mean of 4 values",
        ),
        (
            {
                "kind": "mahalanobis",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "mean": [0.0, 0.0],
                "precision": [[1.0, 0.0], [0.0, 1.0]],
            },
            "a mahalanobis score reads no pooled features",
        ),
        (
            {
                "kind": "mixture_pooled",
                "dims": {"image": [0]},
                "pooled": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
            },
            "needs positive, finite weights",
        ),
        (
            {
                "kind": "mixture_pooled",
                "dims": {"image": [0]},
                "pooled": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [-1.0],
            },
            "needs positive, finite weights",
        ),
        (
            {
                "kind": "mixture_pooled",
                "dims": {"image": [0]},
                "pooled": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [0.5, 0.5],
            },
            "with 2 components needs 2 means of 3 values",
        ),
        (
            {
                "kind": "mixture_pooled",
                "dims": {"image": [0]},
                "pooled": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [(-np.eye(3)).tolist()],
                "weights": [1.0],
            },
            "component 0: the precision matrix is not positive definite",
        ),
        (
            {
                "kind": "mahalanobis",
                "dims": {"image": [0]},
                "mean": [0.0, 0.0],
                "precision": [[1.0, 0.0], [0.0, 1.0]],
                "weights": [1.0],
            },
            "a mahalanobis score has no mixture weights",
        ),
        (
            {
                "kind": "mixture_bands",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "bands": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
            },
            "a mixture_bands score needs its band_mixture, and no band_peak",
        ),
        (
            {
                "kind": "mixture_bands",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
                "band_mixture": {"mean": [[0.0]], "precision": [[[1.0]]], "weights": [1.0]},
            },
            "needs the band maxima count of every encoder it reads",
        ),
        (
            {
                "kind": "mixture_bands",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "bands": {"image": 3},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
                "band_mixture": {"mean": [[0.0]], "precision": [[[1.0]]], "weights": [1.0]},
            },
            "has 2 pooled features, so 3 band maxima cannot end them",
        ),
        (
            {
                "kind": "mixture_bands",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "bands": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
                "band_mixture": {"mean": [[0.0]], "precision": [[[1.0]]], "weights": [0.0]},
            },
            "mixture_bands band score needs positive, finite weights",
        ),
        (
            {
                "kind": "mixture_pooled",
                "dims": {"image": [0]},
                "pooled": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
                "bands": {"image": 1},
            },
            "a mixture_pooled score has no band maxima terms",
        ),
        (
            {
                "kind": "mixture_band_peak",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "bands": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
            },
            "a mixture_band_peak score needs its band_peak, and no band_mixture",
        ),
        (
            {
                "kind": "mixture_band_peak",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "bands": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
                "band_peak": {"mean": [0.0, 1.0], "scale": [1.0, 1.0]},
            },
            "needs a band_peak mean and scale of 1 values each",
        ),
        (
            {
                "kind": "mixture_band_peak",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "bands": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
                "band_peak": {"mean": [0.0], "scale": [0.0]},
            },
            "a positive, finite scale",
        ),
        (
            {
                "kind": "mixture_band_peak",
                "dims": {"image": [0]},
                "pooled": {"image": 2},
                "bands": {"image": 1},
                "mean": [[0.0] * 3],
                "precision": [np.eye(3).tolist()],
                "weights": [1.0],
                "band_peak": {"mean": [0.0]},
            },
            "invalid \\(KeyError: 'scale'\\)",
        ),
    ],
)
def test_bad_scores_in_a_bundle_are_refused_with_a_reason(tmp_path, score, message):
    _, bundle_dir = build_image_bundle(tmp_path)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta["score"] = score
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    write_sums(bundle_dir)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)

"""`python -m training.adapt` end to end on small generated recordings, its parts, and bad input.

The "shipped" monitor here is the tiny committed pair, scored by a Mahalanobis score over pooled
features fitted on a synthetic default world (grey road, white square); the "new world" is the same
scene recoloured and textured, which that monitor flags. Adapting on two 6.6 s recordings of it must
make held-back frames of the new world pass while black frames, haze and a spin are still flagged.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rosbags import rosbag2
from rosbags.typesys import Stores, get_typestore
from support import synthetic_frames, tiny_bundle, write_ros1_bag, write_ros2_bag

from training.adapt import cli
from training.adapt.faults import FAULTS, onset_episode
from training.adapt.recordings import recording_sha256, split_parts
from training.adapt.scores import merge_band_peak, merge_mixtures, tune
from training.calibrate import ScoredEpisode, fit_scores
from training.export import write_bundle
from vae_ood_monitor import cli as runtime_cli
from vae_ood_monitor.bundle import load_bundle
from vae_ood_monitor.decision import DecisionParams, cusum_trace
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.scoring import BandPeak, EncoderOutputs, LatentScore, Mixture

DEFAULT_DECISION = DecisionParams(tail="upper", epsilon=0.1, window=5, threshold=10.0)


def new_world(count: int, seed: int) -> list[np.ndarray]:
    """The synthetic scene in another town: a brown road, a blue square, a textured sky."""
    rng = np.random.default_rng(seed)
    frames = []
    for rgb in synthetic_frames(count):
        out = rgb.copy()
        out[out[..., 0] == 60] = (120, 85, 50)  # road
        out[out[..., 0] == 255] = (40, 60, 230)  # square
        sky = out[: out.shape[0] // 2].astype(np.int16) + rng.integers(-6, 7, (60, 160, 1))
        out[: out.shape[0] // 2] = np.clip(sky, 0, 255)
        frames.append(out)
    return frames


def _shipped(tmp: Path, kind: str) -> Path:
    """A tiny bundle whose score knows the synthetic default world (mahalanobis_pooled)."""
    probe = OODDetector(load_bundle(tiny_bundle(f"{kind}_tiny", tmp / "probe" / kind)))
    frames = synthetic_frames(240)
    stamps = [i * 33_333_333 for i in range(240)]
    episodes = [
        probe.encode_stream(frames[span], stamps_ns=stamps[span])[2]
        for span in (slice(0, 120), slice(120, 240))
    ]
    fitted = fit_scores(episodes, candidates=("mahalanobis_pooled",))[0]
    bundle = probe.bundle
    return write_bundle(
        tmp / "shipped" / kind,
        kind,
        bundle.preprocessing,
        bundle.encoders,
        fitted.score,
        fitted.calibration_scores,
        DEFAULT_DECISION,
        {"decision_tuning": {"id_budget": 0.0}},
    )


def _args(bags: list[Path], out: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        *[a for bag in bags for a in ("--bag", str(bag))],
        "--out",
        str(out),
        "--bvae",
        str(tmp / "shipped" / "bvae"),
        "--flow",
        str(tmp / "shipped" / "flow"),
        "--bvae-teacher",
        str(tmp / "probe" / "bvae" / "bvae_tiny"),
        "--flow-teacher",
        str(tmp / "probe" / "flow" / "flow_tiny"),
        "--quick",
        "--epochs",
        "1",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """One adaptation, interrupted once in its report stage and resumed, into an --out that
    existed (--force)."""
    tmp = tmp_path_factory.mktemp("adapt")
    for kind in ("bvae", "flow"):
        _shipped(tmp, kind)
    bags = [
        write_ros2_bag(tmp / "town_a", new_world(200, 1)),
        write_ros1_bag(tmp / "town_b.bag", new_world(200, 2), compressed=True),
    ]
    out = tmp / "out"
    out.mkdir()
    (out / "old.txt").write_text("replaced by --force")
    args = _args(bags, out, tmp, "--force")

    def interrupted(*_args):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:  # Ctrl-C as the report stage starts
        patch.setattr(cli, "check_streams", interrupted)
        with pytest.raises(KeyboardInterrupt):
            cli.main(args)
    state = json.loads((tmp / "out.partial" / "state.json").read_text())
    first_seconds = state["seconds"]
    assert cli.main(args) == 0
    return {"tmp": tmp, "out": out, "bags": bags, "state": state, "seconds": first_seconds}


def test_interrupted_run_resumes_and_writes_nothing_half(adapted):
    assert adapted["state"]["done"] == ["bvae", "flow"]  # the report was interrupted
    out = adapted["out"]
    assert not (out.parent / "out.partial").exists()
    final = json.loads((out / "state.json").read_text())
    assert final["done"] == ["bvae", "flow", "report"]
    assert final["info"]["bvae"] == adapted["state"]["info"]["bvae"]  # not fitted again
    assert final["seconds"] >= adapted["seconds"]
    assert not (out / "old.txt").exists()
    assert not (out / cli.CACHE).exists()


def test_bundles_load_in_the_runtime_and_name_their_bags(adapted):
    out, bags = adapted["out"], adapted["bags"]
    for kind in ("bvae", "flow"):
        bundle = load_bundle(out / kind)
        assert bundle.detector == kind
        assert bundle.score.kind == "mixture_pooled"  # shipped component + the new world's
        recorded = bundle.provenance["bags"]
        assert [b["sha256"] for b in recorded] == [recording_sha256(b) for b in bags]
        assert bundle.provenance["fine_tuning"]["epochs"] == 1
    csv = adapted["tmp"] / "scores.csv"
    code = runtime_cli.main(
        [
            "score",
            "--bag",
            str(bags[0]),
            "--bvae",
            str(out / "bvae"),
            "--flow",
            str(out / "flow"),
            "--out",
            str(csv),
        ]
    )
    assert code == 0
    assert len(csv.read_text().splitlines()) == 201  # header + one row per frame


def test_adaptation_learns_the_new_world_and_still_flags_faults(adapted):
    summary = json.loads((adapted["out"] / "summary.json").read_text())
    before = summary["id_flag_share"]["shipped"]["fused"]
    after = summary["id_flag_share"]["adapted"]["fused"]
    assert before > 0.5, summary["id_flag_share"]  # the shipped monitor does not know it
    assert after <= 0.05 and after < before, summary["id_flag_share"]
    faults = {row["fault"]: row for row in summary["faults"]}
    for fault in ("black", "haze", "spin"):
        assert faults[fault]["adapted_flagged"] >= 0.5, faults[fault]
        assert faults[fault]["adapted_stopped"] == "2/2", faults[fault]
    assert (adapted["out"] / "report.md").read_text().startswith("# Adaptation report")
    assert (adapted["out"] / "flag_shares.png").stat().st_size > 0


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    typestore = get_typestore(Stores.ROS2_KILTED)
    no_images = tmp_path / "no_images"
    with rosbag2.Writer(no_images, version=rosbag2.Writer.VERSION_LATEST) as writer:
        connection = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=typestore)
        message = typestore.types["std_msgs/msg/String"](data="hello")
        writer.write(connection, 1, typestore.serialize_cdr(message, "std_msgs/msg/String"))
    truncated = write_ros2_bag(tmp_path / "truncated", synthetic_frames(200))
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    short = write_ros2_bag(tmp_path / "short", synthetic_frames(60))
    mixed = write_ros2_bag(
        tmp_path / "mixed", synthetic_frames(100) + synthetic_frames(100, 320, 240)
    )
    cases = {
        no_images: "no sensor_msgs/Image or CompressedImage topic",
        truncated: "",
        short: "only 2.0 s",
        mixed: "frames of mixed sizes",
    }
    out = tmp_path / "out"
    for bag, expected in cases.items():
        code, err = _run(["--bag", str(bag), "--out", str(out)], capsys)
        assert code == 1, (bag, err)
        assert len(err.splitlines()) == 1 and str(bag) in err and expected in err, err
        assert not out.exists() and not (tmp_path / "out.partial").exists()
    out.mkdir()
    code, err = _run(["--bag", str(short), "--out", str(out)], capsys)
    assert code == 2 and "--force" in err and str(out) in err


def test_merging_never_raises_a_default_world_score_beyond_the_shift():
    rng = np.random.default_rng(0)

    def random_mixture(count: int, size: int) -> Mixture:
        factors = rng.normal(size=(count, size, size))
        precision = np.einsum("kij,klj->kil", factors, factors) + np.eye(size)
        return Mixture(rng.normal(size=(count, size)), precision, rng.random(count) + 0.1)

    old, new = random_mixture(3, 4), random_mixture(2, 4)
    merged, shift = merge_mixtures(old, new, 0.5)
    frames = rng.normal(scale=2.0, size=(500, 4))

    def score(mixture: Mixture) -> np.ndarray:
        latent = LatentScore(
            "mixture_pooled", {"e": [0]}, mixture.mean, mixture.precision, {"e": 2}, mixture.weights
        )
        latents = {"e": EncoderOutputs(frames[:, :1], frames[:, 1:2], frames[:, 2:])}
        return latent(latents)

    assert np.all(score(merged) <= score(old) + shift + 1e-9)
    peak = BandPeak(np.zeros(3), np.ones(3))
    bands = rng.normal(loc=[2.0, -1.0, 0.0], scale=[0.5, 3.0, 1.0], size=(400, 3))
    merged_peak = merge_band_peak(peak, bands, 0.5)
    probes = rng.normal(scale=3.0, size=(300, 3))
    assert np.all(merged_peak(probes) <= peak(probes) + 1e-12)


def test_faults_change_only_what_follows_the_onset():
    frames = synthetic_frames(40)
    stamps = [i * 33_333_333 for i in range(40)]
    for fault in FAULTS:
        episode = onset_episode("bag", fault, frames, stamps)
        assert episode.onset == 20
        assert all(np.array_equal(a, b) for a, b in zip(episode.frames[:20], frames[:20]))
        assert len(episode.stamps_ns) == len(episode.frames)
        changed = [not np.array_equal(a, b) for a, b in zip(episode.frames[20:], frames[20:])]
        assert any(changed), fault
    parts = split_parts(100, 0.25, 0.2)
    assert (parts["fit"], parts["validation"], parts["check"]) == (
        slice(0, 55),
        slice(55, 75),
        slice(75, 100),
    )


def test_the_adapted_decision_clears_every_id_validation_frame(tmp_path):
    """The shipped bundle's ID budget is not taken over: a few seconds of the user's driving
    cannot vouch for a share of their frames, so one burst of high ID scores sets the level."""
    shipped = load_bundle(tiny_bundle("bvae_tiny", tmp_path))
    shipped = replace(shipped, provenance={"decision_tuning": {"id_budget": 0.01}})
    rng = np.random.default_rng(0)
    calibration = rng.normal(10.0, 1.0, 2000)
    drive = rng.normal(10.0, 1.0, 600)
    drive[300:305] = 14.0  # 5 unusual frames of 600: within a 1 % budget
    onset = np.concatenate([rng.normal(10.0, 1.0, 100), rng.normal(30.0, 1.0, 100)])
    validation = [
        ScoredEpisode("id", drive, None),
        ScoredEpisode("onset", onset, 100, "appearance"),
    ]
    params = tune("bvae", shipped, calibration, validation).params
    traces = cusum_trace(drive, calibration, params)
    assert traces.max() < params.threshold

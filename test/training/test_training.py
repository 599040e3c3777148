"""Real training on real simulator data: the tiny configuration must learn, end to end.

Trains both detectors on the "small" preset (a couple of minutes on 2 cores), bundles them, scores
the test split through ONNX Runtime and checks that learning happened.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.dataset import episodes
from training.evaluate import evaluate
from training.pipeline import CONFIGS, fit_detector
from vae_ood_monitor.backends import make_encoder
from vae_ood_monitor.bundle import load_bundle, write_sums
from vae_ood_monitor.cli import main as cli_main
from vae_ood_monitor.detector import OODDetector


@pytest.fixture(scope="module")
def tiny_run(small_dataset, tmp_path_factory):
    root, _ = small_dataset
    out = tmp_path_factory.mktemp("tiny_run")
    bundles = {
        kind: fit_detector(CONFIGS["tiny"][kind], root, out, workers=2) for kind in ("bvae", "flow")
    }
    report, rows, _ = evaluate(root, bundles, out / "report", workers=2)
    return root, bundles, {row["scenario"]: row for row in rows}, report


def test_training_loss_goes_down(tiny_run):
    _, bundles, _, _ = tiny_run
    for bundle in bundles.values():
        history = json.loads((bundle / "bundle.json").read_text())["provenance"]["train_history"]
        for encoder, epochs in history.items():
            assert epochs[-1]["loss"] < 0.8 * epochs[0]["loss"], (
                f"{bundle.name}/{encoder} did not learn"
            )


def test_learned_detector_separates_black_frames(tiny_run):
    """The learned latent score (before the conformal tail, which validation picks on a handful
    of tiny-preset episodes) puts black frames far from normal driving."""
    _, _, rows, _ = tiny_run
    assert rows["black"]["auroc_bvae_raw"] > 0.9


def test_trained_encoders_export_pooled_features_and_validation_weighs_that_score(tiny_run):
    _, bundles, _, _ = tiny_run
    for bundle in bundles.values():
        loaded = load_bundle(bundle)
        assert all(
            "pooled" in make_encoder("onnxruntime", path).outputs
            for path in loaded.encoders.values()
        )
        assert set(loaded.provenance["score_selection"]["validation_auroc"]) == {
            "kl",
            "mahalanobis",
            "mahalanobis_diag",
            "mahalanobis_pooled",
        }


def test_report_and_plots_are_written(tiny_run):
    _, _, _, report = tiny_run
    text = report.read_text()
    assert "| black |" in text and "auroc_fused" in text
    for plot in ("roc.png", "auroc_by_scenario.png", "timelines.png"):
        assert (report.parent / plot).stat().st_size > 5000


def test_every_validation_onset_gets_a_row_of_delays(tiny_run, tmp_path):
    root, bundles, _, _ = tiny_run
    report, _, _ = evaluate(root, bundles, tmp_path / "validation", split="validation", workers=2)
    expected = sorted(e.name for e in episodes(root, "validation") if e.onset_frame)
    with (report.parent / "onsets.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["episode"] for row in rows) == expected and expected
    assert all(int(row["onset_frame"]) > 0 for row in rows)
    assert (
        "stopped within 15 frames" in report.read_text()
        and "| episode | scenario | onset_frame |" in report.read_text()
    )


def test_decision_tradeoff_at_the_shipped_levels_is_the_evaluated_monitor(tiny_run):
    """Replayed from the real bundles' scores at their own alarm levels, the sweep flags the ID
    frames the onboard decisions flagged in the report (the small test split has no onsets to
    time: test_decision.py checks the delays); raising the level never flags more."""
    _, _, _, report = tiny_run
    table = list(csv.DictReader((report.parent / "tradeoff.csv").open()))
    reported_id = float(
        next(
            line
            for line in report.read_text().splitlines()
            if line.startswith("- fused_flagged_id_frames:")
        ).split(":")[1]
    )
    assert (report.parent / "tradeoff.png").stat().st_size > 5000
    for detector in ("bvae", "flow"):
        mine = sorted(
            (r for r in table if r["detector"] == detector), key=lambda r: float(r["level"])
        )
        shipped = [r for r in mine if r["shipped"] == "1"]
        # How many levels there are depends on how many distinct values the ID statistic takes (a
        # tiny β-VAE's CUSUM can stay 0 on every ID frame); test_decision.py checks their spread.
        assert len(shipped) == 1 and float(mine[-1]["level"]) > float(shipped[0]["level"])
        assert float(shipped[0]["fused_flagged_id_frames"]) == pytest.approx(reported_id, abs=1e-3)
        id_share = [float(r["fused_flagged_id_frames"]) for r in mine]
        assert id_share == sorted(id_share, reverse=True)


def test_cli_score_writes_one_row_per_frame(tiny_run, tmp_path, capsys):
    root, bundles, _, _ = tiny_run
    bag = root / "test" / "test_black_full_001"
    out = tmp_path / "scores.csv"
    assert (
        cli_main(
            [
                "score",
                "--bag",
                str(bag),
                "--out",
                str(out),
                "--bvae",
                str(bundles["bvae"]),
                "--flow",
                str(bundles["flow"]),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    truth = list(csv.DictReader((bag / "ground_truth.csv").open()))
    assert [r["stamp_ns"] for r in rows] == [t["stamp_ns"] for t in truth]
    assert all(r["bvae_score"] for r in rows)
    stack = CONFIGS["tiny"]["flow"].preprocessing.stack
    assert [r["flow_score"] == "" for r in rows] == [i < stack for i in range(len(rows))]
    assert np.mean([r["ood"] == "1" for r in rows]) > 0.5, "black frames end up flagged"


def test_cli_eval_prints_metrics(tiny_run, capsys):
    root, bundles, _, _ = tiny_run
    bags = [str(root / "test" / name) for name in ("test_id_001", "test_black_full_001")]
    args = ["eval", "--bvae", str(bundles["bvae"]), "--flow", str(bundles["flow"])]
    for bag in bags:
        args += ["--bag", bag]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "2 bag(s), 80 frames, 40 OOD" in out
    assert cli_main([*args[:5], "--bag", *bags]) == 0, "--bag takes several bags too"
    assert out == capsys.readouterr().out
    table = {
        line.split()[0]: float(line.split()[1])
        for line in out.splitlines()
        if line.split() and line.split()[0] in ("bvae", "flow", "fused")
    }
    assert set(table) == {"bvae", "flow", "fused"} and all(
        0.0 <= v <= 1.0 for v in table.values()
    ), out
    # learning itself is asserted on the latent score above; the conformal tail of the tiny models
    # is tuned on a handful of validation episodes and may be two-sided


@pytest.mark.timeout(900)  # the tiny run's training happens inside the first test that asks for it
@pytest.mark.parametrize("detector", ["bvae", "flow"])
def test_compression_search_measures_every_candidate_and_bundles_the_selected(
    tiny_run, tmp_path, detector
):
    """The whole methodology on the tiny models: sensitivity, pruning + distillation, students,
    INT8 / FP16 / quantization-aware INT8, side-by-side latency, Pareto report, and a calibrated
    bundle of the choice."""
    from training.compress.search import main as search_main

    root, bundles, _, _ = tiny_run
    out = tmp_path / "search"
    argv = [
        "--data",
        str(root),
        "--detector",
        detector,
        "--teacher",
        str(bundles[detector].parent),
        "--out",
        str(out),
        "--space",
        "tiny",
        "--runs",
        "20",
    ]
    assert search_main(argv) == 0
    rows = list(csv.DictReader((out / "search.csv").open()))
    by_name = {r["name"]: r for r in rows}
    assert rows[0]["name"] == "baseline/fp32" and float(rows[0]["latency_ratio"]) == 1.0
    assert {
        "baseline/int8",
        "baseline/fp16",
        "prune50/fp32",
        "prune50/int8",
        "policy/fp32",
        "unstructured87/fp32",
    } <= set(by_name)
    assert {"baseline/int8 qat", "prune50/int8 qat"} <= set(by_name), (
        "the tiny space fine-tunes every structure quantization-aware"
    )
    assert int(by_name["unstructured87/fp32"]["parameters"]) < 0.3 * int(
        rows[0]["parameters"]
    )  # zeros, same shapes
    assert int(by_name["prune50/fp32"]["parameters"]) < 0.6 * int(rows[0]["parameters"])
    assert float(by_name["baseline/int8"]["size_mb"]) < float(rows[0]["size_mb"])
    for row in rows:
        assert (
            0.0 <= float(row["auroc"]) <= 1.0
            and float(row["latency_ms"]) > 0
            and float(row["peak_memory_mb"]) > 10
        )
        assert float(row["detector_ms"]) > float(row["latency_ms"]), (
            "a frame costs preprocessing on top of the encoders"
        )
    selected = json.loads((out / "selected.json").read_text())
    assert float(by_name[selected["selected"]]["auroc_drop"]) <= 0.02
    detector_obj = OODDetector.from_path(selected["bundle"])
    assert detector_obj.bundle.provenance["compression"]["candidate"] == selected["selected"]
    for plot in ("pareto.png", "sensitivity.png"):
        assert (out / plot).stat().st_size > 5000
    assert "## Sensitivity" in (out / "search.md").read_text()


@pytest.mark.timeout(900)
def test_a_shipped_bundle_without_its_checkpoint_is_compressed_by_distillation(
    tiny_run, tmp_path, capsys
):
    """What models/ ships has no torch weights: the search distils students from the bundle's ONNX
    encoders and skips what needs the weights (pruning, sensitivity, QAT of the teacher)."""
    from training.compress.search import main as search_main

    root, bundles, _, _ = tiny_run
    out = tmp_path / "search"
    argv = [
        "--data",
        str(root),
        "--detector",
        "bvae",
        "--teacher",
        str(bundles["bvae"]),
        "--out",
        str(out),
        "--space",
        "tiny",
        "--runs",
        "20",
    ]
    assert search_main(argv) == 0
    rows = list(csv.DictReader((out / "search.csv").open()))
    assert {r["structure"] for r in rows} == {"baseline", "student32"}
    assert "student32/int8 qat" in {r["name"] for r in rows} and "baseline/int8 qat" not in {
        r["name"] for r in rows
    }
    assert int(rows[0]["parameters"]) > 10 * int(
        next(r for r in rows if r["name"] == "student32/fp32")["parameters"]
    )
    report = (out / "search.md").read_text()
    assert "No pruning or sensitivity analysis" in report and not (out / "sensitivity.png").exists()
    assert "1 label-free perturbed copy" in report, "the tiny space distils on perturbed copies too"
    selected = json.loads((out / "selected.json").read_text())
    assert (
        OODDetector.from_path(selected["bundle"]).bundle.provenance["compression"]["policy"] is None
    )

    assert search_main(argv[:5] + [str(tmp_path / "missing")] + argv[6:]) == 1
    assert "missing: no teacher" in capsys.readouterr().err


def test_recalibration_refits_a_bundle_on_other_data(tiny_run, tmp_path):
    from training.pipeline import main as pipeline_main

    root, bundles, _, _ = tiny_run
    town = tmp_path / "town"  # "other data": the same episodes under another dataset folder
    town.symlink_to(root, target_is_directory=True)
    out = tmp_path / "recalibrated"
    assert (
        pipeline_main(
            ["--data", str(town), "--recalibrate", str(bundles["flow"]), "--out", str(out)]
        )
        == 0
    )
    old, new = OODDetector.from_path(bundles["flow"]).bundle, OODDetector.from_path(out).bundle
    assert new.provenance["recalibrated_from"]["sha256"] == old.sha256
    assert new.provenance["dataset"] == str(town), "provenance names the data of this calibration"
    assert new.provenance["recalibrated_from"]["dataset"] == old.provenance["dataset"] == str(root)
    assert new.provenance["config"] == old.provenance["config"], "training facts carry over"
    assert (out / "horizontal.onnx").read_bytes() == (
        bundles["flow"] / "horizontal.onnx"
    ).read_bytes()
    assert not new.decision.extrapolate
    assert new.provenance["score_selection"]["cross_fit"] == "halves"
    assert new.provenance["score_selection"]["mixture_seed"] == 0
    assert new.provenance["decision_tuning"]["id_budget"] == 0.0
    assert new.provenance["score_selection"]["candidates"] == [
        "kl",
        "mahalanobis",
        "mahalanobis_diag",
        "mahalanobis_pooled",
    ]
    tail = tmp_path / "tail"
    assert (
        pipeline_main(
            [
                "--data",
                str(town),
                "--recalibrate",
                str(bundles["bvae"]),
                "--out",
                str(tail),
                "--extrapolate-tail",
                "--cross-fit",
                "episodes",
                "--id-budget",
                "0.001",
                "--scores",
                "kl,mahalanobis",
                "--mixture-seed",
                "3",
            ]
        )
        == 0
    )
    assert OODDetector.from_path(tail).bundle.decision.extrapolate, (
        "the bundle carries the tail setting to the runtime"
    )
    again = tmp_path / "again"
    assert (
        pipeline_main(["--data", str(town), "--recalibrate", str(tail), "--out", str(again)]) == 0
    )
    kept = OODDetector.from_path(again).bundle
    assert kept.decision.extrapolate, "recalibrating keeps the bundle's tail setting"
    assert kept.provenance["score_selection"]["cross_fit"] == "episodes", "and its cross-fitting"
    assert kept.provenance["decision_tuning"]["id_budget"] == 0.001, "and its ID budget"
    assert kept.provenance["score_selection"]["mixture_seed"] == 3, "and its mixture seed"
    assert set(kept.provenance["score_selection"]["validation_auroc"]) == {"kl", "mahalanobis"}, (
        "and its score candidates"
    )
    assert (
        pipeline_main(
            [
                "--data",
                str(town),
                "--recalibrate",
                str(tail),
                "--out",
                str(again),
                "--no-extrapolate-tail",
            ]
        )
        == 0
    )
    assert not OODDetector.from_path(again).bundle.decision.extrapolate
    assert pipeline_main(["--data", str(root), "--recalibrate", str(tmp_path / "missing")]) == 1


@pytest.mark.timeout(900)  # builds the tiny run when it runs alone
def test_recalibration_with_normal_variation_calibrates_on_the_replays_too(tiny_run, tmp_path):
    """`--normal-variation` replays every calibration drive as another normal camera gives it; the
    drive and its replay are one episode of the cross-fit (so its scores are held out as one)."""
    from training.pipeline import main as pipeline_main

    root, bundles, _, _ = tiny_run
    scores = {}
    for variation in ([], ["--normal-variation"]):
        out = tmp_path / ("varied" if variation else "recorded")
        argv = ["--data", str(root), "--recalibrate", str(bundles["bvae"]), "--out", str(out)]
        assert pipeline_main([*argv, "--cross-fit", "episodes", *variation]) == 0
        scores[bool(variation)] = OODDetector.from_path(out).bundle.calibration_scores
    assert len(scores[True]) == 2 * len(scores[False])
    assert not np.allclose(np.sort(scores[True])[::2], np.sort(scores[False]))


def test_evaluate_names_a_missing_split_or_bundle_instead_of_a_traceback(
    tiny_run, tmp_path, capsys
):
    from training.evaluate import main as evaluate_main

    root, bundles, _, _ = tiny_run
    argv = [
        "--data",
        str(root),
        "--bvae",
        str(bundles["bvae"]),
        "--flow",
        str(bundles["flow"]),
        "--out",
        str(tmp_path / "report"),
    ]
    assert evaluate_main(argv + ["--split", "holdout"]) == 1
    assert "no split 'holdout'" in capsys.readouterr().err
    assert evaluate_main(argv[:3] + [str(tmp_path / "missing")] + argv[4:]) == 1
    assert "evaluate: " in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_recalibrating_with_band_maxima_widens_the_pooled_features_and_records_them(
    tiny_run, tmp_path, capsys
):
    from training.pipeline import CONFIGS
    from training.pipeline import main as pipeline_main

    root, bundles, _, _ = tiny_run
    plain, banded = tmp_path / "plain", tmp_path / "banded"
    argv = [
        "--data",
        str(root),
        "--recalibrate",
        str(bundles["bvae"]),
        "--scores",
        "mahalanobis_pooled",
    ]
    assert pipeline_main(argv + ["--out", str(plain)]) == 0
    assert pipeline_main(argv + ["--out", str(banded), "--band-max", "0/1/2"]) == 0
    before, after = OODDetector.from_path(plain).bundle, OODDetector.from_path(banded).bundle
    assert after.provenance["pooled_band_max"] == "0/1/2"
    added = after.score.pooled["image"] - before.score.pooled["image"]
    assert added == CONFIGS["tiny"]["bvae"].vae.conv_channels[0], (
        "block 0's channels, one max each over the top band of two"
    )
    again = tmp_path / "again"
    assert (
        pipeline_main(["--data", str(root), "--recalibrate", str(banded), "--out", str(again)]) == 0
    )
    assert OODDetector.from_path(again).bundle.score.pooled == after.score.pooled, (
        "recalibrating keeps the bands"
    )
    assert pipeline_main(argv + ["--out", str(tmp_path / "bad"), "--band-max", "9/1/2"]) == 1
    assert "band max on conv block 9" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    no_bands = [
        "--data",
        str(root),
        "--recalibrate",
        str(plain),
        "--out",
        str(tmp_path / "no_bands"),
        "--scores",
        "mixture_bands",
    ]
    assert pipeline_main(no_bands) == 1
    assert "the band kinds band maxima in it" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value"), [("cross_fit", "thirds"), ("id_budget", 0.5), ("candidates", ["energy"])]
)
def test_a_bundle_with_a_bad_tuning_record_is_refused_before_recalibrating(
    tiny_run, tmp_path, capsys, field, value
):
    """What a recalibration keeps from the bundle's provenance is checked, named, and refused up
    front."""
    from training.pipeline import main as pipeline_main

    root, bundles, _, _ = tiny_run
    damaged = Path(shutil.copytree(bundles["bvae"], tmp_path / "damaged"))
    info = json.loads((damaged / "bundle.json").read_text())
    section = "decision_tuning" if field == "id_budget" else "score_selection"
    info["provenance"][section][field] = value
    (damaged / "bundle.json").write_text(json.dumps(info))
    write_sums(damaged)
    assert (
        pipeline_main(
            ["--data", str(root), "--recalibrate", str(damaged), "--out", str(tmp_path / "out")]
        )
        == 1
    )
    assert f"provenance.{section}.{field} must be" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_recalibration_becomes_the_default_only_when_promoted(tiny_run, tmp_path, capsys):
    from training import pipeline
    from training.promote import promote

    root, bundles, _, _ = tiny_run
    argv = [
        "--data",
        str(root),
        "--recalibrate",
        str(bundles["bvae"]),
        "--out",
        str(tmp_path / "run"),
    ]
    assert pipeline.main(argv) == 0
    (tmp_path / "models").mkdir()
    assert promote({"bvae": tmp_path / "run"}, tmp_path / "models") == {"bvae": "bvae_student"}
    shipped = OODDetector.from_path(tmp_path / "models" / "bvae_student").bundle
    assert shipped.provenance["shipped_as"]["from"] == str(tmp_path / "run")
    for bad, message in (
        (["--data", str(root), "--id-budget", "0.001"], "--id-budget needs --recalibrate"),
        (argv + ["--id-budget", "0.5"], "--id-budget must be within 0..0.01"),
        (["--data", str(root), "--scores", "kl"], "--scores needs --recalibrate"),
        (argv + ["--scores", "kl,energy"], "score kinds are among kl,"),
        (["--data", str(root), "--band-max", "1/3/8"], "--band-max needs --recalibrate"),
        (argv + ["--band-max", "1/3"], "band max is BLOCK/TOP/COUNT"),
        (["--data", str(root), "--mixture-seed", "1"], "--mixture-seed needs --recalibrate"),
        (argv + ["--mixture-seed", "-1"], "--mixture-seed must be a whole number >= 0"),
    ):
        with pytest.raises(SystemExit):
            pipeline.main(bad)
        assert message in capsys.readouterr().err

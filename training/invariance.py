"""Consistency fine-tuning: make a shipped student's encoder give, for an input changed the way
normal conditions change it, the outputs its shipped self gives for the unchanged input.

Used for the β-VAE (training.tune_bvae: a frame under another exposure, contrast, white balance or
noise, or with houses and trees beside the road) and the flow VAE (training.tune_flow: a flow stack
from a 10 or 15 Hz camera or one that lost frames), against the normal table (docs/normal.md).
The target is the shipped encoder's own outputs — (μ, logσ²) and the pooled conv features the
scores read — so the bundle's score, calibration scores and decision, fitted in exactly that
feature space, are kept; only the encoders change. Each output is compared per feature in units
of its spread over the unchanged inputs.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from training import nuisance
from training.adapt.encoders import (
    export_adapted,
    onnx_input_shape,
    run_onnx,
    torch_encoder,
    torch_features,
)
from training.dataset import episodes
from training.device import Hardware
from training.export import BandMax
from training.pipeline import recalibrate
from training.trainer import set_seeds
from vae_ood_monitor.backends import POOLED_OUTPUT
from vae_ood_monitor.bundle import Bundle, edit_meta, load_bundle

OUTPUTS = ("mu", "logvar", POOLED_OUTPUT)
# Changed inputs and, per row, the row of the unchanged input whose outputs are its target.
BatchInputs = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def consistency_tune(
    onnx_path: Path,
    band_max: BandMax | None,
    unchanged: np.ndarray,
    count: int,
    batch_inputs: BatchInputs,
    out: Path,
    epochs: int,
    hardware: Hardware,
    desc: str,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    rows_per_epoch: int | None = None,
) -> tuple[Path, list[float]]:
    """Fine-tune the encoder of `onnx_path` on `count` training rows; `batch_inputs(rows, rng)`
    gives their changed inputs and the rows of `unchanged` (float32 inputs) they must match.
    An epoch is `rows_per_epoch` rows drawn at random (default: all of them once).
    Returns the exported ONNX at `out` and the consistency loss per epoch."""
    encoder = torch_encoder(onnx_path)
    shipped = run_onnx(onnx_path, unchanged)
    targets = [torch.from_numpy(shipped[k]).float() for k in OUTPUTS]
    # A feature's spread over the unchanged inputs, floored at a tenth of its output's median
    # spread, so a feature that is nearly constant under the training conditions cannot dominate.
    scales = [t.std(dim=0) + 0.1 * t.std(dim=0).median() + 1e-6 for t in targets]
    set_seeds(seed)
    device = hardware.device
    encoder = encoder.to(device).eval()  # BatchNorm folded (identity), as rebuilt
    optimiser = torch.optim.Adam(encoder.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    history: list[float] = []
    for epoch in range(epochs):
        order = rng.permutation(count)[:rows_per_epoch]
        total = 0.0
        batches = range(0, len(order), batch_size)
        for first in tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False):
            changed, target_rows = batch_inputs(np.sort(order[first : first + batch_size]), rng)
            outputs = torch_features(encoder, torch.from_numpy(changed).to(device), band_max)
            loss = sum(
                F.mse_loss(output / s.to(device), target[target_rows].to(device) / s.to(device))
                for output, target, s in zip(outputs, targets, scales)
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(changed)
        history.append(round(total / len(order), 5))
        tqdm.write(f"{desc} epoch {epoch + 1}: consistency loss {history[-1]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = onnx_input_shape(onnx_path)
    return export_adapted(encoder.cpu().eval(), shape, band_max, out), history


def write_tuned_bundle(
    source: Path,
    encoders: dict[str, Path],
    out: Path,
    key: str,
    provenance: dict[str, object],
    calibration: Path | None = None,
    id_budget: float | None = None,
) -> Path:
    """A copy of `source` with its encoders replaced by `encoders` (name: ONNX file) and
    `provenance[key]` saying how. Without `calibration` the score, calibration scores and decision
    are kept; with it they are fitted again on that dataset's calibration and validation drives,
    as recorded and as other normal cameras give them (training.pipeline.recalibrate), the alarm
    level leaving `id_budget` of the validation ID frames above it (None: as the source)."""
    staging = out.with_name(out.name + ".encoders") if calibration else out
    shutil.copytree(load_bundle(source).path, staging)
    for name, file in encoders.items():
        shutil.copyfile(file, staging / f"{name}.onnx")

    def record(meta: dict) -> None:
        meta["provenance"][key] = provenance
        meta["provenance"].pop("shipped_as", None)

    edit_meta(staging, record)
    if calibration is not None:
        # Fitted beside `out` and renamed when done: an interrupted fit leaves no bundle behind
        # that a recipe's `creates:` would take for a finished one.
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        recalibrate(staging, calibration, partial, id_budget=id_budget, normal_variation=True)
        partial.rename(out)
        shutil.rmtree(staging)
    load_bundle(out)
    return out


def add_arguments(parser: argparse.ArgumentParser, detector: str, epochs: int, data: str) -> None:
    """The options training.tune_bvae and training.tune_flow share; `data`: what --data is for."""
    parser.add_argument("--data", type=Path, nargs="+", action="extend", required=True, help=data)
    parser.add_argument(
        "--validation",
        type=Path,
        nargs="+",
        action="extend",
        help="datasets whose validation splits the tuned bundle is checked on (none: no check)",
    )
    parser.add_argument(f"--{detector}", type=Path, help="bundle to tune (default: the runtime's)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2, help="decoding/replay processes")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (training.device)")
    parser.add_argument(
        "--calibration",
        type=Path,
        help="dataset to fit score and decision on again, its drives also replayed through the "
        "normal table (default: keep the source bundle's)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="validate the source bundle too, side by side (twice the replays)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--force", action="store_true", help="replace an existing --out")


def finish(
    args: argparse.Namespace,
    detector: str,
    source: Bundle,
    encoders: dict[str, Path],
    provenance: dict[str, object],
    rows: tuple[nuisance.Row, ...],
    facts: dict[str, object],
    id_budget: float | None = None,
) -> Path:
    """A tuning run's end: the tuned bundle in OUT/bundle (write_tuned_bundle), the work folder
    removed, and with --validation the validation report in OUT."""
    tuned = write_tuned_bundle(
        source.path,
        encoders,
        args.out / "bundle",
        "normal_tuning",
        provenance,
        args.calibration,
        id_budget,
    )
    shutil.rmtree(args.out / "work")
    if args.validation:
        compared = {"source": source.path} if args.compare else {}
        validation_report(
            detector,
            args.validation,
            {**compared, "tuned": tuned},
            rows,
            args.out,
            args.workers,
            facts,
        )
    return tuned


def print_result(prog: str, args: argparse.Namespace, tuned: Path) -> None:
    """What a tuning run made: the validation report (if any) and the bundle."""
    if args.validation:
        print((args.out / "report.md").read_text())
        print(f"{prog}: validation report {args.out / 'report.md'}")
    print(f"{prog}: tuned bundle {tuned}")


def validation_report(
    detector: str,
    data: list[Path],
    bundles: dict[str, Path],
    rows: tuple[nuisance.Row, ...],
    out: Path,
    workers: int,
    facts: dict[str, object],
) -> list[dict[str, object]]:
    """The validation splits of `data` through `rows` of the normal table with each of `bundles`
    (label: bundle) as the only detector: its ID frames flagged and the worst OOD scenario's
    AUROC, in `out` as rows.csv, validation.png and report.md."""
    table = []
    for label, bundle in bundles.items():
        drives = [e for d in data for e in episodes(d, "validation")]
        summaries, *_ = nuisance.run_rows(drives, [], {detector: bundle}, rows, workers)
        table += [{"bundle": label, **s} for s in summaries]
    keys = ["bundle", "row", "id_frames", f"{detector}_flagged", "worst_auroc", "worst_scenario"]
    keys += ["scenarios_auroc_095", "onsets_within_bar", "median_delay_s"]
    with (out / "rows.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    _plot(table, detector, list(bundles), out / "validation.png")
    lines = [f"# {detector} consistency tuning: validation", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    names = ", ".join(f"`{d}`" for d in data)
    lines += ["", f"Validation splits of {names}, the {detector} decision only:", ""]
    lines += [
        "| bundle | row | ID flagged | worst AUROC (scenario) | AUROC ≥ 0.95 | onsets in bar |"
    ]
    lines += ["|---|---|---|---|---|---|"]
    for t in table:
        lines.append(
            f"| {t['bundle']} | {t['row']} | {100 * float(t[f'{detector}_flagged']):.1f} % "
            f"| {float(t.get('worst_auroc', float('nan'))):.3f} ({t.get('worst_scenario', '–')}) "
            f"| {t.get('scenarios_auroc_095', '–')} | {t.get('onsets_within_bar', '–')} |"
        )
    (out / "report.md").write_text("\n".join(lines + ["", "![validation](validation.png)", ""]))
    return table


def _plot(table: list[dict[str, object]], detector: str, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = list(dict.fromkeys(str(t["row"]) for t in table))
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.5 * len(rows)), sharey=True)
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        mine = {str(t["row"]): t for t in table if t["bundle"] == label}
        y = np.arange(len(rows)) + i * width
        flagged = [100 * float(mine[r][f"{detector}_flagged"]) for r in rows]  # type: ignore[arg-type]
        axes[0].barh(y, flagged, width, label=label)
        axes[1].barh(y, [float(mine[r].get("worst_auroc", np.nan)) for r in rows], width)  # type: ignore[arg-type]
    axes[0].axvline(1.0, color="k", ls="--", lw=1)
    axes[0].set_xlabel(f"validation ID frames flagged by the {detector} decision (%)")
    axes[1].axvline(0.95, color="k", ls="--", lw=1)
    axes[1].set(xlim=(0.5, 1.0), xlabel="worst OOD scenario AUROC")
    axes[0].set_yticks(np.arange(len(rows)) + 0.4 - width / 2, rows)
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

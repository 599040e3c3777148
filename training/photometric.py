"""Photometric invariance for the β-VAE student: a camera's normal photometric variation must not
move its features.

Exposure gain 0.7–1.4, contrast ±20 %, white balance ±10 % and sensor noise σ ≤ 4 grey levels are
normal (docs/normal.md), but the student, distilled on the simulator's fixed camera, moves its
features so far under a ±10 % exposure change that every frame is flagged. This fine-tunes the
student's encoder so that its outputs on a photometrically changed frame — (μ, logσ²) and the
pooled conv features the score reads — equal the *shipped* encoder's outputs on the unchanged frame
(a consistency loss, standardised per output). The target is the shipped feature space itself, so
the bundle's score, calibration scores and decision stay valid and are kept; only the encoder is
replaced. Changes beyond the normal ranges (darkness, glare, fog) are never shown, and the held-out
evaluation (training.nuisance) checks they are still flagged.

    python -m training.photometric --data datasets/photometric_tune --out runs/bvae_photometric

writes the tuned bundle to OUT/bundle and `report.md`, `rows.csv`, `validation.png` to OUT: the
validation split replayed through the photometric rows of the normal table, before (the source
bundle) and after.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from training import nuisance
from training.adapt.encoders import (
    EncoderRebuildError,
    bundle_band_max,
    export_adapted,
    onnx_input_shape,
    run_onnx,
    torch_encoder,
    torch_features,
)
from training.dataset import DatasetError, concatenate, episodes, load_inputs, load_manifest
from training.device import DeviceError, Hardware, setup
from training.trainer import set_seeds
from vae_ood_monitor.bundle import BundleError, default_bundle, edit_meta, load_bundle
from vae_ood_monitor.preprocessing import ImagePreprocessing


@dataclass(frozen=True)
class PhotometricRanges:
    """The normal table's photometric ranges (docs/normal.md) the augmentation draws from."""

    gain: tuple[float, float] = (0.7, 1.4)  # exposure, drawn log-uniformly
    contrast: tuple[float, float] = (0.8, 1.2)
    white_balance: float = 0.1  # red × (1 + s), blue × (1 − s), |s| ≤ this
    noise_sigma: float = 4.0  # grey levels
    unchanged_share: float = 0.2  # frames left as they are, so the clean features stay put


def augment(images: np.ndarray, rng: np.random.Generator, ranges: PhotometricRanges) -> np.ndarray:
    """uint8 (N, 3, H, W) frames as another normal camera would give them, as the normal table
    makes its rows (training.nuisance): gain and white balance per channel, contrast about the
    frame's mean, Gaussian noise, each saturating at 0..255; float32 in [0, 1]."""
    n = len(images)
    x = images.astype(np.float32)
    gain = np.exp(rng.uniform(*np.log(ranges.gain), n)).astype(np.float32)
    shift = rng.uniform(-ranges.white_balance, ranges.white_balance, n).astype(np.float32)
    channel_gain = gain[:, None] * np.stack([1 + shift, np.ones_like(shift), 1 - shift], axis=1)
    x = np.clip(x * channel_gain[:, :, None, None], 0, 255)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    factor = rng.uniform(*ranges.contrast, (n, 1, 1, 1)).astype(np.float32)
    x = np.clip((x - mean) * factor + mean, 0, 255)
    sigma = rng.uniform(0, ranges.noise_sigma, (n, 1, 1, 1)).astype(np.float32)
    x = np.clip(x + rng.normal(0, 1, x.shape).astype(np.float32) * sigma, 0, 255).round()
    unchanged = rng.random(n) < ranges.unchanged_share
    x[unchanged] = images[unchanged]
    return x / np.float32(255.0)


def tune(
    bundle_path: Path,
    train_images: np.ndarray,
    work: Path,
    epochs: int,
    ranges: PhotometricRanges,
    hardware: Hardware,
    learning_rate: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[Path, list[float]]:
    """The fine-tuned encoder exported to `work`/image.onnx, and the loss per epoch."""
    bundle = load_bundle(bundle_path)
    onnx_path = bundle.encoders["image"]
    band_max = bundle_band_max(bundle)
    encoder = torch_encoder(onnx_path)
    shipped = run_onnx(onnx_path, train_images.astype(np.float32) / np.float32(255.0))
    targets = [torch.from_numpy(shipped[k]).float() for k in ("mu", "logvar", "pooled")]
    # Per feature, its spread over the clean frames; floored at a tenth of the output's median
    # spread, so a feature that is nearly constant on the simulator's camera cannot dominate.
    scales = [t.std(dim=0) + 0.1 * t.std(dim=0).median() + 1e-6 for t in targets]
    set_seeds(seed)
    device = hardware.device
    encoder = encoder.to(device).eval()  # BatchNorm folded (identity), as rebuilt
    optimiser = torch.optim.Adam(encoder.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    history: list[float] = []
    for epoch in range(epochs):
        order = rng.permutation(len(train_images))
        total = 0.0
        batches = range(0, len(order), batch_size)
        for first in tqdm(batches, desc=f"photometric epoch {epoch + 1}/{epochs}", leave=False):
            rows = np.sort(order[first : first + batch_size])
            x = torch.from_numpy(augment(train_images[rows], rng, ranges)).to(device)
            outputs = torch_features(encoder, x, band_max)
            loss = sum(
                F.mse_loss(out / scale.to(device), target[rows].to(device) / scale.to(device))
                for out, target, scale in zip(outputs, targets, scales)
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(rows)
        history.append(round(total / len(order), 5))
        tqdm.write(f"photometric epoch {epoch + 1}: consistency loss {history[-1]}")
    work.mkdir(parents=True, exist_ok=True)
    path = export_adapted(
        encoder.cpu().eval(), onnx_input_shape(onnx_path), band_max, work / "image.onnx"
    )
    return path, history


def write_tuned_bundle(
    source: Path, encoder: Path, out: Path, provenance: dict[str, object]
) -> Path:
    """A copy of `source` with the tuned encoder; score, calibration and decision kept."""
    shutil.copytree(load_bundle(source).path, out)
    shutil.copyfile(encoder, out / "image.onnx")

    def record(meta: dict) -> None:
        meta["provenance"]["photometric_tuning"] = provenance
        meta["provenance"].pop("shipped_as", None)

    edit_meta(out, record)
    load_bundle(out)
    return out


VALIDATION_ROWS = tuple(
    row
    for row in nuisance.NORMAL_ROWS
    if row.name == nuisance.AS_RECORDED.name
    or row.name.startswith(("exposure", "contrast", "white balance", "noise"))
)


def validate(
    data: Path, bundles: dict[str, Path], out: Path, workers: int
) -> list[dict[str, object]]:
    """The validation split through the photometric rows for each bundle: ID frames flagged by
    the β-VAE decision, worst OOD scenario AUROC; rows.csv and validation.png in `out`."""
    plain = episodes(data, "validation")
    table = []
    for label, bundle in bundles.items():
        summaries, _ = nuisance.run_rows(plain, [], {"bvae": bundle}, VALIDATION_ROWS, workers)
        table += [{"bundle": label, **s} for s in summaries]
    keys = ["bundle", "row", "id_frames", "bvae_flagged", "worst_auroc", "worst_scenario"]
    keys += ["scenarios_auroc_095", "onsets_within_bar", "median_delay_s"]
    with (out / "rows.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    _plot(table, list(bundles), out / "validation.png")
    return table


def _plot(table: list[dict[str, object]], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = list(dict.fromkeys(str(t["row"]) for t in table))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        mine = {str(t["row"]): t for t in table if t["bundle"] == label}
        y = np.arange(len(rows)) + i * width
        axes[0].barh(y, [100 * float(mine[r]["bvae_flagged"]) for r in rows], width, label=label)
        axes[1].barh(y, [float(mine[r].get("worst_auroc", np.nan)) for r in rows], width)
    axes[0].axvline(1.0, color="k", ls="--", lw=1)
    axes[0].set_xlabel("validation ID frames flagged by the β-VAE (%)")
    axes[1].axvline(0.95, color="k", ls="--", lw=1)
    axes[1].set_xlabel("worst OOD scenario AUROC")
    axes[1].set_xlim(0.5, 1.0)
    axes[0].set_yticks(np.arange(len(rows)) + 0.4 - width / 2, rows)
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(table: list[dict[str, object]], facts: dict[str, object]) -> str:
    lines = ["# Photometric tuning of the β-VAE student", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", "Validation split through the photometric rows (bvae decision only):", ""]
    lines += ["| bundle | row | ID flagged | worst AUROC (scenario) | AUROC ≥ 0.95 |"]
    lines += ["|---|---|---|---|---|"]
    for t in table:
        lines.append(
            f"| {t['bundle']} | {t['row']} | {100 * float(t['bvae_flagged']):.1f} % "
            f"| {float(t.get('worst_auroc', float('nan'))):.3f} ({t.get('worst_scenario', '–')}) "
            f"| {t.get('scenarios_auroc_095', '–')} |"
        )
    return "\n".join(lines + ["", "![validation](validation.png)", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.photometric",
        description="Fine-tune the β-VAE student's encoder to be invariant to normal photometric "
        "variation (exposure, contrast, white balance, noise): OUT/bundle and a report in OUT.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="dataset whose train-split ID drives are augmented (repeatable)",
    )
    parser.add_argument(
        "--validation", type=Path, help="dataset with a validation split (default: first --data)"
    )
    parser.add_argument("--bvae", type=Path, help="bundle to tune (default: the runtime's)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2, help="decoding/replay processes")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (training.device)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    source = args.bvae or default_bundle("bvae")
    if args.out.exists() and not args.force:
        print(f"photometric: {args.out} exists (use --force to replace it)", file=sys.stderr)
        return 1
    try:
        hardware = setup(args.device)
        bundle = load_bundle(source)
        if not isinstance(bundle.preprocessing, ImagePreprocessing):
            raise BundleError(f"{source}: photometric tuning is for β-VAE bundles")
        items = [e for d in args.data for e in episodes(d, "train") if e.scenario == "id"]
        if not items:
            raise DatasetError(f"{', '.join(map(str, args.data))}: no ID drives in 'train'")
        images = concatenate(load_inputs(items, bundle.preprocessing, workers=args.workers))
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        encoder, history = tune(
            source,
            images,
            args.out / "work",
            args.epochs,
            PhotometricRanges(),
            hardware,
            args.learning_rate,
        )
        provenance = {
            "from_bundle": str(source),
            "data": [str(d) for d in args.data],
            "dataset_sha256": [load_manifest(d).get("dataset_sha256") for d in args.data],
            "frames": len(images),
            "epochs": args.epochs,
            "loss": history,
            "ranges": asdict(PhotometricRanges()),
        }
        tuned = write_tuned_bundle(source, encoder, args.out / "bundle", provenance)
        shutil.rmtree(args.out / "work")
        table = validate(
            args.validation or args.data[0],
            {"source": bundle.path, "tuned": tuned},
            args.out,
            args.workers,
        )
    except (DatasetError, BundleError, EncoderRebuildError, DeviceError) as err:
        print(f"photometric: {err}", file=sys.stderr)
        return 1
    facts = {"source": source, "frames": len(images), "epochs": args.epochs, "loss": history}
    (args.out / "report.md").write_text(_markdown(table, facts))
    print((args.out / "report.md").read_text())
    print(f"photometric: tuned bundle {tuned}, report {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

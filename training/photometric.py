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
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training import nuisance
from training.adapt.encoders import EncoderRebuildError, bundle_band_max
from training.dataset import DatasetError, concatenate, episodes, load_inputs, load_manifest
from training.device import DeviceError, Hardware, setup
from training.invariance import consistency_tune, validation_report, write_tuned_bundle
from vae_ood_monitor.bundle import Bundle, BundleError, default_bundle, load_bundle
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
    bundle: Bundle,
    images: np.ndarray,
    out: Path,
    epochs: int,
    ranges: PhotometricRanges,
    hardware: Hardware,
    learning_rate: float = 1e-3,
) -> tuple[Path, list[float]]:
    """The β-VAE encoder tuned on uint8 (N, 3, H, W) `images` (training.invariance), exported to
    `out`, and the loss per epoch."""

    def batch_inputs(rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return augment(images[rows], rng, ranges), rows

    return consistency_tune(
        bundle.encoders["image"],
        bundle_band_max(bundle),
        images.astype(np.float32) / np.float32(255.0),
        len(images),
        batch_inputs,
        out,
        epochs,
        hardware,
        "photometric",
        learning_rate,
    )


VALIDATION_ROWS = tuple(
    row
    for row in nuisance.NORMAL_ROWS
    if row.name == nuisance.AS_RECORDED.name
    or row.name.startswith(("exposure", "contrast", "white balance", "noise"))
)


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
            bundle,
            images,
            args.out / "work" / "image.onnx",
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
        tuned = write_tuned_bundle(
            source, {"image": encoder}, args.out / "bundle", "photometric_tuning", provenance
        )
        shutil.rmtree(args.out / "work")
        validation_report(
            "bvae",
            args.validation or args.data[0],
            {"source": bundle.path, "tuned": tuned},
            VALIDATION_ROWS,
            args.out,
            args.workers,
            {"source": source, "frames": len(images), "epochs": args.epochs, "loss": history},
        )
    except (DatasetError, BundleError, EncoderRebuildError, DeviceError) as err:
        print(f"photometric: {err}", file=sys.stderr)
        return 1
    print((args.out / "report.md").read_text())
    print(f"photometric: tuned bundle {tuned}, report {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

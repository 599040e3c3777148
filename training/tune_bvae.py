"""The β-VAE student made to hold under normal variation of camera and town (docs/normal.md).

Two of the normal table's rows stop the shipped student: photometric variation (exposure gain
0.7–1.4, contrast ±20 %, white balance ±10 %, sensor noise σ ≤ 4 grey levels: a ±10 % exposure
change alone flags every frame) and a town with houses, trees, buses and ducks *beside* the road
(83 % of frames flagged; no training map has them). Both are fixed the same way, by consistency
tuning (training.invariance): the encoder's outputs for a changed frame must equal the shipped
encoder's outputs for the unchanged one —

- photometric: every training frame under a random exposure, contrast, white balance and noise
  drawn from the table's ranges, against the same frame as rendered;
- scenery (`--pairs DECORATED PLAIN`): a drive rendered with decorations beside the road, against
  the same drive, pose for pose, rendered without them (training.data presets decorated_tune and
  decorated_tune_plain), under photometric changes as well.

Nothing beyond the table is shown (no darkness, glare, fog; no object in the lane), and the
validation report and the held-out evaluation (training.nuisance) check those are still flagged.
The bundle keeps the shipped score, calibration scores and decision, fitted in the feature space
the tuning holds on to.

    python -m training.tune_bvae --data datasets/photometric_tune datasets/photometric_reference \
        --pairs datasets/decorated_tune datasets/decorated_tune_plain --out runs/normal/bvae

writes OUT/bundle and `report.md`, `rows.csv`, `validation.png` in OUT: the validation splits
through the photometric rows of the normal table, before (the source bundle) and after.
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
from training.calibrate import MAX_ID_BUDGET
from training.dataset import (
    DatasetError,
    Episode,
    episodes,
    load_inputs,
    load_manifest,
)
from training.device import DeviceError, Hardware, setup
from training.invariance import add_arguments, consistency_tune, finish, print_result
from vae_ood_monitor.bundle import Bundle, BundleError, default_bundle, load_bundle
from vae_ood_monitor.preprocessing import ImagePreprocessing


@dataclass(frozen=True)
class PhotometricRanges:
    """The normal table's photometric ranges (docs/normal.md) the augmentation draws from."""

    gain: tuple[float, float] = nuisance.EXPOSURE_GAINS  # drawn log-uniformly
    contrast: tuple[float, float] = nuisance.CONTRAST_FACTORS
    white_balance: float = nuisance.WHITE_BALANCE_SHIFT  # red × (1 + s), blue × (1 − s)
    noise_sigma: float = nuisance.NOISE_SIGMA  # grey levels
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


@dataclass
class TuningFrames:
    """uint8 (N, 3, H, W) frames: `changed[i]` must give the shipped outputs of `unchanged[i]`
    (the same frame, or its undecorated twin) under any photometric change."""

    changed: np.ndarray
    unchanged: np.ndarray


def tuning_frames(
    plain: list[Episode],
    pairs: list[tuple[Episode, Episode]],
    prep: ImagePreprocessing,
    workers: int,
) -> TuningFrames:
    """The plain drives against themselves, and each decorated drive against its plain twin frame
    for frame; a pair whose frame counts differ is refused."""
    twins = [e for pair in pairs for e in pair]
    loaded = load_inputs(plain + twins, prep, workers=workers, desc="frames")
    own = [item.inputs[0] for item in loaded[: len(plain)]]
    decorated, undecorated = loaded[len(plain) :: 2], loaded[len(plain) + 1 :: 2]
    for d, u in zip(decorated, undecorated):
        if d.inputs[0].shape != u.inputs[0].shape:
            raise DatasetError(
                f"{d.episode.path} and {u.episode.path}: {len(d.frames)} and {len(u.frames)} "
                "frames, not a pair rendered from the same drive"
            )
    unchanged = np.concatenate(own + [u.inputs[0] for u in undecorated])
    changed = np.concatenate(own + [d.inputs[0] for d in decorated])
    return TuningFrames(changed, unchanged)


def tune(
    bundle: Bundle,
    frames: TuningFrames,
    out: Path,
    epochs: int,
    ranges: PhotometricRanges,
    hardware: Hardware,
    learning_rate: float = 1e-3,
) -> tuple[Path, list[float]]:
    """The β-VAE encoder tuned (training.invariance) on `frames`, every changed frame also under
    photometric changes; exported to `out`, with the loss per epoch."""

    def batch_inputs(rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return augment(frames.changed[rows], rng, ranges), rows

    return consistency_tune(
        bundle.encoders["image"],
        bundle_band_max(bundle),
        frames.unchanged.astype(np.float32) / np.float32(255.0),
        len(frames.changed),
        batch_inputs,
        out,
        epochs,
        hardware,
        "β-VAE",
        learning_rate,
    )


def _pairs(decorated: Path, plain: Path) -> list[tuple[Episode, Episode]]:
    """Decorated and plain train drives paired by name; a name missing on either side is refused."""
    ours = {e.name: e for e in episodes(decorated, "train") if e.scenario == "id"}
    theirs = {e.name: e for e in episodes(plain, "train") if e.scenario == "id"}
    if not ours or set(ours) != set(theirs):
        raise DatasetError(
            f"{decorated} and {plain}: train drives do not pair by name "
            f"({len(ours)} and {len(theirs)} ID drives, {len(set(ours) ^ set(theirs))} unmatched)"
        )
    return [(ours[name], theirs[name]) for name in sorted(ours)]


VALIDATION_ROWS = tuple(
    row
    for row in nuisance.NORMAL_ROWS
    if row.name == nuisance.AS_RECORDED.name
    or row.name.startswith(("exposure", "contrast", "white balance", "noise"))
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.tune_bvae",
        description="Fine-tune the β-VAE student's encoder so that normal photometric variation "
        "and scenery beside the road leave its features where they are: OUT/bundle, report in OUT.",
    )
    add_arguments(
        parser, "bvae", 20, "datasets whose train-split ID drives are changed photometrically"
    )
    parser.add_argument(
        "--pairs",
        type=Path,
        nargs=2,
        action="append",
        default=[],
        metavar=("DECORATED", "PLAIN"),
        help="a dataset of drives with scenery beside the road and its twin without (repeatable)",
    )
    parser.add_argument(
        "--id-budget",
        type=float,
        help="with --calibration: the share of validation ID frames the alarm level may leave "
        "above it (default: the source bundle's)",
    )
    args = parser.parse_args(argv)
    if args.id_budget is not None and not 0.0 <= args.id_budget <= MAX_ID_BUDGET:
        parser.error(f"--id-budget must be within 0..{MAX_ID_BUDGET}, got {args.id_budget}")
    source = args.bvae or default_bundle("bvae")
    if args.out.exists() and not args.force:
        print(f"tune_bvae: {args.out} exists (use --force to replace it)", file=sys.stderr)
        return 1
    try:
        hardware = setup(args.device)
        bundle = load_bundle(source)
        if not isinstance(bundle.preprocessing, ImagePreprocessing):
            raise BundleError(f"{source}: tune_bvae tunes β-VAE bundles")
        items = [e for d in args.data for e in episodes(d, "train") if e.scenario == "id"]
        if not items:
            raise DatasetError(f"{', '.join(map(str, args.data))}: no ID drives in 'train'")
        pairs = [pair for decorated, plain in args.pairs for pair in _pairs(decorated, plain)]
        frames = tuning_frames(items, pairs, bundle.preprocessing, args.workers)
        used = [*args.data, *(d for pair in args.pairs for d in pair)]
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        encoder, history = tune(
            bundle,
            frames,
            args.out / "work" / "image.onnx",
            args.epochs,
            PhotometricRanges(),
            hardware,
            args.learning_rate,
        )
        provenance = {
            "from_bundle": str(source),
            "data": [str(d) for d in used],
            "dataset_sha256": [load_manifest(d).get("dataset_sha256") for d in used],
            "frames": len(frames.changed),
            "decorated_drives": len(pairs),
            "epochs": args.epochs,
            "loss": history,
            "ranges": asdict(PhotometricRanges()),
        }
        tuned = finish(
            args,
            "bvae",
            bundle,
            {"image": encoder},
            provenance,
            VALIDATION_ROWS,
            {"source": source, **provenance},
            args.id_budget,
        )
    except (DatasetError, BundleError, EncoderRebuildError, DeviceError) as err:
        print(f"tune_bvae: {err}", file=sys.stderr)
        return 1
    print_result("tune_bvae", args, tuned)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which band maxima tell an object in the lane from a decorated town: frame-level AUROCs of the
mixture_bands score with the band maxima of each `--variant` (training.export.BandMax).

Every variant re-exports the bundle's encoder with its band maxima (same weights, no retraining),
fits mixture_bands on the calibration drives of `--data` (as recorded, no replays) and scores
held-out frames: obstacle frames (ground-truth OOD) against decorated-town and plain ID frames,
and every other appearance onset against all ID frames. A variant ending in `:W,W…` scores only
those column windows (e.g. `1/3/8/3:1`: the central third) — windows the export cannot leave out,
so the experiment drops their features after it. Results: docs/experiments.md.

    python -m training.lane_bands --bundle models/bvae_student \\
        --variant 1/3/8 --variant 1/3/8/3/3 --variant 1/3/8/3:1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.calibrate import fit_scores
from training.dataset import Episode, episodes, iter_frames
from training.export import BandMax, add_pooled_output, band_count
from vae_ood_monitor.backends import make_encoder
from vae_ood_monitor.bundle import load_bundle
from vae_ood_monitor.metrics import auroc
from vae_ood_monitor.scoring import EncoderOutputs

APPEARANCE = ("fog", "lens_dirt", "rain", "snow", "glare", "noise", "darkness")
BATCH = 64


@dataclass(frozen=True)
class Variant:
    """Band maxima to export, and which of their column windows the score reads (None: all)."""

    bands: BandMax
    keep: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`BLOCK/TOP/COUNT[/COLUMNS[/SKIP]][:W,W…]`."""
        spec, _, keep = text.partition(":")
        bands = BandMax.parse(spec)
        windows = tuple(int(w) for w in keep.split(",")) if keep else None
        if windows is not None and not all(0 <= w < bands.columns for w in windows):
            raise ValueError(f"variant {text}: windows to keep are 0..{bands.columns - 1}")
        return cls(bands, windows)

    def __str__(self) -> str:
        return str(self.bands) + (f":{','.join(map(str, self.keep))}" if self.keep else "")


@dataclass
class Drive:
    """One episode's outputs under every variant (pooled ends in that variant's band maxima)."""

    episode: Episode
    ood: np.ndarray
    outputs: list[EncoderOutputs]


def encode(
    bundle_dir: Path, variants: list[Variant], items: list[Episode]
) -> tuple[list[Drive], list[int]]:
    """Every frame of `items` through the bundle's encoder re-exported with each variant's bands,
    and how many band maxima each variant's pooled features end in (its kept windows')."""
    bundle = load_bundle(bundle_dir)
    source = bundle.encoders["image"]
    with tempfile.TemporaryDirectory() as work:
        paths = [
            add_pooled_output(Path(shutil.copy(source, Path(work) / f"{i}.onnx")), v.bands)
            for i, v in enumerate(variants)
        ]
        widths = [band_count(p) for p in paths]
        encoders = [make_encoder("onnxruntime", p) for p in paths]
        drives = []
        for episode in items:
            frames, labels = zip(*iter_frames(episode))
            inputs = np.stack([bundle.preprocessing(f) for f in frames])
            outputs = []
            for variant, width, encoder in zip(variants, widths, encoders):
                parts = [encoder(inputs[i : i + BATCH]) for i in range(0, len(inputs), BATCH)]
                mu, logvar, pooled = (
                    np.concatenate([p[name] for p in parts]) for name in ("mu", "logvar", "pooled")
                )
                outputs.append(EncoderOutputs(mu, logvar, kept_windows(pooled, width, variant)))
            drives.append(Drive(episode, np.asarray(labels, dtype=bool), outputs))
    kept = [
        w if v.keep is None else w // v.bands.columns * len(v.keep)
        for v, w in zip(variants, widths)
    ]
    return drives, kept


def kept_windows(pooled: np.ndarray, width: int, variant: Variant) -> np.ndarray:
    """`pooled` with only the kept windows' band maxima (window-major, training.export)."""
    if variant.keep is None:
        return pooled
    means, windows = pooled[:, :-width], np.split(pooled[:, -width:], variant.bands.columns, axis=1)
    return np.concatenate([means, *(windows[w] for w in variant.keep)], axis=1)


def _auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(negatives), bool), np.ones(len(positives), bool)]
    return auroc(labels, np.r_[negatives, positives])


def table(drives: list[Drive], scores: list[np.ndarray]) -> dict[str, float]:
    """AUROCs of one variant's scores (one array per drive, aligned with `drives`)."""

    def frames(pick: Callable[[Episode], object], ood: bool) -> np.ndarray:
        return np.concatenate(
            [s[d.ood == ood] for d, s in zip(drives, scores) if pick(d.episode)] or [np.empty(0)]
        )

    def test_onset(scenario: str) -> Callable[[Episode], object]:
        return lambda e: e.split == "test" and e.scenario == scenario and e.onset_frame

    decorated = lambda e: e.onset_frame is None and "decorated" in str(e.path)
    plain = lambda e: e.onset_frame is None and "decorated" not in str(e.path)
    any_id = lambda e: e.onset_frame is None
    validation_obstacles = lambda e: e.split == "validation" and e.scenario == "obstacles"
    row = {
        "obstacles test / decorated ID": _auroc(
            frames(decorated, False), frames(test_onset("obstacles"), True)
        ),
        "obstacles validation / decorated ID": _auroc(
            frames(decorated, False), frames(validation_obstacles, True)
        ),
        "obstacles test / plain ID": _auroc(
            frames(plain, False), frames(test_onset("obstacles"), True)
        ),
    }
    for scenario in APPEARANCE:
        row[f"{scenario} test / all ID"] = _auroc(
            frames(any_id, False), frames(test_onset(scenario), True)
        )
    row["median obstacles test / decorated ID"] = float(
        np.median(frames(test_onset("obstacles"), True)) / np.median(frames(decorated, False))
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/bvae_student"))
    parser.add_argument("--data", type=Path, default=Path("datasets/normal_merged"))
    parser.add_argument(
        "--test",
        type=Path,
        nargs="+",
        default=[Path(f"datasets/{n}") for n in ("heldout_onsets", "decorated_test", "heldout_id")],
        help="held-out datasets whose test split is scored",
    )
    parser.add_argument(
        "--variant",
        type=Variant.parse,
        action="append",
        required=True,
        help="BLOCK/TOP/COUNT[/COLUMNS[/SKIP]][:W,W…] (training.export.BandMax; W: windows kept)",
    )
    args = parser.parse_args(argv)
    calibration = episodes(args.data, "calibration")
    held_out = [
        e
        for e in episodes(args.data, "validation")
        if e.onset_frame is None or e.scenario == "obstacles"
    ] + [e for root in args.test for e in episodes(root, "test")]
    drives, widths = encode(args.bundle, args.variant, calibration + held_out)
    fitted_on, scored = drives[: len(calibration)], drives[len(calibration) :]
    columns = None
    for index, (variant, width) in enumerate(zip(args.variant, widths)):
        (fitted,) = fit_scores(
            [{"image": d.outputs[index]} for d in fitted_on],
            candidates=("mixture_bands",),
            bands={"image": width},
        )
        row = table(scored, [fitted.score({"image": d.outputs[index]}) for d in scored])
        if columns is None:
            columns = list(row)
            print("| variant (band maxima) | " + " | ".join(columns) + " |")
            print("|---" * (len(columns) + 1) + "|")
        print(
            f"| {variant} ({width}) | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

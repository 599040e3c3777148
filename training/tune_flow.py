"""Camera rate for the flow VAE student: a 10–30 Hz camera and up to 30 % of frames lost are normal.

The flow detector measures motion per second (FlowPreprocessing.frame_interval_s and the frames'
header stamps), yet a stack of flows from a 10 Hz camera spans three times the time of a 30 Hz
one and Farneback over a wider gap is rougher, so its features drift out of the 30 Hz
calibration range (docs/normal.md: 5 % of 10 Hz ID frames flagged). This fine-tunes both flow
encoders by consistency (training.invariance): at every frame of a 30 Hz train drive, the stack a
15 Hz, a 10 Hz or a lossy camera would give there must give the shipped encoders' outputs for the
30 Hz stack at that frame. A robot that really moves faster per second still gives larger flows.

    python -m training.tune_flow --data datasets/photometric_tune --out runs/normal/flow

writes OUT/bundle and `report.md`, `rows.csv`, `validation.png`: the validation split through
the normal table's rate rows, before (the source bundle) and after.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

from training import nuisance
from training.adapt.encoders import EncoderRebuildError, bundle_band_max
from training.dataset import DatasetError, Episode, episodes, iter_frames, load_manifest
from training.device import DeviceError, setup
from training.invariance import add_arguments, consistency_tune, finish, print_result
from vae_ood_monitor.bundle import BundleError, default_bundle, load_bundle
from vae_ood_monitor.preprocessing import FlowPreprocessing, FlowStacker

VALIDATION_ROWS = (nuisance.AS_RECORDED, *nuisance.RATE_ROWS)


def _stacks(
    prep: FlowPreprocessing, frames: list[np.ndarray], indices, stamps
) -> dict[int, np.ndarray]:
    """Frame index: the (2, stack, h, w) float16 input a camera delivering `indices` at `stamps`
    (seconds) gives at that frame."""
    stacker = FlowStacker(prep)
    out = {}
    for index, stamp in zip(indices, stamps):
        stacked = stacker.push(frames[index], round(stamp * 1e9))
        if stacked is not None:
            out[int(index)] = np.stack(stacked).astype(np.float16)
    return out


def episode_pairs(
    job: tuple[Episode, FlowPreprocessing],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One 30 Hz train drive: its 30 Hz stacks (the targets' inputs), and the stacks of every rate
    row with, per stack, the row of the 30 Hz stack at the same frame."""
    episode, prep = job
    frames = [rgb for rgb, _ in iter_frames(episode)]
    count = len(frames)
    reference = _stacks(prep, frames, range(count), np.arange(count) / episode.fps)
    order = {index: row for row, index in enumerate(reference)}
    changed, targets = [], []
    for rate_row in nuisance.RATE_ROWS:
        seed = zlib.crc32(f"{episode.name}:{rate_row.name}:tuning".encode())
        indices, stamps = rate_row.selection(episode.fps, count, seed)
        for index, stack in _stacks(prep, frames, indices, stamps).items():
            if index in order:
                changed.append(stack)
                targets.append(order[index])
    return np.stack(list(reference.values())), np.stack(changed), np.asarray(targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.tune_flow",
        description="Fine-tune the flow student's encoders so that a 10-30 Hz camera and lost "
        "frames give the features of a 30 Hz one: OUT/bundle and a report in OUT.",
    )
    add_arguments(parser, "flow", 4, "datasets whose 30 Hz train-split ID drives are replayed")
    parser.add_argument(
        "--stacks-per-epoch",
        type=int,
        default=4096,
        help="stacks drawn per epoch and encoder (default 4096; 0: all of them)",
    )
    args = parser.parse_args(argv)
    source = args.flow or default_bundle("flow")
    if args.out.exists() and not args.force:
        print(f"tune_flow: {args.out} exists (use --force to replace it)", file=sys.stderr)
        return 1
    try:
        hardware = setup(args.device)
        bundle = load_bundle(source)
        if not isinstance(bundle.preprocessing, FlowPreprocessing):
            raise BundleError(f"{source}: camera-rate tuning is for flow bundles")
        items = [e for d in args.data for e in episodes(d, "train") if e.scenario == "id"]
        if not items:
            raise DatasetError(f"{', '.join(map(str, args.data))}: no ID drives in 'train'")
        with ProcessPoolExecutor(args.workers) as pool:
            jobs = [(e, bundle.preprocessing) for e in items]
            parts = list(tqdm(pool.map(episode_pairs, jobs), total=len(jobs), desc="flow stacks"))
        offsets = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
        unchanged = np.concatenate([p[0] for p in parts])
        changed = np.concatenate([unchanged] + [p[1] for p in parts])
        targets = np.concatenate(
            [np.arange(len(unchanged))] + [p[2] + o for p, o in zip(parts, offsets)]
        )
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        tuned_files, history = {}, {}
        for component, name in enumerate(("horizontal", "vertical")):

            def batch_inputs(rows, rng, component=component):
                return changed[rows, component].astype(np.float32), targets[rows]

            tuned_files[name], history[name] = consistency_tune(
                bundle.encoders[name],
                bundle_band_max(bundle),
                unchanged[:, component].astype(np.float32),
                len(changed),
                batch_inputs,
                args.out / "work" / f"{name}.onnx",
                args.epochs,
                hardware,
                f"camera rate {name}",
                args.learning_rate,
                rows_per_epoch=args.stacks_per_epoch or None,
            )
        provenance = {
            "from_bundle": str(source),
            "data": [str(d) for d in args.data],
            "dataset_sha256": [load_manifest(d).get("dataset_sha256") for d in args.data],
            "rows": [r.name for r in nuisance.RATE_ROWS],
            "stacks": {"unchanged": len(unchanged), "changed": len(changed) - len(unchanged)},
            "epochs": args.epochs,
            "stacks_per_epoch": args.stacks_per_epoch,
            "loss": history,
        }
        tuned = finish(
            args,
            "flow",
            bundle,
            tuned_files,
            provenance,
            VALIDATION_ROWS,
            {"source": source, "stacks": provenance["stacks"], "loss": history},
        )
    except (DatasetError, BundleError, EncoderRebuildError, DeviceError) as err:
        print(f"tune_flow: {err}", file=sys.stderr)
        return 1
    print_result("tune_flow", args, tuned)
    return 0


if __name__ == "__main__":
    sys.exit(main())

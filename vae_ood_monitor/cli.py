"""`vae-ood-monitor`: the monitor's command line (ONNX Runtime only, no torch).

vae-ood-monitor demo                                   # shipped demo bag through the graph over DDS
vae-ood-monitor bench [--baseline-ref REF]             # CPU per frame per node, keep-up, stops
vae-ood-monitor bench --soak MINUTES                   # long ID drive: RSS over time, stops
vae-ood-monitor bench --offline                        # camera rates / lost frames, before/after
vae-ood-monitor monitor [--params-file F] [--bag B]    # the whole graph, supervised processes
vae-ood-monitor score --bag PATH [--topic T] [--every N] [--drop P] --out scores.csv
vae-ood-monitor eval --bag PATH [--bag PATH ...]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vae_ood_monitor import variations
from vae_ood_monitor.backends import BACKENDS, BackendError
from vae_ood_monitor.bags import BagError
from vae_ood_monitor.bundle import BundleError, default_bundle
from vae_ood_monitor.detector import DEFAULT_DECODE, ModelOutputError, OODDetector
from vae_ood_monitor.ground_truth import GroundTruthError, read_ground_truth
from vae_ood_monitor.images import DECODES
from vae_ood_monitor.metrics import auroc, detection_delay, fpr_at_tpr, rising_edges
from vae_ood_monitor.offline import DETECTORS, score_bag, thinned
from vae_ood_monitor.safety import SafetyConfig
from vae_ood_monitor.variations import FrameTransform

SCORE_COLUMNS = ("stamp_ns", "bvae_score", "flow_score", "ood")


class CliError(RuntimeError):
    """A problem to report in one line and exit 1."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _detectors(args: argparse.Namespace) -> dict[str, OODDetector]:
    detectors = {}
    for name in DETECTORS:
        path = getattr(args, name) or default_bundle(name)
        detectors[name] = OODDetector.from_path(
            path, backend=args.backend, threads=args.threads, decode=args.decode
        )
    return detectors


def _rows(
    bag: Path, args: argparse.Namespace, detectors: dict[str, OODDetector]
) -> list[tuple[int, float, float, bool, dict[str, float]]]:
    """(stamp, β-VAE score, flow score, fused flag, surprise per detector) for every decodable
    frame."""
    rows = []
    for stamps, results in score_bag(
        bag,
        detectors,
        args.topic,
        on_bad_frame=_warn,
        frozen_s=args.frozen_s,
        select=lambda messages: thinned(messages, args.every, args.drop, args.seed, args.speed),
        stamps=not args.per_frame,
        transform=_frame_variation(args),
        seed=args.seed,
    ):
        fused = results.fused_flags
        for i, stamp in enumerate(stamps):
            surprise = {name: float(results.surprise[name][i]) for name in detectors}
            rows.append(
                (
                    stamp,
                    float(results.scores["bvae"][i]),
                    float(results.scores["flow"][i]),
                    bool(fused[i]),
                    surprise,
                )
            )
    return rows


def _frame_variation(args: argparse.Namespace) -> FrameTransform | None:
    """The frame changes asked for, in the order a camera makes them (None: frames as recorded)."""
    camera = (args.exposure, args.contrast, args.white_balance)
    steps = [
        *([variations.photometric(*camera)] if camera != (1.0, 1.0, 0.0) else []),
        *([variations.resolution(*args.resize)] if args.resize else []),
        *([variations.noise(args.noise)] if args.noise else []),
        *([variations.jpeg(args.jpeg_quality)] if args.jpeg_quality else []),
    ]
    return variations.chain(steps) if steps else None


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def cmd_score(args: argparse.Namespace) -> int:
    detectors = _detectors(args)
    rows = _rows(args.bag, args, detectors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SCORE_COLUMNS)
        for stamp, bvae, flow, ood, _ in rows:
            writer.writerow((stamp, _cell(bvae), _cell(flow), int(ood)))
    flagged = sum(row[3] for row in rows)
    print(f"{len(rows)} frames scored, {flagged} flagged OOD → {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    detectors = _detectors(args)
    labels_all, surprise_all, flags_all = [], {n: [] for n in (*DETECTORS, "fused")}, []
    id_frames, id_flagged, id_alarms, id_minutes, delays = 0, 0, 0, 0.0, []
    for bag in args.bag:
        truth = read_ground_truth(bag)
        if truth is None:
            raise CliError(
                f"{bag}: carries no ground truth (ground_truth.csv); `score` works without labels"
            )
        by_stamp = {label.stamp_ns: label for label in truth}
        rows = _rows(bag, args, detectors)
        kept = [(row, by_stamp[row[0]]) for row in rows if row[0] in by_stamp]
        if len(kept) < len(rows):
            _warn(
                f"{bag}: {len(rows) - len(kept)} frames have no ground-truth row and are left out"
            )
        ood = np.array([label.ood for _, label in kept], dtype=bool)
        flags = np.array([row[3] for row, _ in kept], dtype=bool)
        labels_all.append(ood)
        flags_all.append(flags)
        for name in DETECTORS:
            surprise_all[name].append(np.array([row[4][name] for row, _ in kept]))
        surprise_all["fused"].append(np.fmax(surprise_all["bvae"][-1], surprise_all["flow"][-1]))
        # In-distribution driving: a whole ID bag, or the frames before an onset, counted in the
        # frames kept (a thinned or lossy camera keeps fewer than were recorded).
        onset = next((i for i, (_, label) in enumerate(kept) if label.ood), None)
        end = len(flags) if onset is None else onset
        fps = (
            (len(kept) - 1) / max((kept[-1][0][0] - kept[0][0][0]) / 1e9, 1e-9)
            if len(kept) > 1
            else 30.0
        )
        id_frames += end
        id_flagged += int(flags[:end].sum())
        id_alarms += rising_edges(flags[:end])
        id_minutes += end / fps / 60.0
        if onset:
            delays.append((bag.name, detection_delay(flags, onset), fps))
    labels = np.concatenate(labels_all)
    print(f"{len(args.bag)} bag(s), {labels.size} frames, {int(labels.sum())} OOD")
    if labels.any() and (~labels).any():
        print(f"{'detector':10s} {'AUROC':>7s} {'FPR@95':>7s}")
        for name, parts in surprise_all.items():
            values = np.concatenate(parts)
            print(f"{name:10s} {auroc(labels, values):7.3f} {fpr_at_tpr(labels, values):7.3f}")
    else:
        print("AUROC needs both ID and OOD frames: not computed")
    if id_frames:
        print(
            f"ID frames flagged by the fused decision: {id_flagged}/{id_frames} "
            f"({id_flagged / id_frames:.2%}), "
            f"false alarms per minute of ID driving: {id_alarms / max(id_minutes, 1e-9):.2f}"
        )
    for name, delay, fps in delays:
        shown = "missed" if delay is None else f"{delay} frames ({delay / fps:.2f} s)"
        print(f"detection delay {name}: {shown}")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from vae_ood_monitor.graph import default_params_file, run_monitor
    from vae_ood_monitor.nodes.common import ros_arguments

    params_file = args.params_file or default_params_file()
    return run_monitor(
        params_file,
        args.bag,
        args.rate,
        ros_args=ros_arguments(),
        live_view=args.live_view,
        separate=args.separate_detectors,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from vae_ood_monitor.demo import demo_bag, run_demo

    return run_demo(
        args.bag or demo_bag(), args.out, args.rate, {"bvae": args.bvae, "flow": args.flow}
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from vae_ood_monitor.bench import (
        run_bench,
        run_live_bench,
        run_offline_table,
        run_paired_bench,
        run_soak,
    )
    from vae_ood_monitor.demo import demo_bag

    bag = args.bag or demo_bag()
    if args.offline:
        return run_offline_table(bag, {"bvae": args.bvae, "flow": args.flow})
    if args.replay:
        return run_bench(
            bag, args.runs, args.out, args.rate, {"bvae": args.bvae, "flow": args.flow}
        )
    if args.paired:
        if args.baseline_ref is None:
            print("vae-ood-monitor bench: --paired needs --baseline-ref", file=sys.stderr)
            return 2
        return run_paired_bench(
            bag,
            args.out,
            args.baseline_ref,
            args.camera_hz[0],
            id_bag=args.id_bag,
            graphs=tuple(args.graph),
        )
    if len(args.graph) > 1:
        print("vae-ood-monitor bench: several --graph only with --paired", file=sys.stderr)
        return 2
    if args.soak is not None:
        return run_soak(
            bag,
            args.out,
            args.soak,
            args.graph[0],
            args.camera_hz[0],
            args.id_bag,
            args.baseline_ref,
        )
    return run_live_bench(
        bag,
        args.out,
        args.baseline_ref,
        args.graph[0],
        tuple(args.camera_hz),
        args.id_s,
        args.id_bag,
    )


def _add_bundle_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bvae",
        type=Path,
        help="β-VAE bundle folder or shipped name (default: models/defaults.json)",
    )
    parser.add_argument(
        "--flow",
        type=Path,
        help="optical-flow bundle folder or shipped name (default: models/defaults.json)",
    )


def _add_detector_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topic", help="camera topic (default: the camera topic or the bag's only image topic)"
    )
    _add_bundle_options(parser)
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--threads", type=int, default=1, help="inference threads per encoder")
    parser.add_argument(
        "--frozen-s",
        type=non_negative_seconds,
        default=SafetyConfig.frozen_s,
        help="the fused decision also stops on byte-identical frames for longer than this, as the "
        "safety stop does [s] (default: %(default)s; 0: detectors only)",
    )
    parser.add_argument(
        "--decode",
        choices=DECODES,
        default=DEFAULT_DECODE,
        help="JPEG decoding, as the detector nodes' `decode` parameter (default: %(default)s)",
    )
    camera = parser.add_argument_group("camera variations (honest header stamps)")
    camera.add_argument(
        "--every", type=_ranged(int, 1), default=1, help="keep every N-th frame (2: 15 Hz)"
    )
    camera.add_argument(
        "--drop", type=_ranged(float, 0.0, 1.0), default=0.0, help="share of frames lost at random"
    )
    camera.add_argument("--seed", type=int, default=0, help="seed of lost frames and noise")
    camera.add_argument(
        "--speed",
        type=_ranged(float, 0.0, None, low_open=True),
        default=1.0,
        help="stamps run this much faster (a real speed-up; eval: stamps no longer match labels)",
    )
    frames = parser.add_argument_group(
        "frame variations (the normal table's rows, docs/normal.md; each changed frame is sent on "
        "as the camera sends it, JPEG quality 90, and decoded as onboard)"
    )
    frames.add_argument(
        "--exposure",
        type=_ranged(float, 0.0, None, low_open=True),
        default=1.0,
        help="exposure gain (0.7: 30 %% darker)",
    )
    frames.add_argument(
        "--contrast",
        type=_ranged(float, 0.0, None, low_open=True),
        default=1.0,
        help="contrast factor (1.2: +20 %%)",
    )
    frames.add_argument(
        "--white-balance",
        type=_ranged(float, -1.0, 1.0, low_open=True),
        default=0.0,
        help="red ×(1+S), blue ×(1−S) (0.1: 10 %% warmer)",
    )
    frames.add_argument(
        "--jpeg-quality", type=_ranged(int, 1, 101), help="re-encode every frame at this quality"
    )
    frames.add_argument("--resize", type=_size, metavar="WxH", help="a camera of this size")
    frames.add_argument(
        "--noise", type=_ranged(float, 0.0), default=0.0, help="Gaussian noise σ in grey levels"
    )
    camera.add_argument(
        "--per-frame",
        action="store_true",
        help="ignore the header stamps: flow per received frame (the behaviour before 2026-12-06)",
    )


def _ranged(
    kind: type, low: float, high: float | None = None, low_open: bool = False
) -> Callable[[str], float]:
    """argparse type: a number of `kind` >= low (> low with `low_open`) and < high."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: '{text}'") from None
        if value < low or (low_open and value == low) or (high is not None and value >= high):
            bounds = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def _size(text: str) -> tuple[int, int]:
    """argparse type of WIDTHxHEIGHT, both positive."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 320x240, got '{text}'"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got '{text}'")
    return width, height


def non_negative_seconds(text: str) -> float:
    """argparse type of a duration option (also `training.evaluate --frozen-s`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: '{text}'") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-ood-monitor", description="VAE-based out-of-distribution monitor."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score every frame of a bag; one CSV row per frame")
    score.add_argument("--bag", type=Path, required=True)
    score.add_argument(
        "--out", type=Path, required=True, help="CSV: stamp_ns,bvae_score,flow_score,ood"
    )
    _add_detector_options(score)
    score.set_defaults(run=cmd_score)
    evaluate = commands.add_parser(
        "eval", help="metrics of labelled bags (AUROC, FPR@95, delays, false alarms)"
    )
    evaluate.add_argument(
        "--bag", type=Path, required=True, nargs="+", action="extend", help="bag(s), each labelled"
    )
    _add_detector_options(evaluate)
    evaluate.set_defaults(run=cmd_eval)
    demo = commands.add_parser(
        "demo",
        help="replay the demo bag through the graph (separate processes, DDS); timeline, "
        "latency, plot",
    )
    demo.add_argument(
        "--bag", type=Path, help="bag with ground truth (default: the shipped demo bag)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("build/demo"), help="plot, timeline CSV and node logs"
    )
    demo.add_argument("--rate", type=float, default=1.0)
    _add_bundle_options(demo)
    demo.set_defaults(run=cmd_demo)
    bench = commands.add_parser(
        "bench",
        help="CPU per frame per node, keep-up, stop times and memory of the graph under an "
        "independent 30 Hz camera client (docs/performance.md)",
    )
    bench.add_argument(
        "--bag", type=Path, help="labelled bag with an onset (default: the shipped demo bag)"
    )
    bench.add_argument("--out", type=Path, default=Path("build/bench"), help="logs, CSV, plot")
    bench.add_argument(
        "--baseline-ref",
        help="also run this git ref's code and default bundles (a git worktree under --out), "
        "side by side",
    )
    bench.add_argument(
        "--graph",
        choices=("nodes", "detectors", "monitor"),
        nargs="+",
        default=["nodes"],
        help="nodes: one process per node; detectors: ood_detectors (both detectors, one shared "
        "decode) and the safety stop; monitor: `vae-ood-monitor monitor`; several with --paired",
    )
    bench.add_argument(
        "--camera-hz",
        type=_ranged(float, 0.0, 30.0 + 1e-9, low_open=True),
        nargs="+",
        default=[30.0],
        help="camera rates to stream (every n-th recorded 30 Hz frame, honest stamps)",
    )
    bench.add_argument(
        "--id-s", type=float, default=20.0, help="seconds of ID driving (CPU measured over them)"
    )
    bench.add_argument(
        "--id-bag",
        type=Path,
        help="a longer in-distribution drive to stream instead of the bag's part before the onset",
    )
    bench.add_argument(
        "--soak",
        type=_ranged(float, 0.0, None, low_open=True),
        metavar="MINUTES",
        help="stream ID driving this long: RSS and CPU per node over time (CSV, PNG), stops",
    )
    bench.add_argument(
        "--paired",
        action="store_true",
        help="CPU per frame only: the --baseline-ref graph and this one at the same time, fed by "
        "a client each (a fair comparison on a loaded machine)",
    )
    bench.add_argument(
        "--offline",
        action="store_true",
        help="no graph: the bag scored as `score` does at 30/15/10 Hz, 25 %% lost and a 2x "
        "speed-up, per frame (before) vs per second, full vs reduced decoding",
    )
    bench.add_argument(
        "--replay",
        action="store_true",
        help="the earlier bench: replay the bag --runs times with the bag player, onset latency",
    )
    bench.add_argument("--runs", type=int, default=5, help="with --replay")
    bench.add_argument("--rate", type=float, default=1.0, help="with --replay: replay speed")
    _add_bundle_options(bench)
    bench.set_defaults(run=cmd_bench)
    monitor = commands.add_parser(
        "monitor",
        help="run detectors and safety stop, a supervised process each (optionally a bag player)",
    )
    monitor.add_argument(
        "--params-file", type=Path, help="parameter YAML (default: config/monitor.yaml)"
    )
    monitor.add_argument(
        "--bag", type=Path, help="replay this bag into the graph and stop at its end"
    )
    monitor.add_argument("--rate", type=float, default=1.0)
    monitor.add_argument(
        "--live-view",
        action="store_true",
        help="also the annotated picture on /ood_monitor/live_view/image/compressed (launch's "
        "live_view:=true)",
    )
    monitor.add_argument(
        "--separate-detectors",
        action="store_true",
        help="each detector in its own process (launch's separate_detectors:=true) instead of "
        "both in one (ood_detectors: one camera subscription, one decode)",
    )
    monitor.set_defaults(run=cmd_monitor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (
        CliError,
        BagError,
        BundleError,
        BackendError,
        GroundTruthError,
        ModelOutputError,
        OSError,
    ) as err:
        print(f"vae-ood-monitor {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

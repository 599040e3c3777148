"""Adapt the monitor to the robot's own world from recorded in-distribution bags, in one command.

    python -m training.adapt --bag town_a.mcap --bag town_b.bag --out runs/my_town
    python -m training.adapt --bag drive.mcap --ood-bag fog.mcap --onset-s 12.5 --out runs/my_town
    vae-ood-monitor score --bag new.mcap --bvae runs/town/bvae --flow runs/town/flow --out x.csv

Writes OUT/bvae and OUT/flow (bundles, verified as the runtime verifies them) and OUT/report.md with
its plots. Work happens in OUT.partial (state.json, checkpoints): an interrupted run continues
where it stopped when the same command is run again, and OUT appears only once everything is
written. docs/adapt.md is the user's page; training.adapt describes the method.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.adapt.adapting import CACHE, EPOCHS, adapt_detector, decoded, replay_streams
from training.adapt.encoders import EncoderRebuildError
from training.adapt.faults import FAULTS, OnsetEpisode, onset_episodes
from training.adapt.recordings import AdaptError, Recording, read_messages, read_recording
from training.adapt.report import Stream, markdown, plot, replay_stream, summarise
from training.adapt.scores import check_mergeable
from training.dataset import DatasetError
from training.device import DeviceError, setup
from vae_ood_monitor.bags import BagError
from vae_ood_monitor.bundle import BundleError, default_bundle, load_bundle
from vae_ood_monitor.demo import demo_bag
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.ground_truth import GroundTruthError, read_ground_truth

STATE_FILE = "state.json"
DETECTORS = ("bvae", "flow")
QUICK_FAULTS = ("haze", "black", "frozen", "spin")


def _by_detector(detectors: dict[str, OODDetector], messages: list) -> dict[str, list]:
    return {name: decoded(d, messages) for name, d in detectors.items()}


def check_streams(
    recordings: list[Recording],
    faults: tuple[str, ...],
    defaults: list[tuple[str, list, list[int], int | None]],
    recorded: list[tuple[str, list, list[int], int]],
    detectors: dict[str, OODDetector],
) -> Iterator[Stream]:
    """Everything the report replays through a monitor (training.adapt.report), made one stream
    at a time: a fault episode holds a copy of its frames."""
    for r in recordings:
        check = r.messages[r.parts["check"]]
        yield Stream("check_id", str(r.path), _by_detector(detectors, check), r.stamps("check"))
        for episode in onset_episodes(
            str(r.path), r.frames("check"), r.stamps("check"), faults, f"{r.sha256}:check"
        ):
            yield Stream(
                "check_fault",
                episode.name,
                episode.frames,
                episode.stamps_ns,
                episode.onset,
                episode.fault,
            )
    for name, messages, stamps, onset in defaults:
        yield Stream("default_id", name, _by_detector(detectors, messages), stamps, onset)
    for name, messages, stamps, onset in recorded:
        yield Stream("recorded_ood", name, _by_detector(detectors, messages), stamps, onset)


class WorkFolder:
    """OUT.partial: state.json (inputs and finished stages) and the stages' outputs."""

    def __init__(self, out: Path, fingerprint: str) -> None:
        self.path = out.with_name(out.name + ".partial")
        state_file = self.path / STATE_FILE
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        if state is not None and state.get("fingerprint") != fingerprint:
            print(f"adapt: {self.path} holds a run with other inputs or options; starting over")
            shutil.rmtree(self.path)
            state = None
        elif state is not None:
            print(f"adapt: resuming from {self.path} (done: {', '.join(state['done']) or 'none'})")
        self.state = state or {"fingerprint": fingerprint, "done": [], "info": {}, "seconds": 0.0}
        self._started, self._before = time.monotonic(), self.state["seconds"]
        self.path.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        (self.path / STATE_FILE).write_text(json.dumps(self.state, indent=1) + "\n")

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def finish(self, stage: str, info: object) -> None:
        self.state["done"].append(stage)
        self.state["info"][stage] = info
        self.state["seconds"] = self.seconds
        self.save()

    @property
    def seconds(self) -> float:
        """Time spent on this run, over every invocation that worked on it."""
        return self._before + time.monotonic() - self._started


def _fingerprint(args: argparse.Namespace, recordings: list[Recording]) -> str:
    relevant = {
        key: str(value)
        for key, value in vars(args).items()
        if key not in ("out", "force", "device")
    }
    relevant["bags"] = [r.sha256 for r in recordings]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.adapt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bag", type=Path, action="append", required=True, help="an ID recording (repeat)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for bvae/, flow/, report.md")
    p.add_argument("--topic", help="camera topic (default: as `score` chooses)")
    p.add_argument(
        "--ood-bag",
        type=Path,
        action="append",
        default=[],
        help="a recording with an OOD onset (repeat; with --onset-s)",
    )
    p.add_argument(
        "--onset-s",
        type=float,
        action="append",
        default=[],
        help="seconds from the start of each --ood-bag to its onset",
    )
    p.add_argument(
        "--replay",
        type=Path,
        help="a project dataset whose calibration ID episodes are replayed too "
        "(always: the demo bag before its onset)",
    )
    p.add_argument(
        "--check-bag",
        type=Path,
        action="append",
        default=[],
        help="a default-world recording to check forgetting on, report only (repeat); where its "
        "folder has a ground_truth.csv (project episodes) its OOD frames are checked too",
    )
    p.add_argument("--bvae", default=None, help="β-VAE bundle to adapt (default: the runtime's)")
    p.add_argument("--flow", default=None, help="flow bundle to adapt (default: the runtime's)")
    p.add_argument("--bvae-teacher", default="bvae_teacher")
    p.add_argument("--flow-teacher", default="flow_teacher")
    p.add_argument(
        "--epochs",
        type=int,
        default=EPOCHS,
        help=f"fine-tuning epochs (0: score and decision only; default {EPOCHS})",
    )
    p.add_argument(
        "--hold-out",
        type=float,
        default=0.25,
        help="share of each bag kept for the report (default 0.25)",
    )
    p.add_argument(
        "--validation",
        type=float,
        default=0.2,
        help="share of each bag the decision is tuned on (default 0.2)",
    )
    p.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"synthetic faults (default all: {','.join(FAULTS)})",
    )
    p.add_argument(
        "--quick", action="store_true", help=f"faults {','.join(QUICK_FAULTS)} only (tests)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (training.device)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def _first_ood(bag: Path) -> int | None:
    """The first OOD frame of a recording by its ground truth (None: none, or no labels)."""
    try:
        labels = read_ground_truth(bag)
    except GroundTruthError as err:
        raise AdaptError(f"{bag}: {err}") from None
    return next((label.frame for label in labels or [] if label.ood), None)


def _recorded(bags: list[Path], onsets_s: list[float]) -> list[tuple[str, list, list[int], int]]:
    streams = []
    for bag, onset_s in zip(bags, onsets_s):
        messages, stamps = read_messages(bag)
        if not messages:
            raise AdaptError(f"{bag}: no camera frames")
        start = stamps[0] + round(onset_s * 1e9)
        onset = int(np.searchsorted(np.asarray(stamps), start))
        if not 0 < onset < len(stamps):
            raise AdaptError(
                f"{bag}: --onset-s {onset_s} is outside its {(stamps[-1] - stamps[0]) * 1e-9:.1f} s"
            )
        streams.append((str(bag), messages, stamps, onset))
    return streams


def run(args: argparse.Namespace) -> int:
    hardware = setup(args.device)
    faults = QUICK_FAULTS if args.quick else tuple(f for f in args.faults.split(",") if f)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise AdaptError(f"unknown fault(s) {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    recordings = []
    for bag in args.bag:
        recordings.append(read_recording(bag, args.topic, args.hold_out, args.validation))
        print(
            f"adapt: {bag}: {len(recordings[-1].messages)} frames, "
            f"{recordings[-1].duration_s:.1f} s at {recordings[-1].rate_hz:.1f} Hz"
        )
    shipped = {k: load_bundle(getattr(args, k) or default_bundle(k)) for k in DETECTORS}
    for bundle in shipped.values():
        check_mergeable(bundle)
    teachers = {k: load_bundle(getattr(args, f"{k}_teacher")) for k in DETECTORS}
    recorded = _recorded(args.ood_bag, args.onset_s)
    work = WorkFolder(args.out, _fingerprint(args, recordings))
    replay = replay_streams(args.replay)

    def validation_onsets() -> Iterator[OnsetEpisode]:
        for r in recordings:
            yield from onset_episodes(
                str(r.path),
                r.frames("validation"),
                r.stamps("validation"),
                faults,
                f"{r.sha256}:validation",
            )

    for kind in DETECTORS:
        if work.done(kind):
            continue
        detector = OODDetector(shipped[kind], threads=2)
        tuned_on = [
            Stream("recorded_ood", name, _by_detector({kind: detector}, m), s, onset)
            for name, m, s, onset in recorded
        ]
        info = adapt_detector(
            kind,
            shipped[kind],
            teachers[kind],
            recordings,
            validation_onsets,
            faults,
            tuned_on,
            replay,
            work.path,
            args,
            hardware,
        )
        work.finish(kind, info)
    if not work.done("report"):
        demo = demo_bag()
        onset = json.loads((demo / "episode.json").read_text())["onset_frame"]
        defaults = [(str(demo), *read_messages(demo), onset)]
        defaults += [(str(b), *read_messages(b), _first_ood(b)) for b in args.check_bag]
        results = {}
        for monitor, bundles in (
            ("shipped", shipped),
            ("adapted", {k: load_bundle(work.path / k) for k in DETECTORS}),
        ):
            detectors = {k: OODDetector(b, threads=2) for k, b in bundles.items()}
            streams = check_streams(recordings, faults, defaults, recorded, detectors)
            count = len(recordings) * (1 + len(faults)) + len(defaults) + len(recorded)
            results[monitor] = [
                replay_stream(s, detectors)
                for s in tqdm(streams, total=count, desc=f"report: {monitor}", unit="stream")
            ]
        summary = summarise(results)
        figures = plot(results, summary, work.path)
        facts = {
            "command": "python -m training.adapt " + " ".join(sys.argv[1:]),
            "seconds": work.seconds,
            "device": str(hardware.device),
            "bags": [r.describe() for r in recordings],
            "hold_out": args.hold_out,
            "validation": args.validation,
            "detectors": work.state["info"],
        }
        (work.path / "report.md").write_text(markdown(summary, facts, figures))
        (work.path / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
        work.finish("report", {"seconds": round(facts["seconds"], 1)})
    shutil.rmtree(work.path / CACHE, ignore_errors=True)
    if args.out.exists():
        shutil.rmtree(args.out)
    work.path.rename(args.out)
    print(f"adapt: wrote {args.out}/bvae, {args.out}/flow and {args.out}/report.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if len(args.onset_s) != len(args.ood_bag):
        p.error(
            f"give one --onset-s per --ood-bag "
            f"({len(args.ood_bag)} bags, {len(args.onset_s)} onsets)"
        )
    if not 0.05 <= args.hold_out <= 0.5 or not 0.05 <= args.validation <= 0.4:
        p.error("--hold-out must be within 0.05..0.5 and --validation within 0.05..0.4")
    if args.epochs < 0:
        p.error(f"--epochs must be >= 0, got {args.epochs}")
    if args.out.exists() and not args.force:
        print(f"adapt: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (
        AdaptError,
        BagError,
        BundleError,
        DatasetError,
        DeviceError,
        EncoderRebuildError,
    ) as err:
        print(f"adapt: {err}", file=sys.stderr)
        return 1

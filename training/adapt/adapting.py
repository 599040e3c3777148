"""One detector adapted: the student fine-tuned (training.adapt.encoders), the new world merged into
its score (training.adapt.scores), the decision tuned on the validation parts and their synthetic
onsets, and the bundle written and verified.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.adapt.encoders import (
    TuneSet,
    bundle_band_max,
    export_adapted,
    fine_tune,
    model_inputs,
    onnx_input_shape,
    run_onnx,
    torch_encoder,
)
from training.adapt.faults import OnsetEpisode
from training.adapt.recordings import Recording, read_messages
from training.adapt.report import Stream
from training.adapt.scores import ADAPT_ID_BUDGET, DEFAULT_WORLD_SHARE, adapt_score, tune
from training.calibrate import ScoredEpisode
from training.dataset import episodes
from training.export import write_bundle
from vae_ood_monitor.bundle import Bundle, load_bundle
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.demo import demo_bag
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.scoring import LatentScore

CACHE = "cache"  # checkpoints and probe bundles, removed before the final rename
EPOCHS = 3
MAX_REPLAY_FRAMES = 1500


def replay_streams(dataset: Path | None) -> list[tuple[str, list, list[int]]]:
    """Default-world frames the fine-tuning anchors the encoders on: the demo bag before its
    onset, and the in-distribution episodes of a project dataset (`--replay`), up to
    MAX_REPLAY_FRAMES in all."""
    demo = demo_bag()
    onset = json.loads((demo / "episode.json").read_text())["onset_frame"]
    streams = [(str(demo), *read_messages(demo, onset))]
    if dataset is not None:
        left = MAX_REPLAY_FRAMES - len(streams[0][1])
        for episode in episodes(dataset, "calibration"):
            if episode.onset_frame is None and left > 0:
                messages, stamps = read_messages(episode.path, left)
                streams.append((str(episode.path), messages, stamps))
                left -= len(messages)
    return streams


def decoded(detector: OODDetector, messages: list) -> list[np.ndarray]:
    return [detector.decode(m) for m in messages]


def _stacked_inputs(
    bundle: Bundle, detector: OODDetector, streams: list[tuple[list, list[int]]]
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Per stream the frame indices with an input, and every encoder's inputs, all streams."""
    indices, rows = [], {name: [] for name in bundle.encoders}
    for messages, stamps in streams:
        found = list(model_inputs(bundle, decoded(detector, messages), stamps))
        indices.append(np.array([i for i, _ in found], dtype=int))
        for name in rows:
            rows[name] += [inputs[name] for _, inputs in found]
    return indices, {name: np.stack(r) for name, r in rows.items()}


def _aligned(student: list[np.ndarray], teacher: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers, in the students' and the teacher's inputs, of the frames both have."""
    own, other, offset_own, offset_other = [], [], 0, 0
    for a, b in zip(student, teacher):
        common = np.intersect1d(a, b)
        own.append(offset_own + np.searchsorted(a, common))
        other.append(offset_other + np.searchsorted(b, common))
        offset_own += len(a)
        offset_other += len(b)
    return np.concatenate(own), np.concatenate(other)


def fine_tuned_encoders(
    kind: str,
    shipped: Bundle,
    teacher: Bundle,
    recordings: list[Recording],
    replay: list[tuple[str, list, list[int]]],
    cache: Path,
    epochs: int,
    hardware,
    seed: int,
) -> tuple[dict[str, Path], dict[str, object]]:
    """The shipped student's encoders fine-tuned (training.adapt.encoders) and exported."""
    student_det, teacher_det = OODDetector(shipped, threads=2), OODDetector(teacher, threads=2)
    fit = [(r.messages[r.parts["fit"]], r.stamps("fit")) for r in recordings]
    own_idx, new_rows = _stacked_inputs(shipped, student_det, fit)
    teacher_idx, teacher_rows = _stacked_inputs(teacher, teacher_det, fit)
    rows_own, rows_teacher = _aligned(own_idx, teacher_idx)
    _, replay_rows = _stacked_inputs(shipped, student_det, [(m, s) for _, m, s in replay])
    band_max = bundle_band_max(shipped)
    files, history = {}, {}
    for name, path in shipped.encoders.items():
        targets = run_onnx(teacher.encoders[name], teacher_rows[name][rows_teacher])
        anchor = run_onnx(path, replay_rows[name])
        shipped_new = run_onnx(path, new_rows[name])
        outputs = ("mu", "logvar", "pooled")
        data = TuneSet(
            new_rows[name][rows_own],
            (targets["mu"], targets["logvar"]),
            replay_rows[name],
            tuple(anchor[key] for key in outputs),
            tuple(np.concatenate([anchor[key], shipped_new[key]]).std(axis=0) for key in outputs),
        )
        encoder, history[name] = fine_tune(
            torch_encoder(path),
            data,
            band_max,
            epochs,
            cache / kind / f"{name}.pt",
            f"{kind}/{name}",
            hardware,
            seed=seed,
        )
        files[name] = export_adapted(
            encoder, onnx_input_shape(path), band_max, cache / kind / f"{name}.onnx"
        )
    info = {
        "epochs": epochs,
        "teacher": str(teacher.path),
        "teacher_sha256": teacher.sha256,
        "new_world_rows": len(rows_own),
        "replay_rows": len(next(iter(replay_rows.values()))),
        "replay": [source for source, _, _ in replay],
        "history": history,
    }
    return files, info


def teacher_mismatch(student: Bundle, teacher: Bundle) -> str | None:
    """Why `teacher` cannot be the target of `student`'s fine-tuning (None: it can): a student's
    latent dimensions mean what its own teacher's mean, so only that teacher will do. Its name is
    in the student's provenance (compression.teacher); bundles without the record are taken as
    given."""
    recorded = student.provenance.get("compression", {}).get("teacher")
    names = {teacher.path.name, teacher.provenance.get("shipped_as", {}).get("formerly")}
    if recorded is None or Path(recorded).name in names:
        return None
    return (
        f"{student.path.name} was distilled from {recorded}, not from {teacher.path.name} "
        "(give its teacher with --bvae-teacher/--flow-teacher)"
    )


def _stream_scores(
    detector: OODDetector, score: LatentScore, frames: list[np.ndarray], stamps: list[int]
) -> np.ndarray:
    count, rows, latents = detector.encode_stream(frames, stamps_ns=stamps)
    scores = np.full(count, np.nan)
    if rows.size:
        scores[rows] = score(latents)
    return scores


def adapt_detector(
    kind: str,
    shipped: Bundle,
    teacher: Bundle,
    recordings: list[Recording],
    validation_onsets: Callable[[], Iterator[OnsetEpisode]],
    faults: tuple[str, ...],
    recorded: list[Stream],
    replay: list[tuple[str, list, list[int]]],
    work: Path,
    args: argparse.Namespace,
    hardware,
) -> dict[str, object]:
    """Fine-tune, merge the score, tune the decision and write WORK/<kind>; returns what the
    report says about it."""
    cache = work / CACHE
    mismatch = teacher_mismatch(shipped, teacher)
    if args.epochs > 0 and mismatch is None:
        files, tuning_info = fine_tuned_encoders(
            kind, shipped, teacher, recordings, replay, cache, args.epochs, hardware, args.seed
        )
    else:
        files = dict(shipped.encoders)
        tuning_info = {"epochs": 0, "skipped": mismatch or "--epochs 0"}
        if args.epochs > 0:
            print(f"adapt: {kind}: encoders not fine-tuned: {mismatch}")
    latent = {name: list(range(len(dims))) for name, dims in shipped.score.dims.items()}
    probe_dir = write_bundle(
        cache / f"{kind}_probe",
        kind,
        shipped.preprocessing,
        files,
        LatentScore("kl", latent),
        np.zeros(1),
        DecisionParams(),
        {},
    )
    probe = OODDetector(load_bundle(probe_dir), threads=2)
    halves: tuple[list, list] = ([], [])
    for recording in tqdm(recordings, desc=f"{kind}: new-world features", unit="bag"):
        part = recording.parts["fit"]
        middle = (part.start + part.stop) // 2
        for half, span in zip(halves, (slice(part.start, middle), slice(middle, part.stop))):
            frames = decoded(probe, recording.messages[span])
            stamps = [int(s) for s in recording.stamps_ns[span]]
            half.append(probe.encode_stream(frames, stamps_ns=stamps)[2])
    adapted = adapt_score(shipped, halves, args.seed)
    # The fit frames' held-out scores are ID drives too, and longer than the validation parts: the
    # alarm level must hold over them as well.
    validation = [
        ScoredEpisode(f"fit part {i} (held out)", scores, None)
        for i, scores in enumerate(adapted.held_out)
    ]
    validation += [
        ScoredEpisode(
            f"{r.path}/validation",
            _stream_scores(
                probe,
                adapted.score,
                decoded(probe, r.messages[r.parts["validation"]]),
                r.stamps("validation"),
            ),
            None,
        )
        for r in recordings
    ]
    onsets = itertools.chain(validation_onsets(), recorded)
    count = len(recordings) * len(faults) + len(recorded)
    for episode in tqdm(onsets, total=count, desc=f"{kind}: validation onsets"):
        frames = episode.frames if isinstance(episode, OnsetEpisode) else episode.frames[kind]
        validation.append(
            ScoredEpisode(
                episode.name,
                _stream_scores(probe, adapted.score, frames, episode.stamps_ns),
                episode.onset,
                episode.category if isinstance(episode, OnsetEpisode) else "recorded",
            )
        )
    tuning = tune(kind, shipped, adapted.calibration, validation)
    provenance = {
        "adapted_from": {"bundle": str(shipped.path), "sha256": shipped.sha256},
        "bags": [r.describe() for r in recordings],
        "ood_bags": [{"bag": s.name, "onset_frame": s.onset} for s in recorded],
        "fine_tuning": tuning_info,
        "score_merge": {
            "kind": adapted.score.kind,
            "default_world_share": DEFAULT_WORLD_SHARE,
            "default_calibration_shift": round(adapted.shift, 4),
            "new_world_calibration_scores": adapted.new_world_calibration,
        },
        "decision_tuning": {
            "id_budget": ADAPT_ID_BUDGET,
            "faults": list(faults),
            "mean_delay_frames": tuning.mean_delay,
            "missed_onsets": tuning.missed,
            "onsets_within_bar": tuning.within_bar,
        },
        "command": " ".join(sys.argv),
    }
    if "pooled_band_max" in shipped.provenance:
        provenance["pooled_band_max"] = shipped.provenance["pooled_band_max"]
    write_bundle(
        work / kind,
        kind,
        shipped.preprocessing,
        files,
        adapted.score,
        adapted.calibration,
        tuning.params,
        provenance,
    )
    load_bundle(work / kind)  # verified as the runtime verifies it
    return {
        "epochs": tuning_info["epochs"],
        **({"not_fine_tuned": tuning_info["skipped"]} if "skipped" in tuning_info else {}),
        "score": adapted.score.kind,
        "new_components": int(
            len(adapted.score.weights)
            - (1 if shipped.score.weights is None else len(shipped.score.weights))
        ),
        "decision": tuning.params.to_dict(),
        "validation_mean_delay_frames": round(tuning.mean_delay, 1),
        "validation_missed": tuning.missed,
        "fine_tuning_loss": tuning_info.get("history"),
    }

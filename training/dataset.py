"""Dataset episodes (from `training.data.generate` or imports) to model inputs and labels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data.generate import EFFECT_START_KEYS, MANIFEST_FILE
from vae_ood_monitor.bags import read_camera_messages
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.images import decode_message
from vae_ood_monitor.preprocessing import FlowPreprocessing, FlowStacker, ImagePreprocessing


class DatasetError(RuntimeError):
    """A dataset folder that cannot be used; the message names it."""


@dataclass(frozen=True)
class Episode:
    path: Path
    name: str
    split: str
    scenario: str
    category: str
    onset_frame: int | None
    fps: float
    map: str | None = None  # the simulator map; None for imported recordings
    # The frame the effect began on, where its OOD label starts later, once it shows (obstacles in
    # view, a reversing robot moving backwards); None where the two are the same.
    effect_began: int | None = None


def load_manifest(root: Path) -> dict:
    path = root / MANIFEST_FILE
    if not path.exists():
        raise DatasetError(
            f"{root}: no {MANIFEST_FILE}; build it with `python -m training.data.generate`"
        )
    return json.loads(path.read_text())


def episodes(root: Path, split: str) -> list[Episode]:
    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise DatasetError(f"{root}: no split '{split}' (splits: {', '.join(manifest['splits'])})")
    return [
        Episode(
            root / e["path"],
            e["name"],
            e["split"],
            e["scenario"],
            e["category"],
            e["onset_frame"],
            e["fps"],
            e.get("map"),
            next(
                (
                    e["extra"][key]
                    for key in EFFECT_START_KEYS.values()
                    if key in e.get("extra", {})
                ),
                None,
            ),
        )
        for e in manifest["episodes"]
        if e["split"] == split
    ]


def check_calibration_splits(root: Path) -> None:
    """Calibration needs ID driving; validation needs ID driving and onset episodes (the score is
    chosen and the decision delay tuned on them) — checked before any frame is encoded."""
    calibration, validation = episodes(root, "calibration"), episodes(root, "validation")
    missing = [
        what
        for what, present in (
            ("calibration episodes", calibration),
            ("in-distribution validation episodes", any(e.onset_frame is None for e in validation)),
            (
                "validation episodes with an OOD onset after frame 0",
                any(e.onset_frame for e in validation),
            ),
        )
        if not present
    ]
    if missing:
        raise DatasetError(
            f"{root}: no {', no '.join(missing)}; merge your episodes into a generated dataset, "
            "e.g. `python -m training.data.merge datasets/default "
            "--add calibration=EPISODE_DIR --out DIR`"
        )


def iter_frames(episode: Episode) -> Iterator[tuple[np.ndarray, bool]]:
    """(rgb, ood label) for every frame of an episode."""
    labels = read_ground_truth(episode.path)
    for message in read_camera_messages(episode.path):
        yield decode_message(message.msg), bool(labels[message.index].ood) if labels else False


@dataclass
class EpisodeInputs:
    """Model inputs of one episode: `frames` are the frame indices the rows belong to."""

    episode: Episode
    frames: np.ndarray
    ood: np.ndarray
    inputs: tuple[np.ndarray, ...]


def image_inputs(episode: Episode, prep: ImagePreprocessing, stride: int = 1) -> EpisodeInputs:
    """β-VAE inputs, kept as uint8 (N, 3, H, W) to fit whole splits in memory."""
    rows, frames, ood = [], [], []
    for index, (rgb, label) in enumerate(iter_frames(episode)):
        if index % stride == 0:
            rows.append(prep.resize(rgb).transpose(2, 0, 1))
            frames.append(index)
            ood.append(label)
    return EpisodeInputs(episode, np.asarray(frames), np.asarray(ood), (np.stack(rows),))


def flow_inputs(episode: Episode, prep: FlowPreprocessing, stride: int = 1) -> EpisodeInputs:
    """Flow inputs (horizontal, vertical), float16 (N, stack, h, w), from the first full
    stack on."""
    stacker = FlowStacker(prep)
    horizontal, vertical, frames, ood = [], [], [], []
    for index, (rgb, label) in enumerate(iter_frames(episode)):
        stacked = stacker.push(rgb)
        if stacked is not None and index % stride == 0:
            horizontal.append(stacked[0].astype(np.float16))
            vertical.append(stacked[1].astype(np.float16))
            frames.append(index)
            ood.append(label)
    if not frames:
        raise DatasetError(f"{episode.path}: too short for a stack of {prep.stack} flows")
    return EpisodeInputs(
        episode, np.asarray(frames), np.asarray(ood), (np.stack(horizontal), np.stack(vertical))
    )


def load_inputs(
    items: list[Episode],
    prep: ImagePreprocessing | FlowPreprocessing,
    stride: int = 1,
    workers: int = 2,
    desc: str = "",
) -> list[EpisodeInputs]:
    """Inputs of many episodes, decoded in `workers` processes, with a progress bar."""
    function = image_inputs if isinstance(prep, ImagePreprocessing) else flow_inputs
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(function, episode, prep, stride) for episode in items]
        return [
            f.result()
            for f in tqdm(futures, desc=desc or f"loading {len(items)} episodes", unit="episode")
        ]


def concatenate(loaded: list[EpisodeInputs], which: int = 0) -> np.ndarray:
    return np.concatenate([item.inputs[which] for item in loaded])

"""Per-frame ground truth stored beside a bag, so `eval` can score a replay against it.

A rosbag2 bag is a directory: the labels live inside it as `ground_truth.csv`. A ROS 1 `.bag`
file gets `<name>.ground_truth.csv` next to it. One row per camera frame, in frame order:

    frame,stamp_ns,ood,scenario,onset_frame

`ood` is 0/1, `scenario` the episode's scenario name (`id` for in-distribution driving), and
`onset_frame` the first OOD frame of an onset episode (empty when the episode has no onset).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

GROUND_TRUTH_FILE = "ground_truth.csv"
_COLUMNS = ("frame", "stamp_ns", "ood", "scenario", "onset_frame")


class GroundTruthError(ValueError):
    """A ground-truth file that cannot be parsed; the message names the file and the row."""


@dataclass(frozen=True)
class FrameLabel:
    frame: int
    stamp_ns: int
    ood: bool
    scenario: str
    onset_frame: int | None


def ground_truth_path(bag: Path) -> Path:
    """Where the labels of `bag` live (inside a rosbag2 directory, beside a ROS 1 file)."""
    if bag.is_dir():
        return bag / GROUND_TRUTH_FILE
    return bag.with_name(f"{bag.stem}.{GROUND_TRUTH_FILE}")


def write_ground_truth(bag: Path, labels: Iterable[FrameLabel]) -> Path:
    path = ground_truth_path(bag)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_COLUMNS)
        for label in labels:
            onset = "" if label.onset_frame is None else label.onset_frame
            writer.writerow((label.frame, label.stamp_ns, int(label.ood), label.scenario, onset))
    return path


def read_ground_truth(bag: Path) -> list[FrameLabel] | None:
    """The bag's labels, or None when it carries none."""
    path = ground_truth_path(bag)
    if not path.exists():
        return None
    labels = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != _COLUMNS:
            raise GroundTruthError(
                f"{path}: expected columns {','.join(_COLUMNS)}, found {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                onset = row["onset_frame"]
                labels.append(
                    FrameLabel(
                        frame=int(row["frame"]),
                        stamp_ns=int(row["stamp_ns"]),
                        ood=row["ood"] == "1",
                        scenario=row["scenario"],
                        onset_frame=int(onset) if onset else None,
                    )
                )
            except (TypeError, ValueError) as err:
                raise GroundTruthError(f"{path}:{line}: bad row ({err})") from None
    return labels

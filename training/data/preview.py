"""Contact sheet of an episode: evenly spaced frames, each framed green (ID) or red (OOD).

    python -m training.data.preview EPISODE_DIR --out sheet.png [--count 12]

Looking at the frames is the fastest way to check that a scenario really shows what it claims.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from vae_ood_monitor.bags import BagError, read_camera_messages
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.images import FrameError, decode_message

_ID_COLOUR = (40, 180, 40)
_OOD_COLOUR = (220, 30, 30)


def contact_sheet(
    episode: Path, count: int = 12, columns: int = 4, tile_width: int = 320
) -> np.ndarray:
    """RGB image of `count` frames of `episode`, labelled with frame index and ground truth."""
    labels = {label.frame: label for label in read_ground_truth(episode) or []}
    messages = list(read_camera_messages(episode))
    if not messages:
        raise BagError(f"{episode}: no camera frames")
    picks = np.unique(np.linspace(0, len(messages) - 1, count).round().astype(int))
    tiles = []
    for index in picks:
        rgb = decode_message(messages[index].msg)
        height = round(rgb.shape[0] * tile_width / rgb.shape[1])
        tile = cv2.resize(rgb, (tile_width, height), interpolation=cv2.INTER_AREA)
        label = labels.get(int(index))
        colour = _OOD_COLOUR if label is not None and label.ood else _ID_COLOUR
        text = f"#{index} {'OOD ' + label.scenario if label and label.ood else 'ID'}"
        tile = cv2.copyMakeBorder(tile, 6, 6, 6, 6, cv2.BORDER_CONSTANT, value=colour)
        cv2.putText(tile, text, (12, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(
            tile, text, (12, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA
        )
        tiles.append(tile)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % columns)
    return np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])


def write_contact_sheet(episode: Path, out: Path, count: int = 12) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(contact_sheet(episode, count), cv2.COLOR_RGB2BGR))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("episode", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=12)
    args = parser.parse_args(argv)
    try:
        print(write_contact_sheet(args.episode, args.out, args.count))
    except (BagError, FrameError) as err:
        print(f"preview: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

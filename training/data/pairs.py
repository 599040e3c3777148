"""Check that two datasets pair frame by frame: a decorated drive and its plain twin.

    python -m training.data.pairs datasets/decorated_tune datasets/decorated_tune_plain \\
        [--poses] [--samples build/decorations]

Paired episodes have the same name, map and seed in both manifests; frame i of one is frame i of
the other. Per pair it prints the frames that differ at all and, over all frames, the median share
of pixels that differ (by more than JPEG noise) in the whole image and in the road ahead (the
bottom third's middle half: where the lane is, decorations beside the road rarely show). A drive
that went another way differs everywhere, the road included. `--poses` renders each pair's specs
again at 160x120 in the simulator and compares the robot's pose and command in every frame (the
drive does not depend on the camera size). `--samples` writes side-by-side PNGs (decorated left).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.data.generate import MANIFEST_FILE
from vae_ood_monitor.bags import read_camera_messages
from vae_ood_monitor.images import decode_message

# Grey levels: re-encoding the same frame gives the same JPEG, but a block next to a decoration
# differs a little all over; more than this counts as changed.
CHANGED_LEVEL = 24
POSE_CHECK_SIZE = (160, 120)


def _manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_FILE
    if not path.exists():
        raise SystemExit(f"pairs: no {MANIFEST_FILE} in {root}")
    return json.loads(path.read_text())


def paired_episodes(decorated: Path, plain: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(decorated, plain) manifest rows of the episodes both datasets hold, by split and name;
    raises SystemExit where a pair's map, seed or length differ."""
    plain_rows = {(e["split"], e["name"]): e for e in _manifest(plain)["episodes"]}
    pairs = []
    for row in _manifest(decorated)["episodes"]:
        twin = plain_rows.get((row["split"], row["name"]))
        if twin is None:
            continue
        for key in ("map", "seed", "frames"):
            if row[key] != twin[key]:
                raise SystemExit(
                    f"pairs: {row['split']}/{row['name']}: {key} {row[key]} != {twin[key]}"
                )
        pairs.append((row, twin))
    if not pairs:
        raise SystemExit(f"pairs: {decorated} and {plain} have no episode in common")
    return pairs


def _frames(root: Path, row: dict[str, Any]) -> list[np.ndarray]:
    return [decode_message(m.msg) for m in read_camera_messages(root / row["path"])]


def compare_frames(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    """Frames that differ, and the median changed share of all pixels and of the road ahead."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} frames against {len(b)}")
    whole, road, differ = [], [], 0
    for x, y in zip(a, b):
        changed = np.abs(x.astype(np.int16) - y.astype(np.int16)).max(axis=2) > CHANGED_LEVEL
        height, width = changed.shape
        whole.append(changed.mean())
        road.append(changed[2 * height // 3 :, width // 4 : 3 * width // 4].mean())
        differ += bool(changed.any())
    return {
        "frames": len(a),
        "differ": differ,
        "median_changed": float(np.median(whole)),
        "median_changed_road": float(np.median(road)),
        "max_changed_road": float(np.max(road)),
    }


def same_poses(row: dict[str, Any], decorations: int) -> bool:
    """Render the pair's drive with and without its decorations (small camera) and compare the
    per-frame metadata: pose, command, resets."""
    from training.data.generate import DEFAULT_SIM_PYTHON, SimulatorStream

    width, height = POSE_CHECK_SIZE
    spec = {
        "map": row["map"],
        "seed": row["seed"],
        "frames": row["frames"],
        "width": width,
        "height": height,
        "fps": row["fps"],
    }
    metas = []
    for count in (decorations, 0):
        stream = SimulatorStream({**spec, "decorations": count}, DEFAULT_SIM_PYTHON)
        try:
            metas.append([meta for meta, _ in stream])
            if stream.finish() is not None:
                raise SystemExit(f"pairs: {row['path']}: simulator failed")
        finally:
            stream.close()
    return len(metas[0]) == row["frames"] and metas[0] == metas[1]


def _write_samples(out: Path, name: str, a: list[np.ndarray], b: list[np.ndarray]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for index in np.linspace(0, len(a) - 1, 3).astype(int):
        side = np.concatenate([a[index], b[index]], axis=1)
        cv2.imwrite(str(out / f"{name}_{index:03d}.png"), cv2.cvtColor(side, cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("decorated", type=Path)
    parser.add_argument("plain", type=Path)
    parser.add_argument("--poses", action="store_true", help="re-render and compare poses")
    parser.add_argument("--samples", type=Path, help="folder for side-by-side PNGs")
    args = parser.parse_args(argv)
    ok = True
    print("episode | map | frames | differ | median changed | road ahead (median / max) | poses")
    for row, twin in paired_episodes(args.decorated, args.plain):
        a, b = _frames(args.decorated, row), _frames(args.plain, twin)
        stats = compare_frames(a, b)
        poses = "-"
        if args.poses:
            same = same_poses(row, int(row.get("extra", {}).get("decorations", 0)))
            poses, ok = ("same" if same else "DIFFER"), ok and same
        print(
            f"{row['path']} | {row['map']} | {stats['frames']} | {stats['differ']} | "
            f"{stats['median_changed']:.1%} | {stats['median_changed_road']:.1%} / "
            f"{stats['max_changed_road']:.1%} | {poses}"
        )
        if args.samples:
            _write_samples(args.samples, row["name"], a, b)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

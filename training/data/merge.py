"""Merge dataset folders into one, so calibration and validation see more of the world.

    python -m training.data.merge datasets/default datasets/intersections --out datasets/default_plus

A detector's score and decision are fitted on the calibration split and tuned on the validation
split; scenes they never show (an intersection, another town) look OOD later. Merging adds the
episodes of other datasets — e.g. in-distribution drives on more maps (`--preset intersections`)
— to a dataset, split by split, before `python -m training.pipeline --recalibrate BUNDLE --data
MERGED`.

Episodes are linked (symlinks to the source bags), not copied. The first dataset keeps its episode
names, later ones are prefixed with their folder name. All datasets must share camera topic, frame
size and rate. The merged manifest names its sources; its dataset hash covers every episode's bag.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from training.data.generate import MANIFEST_FILE, dataset_sha256
from training.dataset import DatasetError, load_manifest

_SHARED = ("topic", "width", "height", "fps")


def merge(sources: list[Path], out: Path) -> Path:
    """Link the episodes of `sources` into `out` with a merged manifest; returns the manifest path."""
    if len(sources) < 2:
        raise DatasetError("merge needs at least two datasets")
    if len({source.name for source in sources}) < len(sources):
        raise DatasetError(f"datasets must have different folder names (they prefix episode names): {', '.join(map(str, sources))}")
    manifests = [load_manifest(source) for source in sources]
    for source, manifest in zip(sources, manifests):
        missing = [key for key in (*_SHARED, "preset", "dataset_sha256", "splits", "episodes") if key not in manifest]
        if missing:
            raise DatasetError(f"{source}/{MANIFEST_FILE}: not a dataset manifest (no {', '.join(missing)})")
    first = manifests[0]
    for source, manifest in zip(sources[1:], manifests[1:]):
        different = [key for key in _SHARED if manifest[key] != first[key]]
        if different:
            raise DatasetError(f"{source}: {', '.join(f'{k} {manifest[k]!r}' for k in different)} differ from {sources[0]} "
                               f"({', '.join(f'{k} {first[k]!r}' for k in different)})")
    if out.exists():
        if not (out / MANIFEST_FILE).exists() or "merged_from" not in json.loads((out / MANIFEST_FILE).read_text()):
            raise DatasetError(f"{out} exists and is not a merged dataset; choose another --out")
        shutil.rmtree(out)  # links and a manifest only: the source bags stay untouched
    episodes: list[dict[str, Any]] = []
    for index, (source, manifest) in enumerate(zip(sources, manifests)):
        for entry in manifest["episodes"]:
            name = entry["name"] if index == 0 else f"{source.name}_{entry['name']}"
            link = out / entry["split"] / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((source / entry["path"]).resolve(), target_is_directory=True)
            episodes.append({**entry, "name": name, "path": f"{entry['split']}/{name}"})
    splits = list(dict.fromkeys(split for manifest in manifests for split in manifest["splits"]))
    merged = {
        **{key: first[key] for key in _SHARED},
        "preset": "+".join(str(m["preset"]) for m in manifests),
        "merged_from": [{"path": str(source), "dataset_sha256": m["dataset_sha256"]} for source, m in zip(sources, manifests)],
        "dataset_sha256": dataset_sha256(episodes),
        "splits": {split: [e["name"] for e in episodes if e["split"] == split] for split in splits},
        "episodes": episodes,
    }
    path = out / MANIFEST_FILE
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path, help="dataset folders (with manifest.json); the first keeps its episode names")
    parser.add_argument("--out", type=Path, required=True, help="the merged dataset folder")
    args = parser.parse_args(argv)
    try:
        manifest = json.loads(merge(args.datasets, args.out).read_text())
    except DatasetError as err:
        print(f"merge: {err}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{split} {len(names)}" for split, names in manifest["splits"].items())
    print(f"{args.out}: {len(manifest['episodes'])} episodes ({sizes}), dataset sha256 {manifest['dataset_sha256'][:16]}…")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Merge dataset folders into one, so calibration and validation see more of the world.

    python -m training.data.merge datasets/default datasets/intersections \
        --out datasets/default_plus
    python -m training.data.merge datasets/default --add calibration=datasets/real/drive_01 \
        --add validation=datasets/real/drive_02 --out datasets/default_real

A detector's score and decision are fitted on the calibration split and tuned on the validation
split; scenes they never show (an intersection, another town) look OOD later. Merging adds the
episodes of other datasets — e.g. in-distribution drives on more maps (`--preset intersections`)
— to a dataset, split by split, before `python -m training.pipeline --recalibrate BUNDLE --data
MERGED`. `--add SPLIT=EPISODE_DIR` adds single episodes — recordings imported with
`training.data.import_recording` — to a split; keep a generated dataset first, since its
validation split holds the OOD onsets the decision is tuned on.

Episodes are linked (symlinks to the source bags), not copied. The first dataset keeps its episode
names, later ones are prefixed with their folder name, added episodes with their parent folder's
name. All datasets and added episodes must share camera topic, frame size and rate. The merged
manifest names its sources; its dataset hash covers every episode's bag and labels. Generated
episodes of different datasets that drive the same map from the same seed start alike and repeat
each other's frames (until an onset): the merge warns and lists them in the manifest as
`repeated_drives`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from training.data.episodes import EPISODE_FILE
from training.data.generate import MANIFEST_FILE, dataset_sha256, manifest_entry
from training.data.scenarios import SPLITS
from training.dataset import DatasetError, load_manifest
from vae_ood_monitor.bags import BagError, image_topics

_SHARED = ("topic", "width", "height", "fps")


def _require_shared(
    found: dict[str, Any], like: dict[str, Any], where: Path, against: str, hint: str = ""
) -> None:
    """Refuse `where` when its topic, size or rate (`found`) differ from the first dataset's."""
    different = [key for key in _SHARED if found[key] != like[key]]
    if different:
        raise DatasetError(
            f"{where}: {', '.join(f'{k} {found[k]!r}' for k in different)} differ from {against} "
            f"({', '.join(f'{k} {like[k]!r}' for k in different)}){hint}"
        )


def _added_entry(split: str, episode_dir: Path, like: dict[str, Any]) -> dict[str, Any]:
    """The manifest row of a single episode added to `split`, checked against the first dataset."""
    if split not in SPLITS:
        raise DatasetError(
            f"--add {split}={episode_dir}: unknown split '{split}' (splits: {', '.join(SPLITS)})"
        )
    if not (episode_dir / EPISODE_FILE).exists():
        raise DatasetError(
            f"{episode_dir}: not an episode (no {EPISODE_FILE}); import a recording with "
            "`python -m training.data.import_recording SOURCE --out EPISODE_DIR`"
        )
    entry = manifest_entry(
        episode_dir, split, f"{episode_dir.resolve().parent.name}_{episode_dir.name}"
    )
    try:
        topics = image_topics(episode_dir)
    except BagError as err:
        raise DatasetError(str(err)) from None
    found = {
        "topic": like["topic"] if like["topic"] in topics else ", ".join(topics),
        **{k: entry[k] for k in _SHARED[1:]},
    }
    _require_shared(
        found, like, episode_dir, "the datasets'", "; import it with matching --size/--fps"
    )
    return entry


def repeated_drives(episodes: list[dict[str, Any]]) -> list[list[str]]:
    """Names of episodes that share a map and a simulator seed, first one first: the same start pose
    and random stream, so the same frames until one of them turns OOD. Recordings have no seed."""
    by_drive: dict[tuple[str, int], list[str]] = {}
    for entry in episodes:
        if entry.get("seed") is not None and entry.get("map"):
            by_drive.setdefault((entry["map"], entry["seed"]), []).append(entry["name"])
    return [names for names in by_drive.values() if len(names) > 1]


def merge(sources: list[Path], out: Path, added: list[tuple[str, Path]] = ()) -> Path:
    """Link the episodes of `sources`, and the single episodes `added` as (split, episode dir), into
    `out` with a merged manifest; returns the manifest path."""
    if not sources or len(sources) + len(added) < 2:
        raise DatasetError("merge needs a dataset and at least one more dataset or --add episode")
    if len({source.name for source in sources}) < len(sources):
        raise DatasetError(
            "datasets must have different folder names (they prefix episode names): "
            f"{', '.join(map(str, sources))}"
        )
    manifests = [load_manifest(source) for source in sources]
    for source, manifest in zip(sources, manifests):
        missing = [
            key
            for key in (*_SHARED, "preset", "dataset_sha256", "splits", "episodes")
            if key not in manifest
        ]
        if missing:
            raise DatasetError(
                f"{source}/{MANIFEST_FILE}: not a dataset manifest (no {', '.join(missing)})"
            )
    first = manifests[0]
    for source, manifest in zip(sources[1:], manifests[1:]):
        _require_shared(manifest, first, source, str(sources[0]))
    episodes: list[dict[str, Any]] = []
    targets: list[Path] = []  # what each episode's link points to
    for index, (source, manifest) in enumerate(zip(sources, manifests)):
        for entry in manifest["episodes"]:
            name = entry["name"] if index == 0 else f"{source.name}_{entry['name']}"
            episodes.append({**entry, "name": name, "path": f"{entry['split']}/{name}"})
            targets.append((source / entry["path"]).resolve())
    for split, episode_dir in added:
        entry = _added_entry(split, episode_dir, first)
        if any(e["name"] == entry["name"] for e in episodes):
            raise DatasetError(
                f"{episode_dir}: an episode named {entry['name']} is in the merge already"
            )
        episodes.append(entry)
        targets.append(episode_dir.resolve())
    # Everything is checked: only now is `out` touched, so a refused merge leaves it as it was.
    if out.exists():
        if not (out / MANIFEST_FILE).exists() or "merged_from" not in json.loads(
            (out / MANIFEST_FILE).read_text()
        ):
            raise DatasetError(f"{out} exists and is not a merged dataset; choose another --out")
        shutil.rmtree(out)  # links and a manifest only: the source bags stay untouched
    for entry, target in zip(episodes, targets):
        link = out / entry["path"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
    splits = [split for split in SPLITS if any(e["split"] == split for e in episodes)]
    merged = {
        **{key: first[key] for key in _SHARED},
        "preset": "+".join(str(m["preset"]) for m in manifests),
        "merged_from": [
            {"path": str(source), "dataset_sha256": m["dataset_sha256"]}
            for source, m in zip(sources, manifests)
        ]
        + [{"path": str(episode_dir), "split": split} for split, episode_dir in added],
        "dataset_sha256": dataset_sha256(episodes),
        "splits": {split: [e["name"] for e in episodes if e["split"] == split] for split in splits},
        "episodes": episodes,
        "repeated_drives": repeated_drives(episodes),
    }
    path = out / MANIFEST_FILE
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return path


def _split_and_episode(text: str) -> tuple[str, Path]:
    split, sep, episode_dir = text.partition("=")
    if not sep or not split or not episode_dir:
        raise argparse.ArgumentTypeError(
            f"expected SPLIT=EPISODE_DIR (e.g. calibration=datasets/real/drive_01), got '{text}'"
        )
    return split, Path(episode_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "datasets",
        nargs="+",
        type=Path,
        help="dataset folders (with manifest.json); the first keeps its episode names",
    )
    parser.add_argument(
        "--add",
        type=_split_and_episode,
        action="append",
        default=[],
        metavar="SPLIT=EPISODE_DIR",
        help="add one episode (e.g. an imported recording) to a split; repeatable",
    )
    parser.add_argument("--out", type=Path, required=True, help="the merged dataset folder")
    args = parser.parse_args(argv)
    try:
        manifest = json.loads(merge(args.datasets, args.out, args.add).read_text())
    except DatasetError as err:
        print(f"merge: {err}", file=sys.stderr)
        return 1
    if manifest["repeated_drives"]:
        shown = "; ".join(" = ".join(names) for names in manifest["repeated_drives"][:3])
        more = len(manifest["repeated_drives"]) - 3
        print(
            f"merge: warning: {len(manifest['repeated_drives'])} drives repeat "
            "(same map and seed, so the same frames until an onset): "
            f"{shown}{f'; {more} more' if more > 0 else ''} (manifest.json: repeated_drives)",
            file=sys.stderr,
        )
    sizes = ", ".join(f"{split} {len(names)}" for split, names in manifest["splits"].items())
    print(
        f"{args.out}: {len(manifest['episodes'])} episodes ({sizes}), "
        f"dataset sha256 {manifest['dataset_sha256'][:16]}…"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build a Duckietown dataset: simulator episodes → corruptions → rosbag2 episodes + manifest.

    python -m training.data.generate --preset default         # ~39k frames, all scenarios
    python -m training.data.generate --preset small --out /tmp/ds  # seconds, for tests

Presets to merge into a dataset (training.data.merge): intersections (6k ID frames on intersection
maps), intersections_more (10.8k more there), more_maps (14.4k ID train frames on 12 more maps),
traffic_lights (6k ID frames by traffic lights). Held-out drives for the nuisance evaluation
(docs/normal.md): heldout_id (ID drives at 60 Hz on the test maps), decorated_test (the same on
decorated test maps), heldout_onsets (one onset per OOD scenario); photometric_reference (1.8k ID
frames on the train maps). decorated_tune (9k frames with objects beside the road) and
decorated_tune_plain (its 3.6k train frames without them, pose for pose; docs/data.md).

The simulator runs in its own venv (numpy 1.23, pyglet 1.5) as `training.data.sim_worker`
subprocesses that stream raw frames; this process (main venv) applies camera-side corruptions,
encodes JPEG and writes the bags. Finished episodes are kept, so an interrupted run resumes; an
episode made with an older revision of its scenario (Scenario.revision) is rendered again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from training.data.corruptions import make_corruption
from training.data.episodes import EPISODE_FILE, EpisodeInfo, EpisodeWriter
from training.data.scenarios import PRESETS, SCENARIOS, EpisodePlan, plan_episodes
from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC
from vae_ood_monitor.ground_truth import GROUND_TRUTH_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
# An obstacle frame is labelled OOD once the obstacle covers this share of the image (0.25 %: about
# 30 pixels of a 112x112 model input, a blob of a few pixels across, about 770 pixels at 640x480).
OBSTACLE_VISIBLE_SHARE = 0.0025
# A reversing robot's frames are labelled OOD once it has moved backwards by more than this between
# two frames (metres; half a millimetre: past rounding, well before the flow shows it).
BACKWARD_STEP_M = 0.0005
# Effects whose OOD label starts when they show in the frames, not when they begin: the frame they
# began on is kept in episode.json under this key of `extra`.
EFFECT_START_KEYS = {"obstacles": "placed_frame", "reverse": "command_frame"}
DEFAULT_SIM_PYTHON = REPO_ROOT / ".venv-sim" / "bin" / "python"
MANIFEST_FILE = "manifest.json"


class GenerationError(RuntimeError):
    """An episode the simulator could not render; the message names the episode and the cause."""


def _sim_environment() -> dict[str, str]:
    """Environment for the simulator venv's python: without the ROS wheels' bootstrap variables,
    which would make it load this venv's ROS libraries (see ENVIRONMENT.md)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE")
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


class SimulatorStream:
    """A simulator worker rendering one episode spec; iterate it for (meta, rgb) frames.

    stderr goes to a temporary file, not a pipe: gym-duckietown logs a lot, and a full pipe would
    block the worker while this side waits for frames.
    """

    def __init__(self, spec: dict[str, Any], sim_python: Path) -> None:
        self._shape = (int(spec["height"]), int(spec["width"]), 3)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the worker's lifetime
        self.process = subprocess.Popen(
            [str(sim_python), "-m", "training.data.sim_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
            env=_sim_environment(),
        )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(spec).encode())
        self.process.stdin.close()

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        stdout = self.process.stdout
        assert stdout is not None
        frame_bytes = int(np.prod(self._shape))
        while len(header := stdout.read(4)) == 4:
            meta = json.loads(stdout.read(struct.unpack("<I", header)[0]))
            pixels = stdout.read(frame_bytes)
            if len(pixels) != frame_bytes:
                return
            yield meta, np.frombuffer(pixels, np.uint8).reshape(self._shape)

    def finish(self) -> str | None:
        """Wait for the worker; None when it succeeded, else the last line it logged."""
        if self.process.wait() == 0:
            return None
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit code {self.process.returncode}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


def render_episode(
    plan: EpisodePlan,
    out_dir: Path,
    *,
    width: int,
    height: int,
    fps: float,
    storage: str,
    sim_python: Path,
    on_frame: Callable[[], None],
) -> EpisodeInfo:
    """Render one planned episode into `out_dir/<split>/<name>` (a rosbag2 directory)."""
    scenario = SCENARIOS[plan.scenario]
    corruption = (
        make_corruption(scenario.corruption, plan.intensity, plan.seed)
        if scenario.corruption
        else None
    )
    info = EpisodeInfo(
        name=plan.name,
        scenario=plan.scenario,
        category=scenario.category,
        onset_frame=plan.onset_frame,
        fps=fps,
        map=plan.map,
        seed=plan.seed,
        intensity=plan.intensity,
        extra={
            "split": plan.split,
            "scenario_revision": scenario.revision,
            "traffic_lights": plan.traffic_lights,
            **({"decorations": plan.decorations} if plan.decorations else {}),
        },
    )
    path = out_dir / plan.split / plan.name
    shutil.rmtree(path, ignore_errors=True)  # a leftover of an interrupted run
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = SimulatorStream(plan.sim_spec(width, height, fps), sim_python)
    try:
        with EpisodeWriter(path, info, storage=storage) as writer:
            resets = 0
            in_view = EffectInView(scenario.sim_effect)
            for frame, (meta, rgb) in zip(range(plan.frames), stream):
                resets += bool(meta.get("reset"))
                active = plan.onset_frame is not None and frame >= plan.onset_frame
                if active and corruption is not None:
                    rgb = corruption(rgb, frame - (plan.onset_frame or 0))
                writer.add_frame(rgb, in_view(meta, rgb, active))
                on_frame()
            # The robot left the road and was put back: a jump in the frames, and on a new map the
            # sign that the lane controller does not drive it (`extra.resets`, 0 on a good drive).
            info.extra["resets"] = resets
            if (
                scenario.sim_effect in EFFECT_START_KEYS
            ):  # the onset is when the effect comes into view
                info.extra[EFFECT_START_KEYS[scenario.sim_effect]] = plan.onset_frame
                info.onset_frame = writer.first_ood_frame()
            error = stream.finish()
            if error is not None or writer.frames_written != plan.frames:
                raise GenerationError(
                    f"{plan.name}: simulator stopped after {writer.frames_written} of "
                    f"{plan.frames} frames: {error}"
                )
    finally:
        stream.close()
    return info


def _made_with_older_revision(path: Path, plan: EpisodePlan) -> bool:
    """An episode on disk whose scenario has changed since (Scenario.revision); one whose
    episode.json cannot be read counts too: rendering it again is what repairs it."""
    revision = SCENARIOS[plan.scenario].revision
    if not (path / EPISODE_FILE).exists():
        return False
    try:
        extra = json.loads((path / EPISODE_FILE).read_text()).get("extra", {})
        # Episodes written before scenario revisions recorded only their corruption's, under
        # another key.
        recorded = extra.get("scenario_revision", extra.get("corruption_revision", 1))
    except (OSError, ValueError, AttributeError):
        return True
    return recorded != revision


def _forward_step(previous: dict[str, Any], meta: dict[str, Any]) -> float:
    """How far the robot moved along its heading between two frames (metres; negative: backwards).
    The simulator's heading at angle a points along (cos a, -sin a) in its x-z plane."""
    angle = previous["angle"]
    return (meta["x"] - previous["x"]) * math.cos(angle) - (meta["z"] - previous["z"]) * math.sin(
        angle
    )


class EffectInView:
    """Whether an active simulator effect shows in the frames yet — what a frame's OOD label says.

    Always, except for an obstacle that is not (yet) in view — placed behind a bend or still too
    far — which no camera-based monitor can see, and for driving backwards before the robot moves
    backwards: commanded in reverse, it first brakes (the simulated Duckiebot answers a command
    after 0.15 s, with a 0.2 s time constant), and slow forward motion is what every drive starts
    with, from rest. Once backwards, a reversing episode stays OOD (a reset that puts the robot
    back on the road included).
    """

    def __init__(self, sim_effect: str | None) -> None:
        self.sim_effect = sim_effect
        self._previous: dict[str, Any] | None = None
        self._moved_backwards = False

    def __call__(self, meta: dict[str, Any], rgb: np.ndarray, active: bool) -> bool:
        previous, self._previous = self._previous, meta
        if not active:
            return False
        if self.sim_effect == "obstacles":
            return (
                int(meta.get("obstacle_pixels", 0))
                >= OBSTACLE_VISIBLE_SHARE * rgb.shape[0] * rgb.shape[1]
            )
        if self.sim_effect == "reverse":
            if previous is not None and not meta.get("reset"):
                self._moved_backwards |= _forward_step(previous, meta) < -BACKWARD_STEP_M
            return self._moved_backwards
        return True


def _episode_sha256(path: Path) -> str:
    """Over the episode's bag files and its labels (ground_truth.csv), so relabelled frames make
    another hash even where the frames stay byte-identical."""
    digest = hashlib.sha256()
    for data_file in sorted(
        p for p in path.iterdir() if p.suffix in (".mcap", ".db3") or p.name == GROUND_TRUTH_FILE
    ):
        with data_file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dataset_sha256(episodes: list[dict[str, Any]]) -> str:
    """The dataset hash: over the episode hashes (frames and labels), in manifest order."""
    return hashlib.sha256("".join(e["sha256"] for e in episodes).encode()).hexdigest()


def manifest_entry(episode_dir: Path, split: str, name: str) -> dict[str, Any]:
    """An episode's manifest row: its episode.json, where it sits in the dataset and its hash."""
    info = json.loads((episode_dir / EPISODE_FILE).read_text())
    return {
        **info,
        "name": name,
        "split": split,
        "path": f"{split}/{name}",
        "sha256": _episode_sha256(episode_dir),
    }


def write_manifest(
    out_dir: Path, preset: str, plans: list[EpisodePlan], width: int, height: int, fps: float
) -> Path:
    """The dataset's table of contents: splits, episodes, per-episode hashes and a dataset hash."""
    episodes = [
        manifest_entry(out_dir / plan.split / plan.name, plan.split, plan.name) for plan in plans
    ]
    dataset_hash = dataset_sha256(episodes)
    manifest = {
        "preset": preset,
        "topic": DEFAULT_CAMERA_TOPIC,
        "width": width,
        "height": height,
        "fps": fps,
        "dataset_sha256": dataset_hash,
        "splits": {
            split: [e["name"] for e in episodes if e["split"] == split]
            for split in dict.fromkeys(p.split for p in plans)
        },
        "episodes": episodes,
    }
    path = out_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def generate(
    preset_name: str,
    out_dir: Path,
    *,
    width: int = 640,
    height: int = 480,
    fps: float | None = None,
    workers: int = 2,
    storage: str = "mcap",
    sim_python: Path = DEFAULT_SIM_PYTHON,
    progress: bool = True,
) -> Path:
    """Render every missing episode of a preset, then write the manifest; returns its path.
    `fps` None: the preset's camera rate, else 30 Hz."""
    if not sim_python.exists():
        raise GenerationError(
            f"simulator python not found at {sim_python}: run `make sim-venv` first"
        )
    preset = PRESETS[preset_name]
    fps = fps or preset.fps or 30.0
    plans = plan_episodes(preset)
    stale = [p.name for p in plans if _made_with_older_revision(out_dir / p.split / p.name, p)]
    if stale and progress:
        print(
            f"{preset_name}: rendering again {len(stale)} episodes made with an older revision "
            f"of their scenario (or with an unreadable episode.json): {', '.join(stale)}",
            file=sys.stderr,
        )
    todo = [
        p
        for p in plans
        if p.name in stale or not (out_dir / p.split / p.name / EPISODE_FILE).exists()
    ]
    bar = tqdm(
        total=sum(p.frames for p in todo),
        unit="frame",
        desc=f"{preset_name}: {len(todo)} episodes",
        disable=not progress,
    )
    lock = threading.Lock()

    def advance() -> None:
        with lock:
            bar.update()

    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(
                render_episode,
                plan,
                out_dir,
                width=width,
                height=height,
                fps=fps,
                storage=storage,
                sim_python=sim_python,
                on_frame=advance,
            ): plan
            for plan in todo
        }
        for future in as_completed(futures):
            try:
                future.result()
            except (GenerationError, OSError, ValueError) as err:
                failures.append(f"{futures[future].name}: {err}")
    bar.close()
    if failures:
        raise GenerationError(
            f"{len(failures)} of {len(todo)} episodes failed (rerun to retry them):\n  "
            + "\n  ".join(failures)
        )
    return write_manifest(out_dir, preset_name, plans, width, height, fps)


def _summary(manifest_path: Path, seconds: float) -> str:
    manifest = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    camera = f"{manifest['width']}x{manifest['height']} @ {manifest['fps']:g} Hz"
    lines = [f"dataset {root} ({manifest['preset']}, {camera}) in {seconds:.0f} s"]
    for split, names in manifest["splits"].items():
        episodes = [e for e in manifest["episodes"] if e["split"] == split]
        frames = sum(e["frames"] for e in episodes)
        ood_frames = sum(
            e["frames"] - e["onset_frame"] for e in episodes if e["onset_frame"] is not None
        )
        size = sum(f.stat().st_size for f in (root / split).rglob("*") if f.is_file())
        scenarios = sorted({e["scenario"] for e in episodes})
        lines.append(
            f"  {split:12s} {len(names):4d} episodes {frames:7d} frames ({ood_frames} OOD) "
            f"{size / 1e6:8.1f} MB  scenarios: {', '.join(scenarios)}"
        )
    lines.append(f"  manifest: {manifest_path}  dataset sha256 {manifest['dataset_sha256'][:16]}…")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--out", type=Path, help="output folder (default: datasets/<preset>)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--fps", type=float, help="camera rate [Hz] (default: the preset's, else 30)"
    )
    parser.add_argument("--workers", type=int, default=2, help="simulator processes in parallel")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--sim-python", type=Path, default=DEFAULT_SIM_PYTHON)
    args = parser.parse_args(argv)
    out_dir = args.out or REPO_ROOT / "datasets" / args.preset
    start = time.monotonic()
    try:
        manifest = generate(
            args.preset,
            out_dir,
            width=args.width,
            height=args.height,
            fps=args.fps,
            workers=args.workers,
            storage=args.storage,
            sim_python=args.sim_python,
        )
    except GenerationError as err:
        print(f"generate: {err}", file=sys.stderr)
        return 1
    print(_summary(manifest, time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())

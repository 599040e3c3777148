"""Decorations: a town's objects beside the road (sim_worker `decorations`), real simulator runs.

They are scenery: on non-drivable tiles next to the road, clear of it, drawn from the seed, and
the robot drives the same poses as without them, so a decorated drive pairs frame by frame with
its plain twin (presets `decorated_tune`, `decorated_tune_plain`).
"""

import json
import subprocess

import numpy as np
import pytest
from training_support import skip_without_simulator

from training.data.generate import DEFAULT_SIM_PYTHON, REPO_ROOT, SimulatorStream, _sim_environment
from training.data.pairs import compare_frames, paired_episodes
from training.data.scenarios import PRESETS, plan_episodes

# Runs in the simulator venv: builds an episode and prints its decorations as the simulator
# loaded them (the last objects loaded) and the map's drivable tiles.
_PROBE = """
import json, sys
from training.data.sim_worker import Episode, EpisodeSpec, _import_simulator
_import_simulator()
episode = Episode(EpisodeSpec.from_json(sys.argv[1]))
env = episode.env
loaded = env.objects[len(env.objects) - len(episode.decorations):] if episode.decorations else []
print(json.dumps({
    "descs": episode.decorations,
    "kinds": [obj.kind for obj in loaded],
    "corners": [obj.obj_corners.tolist() for obj in loaded],
    "drivable": sorted(tuple(t["coords"]) for t in env.grid if t is not None and t["drivable"]),
    "tile": env.road_tile_size,
}))
"""


def _probe(spec: dict) -> dict:
    result = subprocess.run(
        [str(DEFAULT_SIM_PYTHON), "-c", _PROBE, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_sim_environment(),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _distance_to_tile(points: np.ndarray, i: int, j: int, tile: float) -> float:
    """Smallest distance of a convex footprint (its corners) to tile (i, j); 0 where they overlap.
    The footprints are small next to a tile, so corners and edge points sampled every 1 cm do."""
    edges = [np.linspace(a, b, 60) for a, b in zip(points, np.roll(points, -1, axis=0))]
    samples = np.concatenate([*edges, points.mean(axis=0, keepdims=True)])
    dx = np.maximum.reduce(
        [i * tile - samples[:, 0], samples[:, 0] - (i + 1) * tile, 0 * samples[:, 0]]
    )
    dz = np.maximum.reduce(
        [j * tile - samples[:, 1], samples[:, 1] - (j + 1) * tile, 0 * samples[:, 1]]
    )
    return float(np.hypot(dx, dz).min())


@pytest.mark.parametrize(("map_name", "seed"), [("small_loop", 45001), ("loop_empty", 45000)])
def test_decorations_stand_beside_the_road_drawn_from_the_seed(map_name, seed):
    skip_without_simulator()
    spec = {"map": map_name, "seed": seed, "frames": 1, "width": 64, "height": 48}
    town = _probe({**spec, "decorations": 30})
    assert len(town["descs"]) >= 25, "a map of this size has room for most of 30 objects"
    assert town["kinds"] == [d["kind"] for d in town["descs"]], "loaded as described, last"
    assert len({d["kind"] for d in town["descs"]}) >= 6, "a mix of kinds"
    tile, drivable = town["tile"], {tuple(c) for c in town["drivable"]}
    for kind, corners in zip(town["kinds"], town["corners"]):
        footprint = np.array(corners)
        gap = min(_distance_to_tile(footprint, i, j, tile) for i, j in drivable)
        assert gap >= 0.09, f"{kind} {gap:.3f} m from the road"
        # Its centre is on a cell that touches a drivable tile (the ground around the grid counts).
        ci, cj = (int(np.floor(v / tile)) for v in footprint.mean(axis=0))
        assert (ci, cj) not in drivable
        assert any((ci + di, cj + dj) in drivable for di in (-1, 0, 1) for dj in (-1, 0, 1))
    again = _probe({**spec, "decorations": 30})
    assert again["descs"] == town["descs"], "the same seed, the same town"
    other = _probe({**spec, "seed": seed + 1, "decorations": 30})
    assert other["descs"] != town["descs"]


def _drive(spec: dict) -> list[tuple[dict, np.ndarray]]:
    stream = SimulatorStream(spec, DEFAULT_SIM_PYTHON)
    try:
        frames = list(stream)
        assert stream.finish() is None
    finally:
        stream.close()
    return frames


def test_a_decorated_drive_pairs_frame_by_frame_with_its_plain_twin():
    """The same poses and commands in every frame (no braking for scenery, no obstacle pixels),
    other pixels where decorations are in view; `decorations: 0` renders what no field renders."""
    skip_without_simulator()
    spec = {"map": "small_loop", "seed": 45001, "frames": 90, "width": 160, "height": 120}
    plain = _drive(spec)
    town = _drive({**spec, "decorations": 30})
    zero = _drive({**spec, "decorations": 0})
    assert [m for m, _ in town] == [m for m, _ in plain]
    assert all(m["obstacle_pixels"] == 0 for m, _ in town)
    changed = [int(np.count_nonzero(a != b)) for (_, a), (_, b) in zip(plain, town)]
    assert sum(c > 0 for c in changed) >= 0.8 * len(changed), changed
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plain, zero))


def test_an_obstacle_among_decorations_is_still_an_obstacle():
    """The obstacle effect places its object on the lane with the decorations kept: it is braked
    for and counted in obstacle_pixels, as without decorations."""
    skip_without_simulator()
    spec = {
        "map": "small_loop",
        "seed": 45001,
        "frames": 60,
        "width": 160,
        "height": 120,
        "effect": "obstacles",
        "onset": 5,
        "intensity": 1.0,
    }
    plain = _drive(spec)
    town = _drive({**spec, "decorations": 30})
    assert [(m["x"], m["z"], m["v"]) for m, _ in town] == [
        (m["x"], m["z"], m["v"]) for m, _ in plain
    ]
    in_view = [m["obstacle_pixels"] > 0 for m, _ in plain]
    assert any(in_view) and [m["obstacle_pixels"] > 0 for m, _ in town] == in_view


def test_the_plain_twin_plans_the_decorated_train_drives_without_decorations():
    decorated = plan_episodes(PRESETS["decorated_tune"])
    plain = plan_episodes(PRESETS["decorated_tune_plain"])
    train = [p for p in decorated if p.split == "train"]
    assert [(p.name, p.map, p.seed, p.frames) for p in plain] == [
        (p.name, p.map, p.seed, p.frames) for p in train
    ]
    assert all(p.decorations == 0 for p in plain) and all(p.decorations > 0 for p in decorated)
    others = {
        (p.map, p.seed)
        for name in PRESETS
        if not name.startswith("decorated_tune")
        for p in plan_episodes(PRESETS[name])
    }
    assert not {(p.map, p.seed) for p in decorated} & others, "new drives"


def test_a_bad_decorations_count_is_a_clear_error():
    skip_without_simulator()
    stream = SimulatorStream(
        {"map": "loop_empty", "seed": 1, "frames": 2, "width": 64, "height": 48, "decorations": -1},
        DEFAULT_SIM_PYTHON,
    )
    try:
        assert list(stream) == []
        assert stream.finish() == "sim_worker: decorations must be within 0..500, got -1"
    finally:
        stream.close()


def test_pairs_finds_the_twins_and_says_where_frames_differ(tmp_path):
    """training.data.pairs: episodes pair by split and name (map, seed and length must agree);
    a change above the road ahead counts as changed pixels, not as a change of the road."""
    rows = [
        {"split": "train", "name": "train_id_001", "map": "small_loop", "seed": 5, "frames": 2},
        {"split": "validation", "name": "validation_id_001", "map": "ETHZ_loop", "seed": 6},
    ]
    for folder, episodes in (("town", rows), ("plain", rows[:1])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "manifest.json").write_text(json.dumps({"episodes": episodes}))
    pairs = paired_episodes(tmp_path / "town", tmp_path / "plain")
    assert [(a["name"], b["name"]) for a, b in pairs] == [("train_id_001", "train_id_001")]
    (tmp_path / "plain" / "manifest.json").write_text(
        json.dumps({"episodes": [{**rows[0], "seed": 7}]})
    )
    with pytest.raises(SystemExit, match="seed 5 != 7"):
        paired_episodes(tmp_path / "town", tmp_path / "plain")

    plain = [np.full((120, 160, 3), 90, np.uint8) for _ in range(3)]
    town = [frame.copy() for frame in plain]
    town[1][10:40, 20:60] = 250  # a house on the horizon
    stats = compare_frames(town, plain)
    assert stats["differ"] == 1 and stats["max_changed_road"] == 0.0
    town[2][100:, 60:100] = 0  # the road ahead changed: another drive
    assert compare_frames(town, plain)["max_changed_road"] > 0

"""The scenario catalogue and the dataset presets: which episodes make up which split.

A scenario is either rendered by the simulator (`sim_effect`: it changes the world or the motion)
or applied to the rendered frames (`corruption`: it happens at the camera). Splits follow the
conformal recipe: train and calibration hold in-distribution driving only; validation and test hold
ID and OOD episodes on maps and seeds that training never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from training.data.corruptions import CORRUPTIONS


@dataclass(frozen=True)
class Scenario:
    name: str
    category: str  # "id", "appearance", "sensor" or "motion"
    sim_effect: str | None = None
    corruption: str | None = None
    # Bumped when what the scenario renders or how its frames are labelled changes: `generate`
    # renders again the episodes made with an older revision (episode.json,
    # extra.scenario_revision).
    revision: int = 1


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("id", "id"),
        Scenario("fog", "appearance", sim_effect="fog"),
        Scenario("darkness", "appearance", sim_effect="darkness"),
        Scenario("obstacles", "appearance", sim_effect="obstacles"),
        Scenario(
            "glare", "appearance", corruption="glare", revision=2
        ),  # 2: flare blended alike on every CPU
        Scenario("rain", "appearance", corruption="rain"),
        Scenario("snow", "appearance", corruption="snow"),
        Scenario(
            "lens_dirt", "appearance", corruption="lens_dirt", revision=2
        ),  # 2: mud blobs, not a tint
        Scenario("frozen", "sensor", corruption="frozen"),
        Scenario("black", "sensor", corruption="black"),
        Scenario("noise", "sensor", corruption="noise"),
        Scenario("spin", "motion", sim_effect="spin"),
        Scenario(
            "reverse", "motion", sim_effect="reverse", revision=2
        ),  # 2: OOD from the first frame backwards
        Scenario("jitter", "motion", sim_effect="jitter"),
        Scenario("speedup", "motion", sim_effect="speedup"),
    )
}
OOD_SCENARIOS = tuple(name for name in SCENARIOS if name != "id")
assert {s.corruption for s in SCENARIOS.values() if s.corruption} == set(CORRUPTIONS)


@dataclass(frozen=True)
class EpisodePlan:
    """One episode to render: the spec sent to the simulator worker plus where it goes."""

    name: str
    split: str
    scenario: str
    map: str
    seed: int
    frames: int
    onset_frame: int | None  # None: in-distribution; 0: OOD from the first frame
    intensity: float
    traffic_lights: bool = False
    decorations: int = 0  # objects beside the road (sim_worker spec)

    def sim_spec(self, width: int, height: int, fps: float) -> dict[str, object]:
        scenario = SCENARIOS[self.scenario]
        return {
            "map": self.map,
            "seed": self.seed,
            "frames": self.frames,
            "width": width,
            "height": height,
            "fps": fps,
            "effect": scenario.sim_effect,
            "onset": self.onset_frame or 0,
            "intensity": self.intensity,
            "traffic_lights": self.traffic_lights,
            "decorations": self.decorations,
        }


@dataclass(frozen=True)
class SplitPlan:
    """How one split is drawn: its maps, episodes per scenario and episode length."""

    maps: tuple[str, ...]
    id_episodes: int
    ood_full_episodes: int = 0  # per OOD scenario, OOD from the first frame
    ood_onset_episodes: int = 0  # per OOD scenario, ID driving that turns OOD at a known frame


@dataclass(frozen=True)
class Preset:
    name: str
    frames: int
    onset_range: tuple[int, int]
    splits: dict[str, SplitPlan]
    scenarios: tuple[str, ...] = OOD_SCENARIOS
    # Added to every split's seed base (< 100 000, their spacing): a preset on another preset's
    # maps draws new drives.
    seed_offset: int = 0
    traffic_lights: bool = False  # a traffic light at every intersection (sim_worker spec)
    fps: float | None = None  # the camera rate it is rendered at; None: generate's --fps
    decorations: int = 0  # objects of a town beside the road in every drive (sim_worker spec)


# Train/calibration maps and held-out maps for validation and test: all from sim_worker.ID_MAPS,
# where the lane controller is verified to drive and no bus, truck or tree stands by the road.
TRAIN_MAPS = ("loop_empty", "small_loop", "Montreal_loop")
VALIDATION_MAPS = ("ETHZ_loop",)
TEST_MAPS = ("udem1_empty", "4way")

# Maps with intersections (red stop lines, crossing lanes), checked like the maps above (the lane
# controller drives 300 frames without a reset, 3 seeds; their only objects are flat floor tags).
# The default preset's train and validation maps have no intersection, its test maps do; the
# `intersections` preset drives in distribution on these, for merging into a dataset
# (training.data.merge) before calibration.
INTERSECTION_MAPS = ("ETH_small_intersect", "ETH_large_intersect")
INTERSECTION_VALIDATION_MAPS = ("TTIC_ripltown",)
# Twelve more maps of the simulator with no object but flat floor tags, none a validation or test
# map or a variant of one, each checked to drive (2 drives of 300 frames, no reset): other
# surroundings (black void, grass), other bends, intersections. Failed the check:
# calibration_map_ext (19 resets per drive), field1 (no drivable tile). Not taken: maps with
# objects by the road (loop_obstacles, loop_pedestrians, loop_dyn_duckiebots, zigzag_dists*,
# udem1, robotarium*, regress_4way_adam), calibration_map_int (a checkerboard), the straight
# roads, bordered copies and ETH_small_loop_1/2/3 (variants of ETH_small_loop).
# Standard maps with houses, trees, buses and ducks *beside* the road, kept for the test split: a
# normal town (docs/normal.md) is in distribution. udem1 is the test map udem1_empty decorated.
DECORATED_TEST_MAPS = ("udem1", "zigzag_dists")
MORE_MAPS = (
    "ETHZ_autolab_fast_track",
    "ETHZ_autolab_technical_track",
    "MOOC_modcon",
    "ETH_large_loop",
    "ETH_small_loop",
    "TTIC_loop",
    "TTIC_large_loop",
    "Caltech_loop01",
    "experiment_loop",
    "ETU_autolab_track",
    "ETH_intersection_map",
    "small_loop_cw",
)


def _more_train_drives(name: str, maps: tuple[str, ...], episodes: int, seed_offset: int) -> Preset:
    """A preset of in-distribution train drives only, 300 frames each, for merging into a dataset;
    its own `seed_offset` keeps its drives apart from every other preset's on the same maps."""
    return Preset(
        name=name,
        frames=300,
        onset_range=(90, 180),
        splits={"train": SplitPlan(maps, id_episodes=episodes)},
        scenarios=(),
        seed_offset=seed_offset,
    )


_INTERSECTIONS = Preset(
    name="intersections",
    frames=300,
    onset_range=(90, 180),
    splits={
        "train": SplitPlan(INTERSECTION_MAPS, id_episodes=12),
        "calibration": SplitPlan(INTERSECTION_MAPS, id_episodes=4),
        "validation": SplitPlan(INTERSECTION_VALIDATION_MAPS, id_episodes=4),
    },
    scenarios=(),
)

_DECORATED_TUNE = Preset(
    name="decorated_tune",
    frames=300,
    onset_range=(90, 180),
    splits={
        "train": SplitPlan(TRAIN_MAPS + INTERSECTION_MAPS, id_episodes=12),
        "validation": SplitPlan(
            VALIDATION_MAPS + INTERSECTION_VALIDATION_MAPS, id_episodes=4, ood_onset_episodes=1
        ),
    },
    seed_offset=45_000,
    fps=30.0,
    decorations=30,
)

_NORMAL_CALIBRATION = Preset(
    name="normal_calibration",
    frames=300,
    onset_range=(90, 180),
    splits={"calibration": SplitPlan(TRAIN_MAPS + INTERSECTION_MAPS, id_episodes=10)},
    scenarios=(),
    seed_offset=55_000,
    fps=30.0,
)

# Held-out ID drives for the nuisance evaluation (training.nuisance, docs/normal.md): 20 s on each
# test map, rendered at 60 Hz so that 30, 15 and 10 Hz cameras are every 2nd, 4th and 6th frame
# with honest stamps, and every frame stamped at 30 Hz is a robot at half speed.
_HELDOUT_ID = Preset(
    name="heldout_id",
    frames=1200,
    onset_range=(0, 0),
    splits={"test": SplitPlan(TEST_MAPS, id_episodes=4)},
    scenarios=(),
    seed_offset=20_000,
    fps=60.0,
)

PRESETS: dict[str, Preset] = {
    "default": Preset(
        name="default",
        frames=300,
        onset_range=(90, 180),
        splits={
            "train": SplitPlan(TRAIN_MAPS, id_episodes=36),
            "calibration": SplitPlan(TRAIN_MAPS, id_episodes=9),
            "validation": SplitPlan(
                VALIDATION_MAPS, id_episodes=6, ood_full_episodes=1, ood_onset_episodes=1
            ),
            "test": SplitPlan(TEST_MAPS, id_episodes=10, ood_full_episodes=1, ood_onset_episodes=2),
        },
    ),
    # Seconds to render; the tests generate it and train the "tiny" detectors on it.
    "small": Preset(
        name="small",
        frames=40,
        onset_range=(12, 20),
        splits={
            "train": SplitPlan(TRAIN_MAPS[:2], id_episodes=2),
            "calibration": SplitPlan(TRAIN_MAPS[:1], id_episodes=1),
            "validation": SplitPlan(VALIDATION_MAPS, id_episodes=1, ood_onset_episodes=1),
            "test": SplitPlan(TEST_MAPS[:1], id_episodes=1, ood_full_episodes=1),
        },
        scenarios=("fog", "frozen", "black", "spin", "obstacles"),
    ),
    # In-distribution driving through intersections: more maps for calibration and validation.
    "intersections": _INTERSECTIONS,
    # The intersections' drives again (new seeds) with a traffic light at every intersection, as
    # Duckietown towns have them; no default, intersection or more_maps map has one. To merge
    # after `intersections`.
    "traffic_lights": replace(
        _INTERSECTIONS, name="traffic_lights", seed_offset=80_000, traffic_lights=True
    ),
    # Three times the intersections' train drives, on the same maps with other seeds, to merge
    # after `intersections`: does more ID turning data help the flow detector? (Measured: no
    # further gain over `intersections` alone; docs/experiments.md, `flow_plus_more`.)
    "intersections_more": _more_train_drives(
        "intersections_more", INTERSECTION_MAPS, episodes=36, seed_offset=50_000
    ),
    # In-distribution train drives on twelve more maps, to merge after `intersections` and
    # `intersections_more`: students distilled on more kinds of roads (docs/compression.md).
    "more_maps": _more_train_drives("more_maps", MORE_MAPS, episodes=48, seed_offset=60_000),
    # One onset of every OOD scenario on the intersections' validation map: merged into a dataset,
    # it doubles the onsets its validation split tunes the decisions on (one per scenario and map).
    "validation_onsets": Preset(
        name="validation_onsets",
        frames=300,
        onset_range=(90, 180),
        splits={
            "validation": SplitPlan(
                INTERSECTION_VALIDATION_MAPS, id_episodes=0, ood_onset_episodes=1
            )
        },
    ),
    # A third onset of every OOD scenario, on the default validation map with new drives: merged
    # after `validation_onsets`, it triples the onsets a choice between bundles is checked on.
    "validation_onsets_loop": Preset(
        name="validation_onsets_loop",
        frames=300,
        onset_range=(90, 180),
        splits={"validation": SplitPlan(VALIDATION_MAPS, id_episodes=0, ood_onset_episodes=1)},
        seed_offset=70_000,
    ),
    # 24 placed-obstacle onsets on the validation maps (new drives): the scenario the β-VAE stops
    # latest has one or two onsets in the other validation presets, too few to choose features on.
    "validation_obstacles": Preset(
        name="validation_obstacles",
        frames=300,
        onset_range=(90, 180),
        splits={
            "validation": SplitPlan(
                VALIDATION_MAPS + INTERSECTION_VALIDATION_MAPS, id_episodes=0, ood_onset_episodes=24
            )
        },
        scenarios=("obstacles",),
        seed_offset=90_000,
    ),
    "heldout_id": _HELDOUT_ID,
    # The same on the decorated test maps: a town with objects beside the road, in distribution.
    "decorated_test": replace(
        _HELDOUT_ID,
        name="decorated_test",
        splits={"test": SplitPlan(DECORATED_TEST_MAPS, id_episodes=2)},
        seed_offset=30_000,
    ),
    # The same on the test maps with a traffic light at every intersection, as Duckietown towns
    # have them (4way keeps the one it has): traffic lights on maps no bundle was fitted on.
    "heldout_lights": replace(
        _HELDOUT_ID,
        name="heldout_lights",
        splits={"test": SplitPlan(TEST_MAPS, id_episodes=2)},
        seed_offset=32_000,
        traffic_lights=True,
    ),
    # One short onset of every OOD scenario on the test maps (8 s at 30 Hz, onset after 3-4 s):
    # the nuisance evaluation's AUROC and onset delays, also under a 15 or 10 Hz camera.
    "heldout_onsets": Preset(
        name="heldout_onsets",
        frames=240,
        onset_range=(90, 120),
        splits={"test": SplitPlan(TEST_MAPS, id_episodes=0, ood_onset_episodes=1)},
        seed_offset=40_000,
        fps=30.0,
    ),
    # ID drives on the train maps (new seeds): the per-frame colour, brightness and contrast ranges
    # of normal frames a bundle's photometric normalisation keeps (training.nuisance photometric).
    "photometric_reference": Preset(
        name="photometric_reference",
        frames=300,
        onset_range=(0, 0),
        splits={"train": SplitPlan(TRAIN_MAPS, id_episodes=6)},
        scenarios=(),
        seed_offset=25_000,
        fps=30.0,
    ),
    # The β-VAE's photometric fine-tuning (training.photometric): ID drives on the train and
    # intersection maps to augment, and validation drives with one onset of every OOD scenario on
    # the validation maps to check that the tuned encoder still separates them.
    "photometric_tune": Preset(
        name="photometric_tune",
        frames=300,
        onset_range=(90, 180),
        splits={
            "train": SplitPlan(TRAIN_MAPS + INTERSECTION_MAPS, id_episodes=15),
            "validation": SplitPlan(
                VALIDATION_MAPS + INTERSECTION_VALIDATION_MAPS, id_episodes=4, ood_onset_episodes=1
            ),
        },
        seed_offset=35_000,
        fps=30.0,
    ),
    # The β-VAE's fine-tuning for decorated towns (issue 30): ID drives on the train and
    # intersection maps with 30 objects of a town beside the road (houses, buildings, trees, parked
    # buses and trucks, duckies, cones, barriers, signs; udem1 and zigzag_dists stand 10-14 on
    # larger maps, these more, so that most frames show some), and validation drives on the
    # validation maps with one onset of every OOD scenario among them: objects *in* the lane must
    # still be flagged where objects beside it are normal.
    "decorated_tune": _DECORATED_TUNE,
    # The same train drives without the decorations: the robot drives the same poses frame by
    # frame (decorations are scenery), so `train/<name>` frame i pairs with decorated_tune's.
    "decorated_tune_plain": replace(
        _DECORATED_TUNE,
        name="decorated_tune_plain",
        splits={"train": _DECORATED_TUNE.splits["train"]},
        scenarios=(),
        decorations=0,
    ),
    # Calibration drives for the students tuned to the normal table (training.tune_bvae,
    # training.tune_flow): new drives on the train and intersection maps, plain and with a town's
    # decorations beside the road, to merge with the tuning presets' validation splits.
    "normal_calibration": _NORMAL_CALIBRATION,
    "normal_calibration_decorated": replace(
        _NORMAL_CALIBRATION,
        name="normal_calibration_decorated",
        seed_offset=65_000,
        decorations=30,
    ),
    # One in-distribution drive that turns foggy: the shipped demo bag (demo/demo_fog_onset).
    "demo": Preset(
        name="demo",
        frames=180,
        onset_range=(90, 90),
        splits={"test": SplitPlan(TEST_MAPS[:1], id_episodes=0, ood_onset_episodes=1)},
        scenarios=("fog",),
    ),
}

# The conformal recipe: train the VAE, fit scores on calibration, tune decisions on validation,
# report on test.
SPLITS = ("train", "calibration", "validation", "test")
# Seeds are unique per split so no two splits share a start pose or a random stream.
_SPLIT_SEED_BASE = {split: 100_000 * index for index, split in enumerate(SPLITS)}


def plan_episodes(preset: Preset) -> list[EpisodePlan]:
    """Every episode of a preset, deterministic: the same preset always gives the same dataset."""
    rng = random.Random(f"vae_ood_monitor:{preset.name}")
    plans: list[EpisodePlan] = []
    for split, split_plan in preset.splits.items():
        seed = _SPLIT_SEED_BASE[split] + preset.seed_offset
        jobs: list[tuple[str, int | None]] = [("id", None)] * split_plan.id_episodes
        for scenario in preset.scenarios:
            jobs += [(scenario, 0)] * split_plan.ood_full_episodes
            jobs += [(scenario, -1)] * split_plan.ood_onset_episodes
        counters: dict[str, int] = {}
        for scenario, onset in jobs:
            number = counters[scenario] = counters.get(scenario, 0) + 1
            onset_frame = rng.randint(*preset.onset_range) if onset == -1 else onset
            kind = "onset" if onset_frame else ("full" if onset_frame == 0 else "")
            name = "_".join(part for part in (split, scenario, kind, f"{number:03d}") if part)
            plans.append(
                EpisodePlan(
                    name=name,
                    split=split,
                    scenario=scenario,
                    map=split_plan.maps[(number - 1) % len(split_plan.maps)],
                    seed=seed,
                    frames=preset.frames,
                    onset_frame=onset_frame,
                    intensity=round(rng.uniform(0.4, 1.0), 3) if scenario != "id" else 0.0,
                    traffic_lights=preset.traffic_lights,
                    decorations=preset.decorations,
                )
            )
            seed += 1
    return plans

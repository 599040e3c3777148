"""The Duckietown generator end to end: real simulator subprocesses, real bags, real labels."""

import json
from itertools import pairwise

import numpy as np
import pytest
from training_support import skip_without_simulator

from training.data.corruptions import (
    MUD_RGB,
    PortableSunFlare,
    blend_table,
    lens_dirt_coverage,
    make_corruption,
)
from training.data.generate import (
    BACKWARD_STEP_M,
    DEFAULT_SIM_PYTHON,
    EffectInView,
    GenerationError,
    SimulatorStream,
    _forward_step,
    generate,
    main,
)
from training.data.scenarios import (
    INTERSECTION_VALIDATION_MAPS,
    PRESETS,
    SCENARIOS,
    TRAIN_MAPS,
    VALIDATION_MAPS,
    plan_episodes,
)
from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC, image_topics, read_camera_messages
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.images import decode_message


def test_splits_follow_the_conformal_recipe(small_dataset):
    _, manifest = small_dataset
    assert list(manifest["splits"]) == ["train", "calibration", "validation", "test"]
    by_split = {s: [e for e in manifest["episodes"] if e["split"] == s] for s in manifest["splits"]}
    for split in ("train", "calibration"):
        assert {e["scenario"] for e in by_split[split]} == {"id"}
    for split in ("validation", "test"):
        scenarios = {e["scenario"] for e in by_split[split]}
        assert "id" in scenarios and len(scenarios) > 1
        assert not {e["map"] for e in by_split[split]} & set(TRAIN_MAPS), "held-out maps only"
    seeds = [e["seed"] for e in manifest["episodes"]]
    assert len(seeds) == len(set(seeds))


def test_episodes_are_bags_with_camera_frames_at_30_hz(small_dataset):
    root, manifest = small_dataset
    for entry in manifest["episodes"]:
        bag = root / entry["path"]
        assert image_topics(bag) == {DEFAULT_CAMERA_TOPIC: "sensor_msgs/msg/CompressedImage"}
        messages = list(read_camera_messages(bag))
        assert len(messages) == entry["frames"] == PRESETS["small"].frames
        periods = np.diff([m.stamp_ns for m in messages])
        assert np.allclose(periods, 1e9 / 30, atol=1)
        first = decode_message(messages[0].msg)
        assert first.shape == (480, 640, 3)
        if entry["onset_frame"] != 0:  # episodes that start in distribution
            assert 30 < first.mean() < 220, "a rendered road scene, not a blank frame"


def test_labels_and_onsets(small_dataset):
    root, manifest = small_dataset
    for entry in manifest["episodes"]:
        labels = read_ground_truth(root / entry["path"])
        assert [label.frame for label in labels] == list(range(entry["frames"]))
        ood = np.array([label.ood for label in labels])
        assert isinstance(entry["extra"]["resets"], int) and entry["extra"]["resets"] >= 0
        if entry["scenario"] == "id":
            assert not ood.any() and entry["onset_frame"] is None
            assert entry["extra"]["resets"] == 0, (
                "the lane controller keeps the robot on these maps"
            )
        elif entry["scenario"] == "obstacles":  # labelled OOD while the obstacle is in view
            placed, onset = entry["extra"]["placed_frame"], entry["onset_frame"]
            assert (
                placed == 0
                or PRESETS["small"].onset_range[0] <= placed <= PRESETS["small"].onset_range[1]
            )
            assert onset is not None and onset >= placed, (
                "placed ahead of the robot, in view within the episode"
            )
            assert not ood[:onset].any() and ood[onset]
            assert {label.onset_frame for label in labels} == {onset}
        else:
            onset = entry["onset_frame"]
            assert (
                onset == 0
                or PRESETS["small"].onset_range[0] <= onset <= PRESETS["small"].onset_range[1]
            )
            assert not ood[:onset].any() and ood[onset:].all()
            assert {label.onset_frame for label in labels} == {onset}


def test_effects_change_the_frames_after_onset(small_dataset):
    root, manifest = small_dataset
    for entry in manifest["episodes"]:
        if entry["scenario"] == "id":
            continue
        frames = [
            decode_message(m.msg).astype(np.float32)
            for m in read_camera_messages(root / entry["path"])
        ]
        onset = entry["onset_frame"]
        if entry["scenario"] == "frozen":
            assert all(np.array_equal(frames[onset], f) for f in frames[onset:])
        elif entry["scenario"] == "black":
            assert max(f.mean() for f in frames[onset:]) < 5
        elif entry["scenario"] == "fog" and onset > 0:
            contrast_before = np.mean([f.std() for f in frames[:onset]])
            contrast_after = np.mean([f.std() for f in frames[onset + 3 :]])
            assert contrast_after < 0.8 * contrast_before, "fog washes out contrast"


def _render_times(root, manifest) -> dict[str, int]:
    """When each episode's bag was last written: a rendered-again episode gets a new one."""
    return {
        e["name"]: (root / e["path"] / "metadata.yaml").stat().st_mtime_ns
        for e in manifest["episodes"]
    }


def test_rerun_resumes_without_rendering_again(small_dataset, tmp_path):
    root, manifest = small_dataset
    before = _render_times(root, manifest)
    generate("small", root, progress=False)
    assert _render_times(root, manifest) == before


def test_rendering_again_writes_the_same_bags_and_labels(small_dataset, tmp_path):
    """Bundles record the hash of the dataset they were fitted on: on one machine a dataset must
    come out byte for byte the same every time it is rendered (docs/data.md)."""
    _, manifest = small_dataset
    again = json.loads(generate("small", tmp_path / "again", progress=False).read_text())
    assert {e["name"]: e["sha256"] for e in again["episodes"]} == {
        e["name"]: e["sha256"] for e in manifest["episodes"]
    }
    assert again["dataset_sha256"] == manifest["dataset_sha256"]


def test_plan_is_deterministic_and_covers_every_scenario():
    default = plan_episodes(PRESETS["default"])
    assert default == plan_episodes(PRESETS["default"])
    assert {p.scenario for p in default if p.split == "test"} == set(SCENARIOS)
    assert {p.scenario for p in default if p.split in ("train", "calibration")} == {"id"}


def test_extra_validation_onsets_stay_off_the_default_maps():
    """One onset per OOD scenario on the intersections' validation map: none on a map of the default
    preset, so the test maps stay held out."""
    extra = plan_episodes(PRESETS["validation_onsets"])
    default = plan_episodes(PRESETS["default"])
    assert sorted(p.scenario for p in extra) == sorted(set(SCENARIOS) - {"id"})
    assert all(p.split == "validation" and 90 <= p.onset_frame <= 180 for p in extra)
    assert not {p.map for p in extra} & {p.map for p in default}


def _drives_of_other_presets(name: str) -> set[tuple[str, int]]:
    """(map, seed) of every drive the presets other than `name` plan: a drive it shares repeats
    one."""
    return {
        (p.map, p.seed)
        for preset in PRESETS
        if preset != name
        for p in plan_episodes(PRESETS[preset])
    }


def test_the_third_validation_onsets_are_new_drives_on_the_validation_map():
    """`validation_onsets_loop` drives the default validation map again: one onset per scenario,
    none a drive of another preset, and no test map."""
    third = plan_episodes(PRESETS["validation_onsets_loop"])
    assert sorted(p.scenario for p in third) == sorted(set(SCENARIOS) - {"id"})
    assert {p.split for p in third} == {"validation"} and {p.map for p in third} == set(
        VALIDATION_MAPS
    )
    assert not {(p.map, p.seed) for p in third} & _drives_of_other_presets("validation_onsets_loop")


def test_the_obstacle_validation_drives_are_new_drives_on_the_validation_maps():
    """`validation_obstacles`: 24 placed-obstacle onsets on the validation maps, none a drive of
    another preset, none on a test map."""
    drives = plan_episodes(PRESETS["validation_obstacles"])
    assert (
        len(drives) == 24
        and {p.scenario for p in drives} == {"obstacles"}
        and {p.split for p in drives} == {"validation"}
    )
    assert {p.map for p in drives} == set(VALIDATION_MAPS + INTERSECTION_VALIDATION_MAPS)
    assert not {(p.map, p.seed) for p in drives} & _drives_of_other_presets("validation_obstacles")


def test_more_intersection_drives_are_new_drives():
    """`intersections_more` drives the intersections' train maps again: its seed offset must give
    other starts, or merging it would only repeat drives (training.data.merge warns of those)."""
    more = plan_episodes(PRESETS["intersections_more"])
    intersections = plan_episodes(PRESETS["intersections"])
    assert {p.map for p in more} == {p.map for p in intersections if p.split == "train"}
    assert not {(p.map, p.seed) for p in more} & {(p.map, p.seed) for p in intersections}
    assert not {p.map for p in more} & {p.map for p in plan_episodes(PRESETS["default"])}


def test_more_maps_keep_the_held_out_maps_held_out():
    """`more_maps` adds train drives on other maps: none may be a validation or test map or a
    variant of one (4way_bordered, udem1, ETHZ_loop_bordered), and every drive is one of its own."""
    more = plan_episodes(PRESETS["more_maps"])
    held_out = {
        p.map
        for preset in ("default", "intersections", "validation_onsets")
        for p in plan_episodes(PRESETS[preset])
        if p.split in ("validation", "test")
    }
    assert {p.split for p in more} == {"train"} and {p.scenario for p in more} == {"id"}
    assert not any(p.map.startswith(held.removesuffix("_empty")) for p in more for held in held_out)
    assert not {(p.map, p.seed) for p in more} & _drives_of_other_presets("more_maps")


def test_traffic_light_drives_are_new_drives_off_the_held_out_maps():
    """`traffic_lights` drives the intersection maps again with lights: new seeds, and none of the
    default preset's validation or test maps (4way, the test map, has the only light of the set)."""
    lights = plan_episodes(PRESETS["traffic_lights"])
    assert all(p.traffic_lights and p.scenario == "id" for p in lights)
    assert not {p.map for p in lights} & {p.map for p in plan_episodes(PRESETS["default"])}
    assert not {(p.map, p.seed) for p in lights} & _drives_of_other_presets("traffic_lights")
    lit = {name for name, preset in PRESETS.items() if preset.traffic_lights}
    assert lit == {"traffic_lights", "heldout_lights"}  # the other: held-out test drives


@pytest.mark.parametrize(
    ("map_name", "seed", "shows_lights"), [("TTIC_ripltown", 280000, True), ("4way", 3, False)]
)
def test_traffic_lights_change_the_view_not_the_drive(map_name, seed, shows_lights):
    """Lights at the intersections are scenery: the same drive (they do not collide), other pixels
    where one is in view; a map with a light of its own (4way) gets no second one."""
    skip_without_simulator()
    spec = {"map": map_name, "seed": seed, "frames": 8, "width": 160, "height": 120, "fps": 30.0}
    plain = list(SimulatorStream(spec, DEFAULT_SIM_PYTHON))
    lit = list(SimulatorStream({**spec, "traffic_lights": True}, DEFAULT_SIM_PYTHON))
    assert [(m["x"], m["z"], m["angle"]) for m, _ in lit] == [
        (m["x"], m["z"], m["angle"]) for m, _ in plain
    ]
    changed = [int(np.count_nonzero(a != b)) for (_, a), (_, b) in zip(plain, lit)]
    assert all(changed) if shows_lights else not any(changed), changed


def test_a_bad_traffic_lights_flag_is_a_clear_error():
    skip_without_simulator()
    spec = {
        "map": "loop_empty",
        "seed": 1,
        "frames": 2,
        "width": 160,
        "height": 120,
        "traffic_lights": 1,
    }
    stream = SimulatorStream(spec, DEFAULT_SIM_PYTHON)
    try:
        assert list(stream) == []
        assert stream.finish() == "sim_worker: spec field 'traffic_lights' has the wrong type: 1"
    finally:
        stream.close()


def test_missing_simulator_is_a_clear_error(tmp_path, capsys):
    assert (
        main(
            [
                "--preset",
                "small",
                "--out",
                str(tmp_path / "ds"),
                "--sim-python",
                str(tmp_path / "nope" / "python"),
            ]
        )
        == 1
    )
    assert "run `make sim-venv` first" in capsys.readouterr().err
    with pytest.raises(GenerationError):
        generate("small", tmp_path / "ds2", sim_python=tmp_path / "nope" / "python", progress=False)


def test_merged_dataset_holds_the_episodes_of_both(small_dataset, tmp_path, capsys):
    import json

    from training.data.merge import main as merge_main
    from training.dataset import episodes, iter_frames

    root, manifest = small_dataset
    other = tmp_path / "town"
    other.symlink_to(
        root, target_is_directory=True
    )  # a second dataset folder (same bags, another name)
    assert merge_main([str(root), str(other), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    # The same episodes twice: every drive repeats, and the merge says so.
    assert merged["repeated_drives"] == [
        [e["name"], f"town_{e['name']}"] for e in manifest["episodes"]
    ]
    assert f"merge: warning: {len(manifest['episodes'])} drives repeat" in capsys.readouterr().err
    assert [s["dataset_sha256"] for s in merged["merged_from"]] == [manifest["dataset_sha256"]] * 2
    for split, names in manifest["splits"].items():
        assert merged["splits"][split] == names + [f"town_{name}" for name in names]
    calibration = episodes(tmp_path / "merged", "calibration")
    first, second = ([rgb for rgb, _ in iter_frames(e)] for e in (calibration[0], calibration[-1]))
    assert np.array_equal(first[0], second[0]), "a merged episode reads its source bag"
    assert merge_main([str(root), str(other), "--out", str(tmp_path / "merged")]) == 0, (
        "a merge can be redone in place"
    )


def test_relabelled_frames_change_the_episode_and_dataset_hash(small_dataset, tmp_path):
    """Provenance must tell labels apart too: reverse was relabelled without changing a frame."""
    import shutil

    from training.data.generate import dataset_sha256, manifest_entry

    root, manifest = small_dataset
    entry = next(e for e in manifest["episodes"] if e["onset_frame"])
    copy = tmp_path / entry["name"]
    shutil.copytree(root / entry["path"], copy)
    assert manifest_entry(copy, entry["split"], entry["name"]) == entry
    labels = copy / "ground_truth.csv"
    rows = labels.read_text().splitlines()
    rows[1] = rows[1].replace(",0,", ",1,", 1)  # the first frame, in distribution, now labelled OOD
    labels.write_text("\n".join(rows) + "\n")
    relabelled = manifest_entry(copy, entry["split"], entry["name"])
    assert relabelled["sha256"] != entry["sha256"]
    episodes = [relabelled if e is entry else e for e in manifest["episodes"]]
    assert (
        dataset_sha256(episodes)
        != manifest["dataset_sha256"]
        == dataset_sha256(manifest["episodes"])
    )


def test_merge_refuses_datasets_that_do_not_match(small_dataset, tmp_path, capsys):
    import json
    import shutil

    from training.data.merge import main as merge_main

    root, manifest = small_dataset
    other = tmp_path / "slow"
    shutil.copytree(root, other, symlinks=True)
    (other / "manifest.json").write_text(json.dumps({**manifest, "fps": 15.0}))
    assert merge_main([str(root), str(other), "--out", str(tmp_path / "merged")]) == 1
    assert "fps 15.0 differ" in capsys.readouterr().err
    (other / "manifest.json").write_text(json.dumps({"episodes": []}))
    assert merge_main([str(root), str(other), "--out", str(tmp_path / "merged")]) == 1
    assert "not a dataset manifest (no topic, width" in capsys.readouterr().err
    (other / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert merge_main([str(root), str(other), "--out", str(tmp_path / "busy")]) == 1
    assert "not a merged dataset" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine", "nothing of it was touched"


def test_imported_recordings_are_added_to_a_split(small_dataset, tmp_path, capsys):
    import json

    from training.data.import_recording import import_recording
    from training.data.merge import main as merge_main
    from training.dataset import episodes, iter_frames

    root, manifest = small_dataset
    source = (
        root / manifest["episodes"][0]["path"]
    )  # a real bag stands in for a recording from the robot
    import_recording(source, tmp_path / "town" / "drive_01", progress=False)
    out = str(tmp_path / "merged")
    assert (
        merge_main(
            [str(root), "--add", f"calibration={tmp_path / 'town' / 'drive_01'}", "--out", out]
        )
        == 0
    )
    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert merged["repeated_drives"] == [] and "warning" not in capsys.readouterr().err, (
        "a recording has no seed to repeat"
    )
    assert merged["splits"]["calibration"] == manifest["splits"]["calibration"] + ["town_drive_01"]
    added = episodes(tmp_path / "merged", "calibration")[-1]
    assert (added.scenario, added.onset_frame) == ("id", None)
    assert len(list(iter_frames(added))) == manifest["episodes"][0]["frames"]

    import_recording(source, tmp_path / "small" / "drive_02", size=(320, 240), progress=False)
    assert (
        merge_main(
            [str(root), "--add", f"validation={tmp_path / 'small' / 'drive_02'}", "--out", out]
        )
        == 1
    )
    assert (
        "width 320, height 240 differ from the datasets' (width 640, height 480)"
        in capsys.readouterr().err
    )
    assert merge_main([str(root), "--add", f"calibration={tmp_path}", "--out", out]) == 1
    assert "not an episode (no episode.json)" in capsys.readouterr().err
    assert (
        merge_main([str(root), "--add", f"holdout={tmp_path / 'town' / 'drive_01'}", "--out", out])
        == 1
    )
    assert "unknown split 'holdout'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        merge_main([str(root), "--add", "calibration", "--out", out])
    assert "expected SPLIT=EPISODE_DIR" in capsys.readouterr().err
    assert json.loads((tmp_path / "merged" / "manifest.json").read_text()) == merged, (
        "a refused merge keeps the last one"
    )


def test_recalibration_data_without_validation_onsets_is_refused_up_front(
    small_dataset, tmp_path, capsys
):
    import json

    from training.pipeline import main as pipeline_main

    root, manifest = small_dataset
    only_id = [
        e for e in manifest["episodes"] if e["split"] != "validation" or e["onset_frame"] is None
    ]
    data = tmp_path / "id_only"
    data.mkdir()
    for entry in only_id:
        (data / entry["split"]).mkdir(exist_ok=True)
        (data / entry["path"]).symlink_to(root / entry["path"], target_is_directory=True)
    splits = {
        split: [e["name"] for e in only_id if e["split"] == split] for split in manifest["splits"]
    }
    (data / "manifest.json").write_text(
        json.dumps({**manifest, "episodes": only_id, "splits": splits})
    )
    assert pipeline_main(["--data", str(data), "--recalibrate", str(tmp_path / "never_read")]) == 1
    err = capsys.readouterr().err
    assert (
        "no validation episodes with an OOD onset after frame 0" in err
        and "training.data.merge" in err
    )


def test_obstacles_are_seen_on_a_map_with_floor_tags():
    """The simulator loads no object for a map's floor tags, so the placed obstacles must be found
    from the end of its object list: otherwise they are never labelled in view (TTIC_ripltown)."""
    skip_without_simulator()
    spec = {
        "map": "TTIC_ripltown",
        "seed": 200002,
        "frames": 12,
        "width": 160,
        "height": 120,
        "fps": 30.0,
        "effect": "obstacles",
        "onset": 4,
        "intensity": 0.89,
    }
    pixels = [meta["obstacle_pixels"] for meta, _ in SimulatorStream(spec, DEFAULT_SIM_PYTHON)]
    assert len(pixels) == 12 and not any(pixels[:4])
    assert all(p > 0 for p in pixels[4:]), pixels


@pytest.mark.parametrize("intensity", [0.0, 0.5, 1.0])
def test_lens_dirt_covers_its_share_of_every_lens_and_stays_put(intensity):
    white = np.full((240, 320, 3), 255, np.uint8)
    for seed in range(5):
        dirt = make_corruption("lens_dirt", intensity, seed)
        dirty = dirt(white, 0)
        darkened = (255 - dirty.astype(np.float32)).max(axis=-1) / (255 - MUD_RGB.min())
        assert abs((darkened > 0.5).mean() - lens_dirt_coverage(intensity)) < 0.03, f"seed {seed}"
        assert np.array_equal(dirt(white, 40), dirty), "mud on a lens does not move"


@pytest.mark.parametrize("intensity", [0.0, 0.6, 1.0])
def test_the_portable_sun_flare_is_albumentations_flare(intensity):
    """Same flare, same bytes as the library's own where its single blend is ours; on a CPU where
    simsimd blends otherwise (16-bit floats on Sapphire Rapids) the library's flare differs, which
    is why the glare effect blends by itself."""
    import albumentations as A
    import simsimd

    top, bottom = (
        v.ravel().copy()
        for v in np.meshgrid(
            np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij"
        )
    )
    for alpha in (0.05, 0.137, 0.5, 0.93):
        library = np.frombuffer(
            simsimd.wsum(top, bottom, alpha=alpha, beta=1.0 - alpha), dtype=np.uint8
        )
        if not np.array_equal(library, blend_table(alpha)[top, bottom]):
            pytest.skip(
                "simsimd's 8-bit blend on this CPU is not the 32-bit fused multiply-add "
                f"(alpha {alpha}): albumentations' own flare differs here"
            )
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    settings = {
        "flare_roi": (0.1, 0.0, 0.9, 0.4),
        "src_radius": int(50 + 60 * intensity),
        "method": "overlay",
        "p": 1.0,
    }
    for seed in range(4):
        mine, theirs = (
            A.Compose([PortableSunFlare(**settings)]),
            A.Compose([A.RandomSunFlare(**settings)]),
        )
        mine.set_random_seed(seed)
        theirs.set_random_seed(seed)
        flared = mine(image=frame)["image"]
        assert np.array_equal(flared, theirs(image=frame)["image"]), f"seed {seed}"
        assert (flared != frame).mean() > 0.05, "the flare shows"


@pytest.mark.parametrize("damage", ["older revision", "unreadable episode.json"])
def test_episodes_made_with_an_older_scenario_revision_are_rendered_again(
    small_dataset, capsys, damage
):
    root, manifest = small_dataset
    changed = next(e for e in manifest["episodes"] if e["scenario"] != "id")
    current = SCENARIOS[changed["scenario"]].revision
    info_file = root / changed["path"] / "episode.json"
    info = json.loads(info_file.read_text())
    assert info["extra"]["scenario_revision"] == current
    info["extra"]["scenario_revision"] = current + 1
    info_file.write_text(json.dumps(info) if damage == "older revision" else "{truncated")
    before = _render_times(root, manifest)
    generate("small", root, progress=True)
    assert changed["name"] in capsys.readouterr().err
    after = _render_times(root, manifest)
    rendered = {name for name in before if after[name] != before[name]}
    assert rendered == {changed["name"]}
    assert json.loads(info_file.read_text())["extra"]["scenario_revision"] == current


def test_a_reversing_robot_is_labelled_ood_from_its_first_frame_backwards():
    """Commanded in reverse while driving forward, the simulated robot brakes first — slow forward
    motion, as at every drive's start — and the label waits for the first frame that moved
    backwards."""
    skip_without_simulator()
    onset = 10
    spec = {
        "map": "loop_empty",
        "seed": 7,
        "frames": 40,
        "width": 160,
        "height": 120,
        "fps": 30.0,
        "effect": "reverse",
        "onset": onset,
        "intensity": 0.5,
    }
    in_view = EffectInView("reverse")
    metas, labels = [], []
    for meta, rgb in SimulatorStream(spec, DEFAULT_SIM_PYTHON):
        metas.append(meta)
        labels.append(in_view(meta, rgb, meta["i"] >= onset))
    steps = [_forward_step(a, b) for a, b in pairwise(metas)]  # steps[i]: from frame i to i+1
    first = labels.index(True)
    assert not any(m["reset"] for m in metas)
    assert min(steps[:onset]) > -BACKWARD_STEP_M and steps[onset - 1] > 0, (
        "lane following forward (from rest) before the onset"
    )
    assert first > onset + 3, "braking after the command is not yet driving backwards"
    assert steps[first - 1] < -BACKWARD_STEP_M and all(
        step >= -BACKWARD_STEP_M for step in steps[: first - 1]
    )
    assert all(labels[first:]) and all(step < 0 for step in steps[first:])
    assert EffectInView("spin")(metas[onset], np.zeros((2, 2, 3), np.uint8), True), (
        "other effects show at once"
    )
    assert not EffectInView("spin")(metas[onset], np.zeros((2, 2, 3), np.uint8), False)


def test_nuisance_presets_are_new_drives_on_held_out_maps():
    """The nuisance evaluation's drives (docs/normal.md): test maps only (decorated ones for
    `decorated_test`), 60 Hz where rates and half speed are derived, none a drive of another
    preset; the photometric reference drives on the train maps, never a test map."""
    from training.data.scenarios import DECORATED_TEST_MAPS, TEST_MAPS

    expected = {
        "heldout_id": (set(TEST_MAPS), 60.0),
        "heldout_lights": (set(TEST_MAPS), 60.0),
        "decorated_test": (set(DECORATED_TEST_MAPS), 60.0),
        "heldout_onsets": (set(TEST_MAPS), 30.0),
        "photometric_reference": (set(TRAIN_MAPS), 30.0),
    }
    for name, (maps, fps) in expected.items():
        drives = plan_episodes(PRESETS[name])
        assert {p.map for p in drives} <= maps and PRESETS[name].fps == fps
        assert not {(p.map, p.seed) for p in drives} & _drives_of_other_presets(name)
    onsets = plan_episodes(PRESETS["heldout_onsets"])
    assert sorted(p.scenario for p in onsets) == sorted(set(SCENARIOS) - {"id"})
    assert {p.scenario for p in plan_episodes(PRESETS["heldout_id"])} == {"id"}
    assert not set(DECORATED_TEST_MAPS) & {
        p.map for n in ("default", "intersections", "more_maps") for p in plan_episodes(PRESETS[n])
    }

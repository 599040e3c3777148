"""What models/ ships: the two runtime defaults and their teachers, loadable by name or path."""

import json
from pathlib import Path

import numpy as np
import pytest

from vae_ood_monitor.bags import read_camera_messages
from vae_ood_monitor.bundle import DEFAULTS_FILE, BundleError, load_bundle, resolve_bundle
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.images import decode_message

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SHIPPED = sorted(p.parent for p in MODELS.glob("*/bundle.json"))


def test_models_ship_the_defaults_and_their_teachers_only():
    defaults = json.loads((MODELS / DEFAULTS_FILE).read_text())
    assert defaults == {"bvae": "bvae_student", "flow": "flow_student"}
    assert [p.name for p in SHIPPED] == [
        "bvae_student",
        "bvae_teacher",
        "flow_student",
        "flow_teacher",
    ]
    for student in defaults.values():
        teacher = load_bundle(MODELS / student).provenance["compression"]["teacher"]
        assert teacher, f"{student} names the teacher it was distilled from"


@pytest.mark.parametrize("bundle_dir", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_bundle_loads_and_scores_the_demo_bag(bundle_dir):
    """Checksums, preprocessing fields and encoders of what models/ ships, through ONNX Runtime."""
    demo = REPO / "demo" / "demo_fog_onset"
    frames = [decode_message(m.msg) for m, _ in zip(read_camera_messages(demo), range(20))]
    detector = OODDetector.from_path(bundle_dir)
    scores = detector.score_stream(frames)
    stack = getattr(detector.bundle.preprocessing, "stack", 0)
    assert np.isfinite(scores[stack:]).all() and len(scores) == 20


def test_a_bundle_is_found_by_its_shipped_name(tmp_path, monkeypatch):
    """A bare name resolves under the installed share/vae_ood_monitor/models; a path stays one."""
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    resolved = resolve_bundle("flow_teacher")
    assert resolved.name == "flow_teacher" and resolved.parent.name == "models"
    assert load_bundle("flow_teacher").detector == "flow"
    assert resolve_bundle(tmp_path / "flow_teacher") == tmp_path / "flow_teacher"


def test_an_unknown_name_lists_the_shipped_bundles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError, match="nor a shipped bundle's name .*bvae_student"):
        load_bundle("bvae_lights")

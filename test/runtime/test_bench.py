"""The bench's measuring parts that need no graph: CPU time from /proc, the drive it streams, the
versions it compares."""

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_ood_monitor.bench import Side, baseline_graph, checkout, cpu_seconds, this_version
from vae_ood_monitor.bundle import share_dir
from vae_ood_monitor.stream import load_drive

REPO = Path(__file__).resolve().parents[2]


def test_cpu_seconds_counts_this_process_work():
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid()) - before == pytest.approx(0.2, abs=0.05)
    assert math.isnan(cpu_seconds(2**22 + 7)), "NaN for a process that is gone (past pid_max)"


def test_the_demo_drive_splits_at_its_onset():
    drive = load_drive(share_dir() / "demo" / "demo_fog_onset")
    assert drive.onset == 90 and len(drive.jpeg) == 180
    assert len(drive.in_distribution) == 90 and len(drive.out_of_distribution) == 90
    assert all(frame[:2] == b"\xff\xd8" for frame in drive.jpeg), "JPEG bytes"


def test_a_side_runs_its_own_default_bundles(tmp_path):
    bundles = this_version().bundles()
    assert set(bundles) == {"bvae", "flow"}
    assert all((path / "bundle.json").exists() for path in bundles.values())
    with pytest.raises(ValueError, match="not a commit"):
        checkout("no-such-ref-anywhere", tmp_path)


@pytest.mark.parametrize(
    ("console_scripts", "graph"),
    [
        (
            '"bvae_detector = a:b",\n "ood_detectors = vae_ood_monitor.nodes.detector:main_x",',
            "detectors",
        ),
        ('"bvae_detector = a:b",\n "flow_detector = a:c",', "nodes"),
    ],
)
def test_the_baseline_runs_ood_detectors_only_where_it_installs_them(
    tmp_path, console_scripts, graph
):
    """A version before `ood_detectors` (no such executable in its setup.py) runs a process per
    node; the check reads the executables it installs, not how its code is written."""
    (tmp_path / "setup.py").write_text(f"entry_points={{'console_scripts': [{console_scripts}]}}")
    side = Side("baseline", tmp_path, tmp_path / "models")
    assert baseline_graph("detectors", side) == graph
    assert baseline_graph("monitor", side) == "monitor"


def test_a_baseline_worktree_deleted_by_hand_is_checked_out_again(tmp_path):
    """`bench --baseline-ref` keeps its git worktree under --out; deleting that folder (a `make
    clean`, by hand) must not block the next run at the same place."""
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout: no worktree to make")
    side = checkout("HEAD", tmp_path)
    try:
        shutil.rmtree(side.root)
        again = checkout("HEAD", tmp_path)
        assert again.root == side.root and (again.root / "vae_ood_monitor").is_dir()
        assert set(again.bundles()) == {"bvae", "flow"}
    finally:
        remove = ["git", "-C", str(REPO), "worktree", "remove", "--force", str(side.root)]
        subprocess.run(remove, check=False, capture_output=True)


def test_the_installed_bench_finds_the_models_it_was_installed_with(tmp_path):
    """`vae-ood-monitor bench` as a user runs it: the installed package (imported from outside the
    source tree), whose code has no models/ beside it."""
    probe = (
        "import vae_ood_monitor.bench as b; "
        "print(b.__file__); print(*b.this_version().bundles().values(), sep='\\n')"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    module, *bundles = run.stdout.split()
    if Path(module).resolve().is_relative_to(REPO / "vae_ood_monitor"):
        pytest.skip(f"vae_ood_monitor is imported from the source tree ({module}), not installed")
    assert all((Path(b) / "bundle.json").exists() for b in bundles), bundles

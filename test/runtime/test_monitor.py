"""`vae-ood-monitor monitor`: each node in its own supervised process. An independent camera client
(vae_ood_monitor.stream, the bench's) streams JPEG frames over DDS; the committed tiny bundles."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest
from support import synthetic_frames, tiny_bundle

from vae_ood_monitor.bench import READY, _children, _cmdline, cpu_seconds
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.stream import CameraClient

REPO = Path(__file__).resolve().parents[2]
NEVER_OOD = DecisionParams(threshold=1e9)
FRAMES = [
    cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes()
    for f in synthetic_frames(60, 320, 240)
]


def wait_for(condition: Callable[[], bool], timeout: float, client: CameraClient) -> bool:
    """Stream frames at 30 Hz until `condition` holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        client.play(FRAMES, 30.0, seconds=0.5)
    return condition()


def node_children(monitor: subprocess.Popen) -> dict[str, int]:
    """Node name → pid of the monitor's child processes."""
    found = {}
    for pid in _children(monitor.pid):
        line = _cmdline(pid)
        for name, marker in (
            ("bvae", "main_bvae"),
            ("flow", "main_flow"),
            ("safety", "safety_stop"),
        ):
            if marker in line:
                found[name] = pid
    return found


@pytest.fixture
def monitor(tmp_path) -> Iterator[tuple[subprocess.Popen, CameraClient, Path]]:
    params = tmp_path / "params.yaml"
    params.write_text(
        "".join(
            f"/**/{kind}_detector:\n  ros__parameters:\n    bundle: "
            f"{tiny_bundle(f'{kind}_tiny', tmp_path, NEVER_OOD)}\n"
            for kind in ("bvae", "flow")
        )
    )
    log = tmp_path / "monitor.log"
    code = "import sys; from vae_ood_monitor.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "monitor", "--params-file", str(params)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    client = CameraClient()
    try:
        yield process, client, log
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_monitor_runs_each_node_in_its_own_process_and_stops_them_on_ctrl_c(monitor):
    process, client, log = monitor
    assert wait_for(lambda: READY <= set(client.log.diagnostics), 90.0, client), log.read_text()
    children = node_children(process)
    assert set(children) == {"bvae", "flow", "safety"}, log.read_text()
    assert wait_for(lambda: client.log.estop and not client.stopped(), 30.0, client), (
        "the safety stop releases the robot once every node is live and in distribution"
    )
    client.play(FRAMES, 30.0, seconds=2.0)
    assert all(cpu_seconds(pid) > 0 for pid in children.values()), "every node did work"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0, log.read_text()
    time.sleep(0.5)
    assert not [pid for pid in children.values() if Path(f"/proc/{pid}").exists()], (
        "no node outlives the monitor"
    )


def test_a_crashed_node_is_restarted_and_the_stop_can_be_reset(monitor):
    process, client, log = monitor
    assert wait_for(lambda: READY <= set(client.log.diagnostics), 90.0, client), log.read_text()
    assert wait_for(lambda: client.log.estop and not client.stopped(), 30.0, client)
    flow = node_children(process)["flow"]
    os.kill(flow, signal.SIGKILL)
    assert wait_for(client.stopped, 10.0, client), "a dead detector stops the robot"
    assert wait_for(lambda: node_children(process).get("flow", flow) != flow, 30.0, client), (
        log.read_text()
    )
    assert "flow_detector exited with code -9; restart 1" in log.read_text()
    assert wait_for(lambda: client.reset(timeout=2.0)[0] and not client.stopped(), 60.0, client), (
        "once the restarted detector reports again, a reset is accepted"
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0

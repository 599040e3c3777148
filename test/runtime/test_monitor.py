"""`vae-ood-monitor monitor`: the detectors (one process, or one each with --separate-detectors) and
the safety stop as supervised processes. An independent camera client (vae_ood_monitor.stream, the
bench's) streams JPEG frames over DDS; the committed tiny bundles."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
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
            ("detectors", "main_detectors"),
            ("safety", "safety_stop"),
        ):
            if marker in line:
                found[name] = pid
    return found


def start_monitor(tmp_path: Path, *options: str) -> tuple[subprocess.Popen, Path]:
    """`vae-ood-monitor monitor` with the tiny bundles (never OOD) and `options`, logging to a
    file."""
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
        [sys.executable, "-c", code, "monitor", "--params-file", str(params), *options],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return process, log


@pytest.fixture
def monitor(request, tmp_path) -> Iterator[tuple[subprocess.Popen, CameraClient, Path]]:
    process, log = start_monitor(tmp_path, *getattr(request, "param", ()))
    client = CameraClient()
    try:
        yield process, client, log
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("monitor", "processes"),
    [((), {"detectors", "safety"}), (("--separate-detectors",), {"bvae", "flow", "safety"})],
    indirect=["monitor"],
)
def test_monitor_runs_its_processes_and_stops_them_on_ctrl_c(monitor, processes):
    process, client, log = monitor
    assert wait_for(lambda: READY <= set(client.log.diagnostics), 90.0, client), log.read_text()
    children = node_children(process)
    assert set(children) == processes, log.read_text()
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
    detectors = node_children(process)["detectors"]
    os.kill(detectors, signal.SIGKILL)
    assert wait_for(client.stopped, 10.0, client), "a dead detector stops the robot"
    assert wait_for(
        lambda: node_children(process).get("detectors", detectors) != detectors, 30.0, client
    ), log.read_text()
    assert "ood_detectors exited with code -9; restart 1" in log.read_text()
    assert wait_for(lambda: client.reset(timeout=2.0)[0] and not client.stopped(), 60.0, client), (
        "once the restarted detector reports again, a reset is accepted"
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_monitor_with_live_view_adds_the_annotated_picture(tmp_path):
    """`monitor --live-view` starts the live view beside the graph, as launch's live_view:=true."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage

    process, log = start_monitor(tmp_path, "--live-view")
    client = CameraClient()
    context = Context()
    rclpy.init(context=context)
    node = Node("live_view_watcher", context=context)
    pictures: list[CompressedImage] = []
    node.create_subscription(
        CompressedImage, "/ood_monitor/live_view/image/compressed", pictures.append, 10
    )
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def pictured() -> bool:
        executor.spin_once(timeout_sec=0.05)
        return bool(pictures)

    try:
        assert wait_for(pictured, 90.0, client), log.read_text()
        assert (
            cv2.imdecode(np.frombuffer(pictures[-1].data, np.uint8), cv2.IMREAD_COLOR) is not None
        )
        assert any("live_view" in _cmdline(pid) for pid in _children(process.pid))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait()

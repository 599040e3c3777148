"""The whole monitor graph from one command (`vae-ood-monitor monitor`), for robots without launch.

Same nodes, same parameter file as launch/monitor.launch.py. Both detectors run in one process
(`ood_detectors`: one camera subscription, one JPEG decode per frame for both) and the safety stop
in another, as launch starts them; `separate=True` (`--separate-detectors`, launch's
`separate_detectors:=true`) gives each detector its own process. The safety stop stays apart: one
Python process could not run all three nodes on 2 cores at 30 Hz (the detectors fell silent for
up to 0.94 s and stopped the robot in ID driving; docs/performance.md). This process supervises
them: a node that dies is restarted (the safety stop halts the robot meanwhile: its inputs fall
silent), a node that refuses to start (exit code 2) ends the monitor with that code, and Ctrl-C
or SIGTERM stops every node cleanly before it exits.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path

from vae_ood_monitor.bundle import share_dir
from vae_ood_monitor.demo import NODES

GRAPH = ("ood_detectors", "safety_stop")
SEPARATE_GRAPH = ("bvae_detector", "flow_detector", "safety_stop")
MAX_RESTARTS = 5  # per node, then the monitor gives up and exits 1
STARTUP_REFUSED = 2  # run_nodes' exit code for a StartupError: restarting would not help


def default_params_file() -> Path:
    return share_dir() / "config" / "monitor.yaml"


def die_with_parent() -> None:
    """SIGTERM to this process when its parent dies, even by SIGKILL (Linux prctl PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _start(name: str, ros_args: list[str]) -> subprocess.Popen:
    module, function = NODES[name].split(":")
    code = (
        "import sys; from vae_ood_monitor.graph import die_with_parent; die_with_parent(); "
        f"from {module} import {function}; sys.exit({function}(sys.argv))"
    )
    # Its own process group: a terminal's Ctrl-C reaches the monitor only, which passes it on once.
    return subprocess.Popen(
        [sys.executable, "-c", code, "--ros-args", *ros_args], start_new_session=True
    )


def stop_processes(processes: dict[str, subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGINT to every node (rclpy shuts down cleanly); SIGKILL after `timeout`."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_monitor(
    params_file: Path,
    bag: Path | None = None,
    rate: float = 1.0,
    ros_args: list[str] | None = None,
    live_view: bool = False,
    separate: bool = False,
) -> int:
    """Run detectors and safety stop (each detector in its own process with `separate`, the live
    view with `live_view`, a bag player with `bag`) as supervised processes until Ctrl-C, SIGTERM
    or the bag's end. Returns 0, or the exit code that ended the monitor."""
    common = ["--params-file", str(params_file), *(ros_args or [])]
    graph = SEPARATE_GRAPH if separate else GRAPH
    args = {name: common for name in (*graph, *(("live_view",) if live_view else ()))}
    if bag is not None:
        # Play only once the detectors and the safety stop listen to the camera.
        args["bag_player"] = [
            *common,
            *("-p", f"bag:={bag}", "-p", f"rate:={rate}", "-p", "wait_for_subscribers:=3"),
        ]
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    processes = {name: _start(name, node_args) for name, node_args in args.items()}
    restarts = dict.fromkeys(processes, 0)
    code = 0
    log = "vae-ood-monitor monitor:"
    try:
        while not stopping:
            time.sleep(0.1)
            for name, process in list(processes.items()):
                status = process.poll()
                if status is None:
                    continue
                if name == "bag_player":
                    code = status
                    stopping.append(0)
                elif status == STARTUP_REFUSED or restarts[name] >= MAX_RESTARTS:
                    print(f"{log} {name} exited with code {status}; stopping", file=sys.stderr)
                    code = status or 1
                    stopping.append(0)
                else:
                    restarts[name] += 1
                    print(
                        f"{log} {name} exited with code {status}; restart {restarts[name]} "
                        f"of {MAX_RESTARTS}",
                        file=sys.stderr,
                    )
                    processes[name] = _start(name, args[name])
    finally:
        stop_processes(processes)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code

"""CPU per camera frame of the safety_stop node, read from /proc while this peer streams.

    PYTHONPATH=. python test/runtime/safety_stop_cpu.py [--seconds S] [--windows N] \
        [--before REV] [--raw]

The peer publishes the demo bag's 640×480 JPEG frames (looped, as recorded CDR) at 30 Hz on the
camera topic and both detectors' decisions (in distribution) at 30 Hz, as the graph does. The node
runs in its own process with the default names (ros_arguments); its CPU time (user + system, from
/proc/<pid>/stat) over each window is divided by the frames published in it. `--before REV` also
runs the safety_stop of git revision REV (its vae_ood_monitor/ extracted to a temporary folder)
beside this tree's, on the same stream at the same time: a paired side-by-side ratio. `--raw`:
640×480 rgb8 sensor_msgs/Image frames (image_transport raw) instead of JPEG. It also times the
camera callback's own work on the same frames with time.process_time: the previous deserialize +
CRC of `data`, and the CRC of `data` found in the serialized bytes. Not a test (pytest does not
collect it): a measurement.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool

from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC, read_raw_messages
from vae_ood_monitor.nodes.common import RELIABLE_QOS, ros_arguments
from vae_ood_monitor.safety import frame_fingerprint, message_fingerprint

REPO = Path(__file__).resolve().parents[2]
DEMO_BAG = REPO / "demo" / "demo_fog_onset"
RAW_TOPIC = "/duckiebot/camera_node/image/raw"
TICK_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_S  # utime, stime


def raw_frames(count: int = 60) -> list[bytes]:
    """Distinct 640×480 rgb8 Images (noise, as a live sensor), serialized."""
    rng = np.random.default_rng(0)
    return [
        serialize_message(
            Image(
                height=480,
                width=640,
                encoding="rgb8",
                step=1920,
                data=rng.integers(0, 256, 480 * 640 * 3, dtype=np.uint8).tobytes(),
            )
        )
        for _ in range(count)
    ]


def measure(code_dirs: list[Path], seconds: float, windows: int, raw: bool) -> list[list[float]]:
    """ms of safety_stop CPU per published camera frame, per code folder, one value per window.
    The nodes of all folders run side by side on the same stream, so they share the machine's load
    (paired numbers on a busy machine)."""
    node = rclpy.create_node(f"cpu_peer_{os.getpid()}")
    if raw:
        frames, camera = raw_frames(), node.create_publisher(Image, RAW_TOPIC, RELIABLE_QOS)
    else:
        frames = [m.cdr for m in read_raw_messages(DEMO_BAG, DEFAULT_CAMERA_TOPIC)]
        camera = node.create_publisher(CompressedImage, DEFAULT_CAMERA_TOPIC, RELIABLE_QOS)
    decisions = [
        node.create_publisher(Bool, f"/ood_monitor/{name}/ood", RELIABLE_QOS)
        for name in ("bvae", "flow")
    ]
    published = [0]

    def tick() -> None:
        camera.publish(frames[published[0] % len(frames)])
        published[0] += 1
        for publisher in decisions:
            publisher.publish(Bool(data=False))

    node.create_timer(1 / 30, tick)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    code = (
        "import sys; from vae_ood_monitor.nodes.safety_stop import main; sys.exit(main(sys.argv))"
    )
    params = ["-p", "timeout_s:=2.0", *(["-p", "image_transport:=raw"] if raw else [])]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, "--ros-args", *ros_arguments(), *params]
            + ["-r", f"__node:=safety_stop_{index}"],
            cwd=code_dir,
            env={**os.environ, "PYTHONPATH": str(code_dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        for index, code_dir in enumerate(code_dirs)
    ]
    try:
        time.sleep(5.0)  # start-up and discovery
        results: list[list[float]] = [[] for _ in processes]
        for _ in range(windows):
            cpu = [cpu_seconds(process.pid) for process in processes]
            frames_before = published[0]
            time.sleep(seconds)
            count = max(published[0] - frames_before, 1)
            for index, process in enumerate(processes):
                used = cpu_seconds(process.pid) - cpu[index]
                results[index].append(1000.0 * used / count)
        return results
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            process.wait(timeout=10)
        executor.shutdown()
        node.destroy_node()


def callback_ms(raw: bool, repeats: int = 5, calls: int = 300) -> dict[str, float]:
    """ms of CPU per camera callback (median of `repeats` runs of `calls`), previous and current."""
    if raw:
        frames, message_type = raw_frames(10), Image
    else:
        frames = [m.cdr for m in read_raw_messages(DEMO_BAG, DEFAULT_CAMERA_TOPIC)]
        message_type = CompressedImage
    ways = {
        "deserialize + CRC of data (before)": lambda cdr: frame_fingerprint(
            deserialize_message(cdr, message_type).data
        ),
        "CRC of data in the CDR bytes (now)": lambda cdr: message_fingerprint(cdr, raw),
    }
    results = {}
    for name, way in ways.items():
        runs = []
        for _ in range(repeats):
            started = time.process_time()
            for index in range(calls):
                way(frames[index % len(frames)])
            runs.append(1000.0 * (time.process_time() - started) / calls)
        results[name] = float(np.median(runs))
    return results


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", rev, "vae_ood_monitor"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--before", help="git revision to measure first, for a ratio")
    parser.add_argument("--raw", action="store_true", help="rgb8 Images instead of JPEG")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rclpy.init()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"this tree": REPO}
        if args.before:
            folders = {f"before ({args.before})": extract(args.before, Path(tmp)), **folders}
        measured = measure(list(folders.values()), args.seconds, args.windows, args.raw)
    results = dict(zip(folders, measured))
    rclpy.shutdown()
    kind = "640x480 rgb8 Image" if args.raw else "640x480 JPEG"
    print(f"safety_stop CPU per camera frame, {kind} at 30 Hz, {args.windows} x {args.seconds} s:")
    for name, values in results.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:>24}: median {np.median(values):.2f} ms  ({each})")
    if len(results) == 2:
        first, second = (float(np.median(v)) for v in results.values())
        print(f"  ratio before/after: {first / second:.1f}x")
    print("camera callback's own work, CPU per frame:")
    for name, value in callback_ms(args.raw).items():
        print(f"  {name:>36}: {value:.3f} ms")


if __name__ == "__main__":
    main()

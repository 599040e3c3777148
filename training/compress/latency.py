"""Encoder and preprocessing latency on this CPU, measured side by side so that shared-machine
noise hits all alike.

Every model gets its own ONNX Runtime session (1 thread by default); the runs interleave model by
model (round robin), after warm-up, and the median per model is reported with ratios to the
first (baseline) model. Preprocessing (camera frame → encoder inputs: resize; for the flow
detector also greyscale, CLAHE and the optical flow) is timed the same way on real frames, so a
detector's per-frame cost is preprocessing + encoders.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vae_ood_monitor.backends import OnnxRuntimeEncoder
from vae_ood_monitor.preprocessing import FlowPreprocessing, FlowStacker, ImagePreprocessing


@dataclass(frozen=True)
class Latency:
    name: str
    median_ms: float
    p90_ms: float
    ratio: float  # median / baseline median
    size_mb: float


def measure_latency(
    models: dict[str, tuple[Path, tuple[int, ...]]],
    runs: int = 200,
    threads: int = 1,
    warmup: int = 20,
) -> list[Latency]:
    """`models`: name → (ONNX path, input shape without batch); the first entry is the baseline."""
    rng = np.random.default_rng(0)
    sessions = {
        name: (
            OnnxRuntimeEncoder(path, threads=threads, providers=("CPUExecutionProvider",)),
            rng.random((1, *shape), dtype=np.float32),
        )
        for name, (path, shape) in models.items()
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(warmup + runs):
        for name, (encoder, batch) in sessions.items():
            start = time.perf_counter()
            encoder(batch)
            if step >= warmup:
                times[name].append((time.perf_counter() - start) * 1000.0)
    baseline = float(np.median(times[next(iter(models))]))
    return [
        Latency(
            name,
            float(np.median(t)),
            float(np.percentile(t, 90)),
            float(np.median(t)) / baseline,
            models[name][0].stat().st_size / 1e6,
        )
        for name, t in times.items()
    ]


def measure_preprocessing(
    preprocessings: dict[str, ImagePreprocessing | FlowPreprocessing],
    frames: list[np.ndarray],
    warmup: int = 10,
) -> dict[str, float]:
    """Median milliseconds per camera frame of each preprocessing, interleaved frame by frame,
    OpenCV on one thread (as the detector nodes run it). Flow preprocessings see the frames as
    a stream: one optical flow per frame."""
    if len(frames) <= warmup:
        raise ValueError(f"need more than {warmup} frames to time preprocessing, got {len(frames)}")
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        steps = {
            name: FlowStacker(p).push if isinstance(p, FlowPreprocessing) else p
            for name, p in preprocessings.items()
        }
        times: dict[str, list[float]] = {name: [] for name in steps}
        for index, rgb in enumerate(frames):
            for name, step in steps.items():
                start = time.perf_counter()
                step(rgb)
                if index >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000.0)
    finally:
        cv2.setNumThreads(threads)
    return {name: float(np.median(t)) for name, t in times.items()}


_PEAK_RSS = """
import sys
from pathlib import Path
import numpy as np
from vae_ood_monitor.backends import OnnxRuntimeEncoder
for path, shape in zip(sys.argv[1::2], sys.argv[2::2]):
    OnnxRuntimeEncoder(Path(path), threads=1, providers=("CPUExecutionProvider",))(
        np.zeros((1, *map(int, shape.split("x"))), np.float32)
    )
status = Path("/proc/self/status").read_text().splitlines()
print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0)
"""


def peak_memory_mb(files: dict[str, Path], shapes: dict[str, tuple[int, ...]]) -> float:
    """Peak resident memory (MB, VmHWM) of a fresh interpreter that loads the encoders and runs one
    frame: Python, numpy and ONNX Runtime included, as in a detector node. A plain subprocess, not
    multiprocessing: a spawned child re-imports the caller's main module (torch and all)."""
    args = [item for name in files for item in (str(files[name]), "x".join(map(str, shapes[name])))]
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"measuring memory of {', '.join(map(str, files.values()))} failed: "
            f"{result.stderr.strip()[-300:]}"
        )
    return float(result.stdout.strip())

"""The live view's picture, free of ROS: the camera frame downscaled, under it the monitor's state
and stop reason, and per detector its score and decision statistic against the alarm level.

The statistic is what the detector's decision compares with its level: the CUSUM (replayed here
from the published scores with the detector's own bundle, as `demo` draws it) or, in threshold
mode, the score. The OOD flag shown is the detector's published decision, not the replay's.
"""

from __future__ import annotations

import math
import textwrap
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from vae_ood_monitor.decision import ConformalDecider, DecisionParams

GREEN, AMBER, RED = (60, 170, 60), (0, 160, 230), (40, 40, 220)  # BGR
GREY, WHITE, DARK = (150, 150, 150), (255, 255, 255), (30, 30, 30)
FONT = cv2.FONT_HERSHEY_SIMPLEX
ROW = 14  # pixels per text line at font scale 0.4
TRACE_HEIGHT = 46


@dataclass
class DetectorTrace:
    """One detector's recent scores, statistic and decision."""

    name: str
    history_s: float
    decider: ConformalDecider | None = None
    mode: str = "cusum"
    level: float | None = None
    ood: bool | None = None
    score: float | None = None
    statistic: float | None = None
    samples: deque[tuple[float, float]] = field(default_factory=deque)  # (time, statistic)

    def use_bundle(self, calibration: np.ndarray, params: DecisionParams) -> None:
        """The detector's decision: its alarm level and, in CUSUM mode, a replay of its CUSUM."""
        self.mode, self.level = params.mode, params.threshold
        self.decider = ConformalDecider(calibration, params) if params.mode == "cusum" else None
        self.samples.clear()

    def on_score(self, now: float, score: float) -> None:
        if not math.isfinite(score):
            return
        self.score = score
        if self.mode == "threshold":
            self.statistic = score
        elif self.decider is not None:
            self.statistic = self.decider.update(score).cusum
        else:
            return
        self.samples.append((now, self.statistic))
        while self.samples and now - self.samples[0][0] > self.history_s:
            self.samples.popleft()


def _text(image: np.ndarray, text: str, x: int, y: int, colour=WHITE, scale: float = 0.4) -> None:
    cv2.putText(image, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def _state_banner(width: int, stopped: bool | None, reason: str) -> np.ndarray:
    """STOPPED (red) with its reason, WAITING (amber) or RUNNING (green), wrapped to the width."""
    if stopped is None:
        colour, lines = GREY, ["no emergency_stop heard yet"]
    elif not stopped:
        colour, lines = GREEN, ["RUNNING"]
    elif reason.startswith("waiting"):
        colour, lines = AMBER, [f"HELD: {reason}"]
    else:
        colour, lines = RED, [f"STOPPED: {reason}" if reason else "STOPPED"]
    wrapped = [part for line in lines for part in textwrap.wrap(line, max(width // 7, 10))][:4]
    banner = np.full((ROW * len(wrapped) + 8, width, 3), colour, np.uint8)
    for row, line in enumerate(wrapped):
        _text(banner, line, 4, ROW * (row + 1), WHITE)
    return banner


def _trace_panel(width: int, trace: DetectorTrace, now: float) -> np.ndarray:
    """Name, score, statistic/level and decision, above the statistic's last `history_s` seconds
    with the alarm level drawn (log scale where the values are positive)."""
    panel = np.full((ROW + 4 + TRACE_HEIGHT, width, 3), DARK, np.uint8)
    what = "score" if trace.mode == "threshold" else "CUSUM"
    flag = {None: "-", True: "OOD", False: "ID"}[trace.ood]
    value = f"{trace.score:.3g}" if trace.score is not None else "-"
    statistic = f"{trace.statistic:.3g}" if trace.statistic is not None else "-"
    level = f"{trace.level:.3g}" if trace.level is not None else "?"
    colour = RED if trace.ood else GREEN if trace.ood is False else GREY
    _text(panel, f"{trace.name} {value}  {what} {statistic}/{level}", 4, ROW, WHITE)
    _text(panel, flag, width - 32, ROW, colour)
    values = [v for _, v in trace.samples]
    if trace.level is not None and math.isfinite(trace.level):
        values.append(trace.level)
    if not values:
        return panel
    positive = min(values) > 0

    def y(v: float) -> int:
        lo, hi = min(values), max(values)
        if positive:
            v, lo, hi = math.log(v), math.log(lo), math.log(hi)
        share = 0.5 if hi == lo else (v - lo) / (hi - lo)
        return ROW + 4 + int((1.0 - share) * (TRACE_HEIGHT - 3)) + 1

    if trace.level is not None and math.isfinite(trace.level):
        level_y = y(trace.level)
        for x in range(0, width, 8):
            cv2.line(panel, (x, level_y), (min(x + 4, width - 1), level_y), AMBER, 1)
    points = [
        (int((1.0 - (now - t) / trace.history_s) * (width - 1)), y(v)) for t, v in trace.samples
    ]
    if len(points) > 1:
        cv2.polylines(panel, [np.array(points, np.int32)], False, colour, 1, cv2.LINE_AA)
    return panel


def render(
    frame_rgb: np.ndarray | None,
    width: int,
    stopped: bool | None,
    reason: str,
    traces: list[DetectorTrace],
    now: float,
) -> np.ndarray:
    """The annotated picture (BGR): camera frame resized to `width` (a grey placeholder before the
    first frame), the state banner, one panel per detector."""
    if frame_rgb is None:
        camera = np.full((width * 3 // 4, width, 3), GREY, np.uint8)
        _text(camera, "no camera frame yet", 8, width * 3 // 8)
    else:
        height = max(1, round(frame_rgb.shape[0] * width / frame_rgb.shape[1]))
        camera = cv2.cvtColor(
            cv2.resize(frame_rgb, (width, height), interpolation=cv2.INTER_AREA),
            cv2.COLOR_RGB2BGR,
        )
    parts = [camera, _state_banner(width, stopped, reason)]
    parts += [_trace_panel(width, trace, now) for trace in traces]
    return np.vstack(parts)

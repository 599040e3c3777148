"""Model inputs from camera frames, shared by training and the onboard runtime.

Training imports these very functions, so the robot feeds its encoders exactly what they were
trained on. Parameters travel in the model bundle's JSON (`to_dict` / `from_dict`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import cv2
import numpy as np

FLOW_METHODS = ("farneback", "dis")
# OpenCV's DIS presets, cheapest first: ultrafast (patch 8, stride 6), fast, medium.
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# "area": RGB area-resized to the flow size, then grey (the papers' order). "grey_stepped": grey at
# the camera's size, area-averaged by the largest whole factor that divides it (OpenCV's fast
# block-average path), then area-resized to the flow size — one channel and a cheap exact step
# instead of a fractional area resize of three: 0.3 ms instead of 0.7 ms for 640x480 -> 120x90
# here. The two differ by about 2 grey levels on average, so a model is trained with the one it runs.
FLOW_RESIZES = ("area", "grey_stepped")


# How a camera frame becomes the β-VAE's input. "area" averages the pixels each input pixel covers
# (the papers'); "nearest" samples one camera pixel per input pixel: sensor noise and thin streaks
# keep their full strength instead of being averaged away, and the resize is cheaper.
IMAGE_INTERPOLATIONS = {"area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class ImagePreprocessing:
    """β-VAE input: RGB resized to width×height, float32 in [0, 1], channels first."""

    width: int = 224
    height: int = 224
    interpolation: str = "area"  # see IMAGE_INTERPOLATIONS

    def __post_init__(self) -> None:
        if self.interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(
                f"image interpolation must be one of {tuple(IMAGE_INTERPOLATIONS)}, got '{self.interpolation}'"
            )

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HWC at the model size (training keeps this form to save memory)."""
        return cv2.resize(
            rgb, (self.width, self.height), interpolation=IMAGE_INTERPOLATIONS[self.interpolation]
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(
            self.resize(rgb).transpose(2, 0, 1), dtype=np.float32
        ) / np.float32(255.0)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "image", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ImagePreprocessing:
        """As to_dict wrote it; bundles written before `interpolation` existed keep the area resize."""
        return cls(
            width=data["width"],
            height=data["height"],
            interpolation=data.get("interpolation", cls.interpolation),
        )  # type: ignore[arg-type]


@dataclass(frozen=True)
class FlowPreprocessing:
    """Optical-flow input: grayscale frames at width×height, dense flow between consecutive frames,
    cropped, scaled by `max_flow` to [-1, 1], `stack` flows deep; horizontal and vertical
    components become the inputs of two encoders (RTCSA 2022)."""

    width: int = 160
    height: int = 120
    crop: tuple[int, int, int, int] = (
        4,
        4,
        152,
        112,
    )  # x, y, width, height inside the resized frame
    stack: int = 6
    method: str = "farneback"  # or "dis"
    max_flow: float = 8.0  # pixels per frame at width×height mapped to ±1
    clahe: bool = True
    dis_preset: str = "ultrafast"  # with method "dis"
    resize: str = "area"  # how a camera frame becomes a grey width×height frame, see FLOW_RESIZES
    # Farneback's averaging window in pixels at width×height: the 15 at 160×120. A smaller
    # window at a smaller size keeps the same patch of the scene, and averages sensor noise less.
    winsize: int = 15

    def __post_init__(self) -> None:
        if self.method not in FLOW_METHODS:
            raise ValueError(f"flow method must be one of {FLOW_METHODS}, got '{self.method}'")
        if self.dis_preset not in DIS_PRESETS:
            raise ValueError(
                f"DIS preset must be one of {tuple(DIS_PRESETS)}, got '{self.dis_preset}'"
            )
        if self.resize not in FLOW_RESIZES:
            raise ValueError(f"flow resize must be one of {FLOW_RESIZES}, got '{self.resize}'")
        if isinstance(self.winsize, bool) or not isinstance(self.winsize, int) or self.winsize < 3:
            raise ValueError(
                f"Farneback winsize must be an integer of at least 3 pixels, got {self.winsize!r}"
            )
        x, y, w, h = self.crop
        if x < 0 or y < 0 or x + w > self.width or y + h > self.height or w <= 0 or h <= 0:
            raise ValueError(f"crop {self.crop} does not fit in {self.width}x{self.height}")

    def to_dict(self) -> dict[str, object]:
        return {"kind": "flow", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FlowPreprocessing:
        fields = {k: v for k, v in data.items() if k != "kind"}
        fields["crop"] = tuple(fields["crop"])  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]


def _whole_factor_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` block-averaged by the largest whole factor k that divides both of its sides and keeps
    it at least `size` (width, height); unchanged when there is none."""
    height, width = image.shape[:2]
    for k in range(min(width // size[0], height // size[1]), 1, -1):
        if width % k == 0 and height % k == 0:
            return cv2.resize(image, (width // k, height // k), interpolation=cv2.INTER_AREA)
    return image


class FlowStacker:
    """Turns a frame stream into stacked (horizontal, vertical) flow inputs.

    Keeps the previous grayscale frame and the last `stack` flows; `push` returns the two encoder
    inputs, each (stack, crop_h, crop_w) float32, once enough frames have arrived, else None.
    """

    def __init__(self, params: FlowPreprocessing) -> None:
        self.params = params
        self._previous: np.ndarray | None = None
        self._flows: deque[np.ndarray] = deque(maxlen=params.stack)
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)) if params.clahe else None
        self._dis = (
            cv2.DISOpticalFlow_create(DIS_PRESETS[params.dis_preset])
            if params.method == "dis"
            else None
        )

    def reset(self) -> None:
        self._previous = None
        self._flows.clear()

    def _grey(self, rgb: np.ndarray) -> np.ndarray:
        size = (self.params.width, self.params.height)
        if self.params.resize == "grey_stepped":
            grey = cv2.resize(
                _whole_factor_area(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size),
                size,
                interpolation=cv2.INTER_AREA,
            )
        else:
            grey = cv2.cvtColor(
                cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
            )
        return self._clahe.apply(grey) if self._clahe is not None else grey

    def _flow(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        if self._dis is not None:
            return self._dis.calc(previous, current, None)
        return cv2.calcOpticalFlowFarneback(
            previous, current, None, 0.5, 1, self.params.winsize, 1, 5, 1.1, 0
        )

    def push(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        grey = self._grey(rgb)
        previous, self._previous = self._previous, grey
        if previous is None:
            return None
        x, y, w, h = self.params.crop
        flow = self._flow(previous, grey)[y : y + h, x : x + w]
        self._flows.append(np.clip(flow / self.params.max_flow, -1.0, 1.0).astype(np.float32))
        if len(self._flows) < self.params.stack:
            return None
        stacked = np.stack(self._flows)  # (stack, h, w, 2)
        return np.ascontiguousarray(stacked[..., 0]), np.ascontiguousarray(stacked[..., 1])

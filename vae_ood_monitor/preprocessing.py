"""Model inputs from camera frames, shared by training and the onboard runtime.

Training imports these very functions, so the robot feeds its encoders exactly what they were
trained on. Parameters travel in the model bundle's JSON (`to_dict` / `from_dict`).
"""

from __future__ import annotations

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
# here. The two differ by about 2 grey levels on average, so a model is trained with the one it
# runs.
FLOW_RESIZES = ("area", "grey_stepped")
# One Farneback iteration underestimates displacements of a few pixels: on the demo drive, with the
# shipped flow detector's preprocessing, a pair two training intervals apart measured 0.75 of the
# chained one-interval flows, three apart 0.50. A pair at least this many intervals apart starts
# from the previous flow, extrapolated to its gap (0.92 and 0.85 then; test_flow_rate); closer
# pairs are computed as in training.
WARM_START_INTERVALS = 1.5


# How a camera frame becomes the β-VAE's input. "area" averages the pixels each input pixel covers
# (the papers'); "nearest" samples one camera pixel per input pixel: sensor noise and thin streaks
# keep their full strength instead of being averaged away, and the resize is cheaper.
IMAGE_INTERPOLATIONS = {"area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}

# The normal table's photometric changes (docs/normal.md): exposure gain 0.7-1.4, white balance
# ±10 %, contrast ±20 %. Photometric normalisation undoes at most these.
EXPOSURE_LIMITS = (0.7, 1.4)
WHITE_BALANCE_LIMIT = 0.1
CONTRAST_LIMIT = 0.2


def _correction(value: float, low: float, high: float, least: float, most: float) -> float:
    """How far `value` lies beyond [low, high], as a factor (1 inside), limited to [least, most]."""
    return float(np.clip(value / np.clip(value, low, high), least, most))


@dataclass(frozen=True)
class PhotometricRanges:
    """Photometric normalisation: the (low, high) range of four statistics of the model input on
    in-distribution frames — mean level, red / green and blue / green means, grey standard
    deviation. A frame outside a range is brought back towards it by at most the normal table's
    change, so ordinary exposure, white balance and contrast look like ID frames, while darkness,
    glare and fog, far beyond them, stay out of distribution. A frame inside every range is left
    as it is: a bundle's calibration stays valid for the frames it was calibrated on."""

    brightness: tuple[float, float]
    red: tuple[float, float]
    blue: tuple[float, float]
    contrast: tuple[float, float]

    def __post_init__(self) -> None:
        for name, (low, high) in self.to_dict().items():
            if not 0.0 < low <= high:
                raise ValueError(
                    f"photometric range {name} needs 0 < low <= high, got {low}, {high}"
                )

    @staticmethod
    def statistics(image: np.ndarray) -> tuple[float, float, float, float]:
        """(mean level, red / green, blue / green, grey standard deviation) of an RGB image."""
        pixels = image.reshape(-1, 3).astype(np.float32)
        means = pixels.mean(axis=0) + np.float32(1e-3)
        return (
            float(means.mean()),
            float(means[0] / means[1]),
            float(means[2] / means[1]),
            float(pixels.mean(axis=1).std()),
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The uint8 RGB image normalised (white balance, then exposure gain, then contrast)."""
        level, red, blue, spread = self.statistics(image)
        balance = (1.0 - WHITE_BALANCE_LIMIT, 1.0 + WHITE_BALANCE_LIMIT)
        gains = np.array(
            [
                1.0 / _correction(red, *self.red, *balance),
                1.0,
                1.0 / _correction(blue, *self.blue, *balance),
            ],
            np.float32,
        )
        exposure = _correction(level, *self.brightness, *EXPOSURE_LIMITS)
        stretch = _correction(
            spread / exposure, *self.contrast, 1.0 - CONTRAST_LIMIT, 1.0 + CONTRAST_LIMIT
        )
        if exposure == 1.0 and stretch == 1.0 and np.all(gains == 1.0):
            return image
        x = image.astype(np.float32) * (gains / np.float32(exposure))
        mean = x.mean()
        x = (x - mean) / np.float32(stretch) + mean
        return np.clip(x, 0, 255).round().astype(np.uint8)

    def to_dict(self) -> dict[str, tuple[float, float]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PhotometricRanges:
        return cls(**{k: tuple(v) for k, v in data.items()})  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImagePreprocessing:
    """β-VAE input: RGB resized to width×height, float32 in [0, 1], channels first; with
    `photometric`, normalised at that size (PhotometricRanges; None: as the camera gave it)."""

    width: int = 224
    height: int = 224
    interpolation: str = "area"  # see IMAGE_INTERPOLATIONS
    photometric: PhotometricRanges | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(
                f"image interpolation must be one of {tuple(IMAGE_INTERPOLATIONS)}, "
                f"got '{self.interpolation}'"
            )

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HWC at the model size (training keeps this form to save memory)."""
        image = cv2.resize(
            rgb, (self.width, self.height), interpolation=IMAGE_INTERPOLATIONS[self.interpolation]
        )
        return image if self.photometric is None else self.photometric(image)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(
            self.resize(rgb).transpose(2, 0, 1), dtype=np.float32
        ) / np.float32(255.0)

    def to_dict(self) -> dict[str, object]:
        """Without `photometric` when it is off, so bundles without it read as before."""
        data: dict[str, object] = {"kind": "image", **asdict(self)}
        if self.photometric is None:
            del data["photometric"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ImagePreprocessing:
        """As to_dict wrote it; bundles written before `interpolation` existed keep the area resize,
        those without `photometric` leave the frames' colours as they are."""
        photometric = data.get("photometric")
        return cls(
            width=data["width"],
            height=data["height"],
            interpolation=data.get("interpolation", cls.interpolation),
            photometric=None if photometric is None else PhotometricRanges.from_dict(photometric),
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
    # Motion is measured per second: with header stamps, each flow is scaled by this training frame
    # interval over the actual time between the two frames, so a 15 Hz camera or lost frames do not
    # look like a speed-up. Bundles written before this field assume the 30 Hz training camera.
    frame_interval_s: float = 1.0 / 30.0
    # A pair further apart than this is not compared (the flow of a long gap is unreliable); the
    # stream continues from the newer frame, and the safety stop judges the silence.
    max_gap_s: float = 0.5

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
        if not 0 < self.frame_interval_s <= self.max_gap_s:
            raise ValueError(
                "need 0 < frame_interval_s <= max_gap_s, "
                f"got {self.frame_interval_s} and {self.max_gap_s}"
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

    Keeps the previous grayscale frame and the flows of the last `stack` training frame
    intervals; `push` returns the two encoder inputs, each (stack, crop_h, crop_w) float32, once
    enough frames have arrived, else None.
    With header stamps each flow is scaled to the training frame interval (motion per second).
    """

    def __init__(self, params: FlowPreprocessing) -> None:
        self.params = params
        self._previous: np.ndarray | None = None
        self._previous_ns: int | None = None
        self._per_interval: np.ndarray | None = None  # the last flow, per training frame interval
        # The last `stack` intervals' flows, oldest first, as (component, flow, y, x): the
        # encoders' inputs are this buffer's two components, with no stacking per frame.
        _, _, width, height = params.crop
        self._stack = np.zeros((2, params.stack, height, width), np.float32)
        self._filled = 0
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)) if params.clahe else None
        self._dis = (
            cv2.DISOpticalFlow_create(DIS_PRESETS[params.dis_preset])
            if params.method == "dis"
            else None
        )

    def reset(self) -> None:
        self._previous = None
        self._previous_ns = None
        self._per_interval = None
        self._filled = 0

    def _grey(self, image: np.ndarray) -> np.ndarray:
        """The model's grey frame from an RGB image or an already grey one (a reduced decode)."""
        size = (self.params.width, self.params.height)
        if image.ndim == 2:
            grey = cv2.resize(
                _whole_factor_area(image, size) if self.params.resize == "grey_stepped" else image,
                size,
                interpolation=cv2.INTER_AREA,
            )
        elif self.params.resize == "grey_stepped":
            grey = cv2.resize(
                _whole_factor_area(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), size),
                size,
                interpolation=cv2.INTER_AREA,
            )
        else:
            grey = cv2.cvtColor(
                cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
            )
        return self._clahe.apply(grey) if self._clahe is not None else grey

    def _flow(self, previous: np.ndarray, current: np.ndarray, intervals: float) -> np.ndarray:
        """Flow between frames `intervals` training frame intervals apart, in pixels."""
        if self._dis is not None:
            return self._dis.calc(previous, current, None)
        initial = (
            self._per_interval * np.float32(intervals)
            if intervals >= WARM_START_INTERVALS and self._per_interval is not None
            else None
        )
        return cv2.calcOpticalFlowFarneback(
            previous,
            current,
            initial,
            0.5,  # pyramid scale
            1,  # levels: a second one wherever half the frame is still 32 pixels high
            self.params.winsize,
            1,  # iterations
            5,  # poly_n
            1.1,  # poly_sigma
            0 if initial is None else cv2.OPTFLOW_USE_INITIAL_FLOW,
        )

    def push(
        self, image: np.ndarray, stamp_ns: int | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Add a frame (RGB, or grey from a reduced decode) taken at header stamp `stamp_ns`
        (None: at the training frame interval after the previous one).

        The flow is scaled by the training frame interval over the time between the two frames.
        A frame with the previous frame's stamp is a repeat and ignored; a stamp that goes back or
        a gap longer than `max_gap_s` starts the stream over from this frame."""
        scale = 1.0
        if stamp_ns is not None and self._previous_ns is not None:
            gap_s = (stamp_ns - self._previous_ns) * 1e-9
            if gap_s == 0.0:
                return None
            if gap_s < 0.0 or gap_s > self.params.max_gap_s:
                self.reset()
            else:
                scale = self.params.frame_interval_s / gap_s
        grey = self._grey(image)
        previous, self._previous, self._previous_ns = self._previous, grey, stamp_ns
        if previous is None:
            return None
        flow = self._flow(previous, grey, 1.0 / scale)
        self._per_interval = flow * np.float32(scale)
        # Intervals without a frame of their own (a slower camera, lost frames) each get the flow
        # measured over the gap, per interval: the stack spans the last `stack` training intervals
        # as in training, not the last `stack` frames (0.6 s at 10 Hz, whose turns the encoders
        # never saw so fast: 5 % of ID frames flagged before, docs/performance.md).
        slots = min(self.params.stack, max(1, int(1.0 / scale + 0.5)))
        x, y, w, h = self.params.crop
        limit = np.float32(self.params.max_flow / scale)
        self._stack[:, :-slots] = self._stack[:, slots:]
        for component in (0, 1):
            newest = self._stack[component, -1]
            np.divide(flow[y : y + h, x : x + w, component], limit, out=newest)
            np.clip(newest, -1.0, 1.0, out=newest)
            self._stack[component, -slots:-1] = newest
        self._filled = min(self._filled + slots, self.params.stack)
        if self._filled < self.params.stack:
            return None
        return self._stack[0].copy(), self._stack[1].copy()

"""Model bundles: encoder ONNX files + bundle.json + SHA256SUMS, verified before anything runs.

<bundle>/bundle.json      detector kind, preprocessing, encoders, latent score (kind, dims,
                          fitted statistics), calibration scores, decision parameters, provenance
<bundle>/<encoder>.onnx   one per encoder ("image", or "horizontal" and "vertical")
<bundle>/SHA256SUMS       `sha256sum` format over every other file; checked at load
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing
from vae_ood_monitor.scoring import LatentScore

BUNDLE_FILE = "bundle.json"
SUMS_FILE = "SHA256SUMS"
DEFAULTS_FILE = "defaults.json"  # models/defaults.json: {"bvae": <name>, "flow": <name>}
FORMAT = "vae_ood_monitor.bundle/2"
DETECTOR_ENCODERS = {"bvae": ("image",), "flow": ("horizontal", "vertical")}


class BundleError(RuntimeError):
    """A bundle that must not be used; the message names the bundle and what is wrong."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    detector: str
    preprocessing: ImagePreprocessing | FlowPreprocessing
    encoders: dict[str, Path]
    score: LatentScore
    calibration_scores: np.ndarray
    decision: DecisionParams
    provenance: dict[str, Any]
    sha256: str  # of SHA256SUMS: one hash naming this exact bundle, for diagnostics

    def engine_path(self, encoder: str, suffix: str) -> Path:
        """Where a TensorRT engine built from `encoder`'s ONNX lives (same stem, other suffix)."""
        return self.encoders[encoder].with_suffix(suffix)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(path: Path) -> None:
    """Write SHA256SUMS over every file of the bundle folder but itself and TensorRT engines."""
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.name != SUMS_FILE and p.suffix not in (".engine", ".plan")
    )
    (path / SUMS_FILE).write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in files))


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Write a bundle's bundle.json, then its SHA256SUMS, so the two always agree."""
    (path / BUNDLE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    write_sums(path)


def edit_meta(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change a bundle's bundle.json in place through `edit` and write its checksums anew."""
    meta = json.loads((path / BUNDLE_FILE).read_text())
    edit(meta)
    write_meta(path, meta)


def verify_sums(path: Path) -> str:
    sums = path / SUMS_FILE
    if not sums.exists():
        raise BundleError(f"{path}: no {SUMS_FILE}; refusing an unverifiable bundle")
    for line_number, line in enumerate(sums.read_text().splitlines(), start=1):
        expected, _, name = line.partition("  ")
        if not name:
            raise BundleError(f"{sums}:{line_number}: malformed line")
        target = path / name
        if not target.exists():
            raise BundleError(f"{path}: {name} is listed in {SUMS_FILE} but missing")
        if sha256_file(target) != expected:
            raise BundleError(f"{path}: SHA-256 mismatch for {name} (file changed or corrupt)")
    return sha256_file(sums)


def share_dir() -> Path:
    """share/vae_ood_monitor (ament index, else this interpreter's prefix), else the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory("vae_ood_monitor")))
        except (PackageNotFoundError, KeyError, ValueError, OSError):
            pass
    except ImportError:
        pass
    candidates += [
        Path(sys.prefix) / "share" / "vae_ood_monitor",
        Path(__file__).resolve().parents[1],
    ]
    return next((c for c in candidates if (c / "package.xml").exists()), candidates[-1])


def models_dir() -> Path:
    return share_dir() / "models"


def default_bundle(detector: str) -> Path:
    """The bundle the runtime uses for `detector` unless told otherwise (models/defaults.json)."""
    root = models_dir()
    defaults = (
        json.loads((root / DEFAULTS_FILE).read_text()) if (root / DEFAULTS_FILE).exists() else {}
    )
    return root / defaults.get(detector, f"{detector}_student")


def resolve_bundle(reference: Path | str) -> Path:
    """A bundle folder from a path or the name of a shipped bundle (models/<name> in the installed
    share folder), so `bundle:=flow_teacher` works on a robot as well as a full path does."""
    path = Path(reference)
    if (path / BUNDLE_FILE).exists() or len(path.parts) != 1:
        return path
    shipped = models_dir() / path.name
    return shipped if (shipped / BUNDLE_FILE).exists() else path


def load_bundle(path: Path | str) -> Bundle:
    """Read and verify a bundle (a folder, or a shipped bundle's name: resolve_bundle); every
    problem is a BundleError naming the file."""
    path = resolve_bundle(path)
    if not (path / BUNDLE_FILE).exists():
        shipped = ", ".join(sorted(p.parent.name for p in models_dir().glob(f"*/{BUNDLE_FILE}")))
        raise BundleError(
            f"{path}: not a model bundle (no {BUNDLE_FILE}) nor a shipped bundle's name "
            f"(shipped: {shipped or 'none'})"
        )
    digest = verify_sums(path)
    try:
        meta = json.loads((path / BUNDLE_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise BundleError(
                f"{path}: unsupported bundle format {meta.get('format')!r} (expected {FORMAT}; "
                "re-calibrate it with `python -m training.pipeline`)"
            )
        detector = meta["detector"]
        if detector not in DETECTOR_ENCODERS:
            raise BundleError(f"{path}: unknown detector kind {detector!r}")
        preprocessing = (ImagePreprocessing if detector == "bvae" else FlowPreprocessing).from_dict(
            meta["preprocessing"]
        )
        encoders = {name: path / meta["encoders"][name] for name in DETECTOR_ENCODERS[detector]}
        calibration = np.asarray(meta["calibration_scores"], dtype=np.float64)
        decision = DecisionParams(**meta["decision"])
        score = LatentScore.from_dict(meta["score"])
        if set(score.dims) != set(DETECTOR_ENCODERS[detector]):
            raise BundleError(
                f"{path / BUNDLE_FILE}: score reads encoders {sorted(score.dims)}, "
                f"expected {list(DETECTOR_ENCODERS[detector])}"
            )
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path / BUNDLE_FILE}: invalid ({type(err).__name__}: {err})") from None
    for name, file in encoders.items():
        if not file.exists():
            raise BundleError(f"{path}: encoder '{name}' file {file.name} is missing")
    if calibration.size == 0 or not np.all(np.isfinite(calibration)):
        raise BundleError(f"{path}: calibration scores are empty or not finite")
    return Bundle(
        path,
        detector,
        preprocessing,
        encoders,
        score,
        calibration,
        decision,
        meta.get("provenance", {}),
        digest,
    )

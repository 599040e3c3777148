"""Make two bundles the runtime defaults: the only command that writes models/defaults.json.

    python -m training.promote --bvae runs/students/bvae_student --flow runs/students/flow_student

Each bundle is verified (checksums, fields, its detector kind), copied to models/bvae_student or
models/flow_student with provenance.shipped_as recording where it came from, and the pair is
written to models/defaults.json. Check a candidate first on the test split (`make eval`), the
normal-variation table and the bench — promoting is a decision, not a step of training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from vae_ood_monitor.bundle import DEFAULTS_FILE, BundleError, edit_meta, load_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_NAMES = {"bvae": "bvae_student", "flow": "flow_student"}


def promote(bundles: dict[str, Path], models: Path = REPO_ROOT / "models") -> dict[str, str]:
    """Copy each verified bundle to models/<detector>_student and name them in defaults.json."""
    loaded = {kind: load_bundle(path) for kind, path in bundles.items()}
    for kind, bundle in loaded.items():
        if bundle.detector != kind:
            raise BundleError(f"{bundle.path}: a {bundle.detector} bundle, given as the {kind} one")
    for kind, bundle in loaded.items():
        target = models / SHIPPED_NAMES[kind]
        with tempfile.TemporaryDirectory(dir=models) as staging:
            copy = Path(shutil.copytree(bundle.path, Path(staging) / target.name))
            for engine in [*copy.glob("*.engine"), *copy.glob("*.plan")]:
                engine.unlink()  # TensorRT engines are built per device, on the device
            origin = {"name": target.name, "from": str(bundle.path)}
            edit_meta(
                copy, lambda meta, origin=origin: meta["provenance"].update(shipped_as=origin)
            )
            load_bundle(copy)
            shutil.rmtree(target, ignore_errors=True)
            copy.rename(target)
    defaults_file = models / DEFAULTS_FILE
    defaults = json.loads(defaults_file.read_text()) if defaults_file.exists() else {}
    defaults.update({kind: SHIPPED_NAMES[kind] for kind in loaded})
    defaults_file.write_text(json.dumps(defaults, indent=1, sort_keys=True) + "\n")
    return defaults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bvae", type=Path, help="the β-VAE bundle to ship as bvae_student")
    parser.add_argument("--flow", type=Path, help="the optical-flow bundle to ship as flow_student")
    args = parser.parse_args(argv)
    bundles = {kind: path for kind, path in (("bvae", args.bvae), ("flow", args.flow)) if path}
    if not bundles:
        parser.error("give --bvae BUNDLE and/or --flow BUNDLE")
    try:
        defaults = promote(bundles)
    except BundleError as err:
        print(f"promote: {err}", file=sys.stderr)
        return 1
    print(f"models/{DEFAULTS_FILE}: {json.dumps(defaults, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU per frame of each stage of `ood_detectors`' work (both shipped detectors, one shared decode),
without ROS, on the demo drive looped at 30 Hz stamps.

    PYTHONPATH=. python test/runtime/detector_stages_cpu.py [--frames N] [--back-to-back]
        [--bvae BUNDLE] [--flow BUNDLE]

Each stage is timed with time.thread_time around the same calls the node makes; paced (default)
sleeps to the next 1/30 s between frames as a camera paces the node, `--back-to-back` does not.
Not a test (pytest does not collect it): a measurement for docs/performance.md.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import cv2

from vae_ood_monitor.bundle import default_bundle, share_dir
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.stream import load_drive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--back-to-back", action="store_true", help="no sleep between frames")
    parser.add_argument("--bvae", help="β-VAE bundle folder (default: the runtime's)")
    parser.add_argument("--flow", help="flow bundle folder (default: the runtime's)")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as the detector nodes run OpenCV
    drive = load_drive(share_dir() / "demo" / "demo_fog_onset").in_distribution
    frames = [SimpleNamespace(format="jpeg", data=jpeg) for jpeg in drive]
    bvae, flow = (
        OODDetector.from_path(path or str(default_bundle(kind)), decode="shared")
        for kind, path in (("bvae", args.bvae), ("flow", args.flow))
    )
    for detector in (bvae, flow):
        detector.warm_up()
    stacker, prep = flow._stacker, flow.bundle.preprocessing
    spent: dict[str, float] = defaultdict(float)

    def timed(stage: str, call: Callable[..., Any], *call_args: Any) -> Any:
        started = time.thread_time()
        result = call(*call_args)
        spent[stage] += time.thread_time() - started
        return result

    def flow_inputs(grey: Any, stamp_ns: int) -> Any:
        """FlowStacker.push, its OpenCV steps timed apart (the flow stack: the rest)."""
        small = timed(
            "flow resize", cv2.resize, grey, (prep.width, prep.height), None, 0, 0, cv2.INTER_AREA
        )
        timed("flow CLAHE", stacker._clahe.apply, small)
        return timed("flow: grey, CLAHE, Farneback, stack", flow._inputs, grey, stamp_ns)

    started, due = time.thread_time(), time.monotonic()
    for i in range(args.frames):
        stamp_ns = i * 33_333_333 + i // len(frames) * 10**9  # a 1 s jump where the drive loops
        msg = frames[i % len(frames)]
        decoded = timed("JPEG decode (1/4, colour)", bvae.decode.decoded, msg)
        image = timed("β-VAE image", bvae.decode.image, msg, decoded)
        grey = timed("flow grey from colour", flow.decode.image, msg, decoded)
        batch = timed("β-VAE resize, float", bvae.bundle.preprocessing, image)[None]
        latents = timed("β-VAE encoder", bvae._encode, {"image": batch})
        timed("β-VAE decision", bvae.decide, timed("β-VAE score", bvae._score_latents, latents)[0])
        inputs = flow_inputs(grey, stamp_ns)
        if inputs is not None:
            batches = {name: value[None] for name, value in inputs.items()}
            latents = timed("flow encoders", flow._encode, batches)
            timed(
                "flow decision", flow.decide, timed("flow score", flow._score_latents, latents)[0]
            )
        due += 1 / 30
        if not args.back_to_back:
            time.sleep(max(0.0, due - time.monotonic()))
    # The extra resize and CLAHE above are not part of the node's work.
    total = time.thread_time() - started - spent["flow resize"] - spent["flow CLAHE"]
    print(f"CPU ms per frame, {'back to back' if args.back_to_back else 'paced at 30 Hz'}:")
    for stage, seconds in spent.items():
        print(f"  {stage:38s} {seconds / args.frames * 1000:6.3f}")
    print(f"  {'all (loop included)':38s} {total / args.frames * 1000:6.3f}")


if __name__ == "__main__":
    main()

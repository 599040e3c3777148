"""The detector nodes run OpenCV single-threaded (less CPU per frame, docs/performance.md): the
encoders' inputs must be the same pixels as with OpenCV's thread pool."""

from types import SimpleNamespace

import cv2
import numpy as np

from vae_ood_monitor.bundle import default_bundle, load_bundle, share_dir
from vae_ood_monitor.images import FrameDecoder
from vae_ood_monitor.preprocessing import FlowStacker
from vae_ood_monitor.stream import load_drive


def _inputs(threads: int, frames: list[bytes]) -> list[np.ndarray]:
    """The shipped detectors' encoder inputs for `frames` (the node's decode and preprocessing)
    with OpenCV running `threads` threads."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        bvae = load_bundle(str(default_bundle("bvae"))).preprocessing
        flow = load_bundle(str(default_bundle("flow"))).preprocessing
        colour = FrameDecoder("reduced", (bvae.width, bvae.height))
        grey = FrameDecoder("reduced", (flow.width, flow.height), grey=True)
        stacker = FlowStacker(flow)
        inputs = []
        for index, jpeg in enumerate(frames):
            message = SimpleNamespace(format="jpeg", data=jpeg)
            inputs.append(bvae(colour(message)))
            stacked = stacker.push(grey(message), index * 33_333_333)
            if stacked is not None:
                inputs.extend(stacked)
        return inputs
    finally:
        cv2.setNumThreads(previous)


def test_encoder_inputs_are_the_same_with_one_opencv_thread_or_a_pool():
    frames = load_drive(share_dir() / "demo" / "demo_fog_onset").in_distribution[:20]
    pooled, single = _inputs(4, frames), _inputs(1, frames)
    assert len(pooled) == len(single) > len(frames), "β-VAE inputs and flow stacks"
    assert all(np.array_equal(a, b) for a, b in zip(pooled, single))

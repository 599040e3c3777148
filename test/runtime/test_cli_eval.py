"""`vae-ood-monitor eval` on the shipped demo bag (fog from frame 90 of 180, 30 Hz): a thinned
camera counts its ID frames and delays in the frames it keeps, and the frame variations (the
normal table's rows) reach the detectors."""

import re

import pytest

from vae_ood_monitor.bundle import share_dir
from vae_ood_monitor.cli import main

DEMO = str(share_dir() / "demo" / "demo_fog_onset")


def _eval(capsys, *extra: str) -> tuple[int, int, str]:
    assert main(["eval", "--bag", DEMO, *extra]) == 0
    out = capsys.readouterr().out
    flagged, frames = re.search(r"flagged by the fused decision: (\d+)/(\d+)", out).groups()
    return int(flagged), int(frames), out


def test_a_thinned_camera_counts_the_frames_it_keeps(capsys):
    _, at_30, out_30 = _eval(capsys)  # the ID part before the fog
    _, at_15, out_15 = _eval(capsys, "--every", "2")
    assert (at_30, at_15) == (90, 45), "ID frames: those before the onset that the camera kept"
    for out, hz in ((out_30, 30.0), (out_15, 15.0)):
        frames, seconds = re.search(
            r"detection delay \S+: (\d+) frames \(([\d.]+) s\)", out
        ).groups()
        assert int(frames) <= 5, "the fog is stopped within a few frames of the camera's own"
        assert float(seconds) == pytest.approx(int(frames) / hz, abs=0.01)


def test_frame_variations_reach_the_detectors(capsys):
    flagged, frames, _ = _eval(capsys, "--exposure", "1.2", "--jpeg-quality", "40")
    assert flagged <= 0.05 * frames, "a normal camera change leaves the ID part in distribution"
    dark, frames, _ = _eval(capsys, "--exposure", "0.2")
    assert dark > 0.5 * frames, "darkness (beyond the table) is out of distribution"


def test_a_bad_size_is_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--bag", DEMO, "--resize", "320by240"])
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err

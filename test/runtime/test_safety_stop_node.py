"""The safety stop node's watchdog timer: every decision restarts it (each decision checks the same
things), so while decisions flow it never wakes the node. When the camera and both detectors fall
silent together — a dead camera as the safety stop sees it: no message wakes it at all — the timer
alone must stop the robot, within `timeout_s` plus one `1/rate_hz` tick."""

from __future__ import annotations

import pytest
from test_ros_graph import robot, ros_domain, safety_stop, wait_for  # noqa: F401 (fixtures)

from vae_ood_monitor.safety import SafetyConfig

RATE_HZ = 20.0  # the node's default rate_hz


@pytest.mark.parametrize("safety_stop", [{"rate_hz": RATE_HZ}], indirect=True)
def test_everything_silent_stops_within_the_timeout_and_one_tick(robot, safety_stop):  # noqa: F811
    robot.fake_decisions = {"bvae": False, "flow": False}
    wait_for(lambda: robot.estop and robot.estop[-1] is False, 20, "running")
    running = len(robot.estop)
    robot.camera_on, robot.fake_decisions = False, {}
    took = wait_for(lambda: robot.estop[-1] is True, 3, "emergency_stop after total silence")
    assert len(robot.estop) == running + 1
    # Not before the timeout; within the bar (silence → stop <= 1 s) on a loaded machine.
    assert SafetyConfig.timeout_s - 0.1 <= took <= 1.0, f"stopped {took:.2f} s after the silence"
    refused = robot.reset()
    assert not refused.success
    for source in ("camera", "bvae", "flow"):
        assert f"{source}: silent" in refused.message

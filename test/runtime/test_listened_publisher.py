"""`ListenedPublisher`: sends nothing while no one listens, and a subscriber that joins gets every
message from its first on (two real DDS participants)."""

from __future__ import annotations

import os
import time

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Float32
from support import spinning
from test_ros_graph import ros_domain, wait_for  # noqa: F401 (ros_domain: a fixture)

from vae_ood_monitor.nodes.common import RELIABLE_QOS, ListenedPublisher

TOPIC = "/listened_publisher_test/score"


def test_publishes_once_a_subscriber_listens_and_stops_when_it_leaves():
    node = Node(f"listened_{os.getpid()}")
    publisher = ListenedPublisher(node, Float32, TOPIC, RELIABLE_QOS)
    sent = []
    real_publish = publisher._publisher.publish  # counts what reaches DDS; still publishes
    publisher._publisher.publish = lambda msg: (sent.append(msg.data), real_publish(msg))
    publisher.publish(Float32(data=-1.0))
    assert sent == []  # no one listens: nothing built or sent
    # The subscriber is another participant (its own context), as the safety stop or a recorder.
    context = Context()
    rclpy.init(context=context)
    received: list[float] = []
    try:
        listener = Node(f"listener_{os.getpid()}", context=context)
        listener.create_subscription(
            Float32, TOPIC, lambda m: received.append(m.data), RELIABLE_QOS
        )
        with spinning(listener, SingleThreadedExecutor(context=context)):
            value = 0.0
            deadline = time.monotonic() + 10.0
            while not received and time.monotonic() < deadline:
                publisher.publish(Float32(data=value))
                value += 1.0
                time.sleep(0.02)
            assert received, "the subscriber never received a message"
            first = len(sent)
            expected = [1000.0 + extra for extra in range(20)]
            for value in expected:
                publisher.publish(Float32(data=value))
                time.sleep(0.02)  # a camera's pace: the subscriber's keep-last 10 never overflows
            assert sent[first:] == expected  # every one sent while the subscriber listens ...
            wait_for(lambda: received[-20:] == expected, 10.0, "every message sent")  # ... and got
    finally:
        rclpy.shutdown(context=context)
    time.sleep(ListenedPublisher.RECOUNT_S + 0.5)  # the subscriber is gone: recounted
    deadline = time.monotonic() + 10.0
    before = len(sent)
    while time.monotonic() < deadline:
        publisher.publish(Float32(data=-2.0))
        if len(sent) == before:
            break
        before = len(sent)
        time.sleep(ListenedPublisher.RECOUNT_S)
    assert len(sent) == before, "still publishing with no one listening"
    node.destroy_node()

"""Reading camera topics from real ROS 1 and ROS 2 bags, and one-line errors for bad bags."""

import numpy as np
import pytest
from rosbags import rosbag2
from rosbags.typesys import Stores, get_typestore
from support import FPS, START_NS, write_ros1_bag, write_ros2_bag

from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC, BagError, image_topics, read_camera_messages
from vae_ood_monitor.images import decode_message


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_ros2_raw_images_read_back_bit_identical(tmp_path, frames, storage):
    bag = write_ros2_bag(tmp_path / "bag", frames, compressed=False, storage=storage)
    messages = list(read_camera_messages(bag))
    assert [m.index for m in messages] == list(range(len(frames)))
    assert messages[0].stamp_ns == START_NS
    assert messages[1].stamp_ns - messages[0].stamp_ns == round(1e9 / FPS)
    for message, rgb in zip(messages, frames):
        assert np.array_equal(decode_message(message.msg), rgb)


def test_ros1_bag_is_read_with_its_only_image_topic(tmp_path, frames):
    bag = write_ros1_bag(tmp_path / "drive.bag", frames)
    assert image_topics(bag) == {"/duckiebot/camera_node/image/raw": "sensor_msgs/msg/Image"}
    messages = list(read_camera_messages(bag))
    assert len(messages) == len(frames)
    assert np.array_equal(decode_message(messages[-1].msg), frames[-1])


def test_missing_bag(tmp_path):
    with pytest.raises(BagError, match=r"nothere: no such bag"):
        list(read_camera_messages(tmp_path / "nothere"))


def test_unknown_topic_lists_the_image_topics(tmp_path, frames):
    bag = write_ros2_bag(tmp_path / "bag", frames)
    with pytest.raises(BagError, match=rf"no image topic '/front/image'.*{DEFAULT_CAMERA_TOPIC}"):
        list(read_camera_messages(bag, "/front/image"))


def test_several_image_topics_need_a_choice(tmp_path):
    typestore = get_typestore(Stores.ROS2_KILTED)
    with rosbag2.Writer(
        tmp_path / "stereo", version=9, storage_plugin=rosbag2.StoragePlugin.MCAP
    ) as writer:
        for topic in ("/left/image", "/right/image"):
            writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=typestore)
    with pytest.raises(
        BagError, match="several image topics, choose one with --topic: /left/image, /right/image"
    ):
        list(read_camera_messages(tmp_path / "stereo"))
    assert list(read_camera_messages(tmp_path / "stereo", "/left/image")) == []


def test_truncated_mcap_names_the_bag(tmp_path, frames):
    bag = write_ros2_bag(tmp_path / "bag", frames)
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(BagError, match=r"bag: (not a readable ROS bag|damaged bag)"):
        list(read_camera_messages(bag))


def test_truncated_ros1_bag_names_the_bag(tmp_path, frames):
    bag = write_ros1_bag(tmp_path / "drive.bag", frames)
    bag.write_bytes(bag.read_bytes()[:3000])
    with pytest.raises(BagError, match=r"drive.bag: (not a readable ROS bag|damaged bag)"):
        list(read_camera_messages(bag))


def test_not_a_bag_at_all(tmp_path):
    junk = tmp_path / "notes.bag"
    junk.write_text("this is not a bag\n")
    with pytest.raises(BagError, match="notes.bag: not a readable ROS bag"):
        list(read_camera_messages(junk))

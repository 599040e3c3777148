"""Importing real recordings (ROS 1/2 bags, image folders, videos) into the episode format."""

import cv2
import numpy as np
import pytest
from support import START_NS, synthetic_frames, write_ros1_bag, write_ros2_bag

from training.data.episodes import read_episode_info
from training.data.import_recording import RecordingError, import_recording, main
from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC, image_topics, read_camera_messages
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.images import decode_message


def _episode_images(path):
    return [decode_message(m.msg) for m in read_camera_messages(path)]


def _assert_close(images, frames, tolerance=4.0):
    assert len(images) == len(frames)
    for image, rgb in zip(images, frames):
        assert image.shape == rgb.shape
        assert np.abs(image.astype(int) - rgb).mean() < tolerance


def test_ros1_raw_bag_round_trips_with_stamps(tmp_path, frames):
    source = write_ros1_bag(tmp_path / "duckiebot.bag", frames)
    info = import_recording(source, tmp_path / "episode", progress=False)
    episode = tmp_path / "episode"
    assert info.frames == len(frames) and (info.width, info.height) == (160, 120)
    assert image_topics(episode) == {DEFAULT_CAMERA_TOPIC: "sensor_msgs/msg/CompressedImage"}
    messages = list(read_camera_messages(episode))
    assert messages[0].stamp_ns == START_NS
    _assert_close(_episode_images(episode), frames)
    labels = read_ground_truth(episode)
    assert [label.ood for label in labels] == [False] * len(frames)
    assert [label.stamp_ns for label in labels] == [m.stamp_ns for m in messages]


def test_ros2_compressed_bag_labelled_ood_from_onset(tmp_path, frames):
    source = write_ros2_bag(tmp_path / "bag", frames, topic="/robot/camera/compressed")
    import_recording(
        source,
        tmp_path / "episode",
        label="ood",
        onset_frame=5,
        scenario="snowstorm",
        progress=False,
    )
    labels = read_ground_truth(tmp_path / "episode")
    assert [label.ood for label in labels] == [False] * 5 + [True] * (len(frames) - 5)
    assert {label.scenario for label in labels} == {"snowstorm"}
    assert read_episode_info(tmp_path / "episode").onset_frame == 5


def test_image_folder_in_name_order_at_fps(tmp_path, frames):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    import_recording(folder, tmp_path / "episode", fps=10, progress=False)
    messages = list(read_camera_messages(tmp_path / "episode"))
    assert messages[1].stamp_ns - messages[0].stamp_ns == 100_000_000
    _assert_close(_episode_images(tmp_path / "episode"), frames)


def test_video_file_with_resize(tmp_path):
    frames = synthetic_frames(15, width=320, height=240)
    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    info = import_recording(video, tmp_path / "episode", size=(160, 120), progress=False)
    assert info.fps == pytest.approx(15)
    expected = [cv2.resize(rgb, (160, 120), interpolation=cv2.INTER_AREA) for rgb in frames]
    _assert_close(_episode_images(tmp_path / "episode"), expected, tolerance=6.0)


def test_empty_image_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match=r"empty: no images"):
        import_recording(tmp_path / "empty", tmp_path / "episode", progress=False)
    assert not (tmp_path / "episode").exists()


def test_unreadable_jpeg_in_folder_names_the_file_and_leaves_nothing(tmp_path, frames):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), frames[0])
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(RecordingError, match=r"b\.jpg: unreadable image"):
        import_recording(folder, tmp_path / "episode", progress=False)
    assert not (tmp_path / "episode").exists()


def test_unreadable_jpeg_in_bag_names_bag_and_frame(tmp_path, frames):
    source = write_ros2_bag(tmp_path / "bag", frames)
    # rewrite the bag with one corrupt JPEG payload
    from rosbags import rosbag2
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    broken = tmp_path / "broken"
    with rosbag2.Writer(broken, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(
            DEFAULT_CAMERA_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=typestore
        )
        for message in read_camera_messages(source):
            msg = message.msg
            if message.index == 4:
                msg.data = np.frombuffer(b"\xff\xd8 truncated", np.uint8)
            writer.write(
                connection, message.log_time_ns, typestore.serialize_cdr(msg, message.msgtype)
            )
    with pytest.raises(RecordingError, match=r"broken: frame 4 .*unreadable compressed image"):
        import_recording(broken, tmp_path / "episode", progress=False)
    assert not (tmp_path / "episode").exists()


def test_cli_reports_missing_source_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.bag"), "--out", str(tmp_path / "episode")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"import: {tmp_path / 'missing.bag'}: no such file or folder"


def test_cli_reports_unknown_topic(tmp_path, frames, capsys):
    source = write_ros1_bag(tmp_path / "duckiebot.bag", frames)
    assert main([str(source), "--out", str(tmp_path / "episode"), "--topic", "/nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert "duckiebot.bag: no image topic '/nope'" in err and "\n" not in err


def test_refuses_to_overwrite(tmp_path, frames):
    source = write_ros1_bag(tmp_path / "duckiebot.bag", frames)
    (tmp_path / "episode").mkdir()
    with pytest.raises(RecordingError, match="exists already"):
        import_recording(source, tmp_path / "episode", progress=False)

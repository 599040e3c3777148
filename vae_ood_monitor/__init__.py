"""Onboard runtime of vae_ood_monitor: numpy, OpenCV, ONNX Runtime, rosbags and rclpy only.

Nothing in this package may import torch or scikit-learn: it has to fit a 2 GB Jetson Nano.
"""

__version__ = "0.1.0"

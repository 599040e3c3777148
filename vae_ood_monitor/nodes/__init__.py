"""Thin rclpy nodes over the plain modules of vae_ood_monitor (logic is tested without DDS)."""

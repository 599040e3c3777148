"""ament_python package: colcon on robots with distro ROS 2, pip in the x86_64 dev venv."""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "vae_ood_monitor"


def share_files(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing `folder` (recursively) under share/<package>/."""
    entries: dict[str, list[str]] = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            entries.setdefault(str(Path("share", PACKAGE, path.parent)), []).append(str(path))
    return list(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_files("launch"),
        *share_files("config"),
        *share_files("models"),
        *share_files("demo"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vae_ood_monitor developers",
    maintainer_email="vae-ood-monitor@example.com",
    description="Onboard VAE-based out-of-distribution monitor with a latched safety stop.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "vae-ood-monitor = vae_ood_monitor.cli:main",
            "bvae_detector = vae_ood_monitor.nodes.detector:main_bvae",
            "flow_detector = vae_ood_monitor.nodes.detector:main_flow",
            "ood_detectors = vae_ood_monitor.nodes.detector:main_detectors",
            "safety_stop = vae_ood_monitor.nodes.safety_stop:main",
            "bag_player = vae_ood_monitor.nodes.bag_player:main",
            "live_view = vae_ood_monitor.nodes.live_view:main",
        ],
    },
)

"""ament_python build for centernet_ros (works with colcon on Humble/Jazzy/Kilted and with pip)."""

import os
from glob import glob

from setuptools import setup

package_name = "centernet_ros"
HERE = os.path.dirname(os.path.abspath(__file__))
SHARE = os.path.join("share", package_name)


def _share_tree(subdir: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing every file under `subdir` into share/centernet_ros/<subdir>.

    The directory layout is kept (one entry per directory). Paths are relative to this file's
    directory, as setuptools expects; the globbing happens at build time, so new launch/config/model
    files are picked up without editing this file.
    """
    by_dir: dict[str, list[str]] = {}
    for rel in sorted(glob(os.path.join(subdir, "**", "*"), root_dir=HERE, recursive=True)):
        if not os.path.isfile(os.path.join(HERE, rel)):
            continue
        if "__pycache__" in rel.split(os.sep) or rel.endswith((".pyc", ".gitkeep")):
            continue
        by_dir.setdefault(os.path.dirname(rel), []).append(rel)
    return [(os.path.join(SHARE, d), files) for d, files in sorted(by_dir.items())]


setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name, f"{package_name}.ros"],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (SHARE, ["package.xml"]),
        *_share_tree("launch"),
        *_share_tree("config"),
        *_share_tree("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="centernet_ros developers",
    maintainer_email="centernet-ros@example.com",
    description="CenterNet keypoint-triplet detector (ResNet-18) as a batched ROS 2 perception node",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # ROS executables: SIGINT / SIGTERM handled before the heavy imports (centernet_ros/ros/entry.py)
            "centernet-detector = centernet_ros.ros.entry:detector",
            "centernet-video-publisher = centernet_ros.ros.entry:video_publisher",
            "centernet-demo = centernet_ros.ros.entry:demo",
            "centernet-train = centernet_ros.train:main",
            "centernet-eval = centernet_ros.evaluate:main",
            "centernet-export = centernet_ros.export:main",
            "centernet-pack-data = centernet_ros.pack_data:main",
            "centernet-fit-size = centernet_ros.size_fit:main",
        ],
    },
)

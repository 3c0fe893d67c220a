"""Where the package's data files are (``config/``, ``models/``): under its ament share directory
when installed with colcon, else in the source tree this module belongs to (``pip install -e .`` / a checkout).

Used by the launch files and ``centernet-demo`` (default parameter files), the node (the bundled model), the
video publisher (the bundled clip) and the Fast DDS profile lookup. Nothing here imports rclpy.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGE", "package_file"]

PACKAGE = "centernet_ros"


def package_file(*parts: str) -> Path:
    """``<share>/centernet_ros/<parts...>`` when the package is installed through ament and has that file, else
    ``<source tree>/<parts...>`` (returned whether or not it exists: callers say what is missing in their
    own terms); e.g. ``package_file("config", "detect.yaml")``. Raises ``ValueError`` without ``parts``."""
    if not parts:
        raise ValueError("package_file() needs a path inside the package, e.g. ('config', 'detect.yaml')")
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)).joinpath(*parts)
        if installed.is_file():
            return installed
    except Exception:  # not installed through ament (plain pip / source checkout)
        pass
    return Path(__file__).resolve().parents[2].joinpath(*parts)

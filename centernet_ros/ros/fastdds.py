"""The Fast DDS profile for camera frames between processes on one host: its path and the environment
that applies it (``config/fastdds_large_frames.xml``; why and the measurements: README, "Large images
between processes").

The profile only takes effect in a process whose participant is created after the variable is set
(before ``rclpy.init``), and must be given to the camera driver: Fast DDS sends same-host samples
through the *writer's* shared-memory segment.  ``python -m centernet_ros.ros.fastdds`` prints the path
(``export FASTDDS_DEFAULT_PROFILES_FILE=$(python -m centernet_ros.ros.fastdds)``).  Nothing here imports rclpy.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

__all__ = ["PROFILE_FILE", "PROFILE_VARIABLES", "apply_fastdds_profile", "fastdds_profile_path", "profile_variable",
           "with_fastdds_profile"]

PACKAGE = "centernet_ros"
PROFILE_FILE = "fastdds_large_frames.xml"
# Fast DDS 3 (Jazzy, Kilted) reads the first (the second still works there, with a deprecation warning from
# rmw_fastrtps in every process), Fast DDS 2.6 (Humble) only the second.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def fastdds_profile_path() -> Path:
    """``<share>/centernet_ros/config/fastdds_large_frames.xml`` when installed, else the source tree's
    ``config/`` copy. Raises ``FileNotFoundError`` (quoting the path) when neither exists."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)) / "config" / PROFILE_FILE
        if installed.is_file():
            return installed
    except Exception:  # not installed through ament (plain pip / source checkout)
        pass
    path = Path(__file__).resolve().parents[2] / "config" / PROFILE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Fast DDS profile not found: {path}")
    return path


def profile_variable(env: Mapping[str, str] | None = None) -> str:
    """The variable this ROS distribution's Fast DDS reads: ``FASTRTPS_DEFAULT_PROFILES_FILE`` on Humble
    (``ROS_DISTRO``), else ``FASTDDS_DEFAULT_PROFILES_FILE``."""
    distro = (os.environ if env is None else env).get("ROS_DISTRO", "")
    return PROFILE_VARIABLES[1] if distro == "humble" else PROFILE_VARIABLES[0]


def with_fastdds_profile(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) in which :func:`profile_variable` names the project's
    profile, unless the user set either of :data:`PROFILE_VARIABLES` (their profile is kept)."""
    out = dict(os.environ if env is None else env)
    if not any(out.get(k) for k in PROFILE_VARIABLES):
        out[profile_variable(out)] = str(fastdds_profile_path())
    return out


def apply_fastdds_profile(env: MutableMapping[str, str] | None = None) -> None:
    """Set the profile in ``env`` (default: this process's ``os.environ``) as :func:`with_fastdds_profile`
    does; call before ``rclpy.init`` for it to apply to this process."""
    target = os.environ if env is None else env
    for key, value in with_fastdds_profile(target).items():
        if target.get(key) != value:
            target[key] = value


if __name__ == "__main__":
    print(fastdds_profile_path())
    sys.exit(0)

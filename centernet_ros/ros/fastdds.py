"""The Fast DDS profile for camera frames between processes on one host: its path and the environment
that applies it (``config/fastdds_large_frames.xml``; why and the measurements: README, "Large images
between processes").

The profile only takes effect in a process whose participant is created after the variable is set
(before ``rclpy.init``), and must be given to the camera driver: Fast DDS sends same-host samples
through the *writer's* shared-memory segment.  ``python -m centernet_ros.ros.fastdds`` prints the path
(``export FASTDDS_DEFAULT_PROFILES_FILE=$(python -m centernet_ros.ros.fastdds)``).  Nothing here imports rclpy.

Who applies it: detect.launch.py and demo.launch.py give it to the processes they start (launch argument
``fastdds_profile``, :func:`launch_argument_env`), ``centernet-demo`` to itself (:func:`apply_fastdds_profile`).
``centernet-detector`` started on its own does not set it: it reads camera frames (the writer's segment
is what counts) and publishes large samples only when someone watches its annotated images.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from .package_files import package_file

__all__ = ["AUTO", "LAUNCH_ARGUMENT_HELP", "PROFILE_FILE", "PROFILE_VARIABLES", "apply_fastdds_profile",
           "fastdds_profile_path", "launch_argument_env", "launch_profile_env", "profile_variable",
           "with_fastdds_profile"]

PROFILE_FILE = "fastdds_large_frames.xml"
# Fast DDS 3 (Jazzy, Kilted) reads the first (the second still works there, with a deprecation warning from
# rmw_fastrtps in every process), Fast DDS 2.6 (Humble) only the second.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
AUTO = "auto"  # launch argument fastdds_profile: the project's profile unless the user named one
LAUNCH_ARGUMENT_HELP = ("Fast DDS XML profile of the started processes: auto = the package's "
                        "config/fastdds_large_frames.xml (large camera frames between processes) unless "
                        "FASTDDS_DEFAULT_PROFILES_FILE or FASTRTPS_DEFAULT_PROFILES_FILE is set; a path; '' = none")


def fastdds_profile_path() -> Path:
    """``<share>/centernet_ros/config/fastdds_large_frames.xml`` when installed, else the source tree's
    ``config/`` copy (:func:`~centernet_ros.ros.package_files.package_file`). Raises ``FileNotFoundError``
    (quoting the path) when neither exists."""
    path = package_file("config", PROFILE_FILE)
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


def launch_profile_env(choice: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a launch file adds to the environment (``env``, default ``os.environ``) of the
    processes it starts, for its launch argument ``fastdds_profile:=<choice>``:

    - :data:`AUTO` (the default): the project's profile under :func:`profile_variable`, unless the user
      set either of :data:`PROFILE_VARIABLES` (``{}``: their profile applies);
    - ``''``: ``{}``, nothing added (Fast DDS's built-in transports, or the profile the environment names);
    - a path: that file (made absolute) under :func:`profile_variable`, whatever the environment names.

    Raises ``FileNotFoundError`` quoting ``choice`` when the path is not a file.
    """
    env = os.environ if env is None else env
    choice = choice.strip()
    if choice == "":
        return {}
    if choice == AUTO:
        return {} if any(env.get(k) for k in PROFILE_VARIABLES) else {profile_variable(env): str(fastdds_profile_path())}
    path = Path(choice).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"fastdds_profile:={choice!r}: no such file (a Fast DDS XML profile, "
                                f"'{AUTO}' or '' expected)")
    return {profile_variable(env): str(path.resolve())}


def launch_argument_env(context) -> dict[str, str]:
    """:func:`launch_profile_env` for the launch argument ``fastdds_profile`` of a launch file being run
    (``context``: launch's ``LaunchContext``; the environment is the launch's own). Raises ``ValueError``
    quoting the argument when its path is not a file (launch reports it and starts nothing)."""
    from launch.substitutions import LaunchConfiguration

    choice = LaunchConfiguration("fastdds_profile").perform(context)
    try:
        return launch_profile_env(choice, getattr(context, "environment", os.environ))
    except FileNotFoundError as exc:
        raise ValueError(f"launch argument {exc}") from None


if __name__ == "__main__":
    print(fastdds_profile_path())
    sys.exit(0)

"""Console-script entry points of the ROS executables (``centernet-detector``, ``centernet-video-publisher``,
``centernet-demo``).

Each one installs the SIGINT / SIGTERM handling of :mod:`.stop` before anything heavy is imported
(torch, rclpy, OpenCV: seconds on a busy CPU), so that a Ctrl-C or ``ros2 launch`` shutting down at
any moment, imports included, ends the process with exit status 0 and no traceback. This module and
:mod:`.stop` import only the standard library.
"""
from __future__ import annotations

import importlib

from .stop import Interrupted, StopSignals

__all__ = ["detector", "video_publisher", "demo"]


def _run(module: str) -> int:
    stop = StopSignals.install()
    try:
        main = importlib.import_module(module).main
        return main(stop=stop)  # cleans up and returns 0 itself when a signal interrupts its start-up
    except Interrupted:  # during the imports, or before main's own try
        return 0
    finally:
        stop.exiting()


def detector() -> int:
    """``centernet-detector``: :func:`centernet_ros.ros.node.main`."""
    return _run("centernet_ros.ros.node")


def video_publisher() -> int:
    """``centernet-video-publisher``: :func:`centernet_ros.ros.video_publisher.main`."""
    return _run("centernet_ros.ros.video_publisher")


def demo() -> int:
    """``centernet-demo``: :func:`centernet_ros.ros.demo.main`."""
    return _run("centernet_ros.ros.demo")

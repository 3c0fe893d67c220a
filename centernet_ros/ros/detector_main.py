"""The ``centernet-detector`` process around one :class:`.node.DetectorNode`: rclpy up, the node
configured and activated (``autostart``), spun until a signal or the lifecycle ``shutdown``
transition, then everything torn down in order.

The console script (``centernet-detector``, :mod:`.entry`) and ``python -m centernet_ros.ros.node`` both
come here (:func:`centernet_ros.ros.node.main` calls :func:`main`).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import rclpy
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from .node import DetectorNode
from .stop import Interrupted, StopSignals, quietly

__all__ = ["main"]

PROG = "centernet-detector"


def main(args: list[str] | None = None, *, stop: Any = None) -> int:
    """Console script ``centernet-detector [--ros-args --params-file config/detect.yaml ...]``.

    ``args``: the command line (default ``sys.argv``), ROS arguments after ``--ros-args``. Exit status 0
    after SIGINT / SIGTERM at any moment, imports and start-up included (``stop``: the
    :class:`.stop.StopSignals` that the console script installed first; installed here when None), and
    after the lifecycle ``shutdown`` transition (``ros2 lifecycle set <node> shutdown``); 2 on invalid
    parameters (one line on stderr naming them)."""
    stop = stop or StopSignals.install()
    node: DetectorNode | None = None
    executor = None
    try:
        # rclpy's handlers would raise KeyboardInterrupt anywhere (see .stop): ours stay installed
        rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
        try:
            node = DetectorNode()
        except (InvalidParameterTypeException, InvalidParameterValueException, ValueError) as exc:
            print(f"{PROG}: invalid parameters: {exc}", file=sys.stderr)
            return 2
        autostart = bool(node.get_parameter("autostart").value)
        node.get_logger().debug(f"started (pid {os.getpid()}, autostart={autostart})")
        if autostart:
            node.autostart()
        stop.running()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.requested and node.state != "finalized":
            executor.spin_once(timeout_sec=0.1)  # a signal sets stop.requested; seen within 0.1 s
        if node.state == "finalized":
            end = time.monotonic() + 0.3  # the shutdown transition's response on its way before the node goes
            while time.monotonic() < end and not stop.requested:
                executor.spin_once(timeout_sec=0.05)
            node.get_logger().info("finalized: exiting")
    except (Interrupted, ExternalShutdownException):
        pass
    finally:
        stop.running()  # from here on a signal is only counted
        if node is not None and stop.requested:
            quietly(PROG, "logging", lambda: node.get_logger().info(f"{stop.name}: shutting down"))
        if node is not None:
            quietly(PROG, "stopping the node", node.close)
        if executor is not None:
            quietly(PROG, "executor shutdown", executor.shutdown)
        if node is not None:
            quietly(PROG, "destroy_node", node.destroy_node)
        quietly(PROG, "rclpy shutdown", rclpy.try_shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

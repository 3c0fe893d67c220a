"""Shared pytest set-up: ROS 2 isolation and fixtures for tests that use a real ROS graph.

Isolation (done at import time, before any test module can import rclpy, so it also holds for
processes the tests start):

- ``RMW_IMPLEMENTATION=rmw_fastrtps_cpp``: the middleware the wheels and the docs assume.
- ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: discovery never leaves this machine
  (on Humble, which predates it: ``ROS_LOCALHOST_ONLY=1``).
- ``ROS_DOMAIN_ID`` in 1..100 derived from the pytest process id, so concurrent test runs on
  one machine (and a ROS system running beside them) do not see each other's topics.
  ``CENTERNET_TEST_ROS_DOMAIN_ID`` overrides the choice.
- SIGINT not ignored: a run started in the background by a non-interactive shell (``bash .ci/run &``)
  inherits SIGINT ignored, and so would every process the tests start (an ignored signal stays
  ignored across exec): ``ros2 launch`` would then never see the tests' Ctrl-C. Python's default
  handler is installed instead (a handler, unlike an ignore, is reset to the default on exec).

Fixtures for ROS tests (each skips the test with the reason when rclpy cannot be imported, so
the ROS-free core tests run anywhere):

- ``ros_domain_id`` -> int: the domain of this run (pass it to subprocesses that set env).
- ``rclpy_context`` -> ``rclpy.context.Context``: initialised per test, shut down afterwards.
- ``make_node(name, **kwargs)`` -> ``rclpy.node.Node`` in that context; destroyed afterwards.
- ``spin_until(predicate, *nodes, timeout=10.0)`` -> bool: spins the nodes in one executor
  until ``predicate()`` is true (True) or the timeout passes (False, after one last check).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest


def _pick_domain_id() -> int:
    override = os.environ.get("CENTERNET_TEST_ROS_DOMAIN_ID")
    if override is not None:
        value = int(override)
        if not 0 <= value <= 232:
            raise ValueError(f"CENTERNET_TEST_ROS_DOMAIN_ID must be in 0..232, got {override!r}")
        return value
    return 1 + os.getpid() % 100


ROS_DOMAIN_ID = _pick_domain_id()
os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(ROS_DOMAIN_ID)
os.environ.pop("ROS_STATIC_PEERS", None)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if os.environ.get("ROS_DISTRO") == "humble":
    # Humble predates ROS_AUTOMATIC_DISCOVERY_RANGE; its way to stay on this machine
    os.environ["ROS_LOCALHOST_ONLY"] = "1"
else:
    # deprecated (Jazzy) / removed (Kilted) predecessor of the discovery range
    os.environ.pop("ROS_LOCALHOST_ONLY", None)


def import_rclpy_or_skip():
    """Return the rclpy module, or skip the calling test with the import error as the reason."""
    try:
        import rclpy
    except ImportError as exc:  # no ROS 2 (wheels or distribution) in this interpreter
        pytest.skip(f"ROS 2 test: rclpy is not importable ({exc}); run `make test` to install it")
    return rclpy


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    return ROS_DOMAIN_ID


@pytest.fixture
def rclpy_context() -> Iterator[object]:
    rclpy = import_rclpy_or_skip()
    from rclpy.context import Context

    context = Context()
    rclpy.init(args=[], context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def make_node(rclpy_context) -> Iterator[Callable[..., object]]:
    from rclpy.node import Node

    nodes: list[Node] = []

    def _make(name: str, **kwargs) -> Node:
        node = Node(name, context=rclpy_context, **kwargs)
        nodes.append(node)
        return node

    yield _make
    for node in reversed(nodes):
        node.destroy_node()


@pytest.fixture
def spin_until(rclpy_context) -> Iterator[Callable[..., bool]]:
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=rclpy_context)

    def _spin(predicate: Callable[[], bool], *nodes, timeout: float = 10.0) -> bool:
        for node in nodes:
            if node not in executor.get_nodes():
                executor.add_node(node)
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bool(predicate())
            executor.spin_once(timeout_sec=min(0.05, remaining))
        return True

    yield _spin
    executor.shutdown()

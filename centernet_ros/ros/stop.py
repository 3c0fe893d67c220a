"""Clean ends on SIGINT and SIGTERM for the console scripts: exit status 0 and no traceback, whenever
the signal comes (imports, start-up, streaming, clean-up) and however many come.

Why not rclpy's own handlers: they shut the context down and then raise ``KeyboardInterrupt`` wherever
the main thread happens to be (a thread join in ``destroy_node``, ``rclpy.try_shutdown``, an import),
and SIGTERM ends the process with -15. ``ros2 launch`` sends each node SIGINT on shutdown (a terminal's
Ctrl-C reaches the node as well: two SIGINTs), SIGTERM 5 s later and SIGKILL 5 s after that.

:class:`StopSignals` replaces both handlers (pass ``signal_handler_options=SignalHandlerOptions.NO``
to ``rclpy.init`` so that rclpy keeps them) and works in two phases:

- *start-up* (imports, node construction, configure/activate: seconds of work that cannot poll a flag):
  the first signal raises :class:`Interrupted` out of whatever runs; the console script catches it,
  cleans up what exists and returns 0;
- *running* (after :meth:`StopSignals.running`): a signal only sets :attr:`StopSignals.requested`,
  which the spin loop (``spin_once`` with a timeout) checks.

After the first signal nothing is raised any more: the clean-up that follows cannot be interrupted.
:meth:`StopSignals.exiting` finally ignores both signals while the interpreter shuts down.
"""
from __future__ import annotations

import signal
import sys
from typing import Any, Callable

__all__ = ["Interrupted", "StopSignals", "quietly"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised by the first SIGINT / SIGTERM during start-up (a BaseException, like KeyboardInterrupt,
    so that ``except Exception`` in library code does not swallow it)."""


class StopSignals:
    """SIGINT / SIGTERM handler of a console script (see the module docstring). Install it first thing
    (:meth:`install`); it must run in the main thread."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal's number
        self.count = 0  # signals received so far
        self._raise = True

    @classmethod
    def install(cls) -> "StopSignals":
        """Handle SIGINT and SIGTERM from now on (start-up phase)."""
        stop = cls()
        for sig in SIGNALS:
            signal.signal(sig, stop._handle)
        return stop

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum
            if self._raise:
                self._raise = False
                raise Interrupted(signal.Signals(signum).name)

    def running(self) -> None:
        """Start-up is over: from now on a signal only sets :attr:`requested`. Call it inside the
        ``try`` that catches :class:`Interrupted` (a signal may still raise until it returns)."""
        self._raise = False

    def exiting(self) -> None:
        """The console script is about to return: ignore SIGINT / SIGTERM from now on. Python resets the
        handlers it set to the default action early in interpreter finalization (but leaves ignored ones
        ignored), so a late signal (launch's second SIGINT) would otherwise kill the exiting process (-2)."""
        self._raise = False
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    @property
    def requested(self) -> bool:
        """True once a SIGINT or SIGTERM came."""
        return self.received is not None

    @property
    def name(self) -> str:
        """The first signal's name (``SIGINT``), empty when none came."""
        return signal.Signals(self.received).name if self.received is not None else ""


def quietly(prog: str, what: str, fn: Callable[[], Any]) -> None:
    """Run one clean-up step; an error is printed as one line ``<prog>: <what>: <error>`` on stderr
    instead of a traceback (clean-up after an interrupted start-up may meet half-made objects)."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - reported, and the other clean-up steps still run
        print(f"{prog}: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)

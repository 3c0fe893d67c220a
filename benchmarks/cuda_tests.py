#!/usr/bin/env python3
"""Every test that needs CUDA (``pytest -k cuda`` over ``test/``), with a Markdown report.

On a CPU machine these tests skip ("CUDA not available"); on a GPU machine this runs them all: the
``DEVICES``-parametrised tensor tests (decode, pools, box ops, preprocessing, targets, losses, the
detector), ``test_decode.py::test_cuda_matches_cpu`` and ``test_gpu_paths.py`` (fp16, channels_last,
torch.compile / CUDA graphs).  Collection carries on past modules that cannot be imported (no ROS, no
pycocotools on a GPU machine): those are listed, and count as a failure only when the file mentions CUDA.

Exit status: 1 when a test failed, a CUDA-mentioning file did not import, or (``--require-cuda``)
nothing ran or a test skipped for lack of CUDA; else 0.  Used by ``benchmarks/gpu_check.sh``.

Example::

    python3 benchmarks/cuda_tests.py --require-cuda --junitxml out/gpu_check/cuda_tests.xml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _Collect:
    """pytest plugin: outcome of every selected test and every module that failed to import."""

    def __init__(self) -> None:
        self.results: dict[str, tuple[str, str]] = {}  # nodeid -> (outcome, reason)
        self.collect_errors: list[tuple[str, str]] = []

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.collect_errors.append((report.nodeid, str(report.longrepr).strip().splitlines()[-1][:200]))

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.results[report.nodeid] = ("skipped", reason.removeprefix("Skipped: "))
        elif report.failed:
            self.results[report.nodeid] = ("failed", f"{report.when}: " + str(report.longrepr).strip().splitlines()[-1][:200])
        elif report.when == "call":
            self.results[report.nodeid] = ("passed", "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--require-cuda", action="store_true", help="fail when nothing ran or a test skipped for lack of CUDA")
    p.add_argument("--junitxml", type=Path, default=None, help="also write pytest's JUnit XML here")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)
    import pytest

    plugin = _Collect()
    cmd = ["-q", "-k", "cuda", "--continue-on-collection-errors", "-p", "no:cacheprovider", "-rN",
           str(REPO / "test"), *args.pytest_args]
    if args.junitxml is not None:
        args.junitxml.parent.mkdir(parents=True, exist_ok=True)
        cmd += [f"--junitxml={args.junitxml}"]
    rc = pytest.main(cmd, plugins=[plugin])
    res = plugin.results
    count = {k: sum(1 for o, _ in res.values() if o == k) for k in ("passed", "failed", "skipped")}
    no_cuda = [n for n, (o, r) in res.items() if o == "skipped" and "cuda" in r.lower()]
    relevant = [(n, e) for n, e in plugin.collect_errors
                if n and (REPO / n).is_file() and "cuda" in (REPO / n).read_text(errors="replace").lower()]
    lines = ["## CUDA tests (`pytest -k cuda test/`)", "",
             f"passed {count['passed']}, failed {count['failed']}, skipped {count['skipped']} "
             f"(for lack of CUDA: {len(no_cuda)}); modules not imported: {len(plugin.collect_errors)} "
             f"(mentioning CUDA: {len(relevant)}); pytest exit status {int(rc)}", "",
             "| test | outcome | reason |", "| --- | --- | --- |"]
    lines += [f"| `{n}` | {o} | {r.replace('|', '/')} |" for n, (o, r) in sorted(res.items())]
    lines += [f"| `{n}` | not imported | {e.replace('|', '/')} |" for n, e in plugin.collect_errors]
    print("\n".join(lines))
    failed = count["failed"] > 0 or bool(relevant)
    if args.require_cuda and (count["passed"] == 0 or no_cuda):
        print("\nerror: --require-cuda: " + ("no test ran" if count["passed"] == 0 else
                                            f"{len(no_cuda)} tests skipped for lack of CUDA"), file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Lay out the colcon-style install prefix of centernet_ros in the venv (``make setup`` step 6).

    python .ci/dev_prefix.py --root <repo> --prefix <venv>/ament_dev_prefix --bin <venv>/bin

What ``colcon build --symlink-install`` installs for an ament_python package, from setup.py itself:

- every ``data_files`` entry of setup.py (share/centernet_ros/package.xml, launch/, config/, models/,
  the ament index marker share/ament_index/resource_index/packages/centernet_ros) as a symlink of
  the working tree's *file* in a real directory: ros2launch and ament_index look for files in
  share/<package>/ and do not follow links of whole directories;
- ``lib/centernet_ros/<console script>`` for every console_scripts entry point, a symlink of the
  script pip wrote into the venv's bin/ (``ros2 run``, ``ros2 pkg executables``, launch_ros ``Node``).

Idempotent: links already right are left alone, missing ones are made, links or files the layout no
longer has are removed (never anything through a directory link). Prints one line of counts.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PACKAGE = "centernet_ros"


def desired_links(root: Path, prefix: Path, bin_dir: Path) -> dict[Path, Path]:
    """link path -> target of every link of the layout (targets are absolute)."""
    import setuptools  # noqa: F401  (provides distutils)
    from distutils.core import run_setup

    cwd = os.getcwd()
    os.chdir(root)  # setup.py globs relative to its own directory
    try:
        dist = run_setup(str(root / "setup.py"), stop_after="init")
    finally:
        os.chdir(cwd)
    links: dict[Path, Path] = {}
    for dest, files in dist.data_files:
        for rel in files:
            links[prefix / dest / Path(rel).name] = (root / rel).resolve()
    for spec in (dist.entry_points or {}).get("console_scripts", []):
        name = spec.split("=", 1)[0].strip()
        script = bin_dir / name
        if not script.is_file():
            raise SystemExit(f"dev_prefix: {script} is missing (is centernet_ros pip-installed in this venv?)")
        links[prefix / "lib" / PACKAGE / name] = script.resolve()
    return links


def sync(prefix: Path, links: dict[Path, Path]) -> tuple[int, int, int]:
    """Make the tree under ``prefix`` hold exactly ``links``; returns (made, kept, removed)."""
    made = kept = removed = 0
    # Remove what is not part of the layout: stale links and files, directory links (the old layout
    # linked share/centernet_ros/launch etc. as a whole) and directories that end up empty.
    if prefix.exists():
        for dirpath, dirnames, filenames in os.walk(prefix, topdown=False):
            here = Path(dirpath)
            for name in filenames + dirnames:
                path = here / name
                if path.is_symlink() or path.is_file():
                    if path not in links or (path.is_symlink() and Path(os.readlink(path)) != links[path]):
                        path.unlink()
                        removed += 1
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
    for link, target in sorted(links.items()):
        if link.is_symlink() and Path(os.readlink(link)) == target:
            kept += 1
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        made += 1
    return made, kept, removed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="the repository (where setup.py is)")
    p.add_argument("--prefix", type=Path, required=True, help="the install prefix to lay out")
    p.add_argument("--bin", type=Path, required=True, help="the venv's bin/ holding the console scripts")
    args = p.parse_args(argv)
    root, prefix = args.root.resolve(), args.prefix.absolute()
    links = desired_links(root, prefix, args.bin.absolute())
    made, kept, removed = sync(prefix, links)
    print(f"    {prefix}: {len(links)} links ({made} made, {kept} kept, {removed} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""package_file: the installed (ament share) copy of a data file when there is one, else the source tree's;
used by both launch files, centernet-demo, the node's default weights, the video publisher and the Fast DDS
profile lookup."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from centernet_ros.ros.package_files import PACKAGE, package_file

REPO = Path(__file__).resolve().parents[1]


def _fake_ament(monkeypatch, share: Path | None) -> None:
    """ament_index_python whose get_package_share_directory answers ``share`` (None: package not found)."""
    def get_package_share_directory(name):
        assert name == PACKAGE
        if share is None:
            raise LookupError(name)  # ament's PackageNotFoundError is a KeyError / LookupError
        return str(share)

    packages = types.ModuleType("ament_index_python.packages")
    packages.get_package_share_directory = get_package_share_directory
    monkeypatch.setitem(sys.modules, "ament_index_python", types.ModuleType("ament_index_python"))
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", packages)


def test_the_source_tree_copy_when_not_installed(monkeypatch):
    _fake_ament(monkeypatch, None)
    for parts in [("config", "detect.yaml"), ("config", "demo.yaml"), ("models", "centernet_vehicles.safetensors"),
                  ("models", "slow_traffic_small.mp4"), ("config", "fastdds_large_frames.xml")]:
        path = package_file(*parts)
        assert path == REPO.joinpath(*parts) and path.is_file(), parts


def test_the_installed_copy_first_and_the_source_tree_for_what_it_lacks(monkeypatch, tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "detect.yaml").write_text("{}")
    _fake_ament(monkeypatch, tmp_path)
    assert package_file("config", "detect.yaml") == tmp_path / "config" / "detect.yaml"
    assert package_file("config", "demo.yaml") == REPO / "config" / "demo.yaml"  # not in that share directory
    missing = package_file("config", "nothing_here.yaml")  # returned all the same: the caller says what is missing
    assert missing == REPO / "config" / "nothing_here.yaml" and not missing.exists()


def test_a_path_is_required():
    with pytest.raises(ValueError, match="needs a path"):
        package_file()

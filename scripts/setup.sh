#!/usr/bin/env bash
# One-shot, idempotent set-up of vlarl on a Debian/Ubuntu machine.
#   - system: a Vulkan driver SAPIEN can render with (lavapipe from Mesa >= 24.3 where no
#     NVIDIA GPU exists; Debian 12 needs bookworm-backports for it, see docs/troubleshooting.md)
#   - python: a project-local virtualenv .venv with torch (CPU wheel without a GPU) + vlarl[dev]
#     at the versions in scripts/constraints.txt (VLARL_UNPINNED=1: the newest allowed)
# The second run only checks and returns in a few seconds (stamp keyed by pyproject.toml).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLARL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
log() { echo "[vlarl setup] $*" >&2; }

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

mesa_ok() {  # Mesa's lavapipe >= 24.3 has VK_KHR_external_semaphore_fd, which SAPIEN needs
  local v
  v="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
  [ -n "$v" ] && dpkg --compare-versions "$v" ge "24.3" && dpkg -s libvulkan1 >/dev/null 2>&1
}

install_vulkan() {
  if have_gpu; then
    # the NVIDIA driver's Vulkan ICD needs the loader and EGL; without them ManiSkill silently
    # renders on the CPU (vlarl doctor reports it)
    if ! dpkg -s libvulkan1 libegl1 >/dev/null 2>&1 && command -v apt-get >/dev/null; then
      log "NVIDIA GPU found: installing libvulkan1 libegl1 for its Vulkan driver"
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libvulkan1 libegl1 >/dev/null
    fi
    return
  fi
  if mesa_ok; then log "software Vulkan (Mesa lavapipe) present"; return; fi
  command -v apt-get >/dev/null || { log "no apt-get: install Mesa >= 24.3 Vulkan drivers by hand"; return; }
  . /etc/os-release
  if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      # same mirror and keyring as the machine's existing bookworm entry
      local uri
      uri="$(grep -rhs -A3 -B3 'Suites:.*bookworm-updates' /etc/apt/sources.list.d/*.sources | sed -n 's/^URIs: *//p' | head -1)"
      [ -n "$uri" ] || uri="$(grep -hs '^deb .* bookworm main' /etc/apt/sources.list | awk '{print $2}' | head -1)"
      [ -n "$uri" ] || { log "cannot find the Debian mirror in apt sources"; return 1; }
      log "adding bookworm-backports from $uri (Mesa 25 for software Vulkan)"
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
        | $SUDO tee /etc/apt/sources.list.d/vlarl-backports.sources >/dev/null
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
      mesa-vulkan-drivers libvulkan1 libegl1 >/dev/null
  else
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 libegl1 >/dev/null
  fi
  mesa_ok || log "WARNING: Mesa < 24.3; SAPIEN may find no render device (run: vlarl doctor)"
}

install_python() {
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
  local stamp="$VENV/.vlarl-stamp" want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/constraints.txt" | sha256sum | cut -c1-16)-$(have_gpu && echo gpu || echo cpu)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then log "python env up to date"; return; fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if have_gpu; then
      "$VENV/bin/python" -m pip install -q torch          # CUDA build from the index
    else
      # the CPU wheel; on these machines it lies on disk (pip finds it, no download)
      "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    fi
  fi
  # the tested versions (scripts/constraints.txt); VLARL_UNPINNED=1 takes the newest instead
  local pins=(-c "$ROOT/scripts/constraints.txt")
  [ "${VLARL_UNPINNED:-0}" = 1 ] && pins=()
  "$VENV/bin/python" -m pip install -q "${pins[@]}" -e "$ROOT[dev]"
  echo "$want" > "$stamp"
}

install_mpi() {  # multi-process CPU launches: accelerate launch (MULTI_CPU) starts ranks with mpirun
  if have_gpu || command -v mpirun >/dev/null; then return; fi
  command -v apt-get >/dev/null || { log "no apt-get: install Open MPI (mpirun) by hand for multi-process CPU runs"; return; }
  log "installing Open MPI (accelerate launch of several CPU processes)"
  $SUDO apt-get update -qq || log "WARNING: apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin >/dev/null \
    || log "WARNING: openmpi-bin not installed; use torchrun for several CPU processes"
}

mpi_as_root() {  # Open MPI refuses to start as root unless told: containers run as root
  [ "$(id -u)" = 0 ] || return 0
  grep -qs OMPI_ALLOW_RUN_AS_ROOT "$VENV/bin/activate" && return 0
  printf '\n# vlarl: Open MPI (accelerate launch on CPU) as root\nexport OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\n' >> "$VENV/bin/activate"
}

t0=$(date +%s)
install_vulkan
install_mpi
install_python
mpi_as_root
log "done in $(( $(date +%s) - t0 )) s; activate with: source $VENV/bin/activate"

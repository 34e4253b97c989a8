#!/usr/bin/env bash
# Idempotent set-up for kit on Debian 12, as root: packages, mounts, headers
# BCC can find, and .venv/ (which sees the distro's bcc module).
set -euo pipefail
cd "$(dirname "$0")"
log() { echo "setup: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs packages and mounts tracefs): su -c ./setup.sh, or sudo ./setup.sh" >&2
  exit 2
fi

arch=$(dpkg --print-architecture)
pkgs=(python3-bpfcc bpfcc-tools "linux-headers-$arch" bpftrace nftables iproute2 python3-venv python3-yaml
      python3-tabulate python3-pyroute2 gcc libc6-dev binutils libcap2-bin procps bpftool strace util-linux)
# install_missing [apt-get options] -- PACKAGE...: installs those not installed yet (idempotent).
install_missing() {
  local opts=() missing=() p
  while [ "$1" != "--" ]; do opts+=("$1"); shift; done
  shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${opts[@]}" "${missing[@]}" >/dev/null
  fi
}
install_missing -- "${pkgs[@]}"
# A second kernel under qemu (tests/kernel/test_lockdown_qemu_kernel.py, tests/kernel/test_second_kernel_recipes.py): virtme-ng (from .venv) boots
# it with qemu, builds its initramfs with busybox and kmod's depmod/modprobe.
install_missing --no-install-recommends -- qemu-system-x86 busybox-static kmod

# kit fleet's tests (tests/kernel/test_fleet_kernel.py) drive Ansible over SSH to sshd's the test starts in its
# own network namespaces. Installing openssh-server must not start the box's own ssh service: a
# policy-rc.d that says no is put in place for the install only (Docker images already have one).
fleet_missing=
for p in ansible-core openssh-server; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || fleet_missing=1
done
if [ -n "$fleet_missing" ]; then
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  install_missing --no-install-recommends -- ansible-core openssh-server
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# BCC reads tracepoint formats from tracefs; doctor reads lockdown from securityfs.
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
mountpoint -q /sys/kernel/security || mount -t securityfs nodev /sys/kernel/security 2>/dev/null || true

# BCC looks for /lib/modules/$(uname -r)/build. With no headers for the running
# kernel, point it at the newest installed Debian headers (-amd64 holds the
# build tree, -common the source). `kit doctor` reports the mismatch, and kit's
# templates take struct offsets from BTF, never from these headers.
rel=$(uname -r)
if [ ! -e "/lib/modules/$rel/build/Makefile" ]; then
  build=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -1)
  if [ -z "$build" ]; then
    echo "setup: no kernel headers under /usr/src; apt-get install linux-headers-$arch" >&2
    exit 5
  fi
  common=${build%-"$arch"}-common
  mkdir -p "/lib/modules/$rel"
  ln -sfn "$build" "/lib/modules/$rel/build"
  [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$rel/source"
  log "linked /lib/modules/$rel/build -> $build (headers for another kernel; see kit doctor)"
fi

# A venv from the distro's python, so `from bcc import BPF` finds python3-bpfcc.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.kit-installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing kit into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi

# The guest's Debian kernel pinned in tests/support/qemu/guest_kernel (and its headers, at that version),
# unpacked in .cache/ (git-ignored) for qemu. Without it only the qemu tests fail (they try again):
# tests/kernel/test_lockdown_qemu_kernel.py and tests/kernel/test_second_kernel_recipes.py; the rest can run.
tests/support/qemu/kernel.sh >/dev/null || log "no kernel for qemu: the qemu tests (lockdown, second kernel) will fail"

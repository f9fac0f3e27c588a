#!/usr/bin/env bash
# Installs everything Weft needs on a fresh Debian 12 machine, idempotently, as root:
# system packages, kernel headers for bcc, bpffs, and the project's virtualenv.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${WEFT_VENV:-.venv}
STAMP="$VENV/.weft-setup-stamp"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages and mounts bpffs); re-run with sudo"

# Debian packages: bcc comes only from Debian (the PyPI 'bcc' is an unrelated project).
# WEFT_SETUP_GUEST=1 (a Vagrant lab VM, provisioned offline by vm/provision/node.sh): only what
# Weft runs with, all baked into the box (vm/vagrant/box.py), and no dev extra.
APT_PACKAGES=(
  python3-bpfcc bpfcc-tools libbpf1 linux-headers-amd64
  python3-venv python3-dev gcc
  iproute2 nftables util-linux procps psmisc systemd curl openssl tcpdump
)
if [ "${WEFT_SETUP_GUEST:-0}" != 1 ]; then
  APT_PACKAGES+=(
    # weft._native, the agent's compiled HBONE data path (setup.py); optional, so a Vagrant
    # guest (whose box does not carry it) installs without it and runs the Python data path.
    libssl-dev
    iperf3 stunnel4 haproxy wrk
    # The Vagrant lab (vm/vagrant/): vagrant, libvirt and qemu run in a netns, the box is built
    # locally with debootstrap + extlinux.
    vagrant vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system
    libvirt-clients qemu-system-x86 qemu-utils debootstrap extlinux syslinux-common dnsmasq-base
    iptables
  )
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles against kernel headers found through /lib/modules/$(uname -r)/{build,source}.
# The running kernel has no Debian header package, so point those links at the installed tree.
KREL=$(uname -r)
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [ -n "$hdr" ] || die "no kernel headers under /usr/src: apt-get install linux-headers-amd64"
  say "linking /lib/modules/$KREL/{build,source} -> $hdr, $common"
  mkdir -p "/lib/modules/$KREL"
  ln -sfn "$hdr" "/lib/modules/$KREL/build"
  ln -sfn "${common:-$hdr}" "/lib/modules/$KREL/source"
fi

# bpffs holds Weft's pinned maps and links (/sys/fs/bpf/weft).
if ! mountpoint -q /sys/fs/bpf; then
  say "mounting bpffs at /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs: the kernel needs CONFIG_BPF_SYSCALL"
fi
mountpoint -q /sys/fs/cgroup/unified || mountpoint -q /sys/fs/cgroup || \
  die "no cgroup v2 hierarchy mounted: mount -t cgroup2 none /sys/fs/cgroup/unified"

# The virtualenv is built from the system interpreter so that Debian's bcc is importable.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV from /usr/bin/python3 (--system-site-packages, for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# setup.py and weft/native/ too: an editable install does not rebuild weft._native by itself.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ setup.py -nt "$STAMP" ] ||
   [ -n "$(find weft/native -newer "$STAMP" \( -name '*.c' -o -name '*.h' \) 2>/dev/null)" ]; then
  say "installing weft-mesh (editable, with the dev extra unless WEFT_SETUP_GUEST=1)"
  [ "${WEFT_SETUP_GUEST:-0}" = 1 ] || "$VENV/bin/python" -m pip install -q --upgrade pip
  if [ "${WEFT_SETUP_GUEST:-0}" = 1 ]; then
    # The venv has setuptools and wheel (vm/provision/node.sh): no isolated build env to fill,
    # which takes minutes in an emulated guest.
    "$VENV/bin/python" -m pip install -q --no-build-isolation -e .
  else
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
  fi
  touch "$STAMP"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || die "bcc is not importable from $VENV: apt-get install python3-bpfcc"
say "ready: $VENV/bin/weft"

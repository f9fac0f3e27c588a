#!/usr/bin/env bash
# Provisions one lab VM offline: unpacks the shipped project, runs the project's own setup
# (scripts/setup.sh) against the shipped wheelhouse, and installs the node's systemd units
# (the controller; or the agent and the waypoint template, weft-waypoint@.service).
#
# usage: node.sh --ship DIR --node NAME --role control|worker --address IP [--prefix LEN]
#                --controller IP:PORT [--route CIDR=VIA]...
# It names the VM NAME and gives eth1 (the fabric) IP/LEN and the routes (the other workers'
# podCIDRs, via their fabric IPs), with systemd-networkd, so that they survive reboots.
#
# DIR (uploaded by the Vagrantfile's file provisioner, staged by provision/stage-host.sh) holds
#   weft-src.tar.gz   the project's files
#   wheelhouse/       wheels of every Python dependency, including setuptools and wheel
#   debs/             optional: extra .deb files to install before setup
# Debian packages must otherwise be baked into the box: a guest has no network to fetch them.
set -euo pipefail

PREFIX=${WEFT_PREFIX:-/opt/weft}
SRC="$PREFIX/src"
VENV="$PREFIX/venv"
ETC=/etc/weft
UNIT_DIR=/etc/systemd/system
CONTROLLER_STATE=/var/lib/weft/controller

say() { printf '[weft-provision] %s\n' "$*"; }
die() { printf '[weft-provision] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 --ship DIR --node NAME --role control|worker --address IP [--prefix LEN] --controller IP:PORT [--route CIDR=VIA]..."; }

ship="" node="" role="" address="" prefix=24 controller="" routes=()
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --ship) ship=$2 ;;
    --route) routes+=("$2") ;;
    --prefix) prefix=$2 ;;
    --node) node=$2 ;;
    --role) role=$2 ;;
    --address) address=$2 ;;
    --controller) controller=$2 ;;
    *) usage ;;
  esac
  shift 2
done
if [ -z "$ship" ] || [ -z "$node" ] || [ -z "$address" ] || [ -z "$controller" ]; then usage; fi
case "$role" in control|worker) ;; *) die "--role must be control or worker, got '$role'" ;; esac

restage="on the host run vm/provision/stage-host.sh (vagrant up/provision does it through a trigger), then 'vagrant provision $node'"
[ -f "$ship/weft-src.tar.gz" ] || die "$ship/weft-src.tar.gz is missing: the project was not shipped; $restage"
compgen -G "$ship/wheelhouse/*.whl" >/dev/null \
  || die "$ship/wheelhouse/ has no wheels: guests cannot reach PyPI; $restage"
[ "$(id -u)" = 0 ] || die "must run as root (the Vagrantfile runs it privileged)"

say "unpacking the project into $SRC"
rm -rf "$SRC.new"
mkdir -p "$SRC.new"
tar -xzf "$ship/weft-src.tar.gz" -C "$SRC.new"
[ -x "$SRC.new/scripts/setup.sh" ] || die "$ship/weft-src.tar.gz has no scripts/setup.sh; $restage"
rm -rf "$SRC"
mv "$SRC.new" "$SRC"

if compgen -G "$ship/debs/*.deb" >/dev/null; then
  say "installing shipped Debian packages from $ship/debs"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-download \
    "$ship"/debs/*.deb >/dev/null
fi

# setup.sh installs missing Debian packages with apt-get, which cannot work offline. Put a stand-in
# first on PATH that names the missing packages instead of failing on a network timeout.
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
cat >"$shim/apt-get" <<'SHIM'
#!/bin/sh
[ "$1" = update ] && exit 0
shift
pkgs=$(printf '%s\n' "$@" | grep -v '^-' | tr '\n' ' ')
echo "[weft-provision] ERROR: the guest is offline and these Debian packages are not in the box: $pkgs" >&2
echo "[weft-provision] bake them into the box, or put their .deb files in the ship's debs/ directory" >&2
exit 1
SHIM
chmod +x "$shim/apt-get"

# Emulated guests are slow: pip, setuptools and wheel come from the wheelhouse (ensurepip would
# unpack and compile its bundled copies; setup.sh builds the project without build isolation),
# and nothing is compiled to .pyc up front (Python does it on import). The lab's own box has
# the venv with every wheel already (vm/vagrant/box.py).
pip_wheel=$(compgen -G "$ship/wheelhouse/pip-*.whl" | sort -V | tail -n1) || true
if [ ! -x "$VENV/bin/python" ] && [ -n "$pip_wheel" ]; then
  say "creating $VENV (pip from $pip_wheel)"
  python3 -m venv --system-site-packages --without-pip "$VENV"
  "$VENV/bin/python" "$pip_wheel/pip" install -q --no-index --no-compile \
    --disable-pip-version-check --find-links "$ship/wheelhouse" "$pip_wheel" "setuptools>=68" wheel
fi
say "running the project's setup (scripts/setup.sh) offline against $ship/wheelhouse"
(cd "$SRC" && PATH="$shim:$PATH" WEFT_VENV="$VENV" WEFT_SETUP_GUEST=1 PIP_NO_INDEX=1 PIP_NO_COMPILE=1 \
  PIP_FIND_LINKS="$ship/wheelhouse" PIP_DISABLE_PIP_VERSION_CHECK=1 bash scripts/setup.sh)
ln -sfn "$VENV/bin/weft" /usr/local/bin/weft
install -m 0755 "$SRC/vm/provision/workload.sh" /usr/local/sbin/weft-workload

say "hostname $node, eth1 $address/$prefix${routes[*]:+, routes ${routes[*]}}"
hostnamectl set-hostname "$node" 2>/dev/null || { echo "$node" >/etc/hostname; hostname "$node"; }
sed -i "/^127\.0\.1\.1 /d" /etc/hosts && echo "127.0.1.1 $node" >>/etc/hosts
# HBONE goes to the destination pod's own address on 15008 (as in Istio ambient): each worker
# routes the other workers' podCIDRs to them; the control node routes them all (a waypoint
# talks to the controller from its own pod address).
{
  printf '# The lab fabric (written by vm/provision/node.sh).\n[Match]\nName=eth1\n\n'
  printf '[Network]\nAddress=%s/%s\n' "$address" "$prefix"
  for route in ${routes[@]+"${routes[@]}"}; do
    cidr=${route%%=*} via=${route#*=}
    [ -n "$cidr" ] && [ -n "$via" ] && [ "$cidr" != "$route" ] || die "--route $route: expected CIDR=VIA"
    printf '\n[Route]\nDestination=%s\nGateway=%s\n' "$cidr" "$via"
  done
} >/etc/systemd/network/20-weft-fabric.network
systemctl enable -q systemd-networkd
systemctl restart systemd-networkd
for _ in $(seq 60); do ip -4 -o address show dev eth1 | grep -q " $address/" && break; sleep 1; done
ip -4 -o address show dev eth1 | grep -q " $address/" || die "eth1 did not get $address/$prefix (journalctl -u systemd-networkd)"

install -d -m 0755 "$ETC"
if [ "$role" = control ]; then
  install -m 0644 "$SRC/vm/provision/systemd/weft-controller.service" "$UNIT_DIR/"
  printf 'WEFT_NODE=%s\nWEFT_LISTEN=%s\nWEFT_STATE_DIR=%s\n' "$node" "$address" "$CONTROLLER_STATE" \
    >"$ETC/controller.env"
  if [ ! -d "$CONTROLLER_STATE" ] || [ -z "$(ls -A "$CONTROLLER_STATE")" ]; then
    say "initialising the controller's CA and state in $CONTROLLER_STATE"
    "$VENV/bin/weft" controller init --state-dir "$CONTROLLER_STATE"
  fi
  systemctl daemon-reload
  systemctl enable weft-controller.service
  systemctl restart weft-controller.service
else
  install -m 0644 "$SRC/vm/provision/systemd/weft-agent.service" "$UNIT_DIR/"
  # Instances (weft-waypoint@NAMESPACE-NAME) are started by the Vagrantfile's waypoint trigger.
  install -m 0644 "$SRC/vm/provision/systemd/weft-waypoint@.service" "$UNIT_DIR/"
  printf 'WEFT_NODE=%s\nWEFT_CONTROLLER=%s\n' "$node" "$controller" >"$ETC/agent.env"
  systemctl daemon-reload
  # The agent starts once the host trigger has written its join token (the unit waits for it).
  systemctl enable weft-agent.service
  if [ -f "$ETC/join-token" ]; then systemctl restart weft-agent.service; fi
fi
say "$node provisioned as $role"

#!/usr/bin/env bash
# Runs a workload on this lab VM the way the netns lab lays one out on a node (vm/lab/plumbing.py):
# its own netns wl-NAME with a /32 from the node's podCIDR on eth0, a default route to 169.254.1.1
# (the agent's address, on the node's loopback; the node answers ARP for it), and its own cgroup
# /sys/fs/cgroup/weft/workloads/NAME, where the agent's eBPF capture applies. Installed in the VMs
# as /usr/local/sbin/weft-workload by vm/provision/node.sh.
#
# usage: weft-workload start NAME IP -- COMMAND [ARG...]   run COMMAND detached (log: /var/log/weft/NAME.log)
#        weft-workload exec NAME -- COMMAND [ARG...]       run COMMAND in the workload, wait for it
#        weft-workload stop NAME                           stop its processes, remove netns and cgroup
#        weft-workload run NAME IP -- COMMAND [ARG...]     netns only, COMMAND in the foreground
#
# `run` is for a systemd unit (weft-waypoint@.service): COMMAND becomes the unit's main process in
# the netns, with a fresh one replacing a leftover, and stays in the unit's cgroup, outside the
# workloads' cgroups, so the agent never captures it (a waypoint is `dataplane-mode: none`).
set -euo pipefail

CGROUPS=/sys/fs/cgroup/weft/workloads
GATEWAY=169.254.1.1
LOGS=/var/log/weft

die() { printf 'weft-workload: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '8,11p' "$0" | sed 's/^# //' >&2; exit 2; }
name_ok() { [[ "$1" =~ ^[a-z0-9]([-a-z0-9]{0,11}[a-z0-9])?$ ]] || die "workload name '$1': lowercase letters, digits and '-', at most 13 characters (it names a veth)"; }

[ $# -ge 2 ] || usage
action=$1 name=$2
name_ok "$name"
netns="wl-$name" veth="p-$name" cgroup="$CGROUPS/$name"

# The workload's netns, veth and addresses (vm/lab/plumbing.py's layout).
ip_ok() { [[ "$1" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "'$1' is not an IPv4 address"; }
plumb() {
  local ip=$1
  sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0
  ip address replace "$GATEWAY/32" dev lo
  ip netns add "$netns"
  ip link add "$veth" type veth peer name eth0 netns "$netns"
  sysctl -qw "net.ipv4.conf.$veth.proxy_arp=1" "net.ipv4.conf.$veth.rp_filter=0"
  ip link set "$veth" up
  ip route replace "$ip/32" dev "$veth"
  ip -n "$netns" link set lo up
  ip -n "$netns" address add "$ip/32" dev eth0
  ip -n "$netns" link set eth0 up
  ip -n "$netns" route add default via "$GATEWAY" dev eth0 onlink
}

case "$action" in
  run)
    [ $# -ge 5 ] && [ "$4" = -- ] || usage
    ip=$3; shift 4
    ip_ok "$ip"
    # A unit restarted after a crash finds its old netns: start from a clean one.
    ip link del "$veth" 2>/dev/null || true
    ip netns del "$netns" 2>/dev/null || true
    plumb "$ip"
    echo "workload $name: $ip in netns $netns, running $1 in the foreground"
    exec nsenter "--net=/run/netns/$netns" -- "$@"
    ;;
  start)
    [ $# -ge 5 ] && [ "$4" = -- ] || usage
    ip=$3; shift 4
    ip_ok "$ip"
    [ -e "/run/netns/$netns" ] && die "workload $name exists; 'weft-workload stop $name' first"
    plumb "$ip"
    mkdir -p "$cgroup" "$LOGS"
    # The process joins its cgroup before it execs into the workload's netns and command.
    setsid sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$@"' \
      sh "$cgroup" "$netns" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    echo "workload $name: $ip in netns $netns, cgroup $cgroup, pid $!, log $LOGS/$name.log"
    ;;
  exec)
    [ $# -ge 4 ] && [ "$3" = -- ] || usage
    shift 3
    [ -d "$cgroup" ] || die "no workload $name (no $cgroup)"
    exec sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$@"' sh "$cgroup" "$netns" "$@"
    ;;
  stop)
    if [ -f "$cgroup/cgroup.procs" ]; then
      for pid in $(cat "$cgroup/cgroup.procs"); do kill "$pid" 2>/dev/null || true; done
      for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$cgroup/cgroup.procs" ] || break; sleep 0.5; done
      rmdir "$cgroup" 2>/dev/null || true
    fi
    ip link del "$veth" 2>/dev/null || true
    ip netns del "$netns" 2>/dev/null || true
    ;;
  *) usage ;;
esac

#!/bin/sh
# A GlusterFS volume on this machine to compare `shoal bench smallfiles` with (--against).
#
#   bench/gluster-volume.sh up DIR        glusterd (its state in DIR/glusterd, listening on
#                                         loopback only), volume shoalcmp: replica 2 over
#                                         bricks DIR/b1 and DIR/b2, mounted at DIR/mnt
#   bench/gluster-volume.sh remount DIR   unmount and mount again (a cold client: --against-remount)
#   bench/gluster-volume.sh down DIR      unmount, stop and delete the volume, remove the
#                                         bricks, stop glusterd
#
# Needs root and glusterfs-server + glusterfs-client (apt-get install -y glusterfs-server
# glusterfs-client). glusterd refuses 127.0.0.1 and localhost in a brick's name, so the
# bricks are named by this host's name, which must resolve to a loopback address (all the
# traffic stays on loopback); set GLUSTER_HOST to name another loopback alias.
set -eu

VOL=shoalcmp
die() { echo "gluster-volume.sh: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: $0 up|remount|down DIR"
cmd=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
host=${GLUSTER_HOST:-$(hostname)}
mnt=$dir/mnt
pidfile=$dir/glusterd.pid

command -v glusterd >/dev/null && command -v mount.glusterfs >/dev/null \
  || die "glusterd or mount.glusterfs missing: apt-get install -y glusterfs-server glusterfs-client"
[ "$(id -u)" -eq 0 ] || die "needs root (glusterd, mount)"

ours_running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
mounted() { grep -q " $mnt fuse.glusterfs " /proc/mounts; }
gl() { gluster --mode=script "$@"; }

case $cmd in
up)
  addr=$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')
  case $addr in
    127.*) ;;
    *) die "$host resolves to '${addr:-nothing}', not a loopback address: add it to /etc/hosts as 127.0.0.1, or set GLUSTER_HOST" ;;
  esac
  if ! ours_running; then
    if pgrep -x glusterd >/dev/null; then die "another glusterd runs already (not started by $0 with $dir)"; fi
    # the packaged glusterd.vol, with its state in DIR and listening on loopback only
    sed -e "s|option working-directory .*|option working-directory $dir/glusterd|" \
        -e "/transport-type socket/a\\    option transport.socket.bind-address 127.0.0.1" \
        /etc/glusterfs/glusterd.vol > "$dir/glusterd.vol"
    glusterd -f "$dir/glusterd.vol" -p "$pidfile"
    i=0
    until gluster peer status >/dev/null 2>&1; do
      i=$((i + 1)); [ $i -lt 30 ] || die "glusterd did not answer in 30 s (see /var/log/glusterfs/glusterd.log)"
      sleep 1
    done
  fi
  if ! gl volume info "$VOL" >/dev/null 2>&1; then
    mkdir -p "$dir/b1" "$dir/b2"
    # force: the bricks are on the root file system, and both on this one host
    gl volume create "$VOL" replica 2 "$host:$dir/b1" "$host:$dir/b2" force
  fi
  gl volume info "$VOL" | grep -q '^Status: Started' || gl volume start "$VOL"
  mkdir -p "$mnt"
  mounted || mount -t glusterfs "$host:/$VOL" "$mnt"
  echo "$host:/$VOL on $mnt"
  ;;
remount)
  mounted && umount "$mnt"
  mount -t glusterfs "$host:/$VOL" "$mnt"
  ;;
down)
  if mounted; then umount "$mnt"; fi
  if ours_running; then
    if gl volume info "$VOL" >/dev/null 2>&1; then
      gl volume info "$VOL" | grep -q '^Status: Started' && gl volume stop "$VOL"
      gl volume delete "$VOL"
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null; do
      i=$((i + 1)); [ $i -lt 30 ] || die "glusterd (pid $pid) still runs after 30 s"
      sleep 1
    done
  fi
  rm -rf "$dir/b1" "$dir/b2" "$dir/glusterd" "$dir/glusterd.vol" "$pidfile"
  rmdir "$mnt" 2>/dev/null || true
  ;;
*)
  die "usage: $0 up|remount|down DIR (not '$cmd')"
  ;;
esac

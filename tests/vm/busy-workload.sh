#!/bin/sh
# The busy container's workload, started by guest-test.sh through `apptheus exec`, so it runs in
# the container's cgroup. Usage: busy-workload.sh STATE_DIR NET_PORT
#
# It burns CPU (three burners on two CPUs, so that it also waits: CPU pressure), writes to
# /dev/ram0 with O_DIRECT (io.stat), once under an io.max write limit (I/O pressure), writes
# through the page cache under a low memory.high (reclaim: memory pressure), fills a 64 MiB tmpfs
# file (charged to the cgroup: memory usage), sends 2 MiB over loopback to a listener of its own
# (network transmit and receive), and runs many short programs (execs). Then it writes
# STATE_DIR/ready and holds everything until a line arrives on STATE_DIR/release.
#
# The limits are set on the container's own cgroup, which needs the memory and io controllers
# enabled by the agent (v1: the blkio write limit only); a failure to set them is reported on
# stderr and as "limits=failed".
S=$1
PORT=${2:-5555}
log() { echo "busy-workload: $*" >&2; }

# cgroup v2: one line "0::PATH"; pure v1 (CGROUP=v1): a line per hierarchy
if [ "$CGROUP" = v1 ]; then
  v1dir() { echo "/sys/fs/cgroup/$1$(awk -F: -v c="$1" '$2 == c { print $3 }' /proc/self/cgroup)"; }
  cg=$(v1dir memory)
else
  cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)
fi
echo "$cg" > "$S/cgroup"
limits=ok
dev=$(cat /sys/block/ram0/dev 2>/dev/null) || { log "no /dev/ram0"; dev=; }

# CPU: ~2 s on each of three burners, two CPUs.
for i in 1 2 3; do timeout 2 md5sum /dev/zero > /dev/null 2>&1 & done
wait

if [ -n "$dev" ]; then
  # 16 MiB straight to the device.
  dd if=/dev/zero of=/dev/ram0 bs=1M count=16 oflag=direct 2>/dev/null || log "direct write failed"
  # 4 MiB at 4 MiB/s: about a second throttled, waiting for I/O.
  if [ "$CGROUP" = v1 ]; then
    throttle="$(v1dir blkio)/blkio.throttle.write_bps_device" on="$dev 4194304" off="$dev 0"
  else
    throttle="$cg/io.max" on="$dev wbps=4194304" off="$dev wbps=max"
  fi
  if echo "$on" > "$throttle"; then
    dd if=/dev/zero of=/dev/ram0 bs=64k count=64 seek=256 oflag=direct 2>/dev/null || log "throttled write failed"
    echo "$off" > "$throttle"
  else
    log "cannot write $throttle"; limits=failed
  fi
  # 32 MiB through the page cache with memory.high at 8 MiB: reclaim stalls (v1 has no
  # memory.high: the writes just go through the page cache).
  if [ "$CGROUP" = v1 ]; then
    dd if=/dev/zero of=/dev/ram0 bs=1M count=32 seek=20 2>/dev/null || log "buffered write failed"
    sync
  elif echo 8M > "$cg/memory.high"; then
    dd if=/dev/zero of=/dev/ram0 bs=1M count=32 seek=20 2>/dev/null || log "buffered write failed"
    sync
    echo max > "$cg/memory.high"
  else
    log "cannot write $cg/memory.high"; limits=failed
  fi
fi

# 64 MiB of tmpfs, charged to this cgroup until removed.
dd if=/dev/zero of="/dev/shm/busy.$$" bs=1M count=64 2>/dev/null || log "tmpfs fill failed"

# 2 MiB over loopback. The listener's stdin is a FIFO it holds open itself, so it never sees EOF
# there and leaves only when the sender closes.
mkfifo "$S/hold"
nc -l -p "$PORT" <> "$S/hold" > /dev/null & listener=$!
n=0
until netstat -ltn 2>/dev/null | grep -q ":$PORT "; do
  n=$((n + 1)); [ $n -gt 50 ] && { log "listener did not start"; break; }
  sleep 0.1
done
dd if=/dev/zero bs=64k count=32 2>/dev/null | nc 127.0.0.1 "$PORT" || log "sending failed"
wait $listener

# Execs: twenty short programs (the busybox binary itself, so no shell builtin can stand in).
i=0
while [ $i -lt 20 ]; do /bin/busybox true; i=$((i + 1)); done

echo "limits=$limits" > "$S/ready.tmp" && mv "$S/ready.tmp" "$S/ready"
read -r _ < "$S/release"
rm -f "/dev/shm/busy.$$"
exit 0

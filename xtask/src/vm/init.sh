#!/bin/busybox sh
# PID 1 of the `cargo xtask vm-test` guest (embedded by xtask/src/vm/initramfs.rs).
#
# Sets up what a modern distribution gives a root daemon — one cgroup v2 hierarchy with every
# controller enabled at the root (or, with CGROUP=v1, the legacy v1 hierarchies), bpffs, tracefs,
# loopback — runs /etc/vm-test.cmd with its
# stdout on ttyS1 and stderr on ttyS2 (through FIFOs, so the command sees pipes, not ttys), reports
# the exit status on the console (ttyS0) and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
set -a  # the command sees APPTHEUS, VERBOSE and CGROUP
. /etc/vm-test.conf
set +a

log() { echo "init: $*" > /dev/console; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
chmod 1777 /tmp
if [ "$CGROUP" = v1 ]; then
  # as RHEL 8 mounts it (systemd with the legacy hierarchy): every v1 controller on its own
  # mount, cpu+cpuacct and net_cls+net_prio co-mounted, and no unified hierarchy at all
  mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup || log "cannot mount the cgroup tmpfs"
  for c in cpu,cpuacct cpuset memory pids blkio devices freezer net_cls,net_prio perf_event hugetlb; do
    mkdir -p /sys/fs/cgroup/$c
    mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c || log "cannot mount cgroup v1 $c"
  done
  ln -s cpu,cpuacct /sys/fs/cgroup/cpu
  ln -s cpu,cpuacct /sys/fs/cgroup/cpuacct
  ln -s net_cls,net_prio /sys/fs/cgroup/net_cls
  ln -s net_cls,net_prio /sys/fs/cgroup/net_prio
  echo 1 > /sys/fs/cgroup/memory/memory.use_hierarchy 2>/dev/null
else
  # as systemd mounts it
  mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup || log "cannot mount cgroup2"
  for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || log "cannot enable controller $c"
  done
fi
mount -t bpf bpf /sys/fs/bpf || log "cannot mount bpffs"
mount -t tracefs tracefs /sys/kernel/tracing || log "cannot mount tracefs"
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up || log "cannot bring up lo"
if [ "$RAMDISK_MB" != 0 ] && [ -f /lib/modules/brd.ko ]; then
  insmod /lib/modules/brd.ko rd_nr=1 rd_size=$((RAMDISK_MB * 1024)) || log "insmod brd failed"
fi
ulimit -l unlimited
hostname vm
stty -F /dev/ttyS1 raw -echo 2>/dev/null
stty -F /dev/ttyS2 raw -echo 2>/dev/null
cd /root
# A lockup must speak: warnings and backtraces reach the console from here on (the boot stays
# quiet), and the host learns where the kernel text is, to name addresses whatever the KASLR slide.
echo 7 > /proc/sys/kernel/printk
echo "init: kernel _stext=$(grep -m 1 ' _stext$' /proc/kallsyms | cut -d' ' -f1)" > /dev/console

echo "VM-TEST-START-$TOKEN uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
mkfifo /run/vm-out /run/vm-err
cat /run/vm-out > /dev/ttyS1 & c1=$!
cat /run/vm-err > /dev/ttyS2 & c2=$!
sh /etc/vm-test.cmd < /dev/null > /run/vm-out 2> /run/vm-err
rc=$?
# Leftover background processes may still hold the FIFOs open: give them a moment, then stop
# relaying rather than hang.
( sleep 3; kill $c1 $c2 2>/dev/null && echo "init: processes left running:" > /dev/console && ps > /dev/console ) &
w=$!
wait $c1 $c2
kill $w 2>/dev/null
echo "VM-TEST-EXIT-$TOKEN=$rc uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
sync
poweroff -f

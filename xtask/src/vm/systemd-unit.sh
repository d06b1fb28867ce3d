#!/bin/sh
# ExecStart of vm-test.service in the `cargo xtask vm-test --systemd` guest (embedded by
# xtask/src/vm/systemd.rs): the same markers on the console (ttyS0) as init.sh, the command of
# /etc/vm-test.cmd with its stdout on ttyS1 and stderr on ttyS2, its exit status, poweroff.
set -a  # the command sees TOKEN, VERBOSE and DEB
. /etc/vm-test.conf
set +a

stty -F /dev/ttyS1 raw -echo 2>/dev/null
stty -F /dev/ttyS2 raw -echo 2>/dev/null
# A lockup must speak: warnings and backtraces reach the console from here on (the boot stays
# quiet), and the host learns where the kernel text is, to name addresses whatever the KASLR slide.
echo 7 > /proc/sys/kernel/printk
echo "init: kernel _stext=$(grep -m 1 ' _stext$' /proc/kallsyms | cut -d' ' -f1)" > /dev/console

echo "VM-TEST-START-$TOKEN uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
sh /etc/vm-test.cmd < /dev/null > /dev/ttyS1 2> /dev/ttyS2
rc=$?
echo "VM-TEST-EXIT-$TOKEN=$rc uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
sync
# At once: no unit is stopped (the relays on the host end with qemu).
systemctl poweroff --force --force
echo o > /proc/sysrq-trigger

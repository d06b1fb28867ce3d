#!/bin/sh
# The agent's Debian package under systemd (`cargo xtask vm-test --systemd --deb PATH`,
# tests/vm/README.md, "The systemd VM"). Runs as vm-test.service in a Debian bookworm guest whose
# PID 1 is systemd, on pure cgroup v2. Argument: the package file.
#
# Install (the service is ready when apt-get returns), containers of an unprivileged user, where
# their cgroups go (default placement and --placement=move), restarts and stops of the service
# while a container runs, an upgrade keeping the store, bad configuration, purge.
DEB=${1:?usage: systemd-test.sh PACKAGE.deb}
APPTHEUS=/usr/bin/apptheus
. /tests/vm/lib.sh

PORT=9091
SOCK=/run/apptheus/gateway.sock
DEFAULTS=/etc/default/apptheus
STORE=/var/lib/apptheus/store.json
CONTAINERS=/system.slice/apptheus.service/containers   # --cgroup.parent=containers, Delegate=yes
ALICE_DIR=/tmp/vm-alice
GOOD_ARGS="--trust.path=$APPTHEUS --monitor.interval=$INTERVAL"
export DEBIAN_FRONTEND=noninteractive

# the guest has curl, not busybox wget; a failed scrape leaves no old figures behind
scrape() { rm -f "$S/metrics"; curl -sf -m 10 -o "$S/metrics" "http://127.0.0.1:$PORT/metrics" || { : > "$S/metrics"; return 1; }; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# wait_for SECONDS CMD...: poll CMD until it succeeds or SECONDS have passed on the guest's clock
# (lib.sh's wait_until counts 0.1 s steps, and under TCG one scrape takes longer than that)
wait_for() {
  local end
  end=$(awk -v u="$(uptime_s)" -v s="$1" 'BEGIN { print u + s }'); shift
  while ! "$@"; do
    awk -v u="$(uptime_s)" -v e="$end" 'BEGIN { exit !(u >= e) }' && return 1
    sleep 0.2
  done
}
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a - b }'; }
prop() { systemctl show -p "$1" --value apptheus; }
active() { [ "$(systemctl is-active apptheus)" = active ]; }
inactive() { ! active; }
# set_args ARGS: the whole of /etc/default/apptheus (the package's conffile)
set_args() { printf 'ARGS="%s"\n' "$1" > "$DEFAULTS"; }
# the cgroup (v2 path) a process is in
cgroup_of() { sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null; }
# tail of a log file as note lines
show() { note "$1 (last ${3:-15} lines):"; tail -n "${3:-15}" "$2" | sed 's/^/#   /'; }
journal() { journalctl -u apptheus --no-pager -o cat -n "${1:-30}" 2>&1; }
# restart_service WHAT: `systemctl restart apptheus`, which returns once the agent said READY=1
restart_service() {
  local t0=$(uptime_s)
  systemctl restart apptheus > "$S/restart.log" 2>&1
  RC=$?
  note "$1: systemctl restart took $(minus "$(uptime_s)" "$t0") s (uptime $(uptime_s) s)"
  if [ $RC != 0 ]; then
    note "$1: systemctl restart: $(head -n 1 "$S/restart.log")"
    journalctl -b --no-pager -o cat -n 12 -u apptheus 2>&1 | sed 's/^/#   /'
  fi
}
# recover WHAT: when a failure above left the service down, end the containers this script
# runs below apptheus.service and start it again, so that the next checks test their own thing
recover() {
  active && return 0
  note "$1: the service is $(systemctl is-active apptheus); ending this script's containers and starting it again"
  local p
  for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
  sleep 1
  systemctl reset-failed apptheus 2>/dev/null
  systemctl restart apptheus > "$S/restart.log" 2>&1 || note "$1: restart failed again: $(head -n 1 "$S/restart.log")"
}

# Everything started here is recorded and ended by pid.
PIDS=
cleanup() {
  local p
  for p in $PIDS; do kill -KILL "$p" 2>/dev/null; done
}
trap cleanup EXIT

# start_alice NAME CMD: `apptheus exec -- sh -c CMD` as alice (uid 1000, from runuser, inside this
# unit's cgroup), in the background. CMD runs as the shell that wrote its pid to
# $ALICE_DIR/NAME.pid (exec into the workload keeps the pid). Sets RUNNER (runuser's pid), WPID
# (the workload's), LAUNCHER (apptheus exec, its parent), ID and CG_REPORTED (from the launcher).
start_alice() {
  local name=$1 cmd=$2 line
  rm -f "$ALICE_DIR/$name.pid"
  runuser -u alice -- env APPTHEUS_EXEC_VERBOSE=1 "$APPTHEUS" exec -- \
    sh -c "echo \$\$ > $ALICE_DIR/$name.pid; $cmd" > "$S/$name.out" 2> "$S/$name.err" &
  RUNNER=$!
  PIDS="$PIDS $RUNNER"
  wait_for 20 eval "[ -s $ALICE_DIR/$name.pid ] || dead $RUNNER"
  WPID=$(cat "$ALICE_DIR/$name.pid" 2>/dev/null)
  LAUNCHER=$(awk '/^PPid:/ { print $2 }' "/proc/$WPID/status" 2>/dev/null)
  [ -n "$WPID" ] && PIDS="$PIDS $WPID"
  line=$(grep -s "^apptheus exec: container " "$S/$name.err" | head -n 1)
  ID=$(echo "$line" | awk '{ print $4 }')
  CG_REPORTED=$(echo "$line" | awk '{ print $7 }')
  check "$name: alice's launcher is accepted and runs its command" \
    "$(head -c 300 "$S/$name.err")" eval '[ -n "$ID" ] && [ -n "$WPID" ]'
  check "$name: container id is apptheus_<launcher pid>" "$ID, launcher $LAUNCHER" [ "$ID" = "apptheus_$LAUNCHER" ]
}
# end NAME: kill the workload, wait for its launcher (through runuser)
end_workload() {
  kill -TERM "$WPID" 2>/dev/null
  wait "$RUNNER" 2>/dev/null
}
cpu_of() { value container_cpu_usage_seconds_total "name=\"$1\""; }
has_series() { scrape && [ "$(label container_cpu_usage_seconds_total name "name=\"$1\"")" = "$1" ]; }
busy_seen() { scrape && gt "$(value container_cpu_usage_seconds_total "name=\"$1\"" 'user="alice"')" 0; }
# root_launcher PHASE: a launcher running as root (as Apptainer's starter-suid does) is accepted
root_launcher() {
  "$APPTHEUS" exec -- true > "$S/root-launcher.out" 2>&1
  local rc=$?
  check "$1: a root launcher (as Apptainer's starter-suid runs) is accepted and its command runs" \
    "exit $rc: $(head -c 300 "$S/root-launcher.out")" [ $rc = 0 ]
}
# readopted PHASE ID BEFORE CGROUP: after a restart, the running container ID is exported again
# with the same id label, and its CPU counter (BEFORE s before the restart) did not go back
readopted() {
  local phase=$1 id=$2 before=$3 cg=$4 immediate after id_label
  has_series "$id"; immediate=$?
  wait_for 10 has_series "$id"
  check "$phase: the container is exported again after the restart (re-adopted)" "nothing for $id" has_series "$id"
  note "$phase: the re-adopted container was $([ $immediate = 0 ] && echo "exported at READY" || echo "not yet exported at READY")"
  after=$(cpu_of "$id")
  check "$phase: its CPU counter does not go back ($before s before, $after s after)" "$after" ge "$after" "$before"
  id_label=$(label container_cpu_usage_seconds_total id "name=\"$id\"")
  check "$phase: same id label after the restart" "$id_label" [ "$id_label" = "$cg" ]
}


# --- the guest -----------------------------------------------------------------------------------
note "guest: $(. /etc/os-release; echo "$PRETTY_NAME"), $(systemctl --version | head -n 1), kernel $(uname -r)"
note "vm-test.service started at uptime $(uptime_s) s"
check "systemd is PID 1" "$(cat /proc/1/comm)" [ "$(cat /proc/1/comm)" = systemd ]
got=$(stat -f -c %T /sys/fs/cgroup)
check "pure cgroup v2 at /sys/fs/cgroup (no v1 mount)" "$got" eval '[ "$got" = cgroup2fs ] && ! grep -q " cgroup " /proc/mounts'
got=$(systemctl --failed --plain --no-legend --no-pager | awk '{ print $1 }' | tr '\n' ' ')
check "no unit failed while booting" "$got" [ -z "$got" ]
mkdir -p "$ALICE_DIR" && chown alice "$ALICE_DIR"


# --- a. install: the service is ready when apt-get returns ---------------------------------------
# Apptainer is not in Debian: the starters the package's /etc/default/apptheus trusts are stood
# in for by copies of /bin/true, as a machine with Apptainer installed has them.
mkdir -p /usr/libexec/apptainer/bin
cp /bin/true /usr/libexec/apptainer/bin/starter
cp /bin/true /usr/libexec/apptainer/bin/starter-suid && chmod 4755 /usr/libexec/apptainer/bin/starter-suid
# apt-get, not dpkg -i: the way an administrator installs a downloaded package. Offline, which
# works because every dependency is already in the guest (apt has no package lists here).
t0=$(uptime_s)
apt-get install -y "$DEB" > "$S/install.log" 2>&1
rc=$?
t1=$(uptime_s)
# No retry and no wait from here on: Type=notify makes `active` mean "serving".
state=$(systemctl is-active apptheus)
scrape; scraped=$?
[ -S "$SOCK" ]; socket=$?
check "install: apt-get install -y $DEB succeeds" "exit $rc" [ $rc = 0 ]
[ $rc = 0 ] || show "apt-get install" "$S/install.log" 30
note "install: apt-get took $(minus "$t1" "$t0") s, done at uptime $t1 s"
check "install: the service is active as soon as apt-get returns" "$state" [ "$state" = active ]
check "install: /metrics on :$PORT answers as soon as apt-get returns" "curl exit $scraped" [ $scraped = 0 ]
check "install: $SOCK is a socket as soon as apt-get returns" "$(ls -l "$SOCK" 2>&1)" [ $socket = 0 ]
got=$(prop Type)
check "install: the unit is Type=notify" "$got" [ "$got" = notify ]
got=$(prop NotifyAccess)
check "install: the unit accepts notifications (NotifyAccess)" "$got" eval '[ -n "$got" ] && [ "$got" != none ]'
wd=$(prop WatchdogUSec)
check "install: the unit has a watchdog (WatchdogSec)" "$wd" eval '[ -n "$wd" ] && [ "$wd" != 0 ] && [ "$wd" != infinity ]'
got=$(systemctl is-enabled apptheus 2>&1)
check "install: the service is enabled" "$got" [ "$got" = enabled ]
got=$(dpkg-query -W -f '${Conffiles}' apptheus 2>&1)
check "install: /etc/default/apptheus is a conffile" "$got" has_words "$got" "$DEFAULTS"
got=$(sed -n 's/^ARGS=//p' "$DEFAULTS")
check "install: the default ARGS trust Apptainer's starters" "$got" \
  has_words "$(echo "$got" | tr ';"=' '   ')" /usr/libexec/apptainer/bin/starter /usr/libexec/apptainer/bin/starter-suid
note "unit: $(systemctl show -p Type,NotifyAccess,WatchdogUSec,Delegate,KillMode,Restart apptheus | tr '\n' ' ')"
main=$(prop MainPID)
note "install: agent pid $main in cgroup $(cgroup_of "$main"); start to READY $(awk -v a="$(prop ExecMainStartTimestampMonotonic)" -v b="$(prop ActiveEnterTimestampMonotonic)" 'BEGIN { printf "%.2f", (b - a) / 1e6 }') s"
note "install: apptheus_ebpf_up $(value apptheus_ebpf_up)"
# the watchdog is fed: a ping arrives after READY, within WatchdogSec
wd_s=$(echo "$wd" | awk '!/^[0-9]/ { print 1; next } /min/ { print 60 * $1; next } /ms/ { print 1; next } { print int($1) + 1 }')
pinged() { [ "$(prop WatchdogTimestampMonotonic)" -gt "$(($(prop ActiveEnterTimestampMonotonic) + 500000))" ] 2>/dev/null; }
wait_for "$wd_s" pinged
check "install: the agent pings the watchdog (a WATCHDOG=1 after READY)" \
  "ready at $(prop ActiveEnterTimestampMonotonic) us, last ping at $(prop WatchdogTimestampMonotonic) us" pinged


# --- b. a container of an unprivileged user ------------------------------------------------------
set_args "$GOOD_ARGS"
restart_service "trust apptheus"
check "auto: systemctl restart with ARGS=\"$GOOD_ARGS\" succeeds" "exit $RC: $(cat "$S/restart.log")" [ $RC = 0 ]
check "auto: the service is active" "$(systemctl is-active apptheus)" active
start_alice auto 'exec sha256sum /dev/zero'
wait_for 10 busy_seen "$ID"
check "auto: alice's busy container has CPU usage (user=\"alice\") within 10 s" \
  "$(grep "^container_cpu_usage_seconds_total{.*name=\"$ID\"" "$S/metrics" | head -n 2)" busy_seen "$ID"
ebpf_seen() { scrape && [ "$(value container_context_switches_total "name=\"$1\"")" != none ]; }
wait_for 5 ebpf_seen "$ID"
check "auto: the container has eBPF counters (container_context_switches_total)" "none" ebpf_seen "$ID"
# what the agent logged since it was installed: nothing to warn about in this setup
got=$(journalctl -u apptheus -o cat --no-pager | grep -E 'level=(warn|error)')
check "auto: the agent logged no warning or error since the install" "$(echo "$got" | head -n 3)" [ -z "$got" ]


# --- c. where the container's cgroup is ----------------------------------------------------------
cg=$(cgroup_of "$WPID")
id_label=$(label container_cpu_usage_seconds_total id "name=\"$ID\"")
check "auto: the launcher reports the workload's cgroup" "reported $CG_REPORTED, /proc says $cg" [ "$CG_REPORTED" = "$cg" ]
check "auto: the id label is the workload's cgroup" "id=$id_label, /proc says $cg" [ "$id_label" = "$cg" ]
case "$cg" in
  "/system.slice/vm-test.service/$ID") where="nested in the caller's unit (vm-test.service)" ;;
  "$CONTAINERS/$ID") where="below apptheus.service/containers" ;;
  *) where= ;;
esac
check "auto: the container is nested in its caller's cgroup or below apptheus.service/containers" "$cg" [ -n "$where" ]
note "auto: default placement put alice's container $where: $cg"
root_launcher auto
# restart with this container running (wherever the default placement put it)
scrape; before=$(cpu_of "$ID")
restart_service "auto: restart with a container"
check "auto restart: systemctl restart with a running container succeeds" "exit $RC: $(head -n 1 "$S/restart.log")" [ $RC = 0 ]
readopted "auto restart" "$ID" "$before" "$cg"
check "auto restart: the workload kept running in its cgroup" "$(cgroup_of "$WPID")" [ "$(cgroup_of "$WPID")" = "$cg" ]
end_workload
recover "after the default placement"


# --- c/d/f. --placement=move: restarts and stops while a container runs --------------------------
set_args "$GOOD_ARGS --placement=move"
restart_service "placement move"
check "move: systemctl restart with --placement=move succeeds" "exit $RC: $(cat "$S/restart.log")" [ $RC = 0 ]
start_alice move 'exec sha256sum /dev/zero'
cg=$(cgroup_of "$WPID")
check "move: the container is in apptheus.service/containers/<id>" "$cg" [ "$cg" = "$CONTAINERS/$ID" ]
wait_for 10 busy_seen "$ID"
check "move: alice's container has CPU usage" "$(cpu_of "$ID")" busy_seen "$ID"
wait_for 5 ebpf_seen "$ID"
check "move: the container has eBPF counters (container_context_switches_total)" "none" ebpf_seen "$ID"
id_label=$(label container_cpu_usage_seconds_total id "name=\"$ID\"")
check "move: the id label is the workload's cgroup" "id=$id_label, /proc says $cg" [ "$id_label" = "$cg" ]
root_launcher move

# d. restart with the container running. systemd starts a service's main process in the root of
# the unit's cgroup, and that cgroup here enables controllers for the containers' subtree (the
# no-internal-process rule): before systemd 254's DelegateSubgroup= that start fails
# (219/CGROUP) while a container lives below the unit, and Restart=on-failure retries it every
# RestartSec. What must hold (README, "Running under systemd"): the workload is untouched, the
# service comes back by itself once the container ends, and nothing is lost (the container is
# exported as ended with its whole CPU time, and its cgroup is removed).
# moved_and_ended PHASE ID BEFORE: after the container ID ended while the agent was down
moved_and_ended() {
  local phase=$1 id=$2 before=$3 after
  wait_for 30 active
  check "$phase: the service is active again once the container ended" "$(systemctl is-active apptheus)" active
  ended() { scrape && [ "$(value container_end_time_seconds "name=\"$1\"")" != none ]; }
  wait_for 10 ended "$id"
  check "$phase: the container is exported as ended (container_end_time_seconds)" "nothing for $id" ended "$id"
  after=$(cpu_of "$id")
  check "$phase: its CPU counter did not go back ($before s before, $after s after)" "$after" ge "$after" "$before"
  wait_for 10 gone "$CG$CONTAINERS/$id"
  check "$phase: its cgroup is removed" "$(ls "$CG$CONTAINERS" 2>&1 | tr '\n' ' ')" gone "$CG$CONTAINERS/$id"
}
SYSTEMD=$(systemctl --version | awk 'NR == 1 { print $2 }')
scrape; before=$(cpu_of "$ID")
restart_service "move: restart with a container"
if [ "$SYSTEMD" -lt 254 ]; then
  check "move restart (systemd $SYSTEMD < 254): systemctl restart fails while a container lives below the unit" "exit $RC" [ $RC != 0 ]
  got=$(journalctl -u apptheus -o cat --no-pager | grep -c 'status=219/CGROUP')
  check "move restart: systemd names the cause (status=219/CGROUP in the journal)" "$(journal 5 | tr '\n' '|')" [ "$got" -gt 0 ]
else
  check "move restart: systemctl restart with a running container succeeds" "exit $RC: $(head -n 1 "$S/restart.log")" [ $RC = 0 ]
  readopted "move restart" "$ID" "$before" "$CONTAINERS/$ID"
fi
check "move restart: the workload kept running" "pid $WPID gone" alive "$WPID"
check "move restart: the workload is still in its cgroup" "$(cgroup_of "$WPID")" [ "$(cgroup_of "$WPID")" = "$CONTAINERS/$ID" ]
scrape; sleep 1
end_workload
moved_and_ended "move restart" "$ID" "$before"
recover "after the restart"

# f. stop leaves the container alone; it ends while the agent is stopped; start again
start_alice move2 'exec sha256sum /dev/zero'
wait_for 10 busy_seen "$ID"
scrape; before=$(cpu_of "$ID")
systemctl stop apptheus > "$S/stop.log" 2>&1
rc=$?
check "stop: systemctl stop apptheus succeeds" "exit $rc: $(cat "$S/stop.log")" [ $rc = 0 ]
check "stop: the service is inactive" "$(systemctl is-active apptheus)" [ "$(systemctl is-active apptheus)" = inactive ]
check "stop: the container's workload is alive" "pid $WPID gone" alive "$WPID"
check "stop: its cgroup is still there with the workload in it" "$(cat "$CG$CONTAINERS/$ID/cgroup.procs" 2>&1 | tr '\n' ' ')" \
  grep -qx "$WPID" "$CG$CONTAINERS/$ID/cgroup.procs"
end_workload
systemctl start apptheus > "$S/start.log" 2>&1
rc=$?
check "stop: systemctl start apptheus succeeds once the container ended" "exit $rc: $(head -n 1 "$S/start.log")" [ $rc = 0 ]
if [ $rc != 0 ]; then journal 8 | sed 's/^/#   /'; fi
moved_and_ended "stop" "$ID" "$before"
recover "after the stop"


# --- e. upgrade: the store survives ---------------------------------------------------------------
start_alice short 'sleep 2; head -c 20000000 /dev/zero | sha256sum > /dev/null'
SHORT_ID=$ID
wait "$RUNNER"
rc=$?
check "upgrade: a short container ran and ended (exit 0)" "exit $rc" [ $rc = 0 ]
wait_for 10 eval 'scrape && [ "$(value container_end_time_seconds "name=\"$SHORT_ID\"")" != none ]'
check "upgrade: the ended container is retained (container_end_time_seconds)" \
  "$(value container_end_time_seconds "name=\"$SHORT_ID\"")" [ "$(value container_end_time_seconds "name=\"$SHORT_ID\"")" != none ]
short_cpu=$(cpu_of "$SHORT_ID")
t0=$(uptime_s)
apt-get install -y --reinstall "$DEB" > "$S/reinstall.log" 2>&1
rc=$?
state=$(systemctl is-active apptheus)
check "upgrade: apt-get install --reinstall succeeds" "exit $rc" [ $rc = 0 ]
[ $rc = 0 ] || show "apt-get install --reinstall" "$S/reinstall.log" 30
note "upgrade: apt-get took $(minus "$(uptime_s)" "$t0") s"
check "upgrade: the service is active when apt-get returns" "$state" [ "$state" = active ]
check "upgrade: $STORE exists" "$(ls -l /var/lib/apptheus 2>&1)" [ -s "$STORE" ]
got=$(sed -n 's/^ARGS=//p' "$DEFAULTS")
check "upgrade: the local /etc/default/apptheus is kept" "$got" [ "$got" = "\"$GOOD_ARGS --placement=move\"" ]
wait_for 5 has_series "$SHORT_ID"
check "upgrade: the ended container's series are still exported" "nothing for $SHORT_ID" has_series "$SHORT_ID"
got=$(cpu_of "$SHORT_ID")
check "upgrade: with the same CPU total ($short_cpu s)" "$got" eq "$got" "$short_cpu"
recover "after the upgrade"


# --- g. bad configuration: the service fails with the agent's one line ---------------------------
# bad_args WHAT ARGS PATTERN: restart with ARGS fails, and the agent's line (`apptheus: ...`,
# matching PATTERN) is in the journal and in systemctl status
bad_args() {
  local what=$1 pattern=$3 line
  set_args "$2"
  restart_service "$what"
  check "$what: systemctl restart fails" "exit $RC" [ $RC != 0 ]
  check "$what: the service is not active" "$(systemctl is-active apptheus)" inactive
  wait_for 5 eval 'journal 50 | grep -q "^apptheus: .*$pattern"'
  line=$(journal 50 | grep "^apptheus: .*$pattern" | tail -n 1)
  check "$what: the journal has the agent's one line naming it" "$(journal 8 | tr '\n' '|')" [ -n "$line" ]
  note "$what: $line"
  # right after the failure systemd 252's status may show no log lines yet: allow the next
  # automatic restart (RestartSec) to fail the same way
  status_shows() { systemctl status apptheus --no-pager -n 20 > "$S/status.log" 2>&1; grep -q "apptheus: .*$pattern" "$S/status.log"; }
  t0=$(uptime_s)
  wait_for 12 status_shows
  shown=$?
  check "$what: systemctl status shows it (within 12 s)" "$(tail -n 3 "$S/status.log" | tr '\n' '|')" [ $shown = 0 ]
  if [ $shown = 0 ]; then
    note "$what: systemctl status showed it after $(minus "$(uptime_s)" "$t0") s"
  else
    # systemctl status shows the log from the unit's last exit from the inactive state on
    note "$what: unit $(systemctl show -p SubState,InactiveExitTimestampMonotonic,NRestarts apptheus | tr '\n' ' ')"
    note "$what: the agent's line was logged at $(journalctl -u apptheus -o short-monotonic --no-pager | grep "apptheus\[[0-9]*\]: apptheus: " | tail -n 1 | sed 's/\].*/] s/')"
  fi
  systemctl reset-failed apptheus 2>/dev/null
}
bad_args "unknown flag" "$GOOD_ARGS --no.such-flag" "no.such-flag"
bad_args "missing trust path" "--trust.path=/nonexistent/starter" "/nonexistent/starter"
set_args "$GOOD_ARGS"
restart_service "good ARGS again"
check "good ARGS again: the service starts" "exit $RC: $(systemctl is-active apptheus)" [ $RC = 0 ]


# --- h. purge --------------------------------------------------------------------------------------
apt-get purge -y apptheus > "$S/purge.log" 2>&1
rc=$?
check "purge: apt-get purge -y apptheus succeeds" "exit $rc" [ $rc = 0 ]
[ $rc = 0 ] || show "apt-get purge" "$S/purge.log" 30
got=$(ls /lib/systemd/system/apptheus.service /usr/lib/systemd/system/apptheus.service /etc/systemd/system/multi-user.target.wants/apptheus.service 2>/dev/null)
check "purge: the unit file and its enablement are gone" "$got" [ -z "$got" ]
check "purge: /var/lib/apptheus is gone" "$(ls -la /var/lib/apptheus 2>&1 | head -n 3)" gone /var/lib/apptheus
check "purge: $DEFAULTS is gone" "$(cat "$DEFAULTS" 2>&1)" gone "$DEFAULTS"
check "purge: /usr/bin/apptheus is gone" "present" gone /usr/bin/apptheus
got=$(pgrep -a -f '^/usr/bin/apptheus --cgroup.parent')
check "purge: no agent is running" "$got" [ -z "$got" ]
systemctl status apptheus > "$S/status.log" 2>&1
rc=$?
# systemctl status: 4 = no such unit; 3 = not active (a unit still loaded from memory)
check "purge: systemctl status apptheus says not found or inactive (status $rc)" "$(head -n 3 "$S/status.log" | tr '\n' '|')" \
  eval '[ $rc = 4 ] || [ $rc = 3 ]'
note "purge: systemctl status: $(head -n 2 "$S/status.log" | tr '\n' ' ')"
got=$(dpkg-query -W -f '${Status}' apptheus 2>/dev/null)
check "purge: dpkg knows the package no more" "$got" eval '[ -z "$got" ] || [ "$got" = "unknown ok not-installed" ]'


# --- without Apptainer: what the package's default configuration does there (a note) ------------
rm -r /usr/libexec/apptainer
dpkg -i "$DEB" > "$S/install-bare.log" 2>&1
rc=$?
note "without Apptainer: dpkg -i exit $rc, service $(systemctl is-active apptheus), $(journal 5 | grep '^apptheus: ' | tail -n 1)"
[ $rc = 0 ] || show "without Apptainer: dpkg -i" "$S/install-bare.log" 12
dpkg --purge apptheus > "$S/purge-bare.log" 2>&1 || dpkg --purge --force-all apptheus > "$S/purge-bare.log" 2>&1


# --- the README's quick start, as written, by alice with sudo -------------------------------------
# The block between the quickstart markers of README.md, run in alice's home from a shell that
# stops at the first failing command, with the package where `cargo xtask dist` puts it (the
# README names the file: a new version must update it). This machine has no Apptainer (removed
# above), as a newcomer's may not.
QS=/home/alice/quickstart.sh
sed -n '/^<!-- quickstart:/,/^<!-- \/quickstart -->/p' /tests/README.md | sed '1,/^```sh$/d; /^```$/,$d' > "$QS"
note "quick start: $(wc -l < "$QS") lines from README.md"
named=$(sed -n 's|^sudo apt install \./\(target/dist/[^ ]*\.deb\)$|\1|p' "$QS")
check "quick start: the README installs the package file cargo xtask dist builds ($(basename "$DEB"))" \
  "README names '${named:-nothing}'" [ "$(basename "${named:-none}")" = "$(basename "$DEB")" ]
mkdir -p /home/alice/target/dist && cp "$DEB" /home/alice/target/dist/ && chown -R alice /home/alice/target "$QS"
(cd /home/alice && runuser -u alice -- bash -e "$QS") > "$S/quickstart.out" 2> "$S/quickstart.err"
rc=$?
check "quick start: every command succeeds as alice (bash -e, exit $rc)" "$(tail -n 5 "$S/quickstart.err" | tr '\n' '|')" [ $rc = 0 ]
line=$(grep '^container_cpu_usage_seconds_total{' "$S/quickstart.out" | grep 'user="alice"' | head -n 1)
check "quick start: it prints alice's program's CPU time" "$(head -c 300 "$S/quickstart.out")" [ -n "$line" ]
note "quick start: $line"
qs_launcher=$(pgrep -u alice -f '^apptheus exec -- timeout 20')
for p in $qs_launcher; do PIDS="$PIDS $p"; done
apt-get purge -y apptheus > "$S/purge-qs.log" 2>&1


if [ "$VERBOSE" = 1 ] || [ "$FAILED" -gt 0 ]; then
  note "journal of apptheus.service (last 60 lines):"
  journalctl -u apptheus --no-pager -o short-monotonic -n 60 2>&1 | sed 's/^/#   /'
fi
note "vm-test.service done at uptime $(uptime_s) s: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]

#!/bin/sh
# End-to-end test of the apptheus agent on pure cgroup v1 (every controller mounted on its own,
# cpu+cpuacct and net_cls+net_prio co-mounted, no unified hierarchy: RHEL 8's layout), run as
# root (busybox sh) inside the VM that `cargo xtask vm-test --cgroup v1` boots. See README.md.
#
# The same three phases as guest-test.sh, with v1's files:
# Phase 1: absolute --cgroup.parent=/metric_gateway; a busy and an idle container; placement in
#   the cpu,cpuacct, memory, pids and blkio hierarchies (cpuset, devices and freezer untouched);
#   the metrics checked against cpuacct.usage, memory.usage_in_bytes, cgroup.procs and
#   blkio.throttle.io_service_bytes_recursive; no PSI and no eBPF series (v1 has neither for a
#   cgroup: omitted, not 0); exit statuses, trust, removal.
# Phase 2: the agent in a delegated /system.slice/apptheus.service (in every hierarchy, as systemd
#   creates a Delegate=yes service on v1) with a relative --cgroup.parent=containers.
# Phase 3: Slurm's v1 tree /slurm/uid_0/job_42/step_0/task_0 in every hierarchy, limits and the
#   device rule on job_42, the launcher in task_0, default placement: the container nests, keeps
#   every limit, the freezer holds every process, and Slurm's kill (freeze, kill each task of the
#   freezer cgroup, thaw) ends it.

. /tests/vm/lib.sh
mkdir -p /run/apptheus
# the hierarchies the agent places containers in, and those it must leave alone
PLACED="cpu,cpuacct memory pids blkio"
UNTOUCHED="cpuset devices freezer"

# --- the kernel's view ------------------------------------------------------------------------
# v1path PID CONTROLLER: the process's cgroup path in the hierarchy of CONTROLLER
v1path() { awk -F: -v c="$2" '{ n = split($2, a, ","); for (i = 1; i <= n; i++) if (a[i] == c) print $3 }' "/proc/$1/cgroup"; }
ns_to_s() { awk -v n="$1" 'BEGIN { printf "%.6f\n", n / 1000000000 }'; }
cpu_usage_s() { ns_to_s "$(cat "$CG/cpuacct/$1/cpuacct.usage")"; }
mem_usage() { cat "$CG/memory/$1/memory.usage_in_bytes"; }
blkio_wbytes() { awk '$2 == "Write" { s += $3 } END { print s + 0 }' "$CG/blkio/$1/blkio.throttle.io_service_bytes_recursive"; }

cleanup() {
  [ -n "$AGENT_PID" ] && kill -KILL "$AGENT_PID" 2>/dev/null
  for p in $(cat "$CG"/memory/metric_gateway/*/cgroup.procs "$CG"/memory/system.slice/apptheus.service/containers/*/cgroup.procs \
      "$CG"/freezer/slurm/uid_0/job_42/step_0/task_0/cgroup.procs 2>/dev/null); do
    kill -KILL "$p" 2>/dev/null
  done
  echo THAWED > "$CG/freezer/slurm/uid_0/job_42/freezer.state" 2>/dev/null
}
trap cleanup EXIT

# --- shared checks ----------------------------------------------------------------------------
# check_placement PHASE PATH PID...: the container's cgroup is PATH (from each hierarchy's root)
# in every placed hierarchy and holds the processes; the hierarchies the agent does not sample
# still have them where they were (WHERE_UNTOUCHED, default /)
check_placement() {
  local phase=$1 path=$2 h p got; shift 2
  for h in $PLACED; do
    check "$phase: cgroup $h$path exists" "missing" [ -d "$CG/$h$path" ]
  done
  for p in "$@"; do
    for h in $PLACED; do
      got=$(v1path "$p" "${h%%,*}")
      check "$phase: process $p is in $path in $h" "$got" [ "$got" = "$path" ]
    done
    for h in $UNTOUCHED; do
      got=$(v1path "$p" "$h")
      check "$phase: process $p stays in ${WHERE_UNTOUCHED:-/} in $h (not sampled: never touched)" "$got" [ "$got" = "${WHERE_UNTOUCHED:-/}" ]
    done
  done
}

# check_basic_metrics PHASE ID PATH LAUNCHER PORT: labels, cpu, memory, processes, block writes
check_basic_metrics() {
  local phase=$1 id=$2 path=$3 launcher=$4 port=$5 sel got want
  sel="name=\"$id\""
  got=$(label container_memory_usage_bytes id "$sel")
  check "$phase: id label is the cgroup path (memory hierarchy)" "'$got'" [ "$got" = "$path" ]
  got=$(label container_memory_usage_bytes pid "$sel")
  check "$phase: pid label is the launcher's pid" "'$got'" [ "$got" = "$launcher" ]

  got=$(value container_cpu_usage_seconds_total "$sel" 'cpu="total"'); want=$(cpu_usage_s "$path")
  check "$phase: cpu usage >= 1 s (three 2 s burners)" "$got" ge "$got" 1
  check "$phase: cpu usage matches cpuacct.usage ($want s)" "$got" near "$got" "$want"

  got=$(value container_memory_usage_bytes "$sel"); want=$(mem_usage "$path")
  check "$phase: memory usage >= 64 MiB (tmpfs file)" "$got" ge "$got" $((64 * MIB))
  check "$phase: memory usage matches memory.usage_in_bytes ($want)" "$got" near "$got" "$want"

  got=$(value container_processes "$sel"); want=$(nprocs "$CG/pids$path")
  check "$phase: processes = cgroup.procs ($want)" "$got" eq "$got" "$want"

  # Linux 6.1's v1 blkio.throttle.* counts only I/O under a throttle rule (README, "Cgroup
  # layouts"): here the workload's 4 MiB written under blkio.throttle.write_bps_device
  got=$(value container_fs_writes_bytes_total "$sel"); want=$(blkio_wbytes "$path")
  check "$phase: block writes >= 4 MiB (the direct write under a throttle rule)" "$got" ge "$got" $((4 * MIB))
  check "$phase: block writes match blkio.throttle.io_service_bytes_recursive ($want)" "$got" near "$got" "$want"
  got=$(label container_fs_writes_bytes_total device "$sel")
  check "$phase: block writes carry the device ram0" "'$got'" eval 'case "$got" in *ram0) true ;; *) false ;; esac'

  # peak memory and the CPU allocation (cAdvisor's names); this container has no CPU limit.
  # The peak is read every 10th sample (a rare counter), so it may trail the usage above by up
  # to ten intervals: scrape again until it has caught up (or 10 s).
  wait_until 10 peak_at_least "$port" "$sel" $((64 * MIB)) || true
  got=$(value container_memory_max_usage_bytes "$sel"); want=$(cat "$CG/memory$path/memory.max_usage_in_bytes")
  check "$phase: peak memory >= 64 MiB (the tmpfs file)" "$got" ge "$got" $((64 * MIB))
  check "$phase: peak memory matches memory.max_usage_in_bytes ($want)" "$got" near "$got" "$want"
  got=$(value container_spec_cpu_period "$sel"); want=$(cat "$CG/cpu,cpuacct$path/cpu.cfs_period_us")
  check "$phase: cpu period = cpu.cfs_period_us ($want)" "$got" eq "$got" "$want"
  got=$(value container_spec_cpu_quota "$sel")
  check "$phase: no cpu quota series while cpu.cfs_quota_us is $(cat "$CG/cpu,cpuacct$path/cpu.cfs_quota_us")" "$got" [ "$got" = none ]
  got=$(value container_spec_cpu_shares "$sel"); want=$(cat "$CG/cpu,cpuacct$path/cpu.shares")
  check "$phase: cpu shares = cpu.shares ($want)" "$got" eq "$got" "$want"
}

# wait_busy NAME MEMORY_CGROUP_DIR
wait_busy() {
  local got
  check "$1: workload ran" "$(cat "$S/$1.err" 2>/dev/null | head -c 300)" wait_until 60 test -e "$S/ready"
  got=$(cat "$S/ready" 2>/dev/null)
  check "$1: workload could set a blkio write limit on its own cgroup" "$got" [ "$got" = limits=ok ]
  got=$(cat "$S/cgroup" 2>/dev/null)
  check "$1: the workload runs in the launcher's cgroup" "$got" [ "$got" = "$2" ]
  sleep $SETTLE
}
release_busy() {
  timeout 5 sh -c "echo go > '$S/release'" || note "busy workload was not waiting"
}

# ============================================================================================
note "the guest: $(uname -r), $(nproc) CPUs"
got=$(awk '$3 == "cgroup2" { print $2 }' /proc/mounts)
check "pure cgroup v1: no cgroup2 mount" "$got" [ -z "$got" ]
for h in $PLACED $UNTOUCHED; do
  check "cgroup v1 $h is mounted at $CG/$h" "$(grep " $CG/$h " /proc/mounts)" test -f "$CG/$h/cgroup.procs"
done
check "/dev/ram0 exists (brd)" "missing" [ -b /dev/ram0 ]

# ============================================================================================
note "phase 1: absolute --cgroup.parent=/metric_gateway"
F0=$FAILED
if start_agent phase1 9091 /metric_gateway; then
  got=$(grep -o 'cgroups=V1' "$S/agent-phase1.log" | head -n 1)
  check "phase1: the agent recognises pure v1" "$(grep -m 1 'cgroups=' "$S/agent-phase1.log")" [ "$got" = cgroups=V1 ]
  mkfifo "$S/release"
  rm -f "$S/ready"
  start_container busy sh /tests/vm/busy-workload.sh "$S" 5555
  BUSY=$ID BUSY_CG=$CG_REPORTED BUSY_LAUNCHER=$LAUNCHER
  start_container idle sleep 600
  IDLE=$ID IDLE_LAUNCHER=$LAUNCHER
  # a CPU limit as `apptainer run --cpus 0.5` sets it, on the idle one (it does not slow the busy one)
  echo 50000 > "$CG/cpu,cpuacct/metric_gateway/$IDLE/cpu.cfs_quota_us" || note "phase1: cannot write the idle container's cpu.cfs_quota_us"
  wait_busy busy "$CG/memory/metric_gateway/$BUSY"

  check_placement phase1 "/metric_gateway/$BUSY" "$BUSY_LAUNCHER"
  check_placement phase1 "/metric_gateway/$IDLE" "$IDLE_LAUNCHER"
  IDLE_SLEEP=$(grep -v "^$IDLE_LAUNCHER\$" "$CG/memory/metric_gateway/$IDLE/cgroup.procs" 2>/dev/null | head -n 1)
  check "phase1: launcher reports the cgroup path" "'$BUSY_CG'" \
    eval 'case "$BUSY_CG" in */metric_gateway/"$BUSY") true ;; *) false ;; esac'

  scrape 9091 || fail "phase1: scrape /metrics" "wget failed"
  got=$(value apptheus_containers)
  check "phase1: apptheus_containers is 2" "$got" eq "$got" 2
  check_basic_metrics phase1 "$BUSY" "/metric_gateway/$BUSY" "$BUSY_LAUNCHER" 9091
  BUSY_CPU=$(value container_cpu_usage_seconds_total "name=\"$BUSY\"" 'cpu="total"')
  for r in cpu memory io; do
    got=$(value container_pressure_${r}_waiting_seconds_total "name=\"$BUSY\"")
    check "phase1: no $r pressure series (v1 has no PSI per cgroup: omitted, not 0)" "$got" [ "$got" = none ]
  done
  for m in container_execs_total container_context_switches_total container_network_transmit_bytes_total; do
    got=$(value $m "name=\"$BUSY\"")
    check "phase1: no $m (eBPF counts by cgroup v2 id: none on pure v1)" "$got" [ "$got" = none ]
  done
  note "phase1: apptheus_ebpf_up $(value apptheus_ebpf_up)"
  got=$(value container_processes "name=\"$IDLE\"")
  check "phase1: idle processes = 2 (launcher and sleep)" "$got" eq "$got" 2
  got=$(value container_spec_cpu_quota "name=\"$IDLE\"")
  check "phase1: idle cpu quota = cpu.cfs_quota_us 50000 (set after placement, seen at a settings refresh)" "$got" eq "$got" 50000
  got=$(value container_cpu_usage_seconds_total "name=\"$IDLE\"" 'cpu="total"')
  check "phase1: idle cpu usage < 0.5 s" "$got" eval 'num "$got" && ! ge "$got" 0.5'

  release_busy
  launcher_status busy; got=$STATUS
  check "phase1: busy launcher exits with the workload's status 0" "$got" [ "$got" = 0 ]
  [ -n "$IDLE_SLEEP" ] && kill -TERM "$IDLE_SLEEP"
  launcher_status idle; got=$STATUS
  check "phase1: idle launcher exits 143 when sleep is killed by SIGTERM" "$got" [ "$got" = 143 ]
  for h in $PLACED; do
    check "phase1: busy cgroup removed in $h" "still there after 10 s" wait_until 10 gone "$CG/$h/metric_gateway/$BUSY"
    check "phase1: idle cgroup removed in $h" "still there after 10 s" wait_until 10 gone "$CG/$h/metric_gateway/$IDLE"
  done
  sleep $SETTLE
  scrape 9091 || fail "phase1: scrape /metrics" "wget failed"
  got=$(value apptheus_containers)
  check "phase1: apptheus_containers is 0 at the end" "$got" eq "$got" 0
  got=$(value container_cpu_usage_seconds_total "name=\"$BUSY\"" 'cpu="total"')
  check "phase1: the ended container's cpu counter, if still exported, did not go backwards" "$got" \
    eval '[ "$got" = none ] || ge "$got" "$BUSY_CPU"'

  check_status_and_trust phase1 "$CG/memory/metric_gateway"
fi
stop_agent phase1 "$F0"

# ============================================================================================
note "phase 2: systemd's v1 layout, relative --cgroup.parent=containers below a delegated apptheus.service"
SERVICE=/system.slice/apptheus.service
# what systemd does for a Delegate=yes service on v1: the service's cgroup in every hierarchy,
# the main process started in it
for h in $PLACED $UNTOUCHED; do mkdir -p "$CG/$h$SERVICE"; done
echo 0 > "$CG/cpuset/system.slice/cpuset.mems"; cat "$CG/cpuset/cpuset.cpus" > "$CG/cpuset/system.slice/cpuset.cpus"
echo 0 > "$CG/cpuset$SERVICE/cpuset.mems"; cat "$CG/cpuset/cpuset.cpus" > "$CG/cpuset$SERVICE/cpuset.cpus"
F0=$FAILED
enter_service() {
  exec sh -c 'for h in $1; do echo $$ > "/sys/fs/cgroup/$h$0/cgroup.procs" || exit 1; done; shift; exec "$@"' \
    "$SERVICE" "$PLACED $UNTOUCHED" "$@"
}
if start_agent phase2 9092 containers enter_service; then
  rm -f "$S/ready" "$S/release" "$S/hold"; mkfifo "$S/release"
  start_container busy2 sh /tests/vm/busy-workload.sh "$S" 5556
  BUSY=$ID BUSY_LAUNCHER=$LAUNCHER
  wait_busy busy2 "$CG/memory$SERVICE/containers/$BUSY"
  check_placement phase2 "$SERVICE/containers/$BUSY" "$BUSY_LAUNCHER"
  scrape 9092 || fail "phase2: scrape /metrics" "wget failed"
  got=$(value apptheus_containers)
  check "phase2: apptheus_containers is 1" "$got" eq "$got" 1
  check_basic_metrics phase2 "$BUSY" "$SERVICE/containers/$BUSY" "$BUSY_LAUNCHER" 9092
  release_busy
  launcher_status busy2; got=$STATUS
  check "phase2: launcher exits with the workload's status 0" "$got" [ "$got" = 0 ]
  for h in $PLACED; do
    check "phase2: container cgroup removed in $h" "still there after 10 s" wait_until 10 gone "$CG/$h$SERVICE/containers/$BUSY"
  done
fi
stop_agent phase2 "$F0"

# ============================================================================================
note "phase 3: Slurm's v1 job tree with limits and a device rule, default placement (auto)"
JOB=/slurm/uid_0/job_42
TASK=$JOB/step_0/task_0
# What slurmstepd makes (task/cgroup, proctrack/cgroup): the tree in every hierarchy, limits and
# the device rule on the job, cpusets at every level (a v1 cpuset child starts empty).
for h in $PLACED $UNTOUCHED; do mkdir -p "$CG/$h$TASK"; done
for d in /slurm /slurm/uid_0 $JOB $JOB/step_0 $TASK; do
  echo 0 > "$CG/cpuset$d/cpuset.mems"; echo 0 > "$CG/cpuset$d/cpuset.cpus"
done
echo $((64 * MIB)) > "$CG/memory$JOB/memory.limit_in_bytes"
echo $((64 * MIB)) > "$CG/memory$JOB/memory.memsw.limit_in_bytes" || note "no memory.memsw (swap accounting off)"
echo 16 > "$CG/pids$JOB/pids.max"
echo 50000 > "$CG/cpu,cpuacct$JOB/cpu.cfs_quota_us"
echo "c 1:7 rwm" > "$CG/devices$JOB/devices.deny"
got=$(cat "$CG/devices$TASK/devices.list")
check "phase3: the job's device rule reaches task_0 (devices.list without c 1:7)" "'$got'" eval '! echo "$got" | grep -q "^c 1:7 "'
F0=$FAILED
if start_agent phase3 9093 /metric_gateway; then
  # the launcher starts inside task_0 in every hierarchy, as slurmstepd starts a job's task
  APPTHEUS_EXEC_VERBOSE=1 sh -c 'for h in $1; do echo $$ > "/sys/fs/cgroup/$h$0/cgroup.procs" || exit 1; done; shift; exec "$@"' \
    "$TASK" "$PLACED $UNTOUCHED" \
    "$APPTHEUS" exec --socket.path=/run/apptheus/gateway.sock -- sh -c '
    S=$0
    for i in 1 2; do timeout 2 md5sum /dev/zero > /dev/null & done; wait
    ( : > /dev/full ) 2>/dev/null && echo "device=opened" || echo "device=denied"
    ( : > /dev/null ) 2>/dev/null && echo "null=opened" || echo "null=denied"
    dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null && echo "oom=survived" || echo "oom=status$?"
    # past pids.max (16): forks fail; the sleeps started are recorded and ended again
    : > "$S/forked"
    ( i=0; while [ $i -lt 30 ]; do sleep 60 & echo $! >> "$S/forked"; i=$((i + 1)); done ) 2>/dev/null
    echo "forked=$(wc -l < "$S/forked")"
    while read -r p; do kill "$p"; done < "$S/forked"
    # a heartbeat the freezer must stop
    i=0; while :; do i=$((i + 1)); echo $i > "$S/tick"; sleep 0.2; done' "$S" > "$S/job.out" 2> "$S/job.err" &
  JOB_LAUNCHER=$!
  wait_until 20 grep -qs "^apptheus exec: container " "$S/job.err"
  ID=$(grep -s "^apptheus exec: container " "$S/job.err" | awk '{ print $4 }')
  NESTED=$TASK/$ID
  check "phase3: the container is nested in task_0 (auto: a move would drop the job limits)" "$(head -c 300 "$S/job.err")" [ -d "$CG/memory$NESTED" ]
  WHERE_UNTOUCHED=$TASK check_placement phase3 "$NESTED" "$JOB_LAUNCHER"
  wait_until 30 test -s "$S/tick"
  got=$(grep "^oom=" "$S/job.out")
  check "phase3: allocating 128 MiB under the job's 64 MiB memory.limit_in_bytes is OOM-killed" "$got" [ "$got" != "oom=survived" -a -n "$got" ]
  got=$(grep "^forked=" "$S/job.out")
  check "phase3: forking past the job's pids.max (16) fails ($got of 30 started)" "$got" eval '[ "${got#forked=}" -lt 16 ]'
  got=$(grep "^device=" "$S/job.out")
  check "phase3: opening the device the job denies (devices.deny) fails" "$got" [ "$got" = device=denied ]
  got=$(grep "^null=" "$S/job.out")
  check "phase3: other devices stay allowed (/dev/null)" "$got" [ "$got" = null=opened ]
  check "phase3: cpuset of the job applies (launcher on CPU 0 only)" "$(grep Cpus_allowed_list /proc/$JOB_LAUNCHER/status)" \
    eval 'grep -q "Cpus_allowed_list:[[:space:]]*0$" /proc/$JOB_LAUNCHER/status'
  got=$(awk '$1 == "nr_throttled" { print $2 }' "$CG/cpu,cpuacct$JOB/cpu.stat")
  check "phase3: the job's cpu.cfs_quota_us throttles the container's burners (job nr_throttled $got)" "$got" gt "$got" 0

  # the freezer: the agent never moved anything in it, so freezing the job stops every process
  echo FROZEN > "$CG/freezer$JOB/freezer.state"
  check "phase3: the job's freezer reaches FROZEN" "$(cat "$CG/freezer$JOB/freezer.state")" \
    wait_until 10 eval '[ "$(cat "$CG/freezer$JOB/freezer.state")" = FROZEN ]'
  got=$(for p in $(cat "$CG/memory$NESTED/cgroup.procs"); do grep -qx "$p" "$CG/freezer$TASK/cgroup.procs" || echo "$p"; done | tr '\n' ' ')
  check "phase3: every process of the container is in the job's freezer cgroup" "not there: $got" [ -z "$got" ]
  # the figures are compared while the job is frozen: the heartbeat forks a process every
  # 0.2 s, so a running container changes between the sample and the read of the kernel files
  sleep $SETTLE
  scrape 9093 || fail "phase3: scrape /metrics" "wget failed"
  sel="name=\"$ID\""
  got=$(label container_cpu_usage_seconds_total slurm_job_id "$sel")
  check "phase3: the series carry slurm_job_id=42 from the cgroup path" "'$got'" [ "$got" = 42 ]
  got=$(label container_cpu_usage_seconds_total id "$sel")
  check "phase3: the id label is the nested cgroup path" "'$got'" [ "$got" = "$NESTED" ]
  got=$(value container_cpu_usage_seconds_total "$sel" 'cpu="total"'); want=$(cpu_usage_s "$NESTED")
  check "phase3: cpu usage matches the nested cpuacct.usage ($want s)" "$got" near "$got" "$want"
  got=$(value container_memory_usage_bytes "$sel"); want=$(mem_usage "$NESTED")
  check "phase3: memory usage matches the nested memory.usage_in_bytes ($want; v1 nests with every controller)" "$got" near "$got" "$want"
  got=$(value container_processes "$sel"); want=$(nprocs "$CG/pids$NESTED")
  check "phase3: processes = the nested cgroup.procs ($want)" "$got" eq "$got" "$want"

  t1=$(cat "$S/tick"); sleep 1; t2=$(cat "$S/tick")
  check "phase3: the frozen container makes no progress (heartbeat $t1 -> $t2)" "$t1 -> $t2" [ "$t1" = "$t2" ]
  echo THAWED > "$CG/freezer$JOB/freezer.state"
  sleep 1; t3=$(cat "$S/tick")
  check "phase3: thawed, it goes on (heartbeat $t2 -> $t3)" "$t2 -> $t3" [ "$t3" != "$t2" ]

  # scancel on v1 (proctrack/cgroup): freeze, SIGKILL every task of the job's freezer cgroup, thaw
  echo FROZEN > "$CG/freezer$JOB/freezer.state"
  wait_until 10 eval '[ "$(cat "$CG/freezer$JOB/freezer.state")" = FROZEN ]'
  for p in $(cat "$CG/freezer$TASK/cgroup.procs"); do kill -KILL "$p"; done
  echo THAWED > "$CG/freezer$JOB/freezer.state"
  check "phase3: killing the job's freezer tasks kills the launcher" "still alive" wait_until 10 dead "$JOB_LAUNCHER"
  wait "$JOB_LAUNCHER" 2>/dev/null
  for h in $PLACED; do
    check "phase3: the nested cgroup is removed once empty ($h)" "still there after 10 s" wait_until 10 gone "$CG/$h$NESTED"
  done
fi
stop_agent phase3 "$F0"
for h in $PLACED $UNTOUCHED; do
  rmdir "$CG/$h$TASK" "$CG/$h$JOB/step_0" "$CG/$h$JOB" "$CG/$h/slurm/uid_0" "$CG/$h/slurm" 2>/dev/null
done

echo "# guest-test-v1: $PASSED passed, $FAILED failed"
[ $FAILED = 0 ]

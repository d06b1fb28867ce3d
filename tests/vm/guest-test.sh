#!/bin/sh
# End-to-end test of the apptheus agent on a pure cgroup v2 hierarchy, run as root (busybox sh)
# inside the VM that `cargo xtask vm-test` boots. See README.md.
#
# Phase 1: the agent with an absolute --cgroup.parent (/metric_gateway, from the root of the
#   hierarchy); a busy container (busy-workload.sh) and an idle one (sleep); placement, the
#   no-internal-process rule, cgroup and eBPF metrics checked against the kernel's own files;
#   exit statuses, trust, and removal of the cgroups.
# Phase 2: the systemd layout: the agent started inside a delegated subtree
#   (/system.slice/apptheus.service) with a relative --cgroup.parent=containers; it must move
#   itself into a leaf and place the container in apptheus.service/containers/<id>.
#
# Every check prints "ok - WHAT" or "not ok - WHAT (got ...)"; the host counts these lines. The
# script ends with the counts and exits 1 if anything failed.

. /tests/vm/lib.sh
mkdir -p /run/apptheus
CONTROLLERS="cpu io memory pids"

# --- the kernel's view ------------------------------------------------------------------------
cpu_usage_s() { usec_to_s "$(awk '$1 == "usage_usec" { print $2 }' "$1/cpu.stat")"; }
# psi_total DIR RESOURCE some|full -> seconds
psi_total() { usec_to_s "$(awk -v k="$3" '$1 == k { sub("total=", "", $5); print $5 }' "$1/$2.pressure")"; }
io_wbytes() { awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^wbytes=/) { sub("wbytes=", "", $i); s += $i } } END { print s + 0 }' "$1/io.stat"; }

cleanup() {
  [ -n "$AGENT_PID" ] && kill -KILL "$AGENT_PID" 2>/dev/null
  for p in $(cat "$CG"/metric_gateway/*/cgroup.procs "$CG"/system.slice/apptheus.service/containers/*/cgroup.procs 2>/dev/null); do
    kill -KILL "$p" 2>/dev/null
  done
}
trap cleanup EXIT

# --- shared checks ----------------------------------------------------------------------------
# check_parent PHASE PARENT_DIR: the parent delegates the controllers and holds no process
check_parent() {
  local phase=$1 parent=$2 got
  got=$(cat "$parent/cgroup.subtree_control" 2>/dev/null)
  check "$phase: $CONTROLLERS enabled in ${parent#$CG}/cgroup.subtree_control" "'$got'" has_words "$got" $CONTROLLERS
  got=$(nprocs "$parent")
  check "$phase: no process in ${parent#$CG} itself (no-internal-process rule)" "$got processes" [ "$got" = 0 ]
}

# check_placement PHASE PARENT_DIR ID PID...: the container's cgroup is PARENT_DIR/ID, holds the
# given processes, and has the controllers
check_placement() {
  local phase=$1 parent=$2 id=$3 dir rel p got; shift 3
  dir=$parent/$id
  check "$phase: cgroup $dir exists" "missing" [ -d "$dir" ]
  rel=${dir#$CG}
  for p in "$@"; do
    got=$(cut -d: -f3 "/proc/$p/cgroup" 2>/dev/null)
    check "$phase: process $p is in $rel" "$got" [ "$got" = "$rel" ]
  done
  got=$(cat "$dir/cgroup.controllers" 2>/dev/null)
  check "$phase: $CONTROLLERS available in the container cgroup" "'$got'" has_words "$got" $CONTROLLERS
}

# check_basic_metrics PHASE ID DIR LAUNCHER PORT: labels, cpu, memory, processes, block writes
check_basic_metrics() {
  local phase=$1 id=$2 dir=$3 launcher=$4 port=$5 sel got want
  sel="name=\"$id\""
  got=$(label container_memory_usage_bytes id "$sel")
  check "$phase: id label is the cgroup path" "'$got'" [ "$got" = "${dir#$CG}" -o "$got" = "$dir" ]
  got=$(label container_memory_usage_bytes pid "$sel")
  check "$phase: pid label is the launcher's pid" "'$got'" [ "$got" = "$launcher" ]
  got=$(label container_memory_usage_bytes user "$sel")
  check "$phase: user label is root" "'$got'" [ "$got" = root ]

  got=$(value container_cpu_usage_seconds_total "$sel" 'cpu="total"'); want=$(cpu_usage_s "$dir")
  check "$phase: cpu usage >= 1 s (three 2 s burners)" "$got" ge "$got" 1
  check "$phase: cpu usage matches cpu.stat usage_usec ($want s)" "$got" near "$got" "$want"

  got=$(value container_memory_usage_bytes "$sel"); want=$(cat "$dir/memory.current")
  check "$phase: memory usage >= 64 MiB (tmpfs file)" "$got" ge "$got" $((64 * MIB))
  check "$phase: memory usage matches memory.current ($want)" "$got" near "$got" "$want"

  got=$(value container_processes "$sel"); want=$(nprocs "$dir")
  check "$phase: processes = cgroup.procs ($want)" "$got" eq "$got" "$want"

  got=$(value container_fs_writes_bytes_total "$sel"); want=$(io_wbytes "$dir")
  check "$phase: block writes >= 20 MiB (direct writes to /dev/ram0)" "$got" ge "$got" $((20 * MIB))
  check "$phase: block writes match io.stat wbytes ($want)" "$got" near "$got" "$want"
  got=$(label container_fs_writes_bytes_total device "$sel")
  check "$phase: block writes carry the device ram0" "'$got'" eval 'case "$got" in *ram0) true ;; *) false ;; esac'

  # peak memory and the CPU allocation (cAdvisor's names); this container has no CPU limit.
  # The peak is read every 10th sample (a rare counter), so it may trail the usage above by up
  # to ten intervals: scrape again until it has caught up (or 10 s).
  wait_until 10 peak_at_least "$port" "$sel" $((64 * MIB)) || true
  got=$(value container_memory_max_usage_bytes "$sel"); want=$(cat "$dir/memory.peak")
  check "$phase: peak memory >= 64 MiB (the tmpfs file)" "$got" ge "$got" $((64 * MIB))
  check "$phase: peak memory matches memory.peak ($want)" "$got" near "$got" "$want"
  got=$(value container_spec_cpu_period "$sel"); want=$(cut -d' ' -f2 "$dir/cpu.max")
  check "$phase: cpu period = cpu.max's period ($want)" "$got" eq "$got" "$want"
  got=$(value container_spec_cpu_quota "$sel")
  check "$phase: no cpu quota series while cpu.max is '$(cat "$dir/cpu.max")'" "$got" [ "$got" = none ]
  want=$(awk '{ printf "%d\n", 2 + int(($1 - 1) * 262142 / 9999) }' "$dir/cpu.weight")
  got=$(value container_spec_cpu_shares "$sel")
  check "$phase: cpu shares = cpu.weight $(cat "$dir/cpu.weight") mapped as cAdvisor does ($want)" "$got" eq "$got" "$want"
  want=$(effective_cpus "$dir"); got=$(value container_spec_cpuset_cpus "$sel")
  check "$phase: cpuset CPUs = the count of cpuset.cpus.effective '$want'" "$got" eq "$got" "$(cpulist_count "$want")"
}

# check_pressure PHASE ID DIR: PSI waiting/stalled totals equal the kernel's; waiting is non-zero
check_pressure() {
  local phase=$1 id=$2 dir=$3 sel got want r
  sel="name=\"$id\""
  for r in cpu memory io; do
    got=$(value container_pressure_${r}_waiting_seconds_total "$sel"); want=$(psi_total "$dir" $r some)
    check "$phase: $r pressure (waiting) > 0" "$got" gt "$got" 0
    check "$phase: $r pressure (waiting) matches $r.pressure some ($want s)" "$got" near "$got" "$want"
    got=$(value container_pressure_${r}_stalled_seconds_total "$sel"); want=$(psi_total "$dir" $r full)
    check "$phase: $r pressure (stalled) matches $r.pressure full ($want s)" "$got" near "$got" "$want"
  done
}

# check_ebpf PHASE BUSY_ID IDLE_ID
check_ebpf() {
  local phase=$1 busy="name=\"$2\"" idle="name=\"$3\"" got
  got=$(value apptheus_ebpf_up)
  check "$phase: apptheus_ebpf_up is 1" "$got" eq "$got" 1
  got=$(value container_execs_total "$busy")
  check "$phase: busy execs >= 20" "$got" ge "$got" 20
  got=$(value container_execs_total "$idle")
  check "$phase: idle execs >= 1 (sleep)" "$got" ge "$got" 1
  got=$(value container_context_switches_total "$busy")
  check "$phase: busy context switches > 0" "$got" gt "$got" 0
  got=$(value container_runqueue_latency_seconds_count "$busy")
  check "$phase: busy run-queue waits > 0" "$got" gt "$got" 0
  got=$(value apptheus_ebpf_program_attached 'program="sched_wakeup"')
  note "$phase: sched_wakeup program: $got (none: run-queue waits read from sched_info)"
  got=$(value container_network_transmit_bytes_total "$busy")
  check "$phase: busy network transmit >= 2 MiB (loopback)" "$got" ge "$got" $((2 * MIB))
  got=$(value container_network_receive_bytes_total "$busy")
  check "$phase: busy network receive >= 2 MiB (loopback)" "$got" ge "$got" $((2 * MIB))
  got=$(value container_network_transmit_bytes_total "$idle")
  check "$phase: idle network transmit < 64 KiB" "$got" eval '[ "$got" = none ] || ! ge "$got" 65536'
}

# wait_busy NAME CGROUP_DIR: wait for busy-workload.sh to be ready (and a few samples to be taken)
wait_busy() {
  local got
  check "$1: workload ran" "$(cat "$S/$1.err" 2>/dev/null | head -c 300)" wait_until 60 test -e "$S/ready"
  got=$(cat "$S/ready" 2>/dev/null)
  check "$1: workload could set memory.high and io.max on its own cgroup" "$got" [ "$got" = limits=ok ]
  got=$(cat "$S/cgroup" 2>/dev/null)
  check "$1: the workload runs in the launcher's cgroup" "$got" [ "$got" = "$2" ]
  sleep $SETTLE
}
release_busy() {
  timeout 5 sh -c "echo go > '$S/release'" || note "busy workload was not waiting"
}

# ============================================================================================
note "the guest: $(uname -r), $(nproc) CPUs"
got=$(awk '$3 == "cgroup" || $3 == "cgroup2" { print $3 " " $2 }' /proc/mounts | tr '\n' ' ')
check "pure cgroup v2: only cgroup2, at /sys/fs/cgroup" "$got" [ "$got" = "cgroup2 /sys/fs/cgroup " ]
got=$(cat "$CG/cgroup.subtree_control")
check "$CONTROLLERS enabled at the root" "'$got'" has_words "$got" $CONTROLLERS
check "the kernel has BTF (/sys/kernel/btf/vmlinux)" "missing" [ -e /sys/kernel/btf/vmlinux ]
check "/dev/ram0 exists (brd)" "missing" [ -b /dev/ram0 ]

# ============================================================================================
note "phase 1: absolute --cgroup.parent=/metric_gateway"
P1=$CG/metric_gateway
F0=$FAILED
if start_agent phase1 9091 /metric_gateway; then
  mkfifo "$S/release"
  rm -f "$S/ready"
  start_container busy sh /tests/vm/busy-workload.sh "$S" 5555
  BUSY=$ID BUSY_CG=$CG_REPORTED BUSY_LAUNCHER=$LAUNCHER
  start_container idle sleep 600
  IDLE=$ID IDLE_LAUNCHER=$LAUNCHER
  # a CPU limit as `apptainer run --cpus 0.5` sets it, on the idle one (it does not slow the busy one)
  echo "50000 100000" > "$P1/$IDLE/cpu.max" || note "phase1: cannot write the idle container's cpu.max"
  wait_busy busy "$P1/$BUSY"

  check_parent phase1 "$P1"
  check_placement phase1 "$P1" "$BUSY" "$BUSY_LAUNCHER"
  check_placement phase1 "$P1" "$IDLE" "$IDLE_LAUNCHER"
  IDLE_SLEEP=$(grep -v "^$IDLE_LAUNCHER\$" "$P1/$IDLE/cgroup.procs" 2>/dev/null | head -n 1)
  check "phase1: launcher reports the cgroup path" "'$BUSY_CG'" [ "$BUSY_CG" = "$P1/$BUSY" -o "$BUSY_CG" = "/metric_gateway/$BUSY" ]

  scrape 9091 || fail "phase1: scrape /metrics" "wget failed"
  got=$(value apptheus_containers)
  check "phase1: apptheus_containers is 2" "$got" eq "$got" 2
  check_basic_metrics phase1 "$BUSY" "$P1/$BUSY" "$BUSY_LAUNCHER" 9091
  BUSY_CPU=$(value container_cpu_usage_seconds_total "name=\"$BUSY\"" 'cpu="total"')
  check_pressure phase1 "$BUSY" "$P1/$BUSY"
  check_ebpf phase1 "$BUSY" "$IDLE"
  got=$(value container_memory_usage_bytes "name=\"$IDLE\""); busy_mem=$(value container_memory_usage_bytes "name=\"$BUSY\"")
  check "phase1: idle memory usage > 0 and below busy's" "$got" eval 'gt "$got" 0 && ! ge "$got" "$busy_mem"'
  got=$(value container_cpu_usage_seconds_total "name=\"$IDLE\"" 'cpu="total"')
  check "phase1: idle cpu usage < 0.5 s" "$got" eval 'num "$got" && ! ge "$got" 0.5'
  got=$(value container_processes "name=\"$IDLE\"")
  check "phase1: idle processes = 2 (launcher and sleep)" "$got" eq "$got" 2
  got=$(value container_spec_cpu_quota "name=\"$IDLE\"")
  check "phase1: idle cpu quota = cpu.max's 50000 (set after placement, seen at a settings refresh)" "$got" eq "$got" 50000

  # the end of the containers
  release_busy
  launcher_status busy; got=$STATUS
  check "phase1: busy launcher exits with the workload's status 0" "$got" [ "$got" = 0 ]
  [ -n "$IDLE_SLEEP" ] && kill -TERM "$IDLE_SLEEP"
  launcher_status idle; got=$STATUS
  check "phase1: idle launcher exits 143 when sleep is killed by SIGTERM" "$got" [ "$got" = 143 ]
  check "phase1: busy cgroup removed" "still there after 10 s" wait_until 10 gone "$P1/$BUSY"
  check "phase1: idle cgroup removed" "still there after 10 s" wait_until 10 gone "$P1/$IDLE"
  sleep $SETTLE
  scrape 9091 || fail "phase1: scrape /metrics" "wget failed"
  got=$(value apptheus_containers)
  check "phase1: apptheus_containers is 0 at the end" "$got" eq "$got" 0
  # an ended container's series may stay a while, frozen: a counter must not go backwards
  got=$(value container_cpu_usage_seconds_total "name=\"$BUSY\"" 'cpu="total"')
  check "phase1: the ended container's cpu counter, if still exported, did not go backwards" "$got" \
    eval '[ "$got" = none ] || ge "$got" "$BUSY_CPU"'

  # exit status and trust
  check_status_and_trust phase1 "$P1"
fi
stop_agent phase1 "$F0"

# ============================================================================================
note "phase 2: systemd layout, relative --cgroup.parent=containers below a delegated apptheus.service"
SLICE=$CG/system.slice
SERVICE=$SLICE/apptheus.service
P2=$SERVICE/containers
# what systemd does for a Delegate=yes service: controllers available in the service's cgroup,
# the main process started inside it, nothing enabled below
mkdir -p "$SERVICE"
echo "+cpu +io +memory +pids" > "$SLICE/cgroup.subtree_control"
F0=$FAILED
enter_service() { exec sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$SERVICE" "$@"; }
if start_agent phase2 9092 containers enter_service; then
  got=$(cut -d: -f3 "/proc/$AGENT_PID/cgroup")
  check "phase2: agent moved itself into a leaf below apptheus.service" "$got" \
    eval 'case "$got" in "${SERVICE#$CG}"/containers*) false ;; "${SERVICE#$CG}"/*) true ;; *) false ;; esac'
  got=$(nprocs "$SERVICE")
  check "phase2: no process left in apptheus.service itself" "$got processes" [ "$got" = 0 ]
  got=$(cat "$SERVICE/cgroup.subtree_control")
  check "phase2: $CONTROLLERS enabled in apptheus.service/cgroup.subtree_control" "'$got'" has_words "$got" $CONTROLLERS

  rm -f "$S/ready" "$S/release" "$S/hold"; mkfifo "$S/release"
  start_container busy2 sh /tests/vm/busy-workload.sh "$S" 5556
  BUSY=$ID BUSY_LAUNCHER=$LAUNCHER
  wait_busy busy2 "$P2/$BUSY"
  check_parent phase2 "$P2"
  check_placement phase2 "$P2" "$BUSY" "$BUSY_LAUNCHER"
  scrape 9092 || fail "phase2: scrape /metrics" "wget failed"
  got=$(value apptheus_containers)
  check "phase2: apptheus_containers is 1" "$got" eq "$got" 1
  check_basic_metrics phase2 "$BUSY" "$P2/$BUSY" "$BUSY_LAUNCHER" 9092
  release_busy
  launcher_status busy2; got=$STATUS
  check "phase2: launcher exits with the workload's status 0" "$got" [ "$got" = 0 ]
  check "phase2: container cgroup removed" "still there after 10 s" wait_until 10 gone "$P2/$BUSY"
fi
stop_agent phase2 "$F0"

# ============================================================================================
note "phase 3: a Slurm-like job tree with limits, default placement (auto): the container stays under them"
JOB=$CG/system.slice/slurmstepd.scope/job_42
TASK=$JOB/step_0/user/task_0
# What slurmstepd makes: controllers enabled down to the task's parent, limits on the job.
mkdir -p "$TASK"
for d in "$CG/system.slice" "$CG/system.slice/slurmstepd.scope" "$JOB" "$JOB/step_0" "$JOB/step_0/user"; do
  echo "+cpu +cpuset +io +memory +pids" > "$d/cgroup.subtree_control" || note "cannot enable controllers in ${d#$CG}"
done
echo $((64 * MIB)) > "$JOB/memory.max"
echo 0 > "$JOB/memory.swap.max" 2>/dev/null
echo 16 > "$JOB/pids.max"
echo "50000 100000" > "$JOB/cpu.max"
echo 0 > "$JOB/cpuset.cpus"
# the job's device rule: /dev/full (c 1:7) denied by a cgroup device program on job_42
got=$(devdeny "$JOB" c 1 7 2>&1)
check "phase3: a device program denying /dev/full is attached to job_42 (id $got)" "$got" [ -n "$got" -a -z "${got##[0-9]*}" ]
F0=$FAILED
if start_agent phase3 9093 /metric_gateway; then
  # the launcher starts inside task_0, as slurmstepd starts a job's task ($! is the launcher)
  APPTHEUS_EXEC_VERBOSE=1 sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$TASK" \
    "$APPTHEUS" exec --socket.path=/run/apptheus/gateway.sock -- sh -c '
    # some CPU time (before the fork bomb below takes every pid the job has)
    for i in 1 2; do timeout 2 md5sum /dev/zero > /dev/null & done; wait
    # the job denies /dev/full; /dev/null stays allowed
    ( : > /dev/full ) 2>/dev/null && echo "device=opened" || echo "device=denied"
    ( : > /dev/null ) 2>/dev/null && echo "null=opened" || echo "null=denied"
    # over the job memory limit: killed by the kernel, as without the agent
    dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null && echo "oom=survived" || echo "oom=status$?"
    # past pids.max (16): forks fail (a failed fork ends the subshell, not this shell)
    ( i=0; while [ $i -lt 30 ]; do sleep 60 & i=$((i + 1)); done ) 2>/dev/null
    echo "forked=done"
    exec sleep 600' > "$S/job.out" 2> "$S/job.err" &
  JOB_LAUNCHER=$!
  wait_until 20 grep -qs "^apptheus exec: container " "$S/job.err"
  ID=$(grep -s "^apptheus exec: container " "$S/job.err" | awk '{ print $4 }')
  NESTED=$TASK/$ID
  check "phase3: the container is nested in task_0 (auto: a move would drop the job limits)" "$(head -c 300 "$S/job.err")" [ -d "$NESTED" ]
  check "phase3: the launcher runs in the nested cgroup" "$(cut -d: -f3 /proc/$JOB_LAUNCHER/cgroup 2>/dev/null)" \
    [ "$(cut -d: -f3 /proc/$JOB_LAUNCHER/cgroup 2>/dev/null)" = "${NESTED#$CG}" ]
  wait_until 20 grep -qs "^forked=" "$S/job.out"
  got=$(grep "^oom=" "$S/job.out")
  check "phase3: allocating 128 MiB under the job's 64 MiB memory.max is OOM-killed" "$got" [ "$got" != "oom=survived" -a -n "$got" ]
  got=$(grep "^device=" "$S/job.out")
  check "phase3: opening the device the job's program denies fails" "$got" [ "$got" = device=denied ]
  got=$(grep "^null=" "$S/job.out")
  check "phase3: other devices stay allowed (/dev/null)" "$got" [ "$got" = null=opened ]
  got=$(cat "$JOB/pids.current")
  check "phase3: forking past the job's pids.max stops at 16 (pids.current $got)" "$got" [ "$got" -le 16 ]
  got=$(awk '$1 == "nr_throttled" { print $2 }' "$JOB/cpu.stat")
  check "phase3: the job's cpu.max throttles the container's burners (job nr_throttled $got)" "$got" gt "$got" 0
  check "phase3: cpuset of the job applies (launcher on CPU 0 only)" "$(grep Cpus_allowed_list /proc/$JOB_LAUNCHER/status)" \
    eval 'grep -q "Cpus_allowed_list:[[:space:]]*0$" /proc/$JOB_LAUNCHER/status'
  sleep $SETTLE
  scrape 9093 || fail "phase3: scrape /metrics" "wget failed"
  got=$(label container_cpu_usage_seconds_total slurm_job_id "name=\"$ID\"")
  check "phase3: the series carry slurm_job_id=42 from the cgroup path" "'$got'" [ "$got" = 42 ]
  got=$(label container_cpu_usage_seconds_total id "name=\"$ID\"")
  check "phase3: the id label is the nested cgroup path" "'$got'" [ "$got" = "${NESTED#$CG}" ]
  got=$(value container_cpu_usage_seconds_total "name=\"$ID\"" 'cpu="total"'); want=$(cpu_usage_s "$NESTED")
  check "phase3: cpu usage matches the nested cpu.stat ($want s)" "$got" near "$got" "$want"
  got=$(value container_memory_usage_bytes "name=\"$ID\"")
  check "phase3: no memory series where the memory controller cannot be enabled (omitted, not 0)" "$got" [ "$got" = none ]
  got=$(value container_spec_cpuset_cpus "name=\"$ID\"")
  check "phase3: cpuset CPUs = 1, the job's cpuset.cpus 0 (from the nearest ancestor with a cpuset)" "$got" eq "$got" 1
  got=$(cat "$NESTED/cgroup.controllers" 2>/dev/null)
  note "phase3: controllers in the nested cgroup: '$got'"
  echo 1 > "$JOB/cgroup.kill"
  check "phase3: cgroup.kill of the job kills the launcher" "still alive" wait_until 10 dead "$JOB_LAUNCHER"
  wait "$JOB_LAUNCHER" 2>/dev/null
  check "phase3: nothing of the container survives the job's cgroup.kill" "$(cat "$JOB/cgroup.procs" "$NESTED/cgroup.procs" 2>/dev/null | tr '\n' ' ')" \
    wait_until 10 eval '[ "$(nprocs "$JOB/step_0/user/task_0")" = 0 ] && ! [ -s "$NESTED/cgroup.procs" ]'
  check "phase3: the nested cgroup is removed once empty" "still there after 10 s" wait_until 10 gone "$NESTED"
fi
stop_agent phase3 "$F0"
rmdir "$TASK" "$JOB/step_0/user" "$JOB/step_0" "$JOB" 2>/dev/null

echo "# guest-test: $PASSED passed, $FAILED failed"
[ $FAILED = 0 ]

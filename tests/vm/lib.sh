# Helpers shared by the VM guest tests (guest-test.sh for pure v2, guest-test-v1.sh for pure v1):
# reporting, numbers, metrics, the agent and `apptheus exec` launchers. Sourced, not run.

APPTHEUS=${APPTHEUS:-/usr/local/bin/apptheus}
VERBOSE=${VERBOSE:-0}
CG=/sys/fs/cgroup
S=/run/vm-test                  # state: FIFOs, logs, scraped metrics
INTERVAL=200ms                  # --monitor.interval
SETTLE=1                        # seconds to wait for a few samples to be taken
MIB=1048576

PASSED=0
FAILED=0
mkdir -p "$S"


# --- reporting --------------------------------------------------------------------------------
pass() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
fail() { FAILED=$((FAILED + 1)); echo "not ok - $1 (got ${2:-nothing})"; }
# check WHAT GOT CMD...: pass if CMD succeeds
check() { local what=$1 got_=$2; shift 2; if "$@"; then pass "$what"; else fail "$what" "$got_"; fi; }
note() { echo "# $*"; }

# --- numbers (values may be floats or "none") ---------------------------------------------------
num() { [ "$1" != none ] && [ -n "$1" ]; }
ge() { num "$1" && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }
gt() { num "$1" && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 > b + 0) }'; }
eq() { num "$1" && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 == b + 0) }'; }
# near A B: |A-B| <= 10% of B + 2% of a MiB/second (covers rounding of small values)
near() { num "$1" && num "$2" && awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= b * 0.1 + 0.02) }'; }
# expected per-second/byte values from the kernel's files
usec_to_s() { awk -v u="$1" 'BEGIN { printf "%.6f\n", u / 1000000 }'; }

nprocs() { wc -l < "$1/cgroup.procs" | tr -d ' '; }
has_words() { # has_words "LIST" WORDS...: every word is in LIST
  local list=" $1 " w; shift
  for w in "$@"; do case "$list" in *" $w "*) ;; *) return 1 ;; esac; done
}


# --- metrics ----------------------------------------------------------------------------------
# scrape PORT: fetch /metrics into $S/metrics (busybox 1.35's `wget -T` segfaults: use timeout)
scrape() { timeout 10 wget -q -O "$S/metrics" "http://127.0.0.1:$1/metrics" 2>/dev/null; }
# value METRIC [SUBSTRING...]: sum of the samples of METRIC whose line contains every SUBSTRING;
# "none" if there is no such sample
value() {
  local m=$1; shift
  awk -v m="$m" -v filters="$*" '
    BEGIN { n = split(filters, f, " ") }
    /^#/ { next }
    { name = $1; sub(/[{].*/, "", name); if (name != m) next
      for (i = 1; i <= n; i++) if (index($0, f[i]) == 0) next
      s += $NF; c++ }
    END { if (c) printf "%.6f\n", s; else print "none" }' "$S/metrics"
}
# peak_at_least PORT SUBSTRING BYTES: scrape PORT; container_memory_max_usage_bytes of the
# container matching SUBSTRING is at least BYTES
peak_at_least() { scrape "$1" && ge "$(value container_memory_max_usage_bytes "$2")" "$3"; }
# label METRIC LABEL SUBSTRING: value of LABEL on the first sample of METRIC containing SUBSTRING
label() {
  awk -v m="$1" -v l="$2" -v f="$3" '
    /^#/ { next }
    { name = $1; sub(/[{].*/, "", name); if (name != m || index($0, f) == 0) next
      if (match($0, "[{,]" l "=\"[^\"]*\"")) { print substr($0, RSTART + length(l) + 3, RLENGTH - length(l) - 4); exit } }' "$S/metrics"
}

# cpulist_count LIST: the number of CPUs in a kernel CPU list ("0-3,8" -> 5)
cpulist_count() {
  echo "$1" | awk -F, '{ for (i = 1; i <= NF; i++) { if ($i == "") continue; n = split($i, r, "-"); c += (n == 2 ? r[2] - r[1] + 1 : 1) } } END { print c + 0 }'
}
# effective_cpus DIR: cpuset.cpus.effective of DIR or of its nearest ancestor that has one (the
# cpuset controller need not be enabled down to DIR)
effective_cpus() {
  local d=$1
  while [ "$d" != / ] && [ -n "$d" ]; do
    [ -r "$d/cpuset.cpus.effective" ] && { cat "$d/cpuset.cpus.effective"; return; }
    d=${d%/*}
  done
  cat /sys/devices/system/cpu/online
}

# --- processes --------------------------------------------------------------------------------
# wait_until SECONDS CMD...: poll CMD every 0.1 s
wait_until() {
  local n=$(($1 * 10)); shift
  while ! "$@"; do n=$((n - 1)); [ $n -le 0 ] && return 1; sleep 0.1; done
}
alive() { kill -0 "$1" 2>/dev/null; }
dead() { ! alive "$1"; }
gone() { [ ! -e "$1" ]; }

AGENT_PID=
# start_agent NAME PORT CGROUP_PARENT [PREFIX...]: run the agent (optionally through PREFIX, a
# command that execs its arguments) and wait until /metrics answers
start_agent() {
  local name=$1 port=$2 parent=$3; shift 3
  "$@" "$APPTHEUS" --socket.path=/run/apptheus/gateway.sock --trust.path="$APPTHEUS" \
    --monitor.interval=$INTERVAL --web.listen-address=127.0.0.1:"$port" --web.telemetry-path=/metrics \
    --cgroup.parent="$parent" --log.level=debug > "$S/agent-$name.log" 2>&1 &
  AGENT_PID=$!
  wait_until 60 eval 'scrape "$port" || dead "$AGENT_PID"'
  if scrape "$port"; then
    pass "$name: agent serves /metrics on 127.0.0.1:$port"
  else
    fail "$name: agent serves /metrics on 127.0.0.1:$port" "$(alive $AGENT_PID && echo 'no answer' || echo 'agent exited')"
    return 1
  fi
}
stop_agent() {
  local name=$1 failed_before=$2
  [ -n "$AGENT_PID" ] || return 0
  kill -TERM "$AGENT_PID" 2>/dev/null
  check "$name: agent exits on SIGTERM" "still running after 10 s" wait_until 10 dead "$AGENT_PID"
  kill -KILL "$AGENT_PID" 2>/dev/null
  wait "$AGENT_PID" 2>/dev/null
  if [ "$VERBOSE" = 1 ] || [ $FAILED -gt "$failed_before" ]; then
    note "agent log ($name, last 80 lines):"
    tail -n 80 "$S/agent-$name.log" | sed 's/^/#   /'
  fi
  AGENT_PID=
}

# start_container NAME CMD...: `apptheus exec` CMD in the background; sets LAUNCHER (its pid), ID
# and CG_REPORTED (as the launcher reports them) once the agent has answered
start_container() {
  local name=$1 line; shift
  APPTHEUS_EXEC_VERBOSE=1 "$APPTHEUS" exec --socket.path=/run/apptheus/gateway.sock -- "$@" \
    > "$S/$name.out" 2> "$S/$name.err" &
  LAUNCHER=$!
  eval "LAUNCHER_$name=$LAUNCHER"
  wait_until 20 grep -qs "^apptheus exec: container " "$S/$name.err" \
    || wait_until 1 dead "$LAUNCHER"
  line=$(grep -s "^apptheus exec: container " "$S/$name.err" | head -n 1)
  ID=$(echo "$line" | awk '{ print $4 }')
  CG_REPORTED=$(echo "$line" | awk '{ print $7 }')
  check "$name: the agent acknowledges the launcher" "$(head -c 300 "$S/$name.err")" [ -n "$ID" ]
  check "$name: container id is apptheus_<launcher pid>" "$ID" [ "$ID" = "apptheus_$LAUNCHER" ]
}

# launcher_status NAME: wait for the launcher; its exit status in STATUS
launcher_status() { eval "wait \$LAUNCHER_$1"; STATUS=$?; }

# check_status_and_trust PHASE PARENT_DIR: a launcher exits with its command's status, an
# untrusted copy of the launcher is refused, and no container cgroup is left in PARENT_DIR
check_status_and_trust() {
  local phase=$1 parent=$2 got
  start_container status sh -c 'exit 7'
  launcher_status status; got=$STATUS
  check "$phase: launcher exits with its command's status (7)" "$got" [ "$got" = 7 ]
  mkdir -p /tmp/untrusted && cp "$APPTHEUS" /tmp/untrusted/apptheus
  /tmp/untrusted/apptheus exec --socket.path=/run/apptheus/gateway.sock -- true > "$S/untrusted.out" 2>&1
  got=$?
  check "$phase: an untrusted launcher is refused (exit 125)" "$got: $(head -c 200 "$S/untrusted.out")" [ "$got" = 125 ]
  wait_until 10 eval '! ls "$parent" 2>/dev/null | grep -q "^apptheus_"'
  got=$(ls "$parent" 2>/dev/null | grep '^apptheus_' | tr '\n' ' ')
  check "$phase: no container cgroup left in ${parent#$CG}" "$got" [ -z "$got" ]
}

#!/bin/sh
# agent-restarts.sh [CYCLES]: the agent's start-up, many times over, in the VM (busybox sh).
# Run by `cargo xtask vm-test --binary target/release/apptheus -- sh /tests/vm/agent-restarts.sh`
# to hunt start-up lockups (tests/vm/README.md, "Lockups"): every cycle loads the eBPF object,
# attaches the tracepoint programs (text patching with IPIs to every CPU) and the cgroup_skb
# programs, places one container, and detaches everything again on SIGTERM, while another CPU
# forks and execs short processes as the guest test's scrape loop does.
APPTHEUS=${APPTHEUS:-/usr/local/bin/apptheus}
CYCLES=${1:-50}
S=/run/restarts
mkdir -p "$S" /run/apptheus
( while :; do timeout 5 true; done ) & churn=$!
ok=0
i=1
while [ $i -le "$CYCLES" ]; do
  "$APPTHEUS" --socket.path=/run/apptheus/gateway.sock --trust.path="$APPTHEUS" \
    --web.listen-address=127.0.0.1:9091 --cgroup.parent=/restarts > "$S/agent.log" 2>&1 &
  agent=$!
  n=0
  until timeout 10 wget -q -O "$S/metrics" http://127.0.0.1:9091/metrics 2>/dev/null; do
    n=$((n + 1)); [ $n -gt 300 ] && break; sleep 0.1
  done
  "$APPTHEUS" exec --socket.path=/run/apptheus/gateway.sock -- true > /dev/null 2>&1
  placed=$?
  kill -TERM $agent; wait $agent
  if grep -q '^apptheus_ebpf_up 1' "$S/metrics" 2>/dev/null && [ $placed = 0 ]; then
    ok=$((ok + 1))
  else
    echo "# cycle $i: ebpf_up or placement missing (exec status $placed)"; tail -n 5 "$S/agent.log" | sed 's/^/#   /'
  fi
  [ $((i % 10)) = 0 ] && echo "# $i start-ups done"
  i=$((i + 1))
done
kill $churn
echo "# $ok of $CYCLES agent start-ups attached eBPF and placed a container"
if [ $ok = "$CYCLES" ]; then echo "ok - $CYCLES agent start-ups"; else echo "not ok - $CYCLES agent start-ups (only $ok)"; exit 1; fi

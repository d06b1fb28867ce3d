#!/usr/bin/env bash
# lockup-hunt.sh LOAD RUNS [LABEL]: run the VM test RUNS times back to back under a host load and
# tally the outcomes (tests/vm/README.md, "Lockups"). Host-side only; not part of `cargo xtask test`.
# VMTEST_ARGS adds arguments to each `xtask vm-test` (e.g. `--tcg-thread multi`, or a guest
# command: `-- sh /tests/vm/agent-restarts.sh 100`).
#
# LOAD: none | busy (two shell busy loops, one per host core) | build (a release build of the
# workspace over and over, in its own target dir) | vm (the same loop, a second VM at a time).
# The agent and xtask must be built (cargo build --release -p apptheus && cargo build -p xtask).
# Writes one line per run to target/lockup-hunt/LABEL.tsv and keeps the log of every run that
# did not pass in target/lockup-hunt/LABEL-RUN.log.
set -u
load=${1:?usage: lockup-hunt.sh none|busy|build|vm RUNS [LABEL]}
runs=${2:?usage: lockup-hunt.sh LOAD RUNS [LABEL]}
label=${3:-$load}
top=$(cd "$(dirname "$0")/../../.." && pwd)
out=$top/target/lockup-hunt
xtask=$top/target/debug/xtask
agent=${AGENT:-$top/target/release/apptheus}
mkdir -p "$out"
[ -x "$xtask" ] && [ -x "$agent" ] || { echo "build the agent (release) and xtask first" >&2; exit 2; }

loaders=()
stop_load() { for p in "${loaders[@]}"; do kill -- "-$p" 2>/dev/null; done; wait 2>/dev/null; }
trap stop_load EXIT
start_load() { set -m; "$@" & loaders+=($!); set +m; }
case $load in
  none) ;;
  busy) for _ in 1 2; do start_load sh -c 'while :; do :; done'; done ;;
  build) start_load sh -c "while :; do rm -rf '$out/build-target'; CARGO_TARGET_DIR='$out/build-target' cargo build -q --release --manifest-path '$top/Cargo.toml' -p apptheus >/dev/null 2>&1; done" ;;
  vm) start_load sh -c "while :; do '$xtask' vm-test --binary '$agent' >/dev/null 2>&1; done" ;;
  *) echo "unknown load $load" >&2; exit 2 ;;
esac

tsv=$out/$label.tsv
for i in $(seq 1 "$runs"); do
  log=$out/$label-$i.log
  start=$(date +%s)
  # shellcheck disable=SC2086 # VMTEST_ARGS is a list of words
  "$xtask" vm-test --binary "$agent" --timeout 900 ${VMTEST_ARGS:-} > "$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  if grep -q "the guest kernel locked up" "$log"; then outcome=lockup
  elif [ $rc = 0 ]; then outcome=pass
  else outcome=fail; fi
  summary=$(grep -m1 -E "^vm-test: [0-9]* passed|agent start-ups" "$log" || echo "no summary")
  printf '%s\t%s\t%s\t%s\t%ss\t%s\n' "$(date -u +%FT%TZ)" "$label" "$i" "$outcome" "$secs" "$summary" | tee -a "$tsv"
  [ $outcome = pass ] && rm -f "$log"
done

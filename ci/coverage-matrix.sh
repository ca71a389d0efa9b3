#!/usr/bin/env bash
# Coverage of p2m-core reached by libFuzzer's `mixed` target in a fixed time, with and
# without the structure-aware parts of the search (issue 13): op-level mutator on / off
# (`P2M_MUTATOR`) × macro ops on / off (`P2M_MACRO`; off also drops the dictionary's run
# entries). Each combination fuzzes revision `fixed` from an empty corpus with the
# dictionary for MINUTES, then `ci/coverage.sh mixed` replays the corpus it grew; the
# table gives p2m-core's coverage without master/ (`fixed` runs the 4.6 line). Two
# combinations run at a time (one per core). Prints a markdown table (BENCHMARKS.md,
# "Time to first divergence: mutator and macro ops").
# Usage: ci/coverage-matrix.sh [MINUTES (default 10)] [SEED (default 1)]
# Env: P2M_COVERAGE_COMBOS — MUTATOR:MACRO pairs (default "on:on off:on on:off off:off");
#      P2M_FUZZ_BUILD_FLAGS — as ci/ttf-matrix.sh; P2M_COVERAGE_SECONDS overrides MINUTES;
#      P2M_COVERAGE_MATRIX_OUT — where crash files are kept (default target/coverage-matrix).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
seed=${2:-1}
secs=${P2M_COVERAGE_SECONDS:-$((minutes * 60))}
keep=${P2M_COVERAGE_MATRIX_OUT:-target/coverage-matrix}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
read -r -a build_flags <<<"${P2M_FUZZ_BUILD_FLAGS:--s none -O --no-trace-compares}"
(cd fuzz && cargo fuzz build "${build_flags[@]}" mixed >/dev/null 2>&1)
bin=fuzz/target/x86_64-unknown-linux-gnu/release/mixed
[ -x "$bin" ] || { echo "coverage-matrix: no fuzz binary at $bin" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -v '_run_' fuzz/p2m.dict >"$work/no-runs.dict"
combos=${P2M_COVERAGE_COMBOS:-on:on off:on on:off off:off}

# fuzz MUTATOR MACRO: grows $work/<m>-<M>/mixed for $secs seconds of wall time; a crash (a
# divergence under `fixed`: the harness's own false positive, kept in art/) restarts
# libFuzzer on the grown corpus for the time left. Executions summed into execs.
fuzz() {
  local d=$work/$1-$2 dict=fuzz/p2m.dict end left n=0 e total=0
  [ "$2" = on ] || dict=$work/no-runs.dict
  mkdir -p "$d/mixed" "$d/art"
  end=$(($(date +%s) + secs))
  while left=$((end - $(date +%s))) && [ "$left" -gt 0 ]; do
    n=$((n + 1))
    P2M_REVISION=fixed P2M_MUTATOR=$1 P2M_MACRO=$2 RUST_BACKTRACE=0 \
      timeout -k 5 $((left + 60)) "$bin" -max_total_time="$left" -seed=$((seed + n - 1)) \
      -dict="$dict" -print_final_stats=1 -artifact_prefix="$d/art/" "$d/mixed" >"$d/log.$n" 2>&1 || true
    e=$(sed -n 's/^stat::number_of_executed_units: *//p' "$d/log.$n" | tail -1)
    [ -n "$e" ] || e=$(grep -oE '^#[0-9]+' "$d/log.$n" | tail -1 | tr -d '#')
    total=$((total + ${e:-0}))
  done
  echo "$total" >"$d/execs"
  cat "$d"/log.* >"$d/log"
}

set -- $combos
while [ $# -gt 0 ]; do
  fuzz "${1%:*}" "${1#*:}" &
  if [ $# -gt 1 ]; then fuzz "${2%:*}" "${2#*:}" & fi
  wait
  shift $(($# > 1 ? 2 : 1))
done

echo "| mutator | macro ops | executions | corpus inputs | libFuzzer cov / ft | false positives (restarts) | p2m-core lines (4.6 + shared) | regions |"
echo "|---|---|---|---|---|---|---|---|"
for c in $combos; do
  d=$work/${c%:*}-${c#*:}
  execs=$(cat "$d/execs" 2>/dev/null)
  cf=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$d/log" | tail -1 | awk '{print $2 " / " $4}')
  n=$(find "$d/mixed" -maxdepth 1 -type f | wc -l | tr -d ' ')
  crashes=$(find "$d/art" -maxdepth 1 -type f | wc -l | tr -d ' ')
  if [ "$crashes" -gt 0 ]; then
    mkdir -p "$keep/${c%:*}-${c#*:}"
    cp "$d"/art/* "$keep/${c%:*}-${c#*:}/"
    echo "coverage-matrix: $crashes false positive(s) of mutator ${c%:*} macro ${c#*:} kept in $keep" >&2
  fi
  P2M_COVERAGE_CORPUS=$d P2M_COVERAGE_OUT=$d/cov bash ci/coverage.sh mixed >"$d/cov.out" 2>"$d/cov.err" || true
  # Revision `fixed` runs the 4.6 line: p2m-core without its master/ files.
  read -r lines regions < <(python3 - "$d/cov/p2m-core.json" <<'PY' || echo "failed failed"
import json, sys
lc = lt = rc = rt = 0
for f in json.load(open(sys.argv[1]))["data"][0]["files"]:
    if "/master/" in f["filename"]:
        continue
    s = f["summary"]
    lc += s["lines"]["covered"]; lt += s["lines"]["count"]
    rc += s["regions"]["covered"]; rt += s["regions"]["count"]
print(f"{100 * lc / lt:.2f}%({lc}/{lt}) {100 * rc / rt:.2f}%")
PY
)
  echo "| ${c%:*} | ${c#*:} | ${execs:-?} | $n | ${cf:-?} | $crashes | ${lines/(/ (} | $regions |"
done

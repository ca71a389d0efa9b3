#!/usr/bin/env bash
# Produces BENCHMARKS.md: fuzz-target throughput next to `ceiling`, time to first
# divergence per hole of every revision with regressions (libFuzzer and `hunt`, median of 5
# seeds), the exhaustive mode's speed at depth 3, the cost of 1 GiB ops on master, the
# planted bugs (ci/planted.sh), and — when their outputs exist — the acceptance runs
# (ci/acceptance.sh → target/acceptance/summary.md) and the mutation score (ci/mutants.sh
# → target/mutants/summary.md).
#
# Usage: ci/bench.sh [SECONDS_PER_TARGET]   (default 60; writes BENCHMARKS.md)
# Env:   BENCH_SEEDS (default "1 2 3 4 5"), BENCH_OUT (default BENCHMARKS.md),
#        BENCH_TTF_BUDGET seconds per time-to-first-divergence run (default 60),
#        BENCH_ONLY=throughput: only section 1, its table on stdout (BENCHMARKS.md untouched).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
seeds=${BENCH_SEEDS:-1 2 3 4 5}
out=${BENCH_OUT:-BENCHMARKS.md}
budget=${BENCH_TTF_BUDGET:-60}
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release -q -p harness
cli=target/release/p2m-fuzz
(cd fuzz && cargo fuzz build -s none --no-trace-compares >/dev/null 2>&1)
bin=fuzz/target/x86_64-unknown-linux-gnu/release

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# --- 1. throughput: each target next to `ceiling`, same seed corpus, 1 job, -s none.
# The targets check `fixed` (the 4.6 line); `mixed@master` is `mixed` checking `master-fixed`.
thr=()
for t in ceiling mixed mixed@master ept npt shadow; do
  target=${t%@*}; rev=fixed; [ "$t" != "$target" ] && rev=${t#*@}-fixed
  src=corpus/$target; [ "$target" = ceiling ] && src=corpus/mixed
  mkdir -p "$work/c-$t"; cp -r "$src"/. "$work/c-$t"/ 2>/dev/null || true
  log="$work/$t.log"
  P2M_REVISION=$rev "$bin/$target" -max_total_time="$secs" -print_final_stats=1 "$work/c-$t" >"$log" 2>&1 || true
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(awk -v e="${execs:-0}" -v s="$secs" 'BEGIN {printf "%.0f", e / s}')
  thr+=("$t $rate ${execs:-0}")
  echo "throughput $t: $rate execs/s" >&2
done
ceil=$(printf '%s\n' "${thr[@]}" | awk '$1 == "ceiling" {print $2}')

# The throughput table (section 1 of BENCHMARKS.md).
throughput_table() {
  echo "| target | execs/s | executions | vs \`ceiling\` |"
  echo "|---|---|---|---|"
  for r in "${thr[@]}"; do
    read -r t rate execs <<<"$r"
    pct=$(awk -v a="$rate" -v c="$ceil" 'BEGIN {if (c > 0) printf "%.2f%%", 100 * a / c; else print "n/a"}')
    echo "| $t | $rate | $execs | $pct |"
  done
}
# Where an execution's time goes: the committed corpus replayed uninstrumented, per input
# (`p2m-fuzz bench --corpus`), on each line's fixed revision.
corpus_cost() {
  local rev
  for rev in fixed master-fixed; do
    echo
    echo '```'
    "$cli" bench --corpus corpus/mixed --revision "$rev" --reps 10
    echo '```'
  done
}
if [ "${BENCH_ONLY:-}" = throughput ]; then
  echo "Fuzz-target throughput: \`BENCH_ONLY=throughput ci/bench.sh $secs\` on $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD) (libFuzzer, \`-s none --no-trace-compares\`, 1 job, ${secs} s each, from the committed seed corpus)"
  echo
  throughput_table
  corpus_cost
  exit 0
fi

# --- 2. time to first divergence per historical root cause: the regression files name
# the revision (directory) and root-cause switch; every other known culprit of that
# revision is assumed fixed so that only this hole is left to find.
ttf=()
for f in corpus/regressions/*/*.trace; do
  rev=$(basename "$(dirname "$f")")
  name=$(basename "$f" .trace)
  cause=$(sed -n 's/^# root-cause: //p' "$f")
  mode=$(sed -n 's/^config mode=\([a-z]*\).*/\1/p' "$f")
  # Switches that alone close this hole (e.g. a later fix that subsumes the original one)
  # must stay open too, or there would be nothing left to find.
  culprits=$({ "$cli" blame --revision "$rev" "$f" || true; } | sed -n 's/.*root cause: //p' | tr -d ',')
  # On the master line every revision also carries the pinned master's own findings:
  # their fix switches are assumed too (unless they explain this hole).
  master_fixes=""
  if "$cli" revisions | awk -v r="$rev" '$1 == r && $2 ~ /xen-master/ {f = 1} END {exit !f}'; then
    master_fixes=$(sed -n 's/^# root-cause: //p' corpus/regressions/xen-master/*.trace | tr ' ' '\n')
  fi
  others=$({ sed -n 's/^# root-cause: //p' corpus/regressions/"$rev"/*.trace | tr ' ' '\n'; echo "$master_fixes"; } |
    grep . | sort -u | grep -vxF -f <(tr ' ' '\n' <<<"$cause $culprits" | grep .) | paste -sd, - || true)
  lf=(); hu=()
  for s in $seeds; do
    rm -rf "$work/e"; mkdir -p "$work/e" "$work/art"
    t0=$(now)
    P2M_REVISION=$rev P2M_ASSUME_FIXED=$others "$bin/$mode" -seed="$s" -max_total_time="$budget" -dict=fuzz/p2m.dict \
      -artifact_prefix="$work/art/" "$work/e" >"$work/lf.log" 2>&1 && found=no || found=yes
    t1=$(now)
    if [ $found = yes ]; then lf+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')"); fi
    args=(); IFS=, read -ra oa <<<"$others"; for o in "${oa[@]}"; do [ -n "$o" ] && args+=(--assume-fixed "$o"); done
    t0=$(now)
    "$cli" hunt --raw --revision "$rev" --mode "$mode" --seed "$s" --seconds "$budget" --out "$work/h" "${args[@]}" >/dev/null 2>&1 && found=no || found=yes
    t1=$(now)
    if [ $found = yes ]; then hu+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')"); fi
  done
  n=$(wc -w <<<"$seeds")
  ml=$(printf '%s\n' "${lf[@]}" | grep . | median || echo n/a)
  mh=$(printf '%s\n' "${hu[@]}" | grep . | median || echo n/a)
  ttf+=("| $rev | $name | $mode | ${ml} (${#lf[@]}/$n) | ${mh} (${#hu[@]}/$n) |")
  echo "ttf $rev $name: libFuzzer $ml, hunt $mh" >&2
done

# --- 3. exhaustive depth 3 per mode.
ex=()
for rev in fixed; do
  for m in ept npt shadow; do
    t0=$(now)
    "$cli" exhaustive --mode "$m" --revision "$rev" --depth 3 >"$work/ex.log" 2>&1 || true
    t1=$(now)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    seqs=$(grep -oE '[0-9]+ sequences' "$work/ex.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
    rate=$(awk -v n="${seqs:-0}" -v w="$wall" 'BEGIN {printf "%.0f", n / w}')
    ex+=("| $m | $rev | $seqs | $wall | $rate |")
    echo "exhaustive $m: $seqs sequences in $wall s" >&2
  done
done

# --- 4. the master line's 1 GiB ops, the planted bugs, and (when present) the acceptance
# runs and the mutation score.
"$cli" bench --seconds 4 >"$work/bench.log" 2>&1 || true
bash ci/planted.sh 30 >"$work/planted.md" 2>"$work/planted.err" || true

{
  echo "# Benchmarks"
  echo
  echo "Produced by \`ci/bench.sh $secs\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m), $(rustc --version))."
  echo "Re-run it to refresh this file; nothing here is typed by hand."
  echo
  echo "## Fuzz-target throughput (libFuzzer, \`-s none --no-trace-compares\`, 1 job, ${secs} s each, from the committed seed corpus)"
  echo
  throughput_table
  corpus_cost
  echo
  echo "## Time to first divergence, per historical hole (median of seeds: $seeds; budget ${budget} s)"
  echo
  echo "Each row is one \`corpus/regressions/<revision>/<bug>.trace\`: the revision is fuzzed from an"
  echo "empty corpus with every *other* root cause of that revision assumed fixed"
  echo "(\`P2M_ASSUME_FIXED\` / \`hunt --assume-fixed\`), so the time is that of finding this hole."
  echo "libFuzzer runs with the targets' dictionary \`fuzz/p2m.dict\`, as the nightly job does."
  echo "Seconds of wall time including process start; (k/n) = seeds that found it."
  echo
  echo "| revision | hole | target / mode | libFuzzer (s) | hunt (s) |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ttf[@]}"
  echo
  echo "## Exhaustive mode, depth 3"
  echo
  echo "| mode | revision | sequences | wall (s) | sequences/s |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ex[@]}"
  echo
  echo "## Cost of ops (\`p2m-fuzz bench --seconds 4\`)"
  echo
  echo '```'
  cat "$work/bench.log"
  echo '```'
  echo
  echo "## Planted bugs (\`ci/planted.sh 30\`): each search finds each one"
  echo
  cat "$work/planted.md"
  if [ -f target/acceptance/summary.md ]; then echo; cat target/acceptance/summary.md; fi
  if [ -f target/mutants/summary.md ]; then echo; cat target/mutants/summary.md; fi
  cat ci/bench-notes.md
} >"$out"
echo "wrote $out" >&2

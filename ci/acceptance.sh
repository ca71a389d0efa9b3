#!/usr/bin/env bash
# The long acceptance runs, measured, in two lanes (2 cores): `fixed` clean under `hunt` per
# mode and under each fuzz target from its seed corpus; `exhaustive --depth 3` per mode; the
# pinned master under `hunt --reachable` per configuration with every written-up finding
# assumed fixed, printing the model's counters. Writes $ACC_OUT/summary.md (default
# target/acceptance), which ci/bench.sh folds into BENCHMARKS.md.
#
# Usage: ci/acceptance.sh [FIXED_SECONDS [MASTER_SECONDS]]   (default 600 and 300)
#        ACC_SUMMARY_ONLY=1 ci/acceptance.sh ...   rewrite summary.md from the logs only
set -euo pipefail
cd "$(dirname "$0")/.."
fixed_secs=${1:-600}
master_secs=${2:-300}
out=${ACC_OUT:-target/acceptance}
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo build --release -q -p harness
(cd fuzz && cargo fuzz build -s none --no-trace-compares >/dev/null 2>&1)
cli=target/release/p2m-fuzz
bin=fuzz/target/x86_64-unknown-linux-gnu/release
[ "${ACC_SUMMARY_ONLY:-0}" = 1 ] || { rm -rf "$out"; mkdir -p "$out"; }
assume=()
# The written-up master findings, by their proposed-fix switches (ci/master-fixes.sh).
for s in $(bash ci/master-fixes.sh "$cli"); do assume+=(--assume-fixed "$s"); done
configs=("mode=ept vendor=vtd share=on" "mode=ept vendor=vtd share=off"
  "mode=npt vendor=amd share=off" "mode=shadow vendor=vtd share=off"
  "mode=shadow vendor=amd share=off")

fuzz() { # TARGET: libFuzzer from the seed corpus under `fixed`.
  mkdir -p "$out/c-$1"; cp -r "corpus/$1/." "$out/c-$1/"
  P2M_REVISION=fixed "$bin/$1" -max_total_time="$fixed_secs" -print_final_stats=1 -dict=fuzz/p2m.dict \
    -artifact_prefix="$out/a-$1-" "$out/c-$1" >"$out/fuzz-$1.log" 2>&1 || true
}
lane1() {
  for m in ept npt shadow; do
    "$cli" hunt --raw --revision fixed --mode "$m" --seconds "$fixed_secs" --seed 101 \
      --out "$out/h-$m" >"$out/fixed-hunt-$m.log" 2>&1 || true
  done
  fuzz ept; fuzz npt
}
lane2() {
  local i=0 c
  for c in "${configs[@]}"; do
    i=$((i + 1))
    "$cli" hunt --revision xen-master --config "$c" --seconds "$master_secs" --reachable \
      "${assume[@]}" --seed "$i" --out "$out/m-$i" >"$out/master-$i.log" 2>&1 || true
  done
  fuzz shadow; fuzz mixed
  for m in ept npt shadow; do
    local t0 t1
    t0=$(date +%s.%N)
    "$cli" exhaustive --mode "$m" --revision fixed --depth 3 >"$out/exh-$m.log" 2>&1 || true
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f\n", b - a}' >"$out/exh-$m.secs"
  done
}
if [ "${ACC_SUMMARY_ONLY:-0}" != 1 ]; then lane1 & lane2 & wait; fi

verdict() { grep -E '^hunt: (clean|divergence)' "$1" | head -1 | sed 's/ (revision.*//'; }
counter() { grep '^hunt: counters:' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
{
  echo "## Acceptance runs (\`ci/acceptance.sh $fixed_secs $master_secs\`, $(date -u +%Y-%m-%d))"
  echo
  echo "### \`fixed\` (4.6 line) stays clean"
  echo
  echo "| run | verdict |"
  echo "|---|---|"
  for m in ept npt shadow; do echo "| hunt --mode $m, ${fixed_secs} s | $(verdict "$out/fixed-hunt-$m.log") |"; done
  for t in ept npt shadow mixed; do
    ex=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz-$t.log" | tail -1)
    crash=$(find "$out" -maxdepth 1 -name "a-$t-*" | wc -l)
    echo "| fuzz target $t, ${fixed_secs} s from the seed corpus | ${ex:-0} executions, $crash crash artifacts |"
  done
  for m in ept npt shadow; do
    seqs=$(grep -oE '[0-9]+ sequences' "$out/exh-$m.log" | tail -1)
    res=$(grep -qE '^DIVERGENCE' "$out/exh-$m.log" && echo "DIVERGES" || echo "clean")
    echo "| exhaustive --depth 3 --mode $m | $res, ${seqs:-?} in $(cat "$out/exh-$m.secs") s |"
  done
  echo
  echo "### The pinned master, every written-up finding assumed fixed (\`hunt --reachable\`, ${master_secs} s per configuration)"
  echo
  echo "| configuration | verdict | IOMMU shatters 2M / 1G | coalesces 2M / 1G | tables freed empty | drains non-empty | queued under dont_flush | batch pages moved | p2m superpage splits |"
  echo "|---|---|---|---|---|---|---|---|---|"
  i=0
  for c in "${configs[@]}"; do
    i=$((i + 1)); f="$out/master-$i.log"
    echo "| $c | $(verdict "$f") | $(counter "$f" iommu_shatters_2m) / $(counter "$f" iommu_shatters_1g) | $(counter "$f" iommu_coalesce_2m) / $(counter "$f" iommu_coalesce_1g) | $(counter "$f" iommu_tables_freed_empty) | $(counter "$f" iommu_drains_nonempty) | $(counter "$f" iommu_queued_while_dont_flush) | $(counter "$f" physmap_pages_moved) | $(counter "$f" superpage_splits) |"
  done
  echo
  echo "With the EPT shared there are no IOMMU tables (the IOMMU walks the EPT): its IOMMU"
  echo "counters are 0 by construction, and its splits are the p2m's."
} >"$out/summary.md"
cat "$out/summary.md"

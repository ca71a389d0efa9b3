#!/usr/bin/env bash
# The oracle's teeth, measured: each planted revision (a synthetic bug in `fixed`, kind
# "planted", not Xen) must be found by `hunt`, by `exhaustive --depth 2` and by libFuzzer
# from an empty corpus; the free-before-flush bug must stay clean with separate tables.
# Prints a markdown table (stdout) for BENCHMARKS.md; exit 1 when a search misses.
#
# Usage: ci/planted.sh [BUDGET_SECONDS]   (default 30 per search)
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-30}
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo build --release -q -p harness
cli=target/release/p2m-fuzz
(cd fuzz && cargo fuzz build -s none --no-trace-compares >/dev/null 2>&1)
bin=fuzz/target/x86_64-unknown-linux-gnu/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
cls() { sed -n 's/^DIVERGENCE: \([a-z-]*\).*/\1/p' "$1" | head -1; }
fail=0

echo "| planted revision | hunt (s, class) | exhaustive depth 2 (class, ops) | libFuzzer from empty corpus (s, class) |"
echo "|---|---|---|---|"
for rev in planted-free-first planted-split-wrong-frame planted-leak-subtree \
  planted-free-recursion-short planted-free-leaf-frame planted-flush-first-page \
  planted-flush-last-page; do
  # Leaks are non-fatal by default: those revisions are searched with every class fatal.
  strict=(); env_strict=0
  case $rev in planted-leak-subtree|planted-free-recursion-short) strict=(--strict); env_strict=1 ;; esac
  t0=$(now)
  "$cli" hunt --raw --revision "$rev" --seconds "$budget" --seed 1 "${strict[@]}" --out "$work/h-$rev" >"$work/h.log" 2>&1 || true
  h="$(since "$t0") $(cls "$work/h.log")"
  "$cli" exhaustive --revision "$rev" --depth 2 --out "$work/x-$rev" >"$work/x.log" 2>&1 || true
  xc=$(cls "$work/x.log")
  xops=$(grep -cE '^ +#[0-9]+ ' "$work/x.log" || true)
  rm -rf "$work/e"; mkdir -p "$work/e" "$work/art"
  t0=$(now)
  P2M_REVISION=$rev P2M_STRICT=$env_strict "$bin/mixed" -seed=1 -max_total_time="$budget" -dict=fuzz/p2m.dict \
    -artifact_prefix="$work/art/" "$work/e" >"$work/lf.log" 2>&1 || true
  lt=$(since "$t0")
  lc=$(sed -n 's/.*DIVERGENCE: \([a-z-]*\).*/\1/p' "$work/lf.log" | head -1)
  echo "| $rev | $h | ${xc:-none} (${xops} ops) | $lt ${lc:-none} |"
  if [ -z "$(cls "$work/h.log")" ] || [ -z "$xc" ] || [ -z "$lc" ]; then fail=1; fi
done
# The IOMMU never walks p2m frames with separate tables: freeing first is harmless there.
for cfg in "mode=ept vendor=vtd share=off" "mode=npt vendor=amd share=off"; do
  "$cli" hunt --raw --revision planted-free-first --config "$cfg" --seconds "$budget" --seed 1 \
    --out "$work/s" >"$work/s.log" 2>&1 && r=clean || r="DIVERGES: $(cls "$work/s.log")"
  echo "| planted-free-first, $cfg | $r after ${budget} s | | |"
  [ "$r" = clean ] || fail=1
done
exit $fail

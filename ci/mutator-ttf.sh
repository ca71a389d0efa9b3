#!/usr/bin/env bash
# Time to first divergence of libFuzzer's `mixed` target with the op-level mutator
# (`harness::mutate`, the default) and without it (`P2M_MUTATOR=off`: libFuzzer's own
# mutations only), side by side: each hole alone (its revision with every other switch
# that differs from the line's fixed revision assumed fixed, `P2M_ASSUME_FIXED`), from an
# empty corpus with the dictionary, seeds 1..N, median; also the exec rate of each run.
# Prints a markdown table (BENCHMARKS.md, "Op-level mutator").
# Usage: ci/mutator-ttf.sh [SEEDS (default 5)] [BUDGET seconds (default 60)]
# Env: P2M_TTF_ROWS — "REV BASE HOLE" lines replacing the default rows.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5}
budget=${2:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo build --release -q -p harness --bin p2m-fuzz
cli=target/release/p2m-fuzz
(cd fuzz && cargo fuzz build -s none -O --no-trace-compares mixed >/dev/null 2>&1)
bin=fuzz/target/x86_64-unknown-linux-gnu/release/mixed
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# others REV BASE HOLE: the switches of REV that differ from BASE, HOLE excluded.
others() {
  "$cli" revisions | awk -v r="$1" -v b="$2" -v hole="$3" '
    want { for (i = 1; i <= NF; i++) sw[r, i] = $i; n = NF; want = 0 }
    wantb { for (i = 1; i <= NF; i++) sw[b, i] = $i; wantb = 0 }
    $1 == r { want = 1 }
    $1 == b { wantb = 1 }
    END { for (i = 1; i <= n; i++) if (sw[r, i] != sw[b, i]) {
      split(sw[r, i], kv, "=")
      if (kv[1] != hole) printf "%s ", kv[1] } }'
}

median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) printf "%.1f\n", v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# run REV ASSUMED MUTATOR SEED: prints "SECONDS EXECS" (SECONDS empty when not found).
run() {
  rm -rf "$work/c" "$work/a"
  mkdir -p "$work/c" "$work/a"
  local t0 t1
  t0=$(date +%s.%N)
  P2M_REVISION=$1 P2M_ASSUME_FIXED="$2" P2M_MUTATOR=$3 RUST_BACKTRACE=0 \
    timeout -k 5 $((budget + 30)) "$bin" -max_total_time="$budget" -seed="$4" \
    -dict=fuzz/p2m.dict -print_final_stats=1 -artifact_prefix="$work/a/" "$work/c" \
    >"$work/log" 2>&1 || true
  t1=$(date +%s.%N)
  local execs
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  if ls "$work/a"/crash-* >/dev/null 2>&1; then
    echo "$(echo "$t1 - $t0" | bc) ${execs:-0}"
  else
    echo " ${execs:-0}"
  fi
}

echo "| revision | hole (switch) | mutator | found (of $seeds) | median s | execs/s |"
echo "|---|---|---|---|---|---|"
rows=${P2M_TTF_ROWS:-"xsa346-ref master-fixed batch_holds_page_refs
xen-master master-fixed batch_flush_keeps_deferred_flags
xen-master master-fixed batch_holds_failed_page_ref
xen-master master-fixed flush_covers_split_superpage
committed fixed guest_remove_page_checks_remove_rc
committed fixed pt_recalc_keeps_iommu_flags"}
while read -r rev base hole; do
  [ -n "$rev" ] || continue
  assumed=$(others "$rev" "$base" "$hole")
  for m in on off; do
    times=()
    rate_sum=0
    for s in $(seq 1 "$seeds"); do
      read -r t e < <(run "$rev" "$assumed" "$m" "$s")
      if [ -n "${e:-}" ]; then
        secs=${t:-$budget}
        rate_sum=$(echo "$rate_sum + $e / $secs" | bc -l)
      else
        e=$t
        rate_sum=$(echo "$rate_sum + $e / $budget" | bc -l)
        t=""
      fi
      [ -z "$t" ] || times+=("$t")
    done
    med=$(printf '%s\n' "${times[@]}" | { grep . || true; } | median)
    rate=$(printf '%.0f' "$(echo "$rate_sum / $seeds" | bc -l)")
    echo "| $rev | \`$hole\` | $m | ${#times[@]} | $med | $rate |"
  done
done <<<"$rows"

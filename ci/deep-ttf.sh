#!/usr/bin/env bash
# Time to first divergence of the master line's deep-hole revisions (test-only, not Xen
# history; issue 13): `deep-coalesce-short`, `deep-free-empty-short`,
# `deep-last-unmap-noflush`. Each hole alone (its revision with the pinned master's own
# findings assumed fixed: the switches `ci/master-fixes.sh` prints), seeds 1..N, median
# and maximum of the runs that found it:
#   - `p2m-fuzz hunt` (caller ops), with macro ops (runs of one-page extents over a 2 MiB
#     region, `populate_physmap … order=0 nr=N`) and without (`P2M_MACRO=off`);
#   - libFuzzer's `mixed` target from an empty corpus with the dictionary, op-level mutator
#     on / off (`P2M_MUTATOR`) × macro ops on / off (`P2M_MACRO`; off also drops the
#     dictionary's run entries, so no structure-aware part offers a run — libFuzzer's own
#     byte mutations still may write one). Wall time to the first crash, libFuzzer's start
#     included.
# One process at a time. Prints a markdown table (BENCHMARKS.md, "Deep holes").
# Usage: ci/deep-ttf.sh [SEEDS (default 5)] [BUDGET seconds (default 60)]
# Env: CARGO_TARGET_DIR is honoured; P2M_DEEP_ROWS — "REVISION SWITCH" lines replacing the
# default rows.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5}
budget=${2:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
tgt=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p harness --bin p2m-fuzz
cli=$tgt/release/p2m-fuzz
(cd fuzz && cargo fuzz build -s none -O mixed >/dev/null 2>&1)
case $tgt in /*) fuzz_tgt=$tgt ;; *) fuzz_tgt=${CARGO_TARGET_DIR:+$PWD/fuzz/$tgt} ;; esac
bin=${fuzz_tgt:-fuzz/target}/x86_64-unknown-linux-gnu/release/mixed
[ -x "$bin" ] || { echo "deep-ttf: no fuzz binary at $bin" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -v '_run_' fuzz/p2m.dict >"$work/no-runs.dict"

fixes=$(bash ci/master-fixes.sh "$cli" | tr '\n' ' ')
hunt_fixed=""
for f in $fixes; do hunt_fixed="$hunt_fixed --assume-fixed $f"; done

median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# hunt_run REV MACRO SEED: prints the seconds to the divergence ("" when none).
hunt_run() {
  # shellcheck disable=SC2086
  P2M_MACRO=$2 "$cli" hunt --revision "$1" $hunt_fixed --seed "$3" --seconds "$budget" \
    --out "$work/h" >"$work/out" 2>"$work/err" || true
  sed -n 's/^hunt: divergence after \([0-9.]*\)s.*/\1/p' "$work/err" | head -1
}

# fuzz_run REV MUTATOR MACRO SEED: prints the seconds to the first crash ("" when none).
fuzz_run() {
  rm -rf "$work/c" "$work/a"
  mkdir -p "$work/c" "$work/a"
  local dict=fuzz/p2m.dict t0 t1
  [ "$3" = on ] || dict=$work/no-runs.dict
  t0=$(date +%s.%N)
  P2M_REVISION=$1 P2M_ASSUME_FIXED="$fixes" P2M_MUTATOR=$2 P2M_MACRO=$3 RUST_BACKTRACE=0 \
    timeout -k 5 $((budget + 30)) "$bin" -max_total_time="$budget" -seed="$4" \
    -dict="$dict" -artifact_prefix="$work/a/" "$work/c" >"$work/log" 2>&1 || true
  t1=$(date +%s.%N)
  if ls "$work/a"/crash-* >/dev/null 2>&1; then
    printf '%.2f\n' "$(echo "$t1 - $t0" | bc)"
  fi
}

# row REV SWITCH SEARCH MUTATOR MACRO: one table row over seeds 1..N.
row() {
  local times=() t s med max
  for s in $(seq 1 "$seeds"); do
    if [ "$3" = hunt ]; then t=$(hunt_run "$1" "$5" "$s"); else t=$(fuzz_run "$1" "$4" "$5" "$s"); fi
    [ -z "$t" ] || times+=("$t")
  done
  med=$(printf '%s\n' "${times[@]}" | { grep . || true; } | median)
  max=$(printf '%s\n' "${times[@]}" | { grep . || true; } | sort -g | tail -1)
  echo "| $1 | \`$2\` | $3 | $4 | $5 | ${#times[@]} | $med | ${max:--} |"
}

echo "| revision | hole (switch) | search | mutator | macro ops | found (of $seeds) | median s | max s |"
echo "|---|---|---|---|---|---|---|---|"
rows=${P2M_DEEP_ROWS:-"deep-coalesce-short coalesce_compares_halves
deep-free-empty-short free_empty_checks_halves
deep-last-unmap-noflush emptying_unmap_sets_modified"}
while read -r rev sw; do
  [ -n "$rev" ] || continue
  for macro in on off; do row "$rev" "$sw" hunt - "$macro"; done
  for mut in on off; do
    for macro in on off; do row "$rev" "$sw" mixed "$mut" "$macro"; done
  done
done <<<"$rows"

#!/usr/bin/env bash
# Time to first divergence of each revision with regressions (`corpus/regressions/<rev>/`),
# side by side with and without the structure-aware parts of the search (issue 13):
#   - `p2m-fuzz hunt` (caller ops) with macro ops (runs of one-page extents over a 2 MiB
#     region, `populate_physmap … order=0 nr=N`) and without (`P2M_MACRO=off`);
#   - libFuzzer's `mixed` target from an empty corpus with the dictionary, op-level mutator
#     on / off (`P2M_MUTATOR`) × macro ops on / off (`P2M_MACRO`; off also drops the
#     dictionary's run entries). Wall time to the first crash, libFuzzer's start included.
# A row is a revision with all its holes open (the first divergence of any of them), or one
# hole alone when the row names its switch. On the master line the pinned master's own
# findings (`ci/master-fixes.sh`) are assumed fixed in every revision but `xen-master`
# (whose holes they are), so that what is found is the revision's own hole — except a fix
# that `blame` names as a root cause of the revision's traces too (it would close them).
# Every find is replayed under the line's clean revision (`fixed` / `master-fixed`): one
# that diverges there too is a false positive of the harness, counted apart, not a find.
# Seeds 1..N, median and maximum of the runs that found it; one process at a time.
# Prints a markdown table (BENCHMARKS.md, "Time to first divergence: mutator and macro ops").
# Usage: ci/ttf-matrix.sh [SEEDS (default 5)] [BUDGET seconds (default 60)]
# Env: CARGO_TARGET_DIR is honoured; P2M_TTF_ROWS — "REVISION [SWITCH]" lines replacing
# the default rows (every directory of corpus/regressions but the deep-* ones, which
# ci/deep-ttf.sh measures); P2M_FUZZ_BUILD_FLAGS — `cargo fuzz build` flags (default
# "-s none -O --no-trace-compares", the project's fuzz build); P2M_TTF_MIXED — the `mixed`
# runs as MUTATOR:MACRO pairs (default "on:on on:off off:on off:off").
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5}
budget=${2:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
tgt=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p harness --bin p2m-fuzz
cli=$tgt/release/p2m-fuzz
read -r -a build_flags <<<"${P2M_FUZZ_BUILD_FLAGS:--s none -O --no-trace-compares}"
(cd fuzz && cargo fuzz build "${build_flags[@]}" mixed >/dev/null 2>&1)
case $tgt in /*) fuzz_tgt=$tgt ;; *) fuzz_tgt=${CARGO_TARGET_DIR:+$PWD/fuzz/$tgt} ;; esac
bin=${fuzz_tgt:-fuzz/target}/x86_64-unknown-linux-gnu/release/mixed
[ -x "$bin" ] || { echo "ttf-matrix: no fuzz binary at $bin" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -v '_run_' fuzz/p2m.dict >"$work/no-runs.dict"

master_fixes=$(bash ci/master-fixes.sh "$cli" | tr '\n' ' ')
"$cli" revisions | awk '/^[^ ]/ && $2 ~ /xen-master/ {print $1}' >"$work/master-line"

# culprits REV: every switch `blame` names as a root cause of REV's regression traces (a
# master fix that alone also closes REV's hole stays open, or there would be nothing left).
culprits() {
  local f
  for f in corpus/regressions/"$1"/*.trace; do
    [ -f "$f" ] || continue
    { "$cli" blame --revision "$1" "$f" || true; } | sed -n 's/.*root cause: //p' | tr -d ',' | tr ' ' '\n'
  done | grep . | sort -u
}

# assumed REV SWITCH: the switches assumed fixed for REV (SWITCH, when given, and REV's
# culprits stay open).
assumed() {
  [ "$1" != xen-master ] && grep -qxF "$1" "$work/master-line" || return 0
  { echo "${2:-}"; culprits "$1"; } | grep . >"$work/open" || true
  tr ' ' '\n' <<<"$master_fixes" | grep . | grep -vxF -f "$work/open" | tr '\n' ' '
}

median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# baseline REV: the line's clean revision (`master-fixed` or `fixed`).
baseline() { if grep -qxF "$1" "$work/master-line"; then echo master-fixed; else echo fixed; fi; }

# genuine REV FILE: FILE (a reproducer) diverges under REV but not under its baseline — a
# find that the clean revision shares is the harness's own false positive, counted apart.
genuine() { "$cli" repro --revision "$(baseline "$1")" "$2" >/dev/null 2>&1; }

# hunt_run REV FIXED MACRO SEED: prints the seconds to the divergence ("" when none, "fp"
# when the reproducer diverges under the baseline too).
hunt_run() {
  local args=() f t
  for f in $2; do args+=(--assume-fixed "$f"); done
  rm -rf "$work/h"
  P2M_MACRO=$3 "$cli" hunt --revision "$1" "${args[@]}" --seed "$4" --seconds "$budget" \
    --out "$work/h" >"$work/out" 2>"$work/err" || true
  t=$(sed -n 's/^hunt: divergence after \([0-9.]*\)s.*/\1/p' "$work/err" | head -1)
  [ -n "$t" ] || return 0
  for f in "$work"/h/*; do
    [ -f "$f" ] || continue
    genuine "$1" "$f" || { echo fp; return 0; }
  done
  echo "$t"
}

# fuzz_run REV FIXED MUTATOR MACRO SEED: prints the seconds to the first crash ("" when none).
fuzz_run() {
  rm -rf "$work/c" "$work/a"
  mkdir -p "$work/c" "$work/a"
  local dict=fuzz/p2m.dict t0 t1
  [ "$4" = on ] || dict=$work/no-runs.dict
  t0=$(date +%s.%N)
  P2M_REVISION=$1 P2M_ASSUME_FIXED="$2" P2M_MUTATOR=$3 P2M_MACRO=$4 RUST_BACKTRACE=0 \
    timeout -k 5 $((budget + 30)) "$bin" -max_total_time="$budget" -seed="$5" \
    -dict="$dict" -artifact_prefix="$work/a/" "$work/c" >"$work/log" 2>&1 || true
  t1=$(date +%s.%N)
  if ls "$work/a"/crash-* >/dev/null 2>&1; then
    if genuine "$1" "$(ls "$work/a"/crash-* | head -1)"; then
      printf '%.2f\n' "$(echo "$t1 - $t0" | bc)"
    else
      echo fp
    fi
  fi
}

# row REV LABEL FIXED SEARCH MUTATOR MACRO: one table row over seeds 1..N.
row() {
  local times=() t s med max fp=0
  for s in $(seq 1 "$seeds"); do
    if [ "$4" = hunt ]; then t=$(hunt_run "$1" "$3" "$6" "$s"); else t=$(fuzz_run "$1" "$3" "$5" "$6" "$s"); fi
    if [ "$t" = fp ]; then fp=$((fp + 1)); elif [ -n "$t" ]; then times+=("$t"); fi
  done
  med=$(printf '%s\n' "${times[@]}" | { grep . || true; } | median)
  max=$(printf '%s\n' "${times[@]}" | { grep . || true; } | sort -g | tail -1)
  echo "| $1 | $2 | $4 | $5 | $6 | ${#times[@]} | $med | ${max:--} | $fp |"
}

default_rows() {
  for d in corpus/regressions/*/; do
    r=$(basename "$d")
    case $r in deep-*) ;; *) echo "$r" ;; esac
  done
}

echo "| revision | hole | search | mutator | macro ops | found (of $seeds) | median s | max s | false positives |"
echo "|---|---|---|---|---|---|---|---|---|"
rows=${P2M_TTF_ROWS:-$(default_rows)}
combos=${P2M_TTF_MIXED:-on:on on:off off:on off:off}
while read -r rev sw; do
  [ -n "$rev" ] || continue
  fixed=$(assumed "$rev" "${sw:-}")
  label=${sw:+\`$sw\`}
  label=${label:-all ($(ls corpus/regressions/"$rev"/*.trace 2>/dev/null | wc -l) traces)}
  for macro in on off; do row "$rev" "$label" "$fixed" hunt - "$macro"; done
  for combo in $combos; do
    row "$rev" "$label" "$fixed" mixed "${combo%:*}" "${combo#*:}"
  done
done <<<"$rows"

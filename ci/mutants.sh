#!/usr/bin/env bash
# Mutation score of the model's decision code, earned by the oracle alone.
#
# Usage: ci/mutants.sh [K/N]          run shard K of N (default 0/1: everything)
#        ci/mutants.sh --check-equivalents   fail when a declared equivalent names no current
#                                      mutant (an edit moved its line: re-anchor it)
#        ci/mutants.sh --aggregate DIR...   combine the mutants.out dirs of several shards (or of
#                                      a run and a later re-run of its survivors)
#        ci/mutants.sh --list          list the mutant set (no build, no tests)
#
# The mutant set is fixed by .cargo/mutants.toml (`examine_re`: need-update, flush, free and
# invalidation-scope functions of both lines). Only `harness/tests/mutation_kill.rs` may
# kill a mutant: the corpus replay, `exhaustive` depth 2 and a fixed-seed hunt per mode.
# Score = caught / (caught + missed), after removing mutants declared equivalent in
# ci/mutants-equivalent.txt (at most 10 % of the set, each with a reason); timeouts and
# unviable mutants are reported apart. Writes $MUTANTS_OUT/summary.md (default
# target/mutants). Exit 0 when the score is at least $MUTANTS_MIN_SCORE (default 90).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
OUT=${MUTANTS_OUT:-target/mutants}
MIN=${MUTANTS_MIN_SCORE:-90}
EQUIV=ci/mutants-equivalent.txt

need_mutants() {
  if ! cargo mutants --version >/dev/null 2>&1; then
    cargo install cargo-mutants --locked
  fi
}

# in_set: keeps the mutant names (stdin) that the config's examine_re / exclude_re select.
# cargo-mutants 27.1 generates "delete field ... from struct ... expression" mutants whatever
# those filters say, so the set is (re)applied here from .cargo/mutants.toml.
in_set() {
  python3 -c '
import re, sys, tomllib
cfg = tomllib.load(open(".cargo/mutants.toml", "rb"))
ex = [re.compile(p) for p in cfg.get("examine_re", [])]
no = [re.compile(p) for p in cfg.get("exclude_re", [])]
for line in sys.stdin:
    n = line.rstrip("\n")
    if n and any(p.search(n) for p in ex) and not any(p.search(n) for p in no):
        print(n)
'
}

# stale_equivalents: the declared equivalents that name no mutant cargo-mutants lists now
# (their line or column moved with an edit): each would silently count as a survivor.
stale_equivalents() {
  cargo mutants --workspace --list 2>/dev/null | sort -u >"$OUT/all.names"
  grep -v '^#' "$EQUIV" | cut -f1 | sed '/^$/d' | sort -u | comm -23 - "$OUT/all.names"
}

# summarize DIR...: score over the union of the shards' outcome lists.
summarize() {
  mkdir -p "$OUT"
  local f
  for f in caught missed timeout unviable; do
    cat "${@/%//mutants.out/$f.txt}" 2>/dev/null | in_set | sort -u >"$OUT/$f.all" || true
  done
  # A mutant caught in any of the dirs (e.g. a re-run of the survivors against a kill suite
  # that only grew) counts as caught, not also as missed or timed out.
  for f in missed timeout unviable; do
    comm -23 "$OUT/$f.all" "$OUT/caught.all" >"$OUT/$f.tmp" && mv "$OUT/$f.tmp" "$OUT/$f.all"
  done
  # Declared equivalents: "<mutant name prefix>\t<reason>"; only missed ones count.
  grep -v '^#' "$EQUIV" 2>/dev/null | cut -f1 | sed '/^$/d' >"$OUT/equiv.names" || true
  grep -F -f "$OUT/equiv.names" "$OUT/missed.all" >"$OUT/equivalent.all" 2>/dev/null || true
  grep -v -F -f "$OUT/equiv.names" "$OUT/missed.all" >"$OUT/survivors.all" 2>/dev/null || cp "$OUT/missed.all" "$OUT/survivors.all"
  local caught missed equiv timeout unviable total score
  caught=$(wc -l <"$OUT/caught.all"); missed=$(wc -l <"$OUT/survivors.all")
  equiv=$(wc -l <"$OUT/equivalent.all"); timeout=$(wc -l <"$OUT/timeout.all")
  unviable=$(wc -l <"$OUT/unviable.all")
  total=$((caught + missed + equiv + timeout + unviable))
  score=$(awk -v c="$caught" -v m="$missed" 'BEGIN { if (c + m == 0) print "n/a"; else printf "%.1f", 100 * c / (c + m) }')
  # A run stopped early (or a subset of shards) tested fewer mutants than the set holds.
  local setsize partial=""
  setsize=$(cargo mutants --workspace --list 2>/dev/null | in_set | sort -u | wc -l)
  if [ "$total" -lt "$setsize" ]; then
    partial="PARTIAL: $total of the $setsize mutants of the set were tested; the score is over those."
  fi
  local stale
  stale=$(stale_equivalents)
  {
    echo "## Mutation score (oracle-only kill)"
    echo
    echo "\`bash ci/mutants.sh\` on $(date -u +%Y-%m-%d): $total mutants of the decision code"
    echo "(\`.cargo/mutants.toml\`); killed only by \`harness/tests/mutation_kill.rs\`."
    if [ -n "$partial" ]; then echo; echo "**$partial**"; fi
    if [ -n "$stale" ]; then
      echo; echo "**STALE: $(printf '%s\n' "$stale" | wc -l) declared equivalents name no current mutant (counted as survivors; re-anchor them):**"
      printf '%s\n' "$stale" | sed 's/^/- `/; s/$/`/'
    fi
    echo
    echo "| caught | missed | declared equivalent | timeout | unviable | score |"
    echo "|---|---|---|---|---|---|"
    echo "| $caught | $missed | $equiv | $timeout | $unviable | **$score %** |"
    echo
    echo "Per line (files under \`p2m-core/src/master/\`, \`p2m-core/src/xen46/\`, the rest shared):"
    echo
    echo "| line | caught | missed | declared equivalent | timeout | score |"
    echo "|---|---|---|---|---|---|"
    local part pat c m e t
    for part in master xen46 shared; do
      case $part in
        master) pat='^p2m-core/src/master/' ;;
        xen46) pat='^p2m-core/src/xen46/' ;;
        shared) pat='^p2m-core/src/[a-z_]+\.rs:' ;;
      esac
      c=$(grep -cE "$pat" "$OUT/caught.all" || true); m=$(grep -cE "$pat" "$OUT/survivors.all" || true)
      e=$(grep -cE "$pat" "$OUT/equivalent.all" || true); t=$(grep -cE "$pat" "$OUT/timeout.all" || true)
      echo "| $part | $c | $m | $e | $t | $(awk -v c="$c" -v m="$m" 'BEGIN { if (c + m == 0) print "n/a"; else printf "%.1f %%", 100 * c / (c + m) }') |"
    done
    echo
    if [ "$missed" -gt 0 ]; then
      echo "Survivors (not declared equivalent):"
      echo
      sed 's/^/- `/; s/$/`/' "$OUT/survivors.all"
      echo
    fi
    if [ "$equiv" -gt 0 ]; then
      echo "Declared equivalent (reasons in \`ci/mutants-equivalent.txt\`):"
      echo
      sed 's/^/- `/; s/$/`/' "$OUT/equivalent.all"
      echo
    fi
  } >"$OUT/summary.md"
  cat "$OUT/summary.md"
  if [ "$total" -gt 0 ] && [ $((equiv * 10)) -gt "$total" ]; then
    echo "mutants: $equiv declared equivalent out of $total: more than 10 %" >&2
    exit 3
  fi
  if [ -n "$stale" ]; then
    echo "mutants: stale declared equivalents (ci/mutants.sh --check-equivalents)" >&2
    exit 3
  fi
  if [ "$score" = "n/a" ] || awk -v s="$score" -v m="$MIN" 'BEGIN { exit !(s < m) }'; then
    echo "mutants: score $score % below $MIN %" >&2
    exit 1
  fi
}

case "${1:-0/1}" in
  --check-equivalents)
    need_mutants
    mkdir -p "$OUT"
    stale=$(stale_equivalents)
    if [ -n "$stale" ]; then
      echo "mutants: declared equivalents that name no current mutant (re-anchor them to the moved line):" >&2
      printf '%s\n' "$stale" >&2
      exit 3
    fi
    echo "mutants: all $(grep -v '^#' "$EQUIV" | sed '/^$/d' | wc -l) declared equivalents name current mutants"
    ;;
  --aggregate)
    shift
    [ "$#" -gt 0 ] || { echo "usage: ci/mutants.sh --aggregate DIR..." >&2; exit 2; }
    summarize "$@"
    ;;
  --list)
    need_mutants
    cargo mutants --workspace --list | in_set
    ;;
  */*)
    need_mutants
    shard=${1:-0/1}
    dir="$OUT/shard-${shard/\//-of-}"
    mkdir -p "$dir"
    rc=0
    cargo mutants --workspace --shard "$shard" --output "$dir" -j "${MUTANTS_JOBS:-2}" || rc=$?
    # cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the score decides.
    case $rc in 0|2|3) ;; *) echo "mutants: cargo mutants failed (exit $rc)" >&2; exit "$rc" ;; esac
    summarize "$dir"
    ;;
  *)
    echo "usage: ci/mutants.sh [K/N] | --aggregate DIR... | --list | --check-equivalents" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Nightly fuzzing: build the cargo-fuzz targets, fuzz each one from its seed corpus, merge new
# coverage back into corpus/<target>/, minimize and report every crash, then check with the
# historical revisions that the harness still finds their known holes ("canary").
#
# Usage: ci/nightly-fuzz.sh [SECONDS_PER_TARGET]        (default 600, or $P2M_FUZZ_SECONDS)
#
# Exit status: 0 clean; 1 a target crashed (a divergence under $P2M_REVISION); 3 the harness
# failed a guard (a target ran too few inputs or errored, or a canary did not find its
# historical hole); 2 bad usage or build failure; 128+N when killed by signal N (the summary
# and every artifact found so far are still written).
#
# Environment (all optional):
#   P2M_FUZZ_OUT              output dir (default target/nightly-fuzz)
#   P2M_FUZZ_TARGETS          targets to fuzz (default "ept npt shadow mixed"; "" = none,
#                             e.g. for a canary-only run). `ceiling` decodes only: never fuzzed.
#   P2M_FUZZ_LINES            Xen lines to fuzz, one after the other (default "xen-4.6 xen-master"),
#                             each into $P2M_FUZZ_OUT/<line>/ with its own defaults: xen-4.6
#                             checks `fixed` (canary: xen-4.6-pre patch-v1 committed edb9531263), xen-master
#                             checks `master-fixed` (canary: every master revision with a
#                             corpus/regressions/ directory — the deep-hole revisions
#                             deep-coalesce-short, deep-free-empty-short and
#                             deep-last-unmap-noflush included — baseline master-fixed); the summary
#                             of each line is concatenated into $P2M_FUZZ_OUT/summary.md.
#                             Setting P2M_REVISION runs that one revision the old way.
#   P2M_REVISION              revision the main run checks (default fixed)
#   P2M_FUZZ_SANITIZER        none (default, stable toolchain) | address | leak | memory | thread
#   P2M_FUZZ_TOOLCHAIN        rustup toolchain for cargo fuzz (default: stable for `none`,
#                             nightly otherwise; "default" = whatever `cargo` is)
#   P2M_FUZZ_BUILD_FLAGS      extra `cargo fuzz build` flags (word-split, e.g. "-O")
#   P2M_FUZZ_TRACE_CMP        0 (default): build with `--no-trace-compares` (the targets run
#                             about 2x the executions and find no hole later: BENCHMARKS.md,
#                             "Cost independent of size"); 1: libFuzzer's comparison tracing
#   P2M_FUZZ_JOBS             libFuzzer -fork=N (default nproc)
#   P2M_FUZZ_ARGS             extra libFuzzer flags (word-split)
#   P2M_FUZZ_TIMEOUT          libFuzzer -timeout per input, seconds (default 30)
#   P2M_FUZZ_MIN_EXECS        guard: minimum executed inputs per target (default 1000)
#   P2M_FUZZ_MERGE            1 (default): merge new coverage into corpus/<target>/; 0: don't
#   P2M_FUZZ_CMIN             1: also `cargo fuzz cmin` corpus/<target>/ afterwards (default 0)
#   P2M_FUZZ_KEEP_GOING       1: libFuzzer -ignore_crashes=1, keep fuzzing after a crash
#   P2M_FUZZ_TMIN             1 (default): `cargo fuzz tmin` each crash; 0: skip
#   P2M_FUZZ_TMIN_RUNS        tmin attempts (default 255)
#   P2M_FUZZ_MAX_CRASHES      crashes per target minimized in detail (default 5)
#   P2M_FUZZ_CANARY           1 (default): run the historical canary; 0: skip
#   P2M_CANARY_REVISIONS      default "xen-4.6-pre patch-v1 committed"
#   P2M_CANARY_TARGETS        targets of the simple canary (default "ept npt shadow"): each
#                             must find a divergence clean under the baseline
#   P2M_CANARY_PEEL_TARGET    target of the peeling canary (default mixed; "" = none): find a
#                             hole, `p2m-fuzz blame` it, assume its switch fixed
#                             (P2M_ASSUME_FIXED), repeat until every trace in
#                             corpus/regressions/<revision>/ is explained (or nothing more is
#                             found: then a trace still diverging is MISSED). With a
#                             CLI that has no `blame --assume-fixed`, a simple canary instead.
#   P2M_CANARY_MAX_PEEL       at most this many peeling steps per revision (default 20;
#                             xen-4.6-pre took 13 before fault injection added two holes)
#   P2M_CANARY_SECONDS        budget per canary run (default 30)
#   P2M_CANARY_BASELINE       revision a canary crash must be clean under (default fixed)
#   P2M_CANARY_ATTEMPTS       fresh runs (seeds 1..N) while the crash found also diverges
#                             under the baseline, or (peeling) while a run finds nothing but
#                             a regression trace is still unexplained (default 3)
#   P2M_FUZZ_DICT             libFuzzer dictionary for every run (default fuzz/p2m.dict;
#                             "" = none)
#   GITHUB_STEP_SUMMARY       when set, the summary is appended to it
#
# Output ($P2M_FUZZ_OUT): summary.md, stats.tsv (one line per target), canary.tsv,
# logs/*.log, artifacts/<target>/ (raw libFuzzer artifacts), crashes/<target>/<artifact>/
# (input.bin, tmin.bin, minimized.trace, repro.txt, repro-raw.txt), corpus/<target>/ (inputs
# found this run), canary/<revision>-<target>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
case "${1:-}" in -h|--help) usage ;; esac
[ "$#" -le 1 ] || usage
SECS=${1:-${P2M_FUZZ_SECONDS:-600}}
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || [ "$SECS" -eq 0 ]; then
  echo "nightly-fuzz: SECONDS_PER_TARGET must be a positive integer, got '$SECS'" >&2
  exit 2
fi

OUT=${P2M_FUZZ_OUT:-target/nightly-fuzz}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Both lines: run this script once per line, each with its own revision, canary and output
# directory; the exit status is the worst of the runs (1 crash before 3 guard before 0).
if [ -z "${P2M_REVISION:-}" ] && [ -z "${P2M_FUZZ_LINE:-}" ]; then
  read -r -a LINES <<<"${P2M_FUZZ_LINES:-xen-4.6 xen-master}"
  worst=0
  : >"$OUT/summary.md"
  for line in "${LINES[@]}"; do
    case $line in
      xen-4.6) rev=fixed; canary="xen-4.6-pre patch-v1 committed edb9531263" ;;
      xen-master)
        rev=master-fixed
        # Every master revision with regressions, the deep-hole ones (deep-*) included:
        # their traces need half a 2 MiB region of agreeing 4 KiB ops, and the canary must
        # still rediscover them.
        canary=""
        for d in corpus/regressions/*/; do
          r=$(basename "$d")
          case $r in xen-4.6-pre|patch-v1|committed|edb9531263) ;; *) canary="$canary $r" ;; esac
        done ;;
      *) echo "nightly-fuzz: unknown line '$line' (xen-4.6, xen-master)" >&2; exit 2 ;;
    esac
    rc=0
    P2M_FUZZ_LINE=$line P2M_REVISION=$rev P2M_FUZZ_OUT="$OUT/$line" \
      P2M_CANARY_REVISIONS=${P2M_CANARY_REVISIONS:-$canary} \
      P2M_CANARY_BASELINE=${P2M_CANARY_BASELINE:-$rev} \
      bash "$0" "$SECS" || rc=$?
    { echo "<!-- line $line: exit $rc -->"; cat "$OUT/$line/summary.md" 2>/dev/null; echo; } >>"$OUT/summary.md"
    case $rc in
      0) ;;
      1) worst=1 ;;
      3) [ "$worst" = 1 ] || worst=3 ;;
      *) [ "$worst" = 0 ] && worst=$rc ;;
    esac
  done
  echo "nightly-fuzz: both lines done (exit $worst); summary in $OUT/summary.md"
  exit "$worst"
fi
TARGETS=${P2M_FUZZ_TARGETS-ept npt shadow mixed}
REVISION=${P2M_REVISION:-fixed}
SANITIZER=${P2M_FUZZ_SANITIZER:-none}
if [ "$SANITIZER" = none ]; then TOOLCHAIN=${P2M_FUZZ_TOOLCHAIN:-default}; else TOOLCHAIN=${P2M_FUZZ_TOOLCHAIN:-nightly}; fi
JOBS=${P2M_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
FUZZ_TIMEOUT=${P2M_FUZZ_TIMEOUT:-30}
MIN_EXECS=${P2M_FUZZ_MIN_EXECS:-1000}
MERGE=${P2M_FUZZ_MERGE:-1}
CMIN=${P2M_FUZZ_CMIN:-0}
KEEP_GOING=${P2M_FUZZ_KEEP_GOING:-0}
TMIN=${P2M_FUZZ_TMIN:-1}
TMIN_RUNS=${P2M_FUZZ_TMIN_RUNS:-255}
MAX_CRASHES=${P2M_FUZZ_MAX_CRASHES:-5}
CANARY=${P2M_FUZZ_CANARY:-1}
CANARY_REVISIONS=${P2M_CANARY_REVISIONS:-xen-4.6-pre patch-v1 committed}
CANARY_TARGETS=${P2M_CANARY_TARGETS-ept npt shadow}
CANARY_PEEL_TARGET=${P2M_CANARY_PEEL_TARGET-mixed}
CANARY_MAX_PEEL=${P2M_CANARY_MAX_PEEL:-20}
CANARY_SECONDS=${P2M_CANARY_SECONDS:-30}
CANARY_BASELINE=${P2M_CANARY_BASELINE:-fixed}
CANARY_ATTEMPTS=${P2M_CANARY_ATTEMPTS:-3}
TRACE_CMP_FLAG=--no-trace-compares
[ "${P2M_FUZZ_TRACE_CMP:-0}" = 1 ] && TRACE_CMP_FLAG=
read -r -a BUILD_FLAGS <<<"-s $SANITIZER $TRACE_CMP_FLAG ${P2M_FUZZ_BUILD_FLAGS:-}"
read -r -a EXTRA_ARGS <<<"${P2M_FUZZ_ARGS:-}"
# The targets' libFuzzer dictionary (magic frames of the model; see fuzz/p2m.dict), for the
# main runs and the canaries alike ("" = none).
DICT=${P2M_FUZZ_DICT-fuzz/p2m.dict}
DICT_ARGS=()
if [ -n "$DICT" ]; then
  [ -f "$DICT" ] || { echo "nightly-fuzz: no dictionary $DICT" >&2; exit 2; }
  DICT_ARGS=(-dict="$DICT")
fi
read -r -a TARGET_LIST <<<"$TARGETS"
read -r -a CANARY_REV_LIST <<<"$CANARY_REVISIONS"
read -r -a CANARY_TARGET_LIST <<<"$CANARY_TARGETS"

# Start from a clean slate, but only remove what this script creates.
rm -rf "$OUT/summary.md" "$OUT/stats.tsv" "$OUT/canary.tsv" "$OUT/logs" "$OUT/artifacts" \
  "$OUT/crashes" "$OUT/corpus" "$OUT/canary" "$OUT/status"
mkdir -p "$OUT/logs" "$OUT/artifacts" "$OUT/crashes" "$OUT/corpus" "$OUT/canary"
printf 'target\tstatus\texecs\tseconds\tcorpus_before\tcorpus_after\tcrashes\n' >"$OUT/stats.tsv"
printf 'revision\ttarget\tstatus\tseconds\tclass\troot_cause\tartifact\n' >"$OUT/canary.tsv"

START_TIME=$(date +%s)
CHILD=""            # pid (= process group) of the running fuzzer, for the signal trap
CUR_TARGET=""       # target being fuzzed, for the signal trap
CUR_START=0
INTERRUPTED=""
FAILED_CRASH=0
FAILED_GUARD=0

# Note: `sed -n 1p`, never `head -1`, after a producer that may write much: with pipefail,
# a producer killed by SIGPIPE fails the pipeline (and set -e the script).
log() { printf '[nightly-fuzz %4ds] %s\n' "$(($(date +%s) - START_TIME))" "$*" >&2; }

if [ "$TOOLCHAIN" = default ]; then FUZZ_CARGO=(cargo fuzz); else FUZZ_CARGO=(cargo "+$TOOLCHAIN" fuzz); fi

# run_child LOG CMD...: runs CMD in the background, output to LOG, in its own process group
# (so the trap can stop it and all its libFuzzer fork children) and waits for it; returns its
# exit status. (The redirection must not be on the function call: the trap runs inside it.)
run_child() {
  local out=$1
  shift
  if command -v setsid >/dev/null 2>&1; then setsid -w "$@" >"$out" 2>&1 & else "$@" >"$out" 2>&1 & fi
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

stop_child() {
  [ -n "$CHILD" ] || return 0
  kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
  local i
  for i in $(seq 1 50); do
    kill -0 "$CHILD" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL -- "-$CHILD" 2>/dev/null || kill -KILL "$CHILD" 2>/dev/null || true
  wait "$CHILD" 2>/dev/null || true
  CHILD=""
}

count_files() { find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l | tr -d ' '; }

# Crash-like libFuzzer artifacts of a directory (slow-unit-* are not failures).
list_artifacts() {
  find "$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \
    -o -name 'leak-*' \) 2>/dev/null | sort
}

# Executed inputs according to a libFuzzer log: the largest "#N" status number (fork mode
# prints "#N: cov: ..." with the total over all jobs) or the final stat line.
execs_from_log() {
  { grep -oE '^#[0-9]+' "$1" | tr -d '#'
    grep -oE '^stat::number_of_executed_units: *[0-9]+' "$1" | grep -oE '[0-9]+$'
    echo 0; } 2>/dev/null | sort -n | tail -1
}

# The per-mode targets force the mode onto the header byte: store the input as the scenario
# the target ran, re-encoded with that mode in its header (`P2M_TARGET` + `p2m-fuzz encode`),
# so that it replays anywhere without knowing the target. Inputs too short to decode are
# kept as they are.
mode_fixed_copy() {
  local target=$1 src=$2 dst=$3
  P2M_TARGET=$target "$P2M_FUZZ" encode "$src" "$dst" 2>/dev/null || cp "$src" "$dst"
}

divergence_line() { grep -m1 -E '^DIVERGENCE' "$1" 2>/dev/null || true; }

# Quick look at an artifact: mode-fixed copy and `p2m-fuzz repro` of the raw input.
triage_quick() {
  local target=$1 art=$2 rev=$3 dir rc=0
  dir="$OUT/crashes/$target/$(basename "$art")"
  mkdir -p "$dir"
  [ -f "$dir/input.bin" ] || mode_fixed_copy "$target" "$art" "$dir/input.bin"
  if [ ! -f "$dir/repro-raw.txt" ]; then
    timeout 60 "$P2M_FUZZ" repro --revision "$rev" "$dir/input.bin" >"$dir/repro-raw.txt" 2>&1 || rc=$?
    echo "$rc" >"$dir/repro-raw.rc"
  fi
}

# Full treatment: tmin, class-preserving minimize to a text trace, repro of that trace.
triage_full() {
  local target=$1 art=$2 rev=$3 dir rc=0 min=""
  dir="$OUT/crashes/$target/$(basename "$art")"
  triage_quick "$target" "$art" "$rev"
  if [ "$TMIN" = 1 ] && [ ! -f "$dir/tmin.bin" ]; then
    log "$target: cargo fuzz tmin $(basename "$art")"
    rc=0
    P2M_REVISION=$rev RUST_BACKTRACE=0 timeout 600 "${FUZZ_CARGO[@]}" tmin "${BUILD_FLAGS[@]}" \
      -r "$TMIN_RUNS" "$target" "$art" >"$dir/tmin.log" 2>&1 || rc=$?
    min=$(grep -A2 '^Minimized artifact:' "$dir/tmin.log" | sed -n '3p' | tr -d '\t' || true)
    if [ -n "$min" ] && [ -f "$ROOT/$min" ]; then
      mode_fixed_copy "$target" "$ROOT/$min" "$dir/tmin.bin"
      rm -f "$ROOT/$min"
    elif grep -q 'failed to minimize beyond' "$dir/tmin.log"; then
      log "$target: tmin: already minimal"
    else
      log "$target: tmin produced nothing (exit $rc), see $dir/tmin.log"
    fi
  fi
  # p2m-fuzz minimize keeps the divergence class; start from tmin's output when it still
  # shows the same class, else from the original input.
  local src="$dir/input.bin" cls_raw cls_tmin
  cls_raw=$(divergence_line "$dir/repro-raw.txt" | cut -d' ' -f2)
  if [ -f "$dir/tmin.bin" ]; then
    timeout 60 "$P2M_FUZZ" repro --revision "$rev" "$dir/tmin.bin" >"$dir/repro-tmin.txt" 2>&1 || true
    cls_tmin=$(divergence_line "$dir/repro-tmin.txt" | cut -d' ' -f2)
    if [ -n "$cls_raw" ] && [ "$cls_raw" = "$cls_tmin" ]; then src="$dir/tmin.bin"; fi
  fi
  rc=0
  timeout 300 "$P2M_FUZZ" minimize --revision "$rev" --out "$dir/minimized.trace" "$src" \
    >"$dir/minimize.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] || [ ! -s "$dir/minimized.trace" ]; then
    # Not a divergence p2m-fuzz can shrink (e.g. a panic inside the model): keep the decoded
    # input as the trace.
    "$P2M_FUZZ" fmt "$dir/input.bin" >"$dir/minimized.trace" 2>>"$dir/minimize.log" || true
  fi
  rc=0
  timeout 60 "$P2M_FUZZ" repro --revision "$rev" "$dir/minimized.trace" >"$dir/repro.txt" 2>&1 || rc=$?
  echo "$rc" >"$dir/repro.rc"
  if [ "$HAVE_BLAME" = 1 ]; then
    timeout 120 "$P2M_FUZZ" blame --revision "$rev" "$dir/minimized.trace" >"$dir/blame.txt" 2>&1 || true
  fi
}

# `p2m-fuzz blame` (newer CLIs): the root-cause switch of a diverging input, or "".
root_cause() {
  [ "$HAVE_BLAME" = 1 ] || return 0
  # (blame exits 1 when the input diverges.)
  { timeout 120 "$P2M_FUZZ" blame --revision "$1" "$2" 2>/dev/null || true; } |
    sed -n 's/.*root cause: //p' | sed -n 1p
}

write_summary() {
  local s="$OUT/summary.md" t status execs secs before after crashes result dir name rc
  {
    echo "# Nightly fuzz: p2m-iommu-fuzz"
    echo
    if [ "$FAILED_CRASH" -ne 0 ]; then result="**FAILED: crashes found under \`$REVISION\`**"
    elif [ "$FAILED_GUARD" -ne 0 ]; then result="**FAILED: harness guard (a target did not run, or a canary lost its teeth)**"
    else result="passed"; fi
    if [ "$result" = passed ] && { [ -n "$INTERRUPTED" ] || [ -n "$INTERNAL_ERROR" ]; }; then
      result="no failure in what ran"
    fi
    if [ -n "$INTERRUPTED" ]; then result="**INTERRUPTED by SIG$INTERRUPTED** (partial results); $result"; fi
    if [ -n "$INTERNAL_ERROR" ]; then result="**ERROR in ci/nightly-fuzz.sh at $INTERNAL_ERROR** (partial results); $result"; fi
    echo "Result: $result"
    echo
    echo "- commit: \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`, revision: \`$REVISION\`, sanitizer: \`$SANITIZER\`, toolchain: \`$TOOLCHAIN\`"
    echo "- budget: ${SECS}s per target, libFuzzer \`-fork=$JOBS\`, minimum ${MIN_EXECS} executions per target"
    echo "- wall time: $(($(date +%s) - START_TIME))s; output: \`$OUT\`"
    echo
    echo "## Targets"
    echo
    echo "| target | status | executions | seconds | exec/s | corpus before | corpus after | crashes |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    tail -n +2 "$OUT/stats.tsv" | while IFS=$'\t' read -r t status execs secs before after crashes; do
      echo "| $t | $status | $execs | $secs | $((execs / (secs > 0 ? secs : 1))) | $before | $after | $crashes |"
    done
    for t in "${TARGET_LIST[@]}"; do
      [ -d "$OUT/crashes/$t" ] || continue
      local more=() shown=0
      for dir in "$OUT/crashes/$t"/*/; do
        [ -d "$dir" ] || continue
        name=$(basename "$dir")
        if [ ! -f "$dir/repro.txt" ]; then
          if [ "$shown" -lt "$MAX_CRASHES" ] && [ -f "$dir/repro-raw.txt" ]; then
            shown=$((shown + 1))
            echo
            echo "### Crash: \`$t\` / \`$name\` (not minimized)"
            echo
            echo "- raw input: \`artifacts/$t/$name\`; reproduce with \`p2m-fuzz repro --revision $REVISION crashes/$t/$name/input.bin\`"
            echo
            echo "\`p2m-fuzz repro\` of the input (exit $(cat "$dir/repro-raw.rc" 2>/dev/null || echo '?')):"
            echo
            echo '```text'
            head -c 6000 "$dir/repro-raw.txt"
            echo '```'
          else
            more+=("$dir")
          fi
          continue
        fi
        shown=$((shown + 1))
        echo
        echo "### Crash: \`$t\` / \`$name\`"
        echo
        echo "- raw input: \`artifacts/$t/$name\`; as \`p2m-fuzz repro\` reads it: \`crashes/$t/$name/input.bin\`"
        if [ -f "$dir/tmin.bin" ]; then echo "- \`cargo fuzz tmin\`: \`crashes/$t/$name/tmin.bin\`"; fi
        if [ -s "$dir/blame.txt" ]; then echo "- \`p2m-fuzz blame\`: $(sed -n '1s/^[^:]*: //p' "$dir/blame.txt")"; fi
        echo "- minimized trace: \`crashes/$t/$name/minimized.trace\`; reproduce with \`p2m-fuzz repro --revision $REVISION crashes/$t/$name/minimized.trace\`"
        echo
        rc=$(cat "$dir/repro.rc" 2>/dev/null || echo '?')
        echo "\`p2m-fuzz repro\` of the minimized trace (exit $rc):"
        echo
        echo '```text'
        head -c 6000 "$dir/repro.txt"
        echo '```'
        if [ -f "$dir/repro-raw.txt" ]; then
          echo
          echo "<details><summary>p2m-fuzz repro of the original input (exit $(cat "$dir/repro-raw.rc" 2>/dev/null || echo '?'))</summary>"
          echo
          echo '```text'
          head -c 4000 "$dir/repro-raw.txt"
          echo '```'
          echo
          echo "</details>"
        fi
      done
      if [ "${#more[@]}" -gt 0 ]; then
        echo
        echo "### \`$t\`: ${#more[@]} more crash(es), not minimized"
        echo
        for dir in "${more[@]}"; do
          name=$(basename "$dir")
          if [ -f "$dir/repro-raw.txt" ]; then
            echo "- \`artifacts/$t/$name\` (repro exit $(cat "$dir/repro-raw.rc" 2>/dev/null || echo '?')): $(divergence_line "$dir/repro-raw.txt" | sed 's/^DIVERGENCE: //')"
          else
            echo "- \`artifacts/$t/$name\`: not triaged"
          fi
        done | sed -n 1,50p
      fi
      local untriaged
      untriaged=$(($(list_artifacts "$OUT/artifacts/$t" | wc -l) - $(find "$OUT/crashes/$t" -mindepth 1 -maxdepth 1 -type d | wc -l)))
      if [ "$untriaged" -gt 0 ]; then
        echo
        echo "$untriaged more artifact(s) in \`artifacts/$t/\`, not triaged."
      fi
    done
    if [ "$CANARY" = 1 ]; then
      echo
      echo "## Canary: historical revisions (crashes expected)"
      echo
      echo "Each historical revision fuzzed from an empty corpus for at most ${CANARY_SECONDS}s per run; a run that"
      echo "finds nothing means the harness lost its teeth. On \`${CANARY_TARGETS// /\`, \`}\` a found input must be clean under"
      echo "\`$CANARY_BASELINE\`. On \`${CANARY_PEEL_TARGET:-(none)}\` (peeling, rows \`#N\`) each found hole's root cause (\`p2m-fuzz blame\`)"
      echo "is assumed fixed (\`P2M_ASSUME_FIXED\`) and fuzzing goes on until nothing is left; the \`(all)\` row checks that"
      echo "every trace of \`corpus/regressions/<revision>/\` is explained by the root causes rediscovered."
      echo
      echo "| revision | target | status | seconds | divergence | root cause | artifact |"
      echo "|---|---|---|---:|---|---|---|"
      tail -n +2 "$OUT/canary.tsv" | while IFS=$'\t' read -r rev t status secs cls cause art; do
        echo "| $rev | $t | $status | $secs | $cls | $cause | ${art:+\`$art\`} |"
      done
    fi
  } >"$s"
  SUMMARY_WRITTEN=1
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then cat "$s" >>"$GITHUB_STEP_SUMMARY" || true; fi
  log "summary: $s"
}

record_stats() {  # target status execs seconds before after crashes
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/stats.tsv"
}

on_signal() {
  local sig=$1 num=$2
  trap - TERM INT
  set +e
  INTERRUPTED=$sig
  log "caught SIG$sig: stopping the fuzzer, keeping artifacts, writing the summary"
  stop_child
  if [ -n "$CUR_TARGET" ]; then
    local t=$CUR_TARGET art n
    n=$(list_artifacts "$OUT/artifacts/$t" | wc -l | tr -d ' ')
    record_stats "$t" interrupted "$(execs_from_log "$OUT/logs/$t.log")" \
      "$(($(date +%s) - CUR_START))" "$(count_files "corpus/$t")" "$(count_files "corpus/$t")" "$n"
    if [ "$n" -gt 0 ]; then FAILED_CRASH=1; fi
  fi
  # Quick triage (repro only, no tmin/minimize) of up to $MAX_CRASHES artifacts per target
  # not looked at yet: the job may be killed for good a few seconds from now.
  local d k
  for d in "$OUT"/artifacts/*/; do
    if [ ! -d "$d" ] || [ -z "${P2M_FUZZ:-}" ]; then continue; fi
    k=0
    while IFS= read -r art; do
      if [ -z "$art" ] || [ "$k" -ge "$MAX_CRASHES" ]; then break; fi
      k=$((k + 1))
      [ -f "$OUT/crashes/$(basename "$d")/$(basename "$art")/repro-raw.txt" ] && continue
      triage_quick "$(basename "$d")" "$art" "$REVISION"
    done < <(list_artifacts "$d")
  done
  write_summary
  exit $((128 + num))
}
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
# A bug in this script must not lose the results: log the failing command and still write
# the summary on the way out.
SUMMARY_WRITTEN=0
INTERNAL_ERROR=""
trap 'INTERNAL_ERROR="line $LINENO: \`$BASH_COMMAND\` exited $?"' ERR
on_exit() {
  local rc=$?
  if [ "$SUMMARY_WRITTEN" = 0 ] && [ -n "$INTERNAL_ERROR" ]; then
    set +e
    trap - ERR
    log "internal error at $INTERNAL_ERROR; writing the summary of what exists"
    stop_child
    write_summary
    [ "$rc" -ne 0 ] || rc=2
  fi
  exit "$rc"
}
trap on_exit EXIT
set -E

# ---------------------------------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
  if ! cargo install cargo-fuzz --locked >"$OUT/logs/install.log" 2>&1; then
    tail -n 30 "$OUT/logs/install.log" >&2
    echo "nightly-fuzz: installing cargo-fuzz failed (log: $OUT/logs/install.log)" >&2
    exit 2
  fi
fi
log "build: cargo fuzz build ${BUILD_FLAGS[*]} (toolchain $TOOLCHAIN); p2m-fuzz CLI"
if ! "${FUZZ_CARGO[@]}" build "${BUILD_FLAGS[@]}" >"$OUT/logs/build.log" 2>&1; then
  tail -n 30 "$OUT/logs/build.log" >&2
  echo "nightly-fuzz: cargo fuzz build failed (log: $OUT/logs/build.log)" >&2
  exit 2
fi
if ! cargo build --release -q -p harness --bin p2m-fuzz >>"$OUT/logs/build.log" 2>&1; then
  tail -n 30 "$OUT/logs/build.log" >&2
  echo "nightly-fuzz: building p2m-fuzz failed" >&2
  exit 2
fi
target_dir() {
  cargo metadata --format-version 1 --no-deps "$@" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
FUZZ_BIN="$(target_dir --manifest-path fuzz/Cargo.toml)/$TRIPLE/release"
P2M_FUZZ="$(target_dir)/release/p2m-fuzz"
for t in "${TARGET_LIST[@]}" "${CANARY_TARGET_LIST[@]}" ${CANARY_PEEL_TARGET:+"$CANARY_PEEL_TARGET"}; do
  [ -x "$FUZZ_BIN/$t" ] || { echo "nightly-fuzz: no fuzz target binary $FUZZ_BIN/$t" >&2; exit 2; }
done
[ -x "$P2M_FUZZ" ] || { echo "nightly-fuzz: no $P2M_FUZZ" >&2; exit 2; }
HAVE_BLAME=0
if "$P2M_FUZZ" blame --help >/dev/null 2>&1; then HAVE_BLAME=1; fi

# ---------------------------------------------------------------------------------------------
for t in "${TARGET_LIST[@]}"; do
  seeds="corpus/$t"
  work="$OUT/corpus/$t"
  arts="$OUT/artifacts/$t"
  mkdir -p "$seeds" "$work" "$arts"
  before=$(count_files "$seeds")
  args=(-fork="$JOBS" -max_total_time="$SECS" -timeout="$FUZZ_TIMEOUT" -print_final_stats=1
    -artifact_prefix="$arts/" "${DICT_ARGS[@]}")
  [ "$KEEP_GOING" = 1 ] && args+=(-ignore_crashes=1)
  log "$t: fuzzing ${SECS}s under $REVISION, -fork=$JOBS, $before seed inputs"
  CUR_TARGET=$t
  CUR_START=$(date +%s)
  rc=0
  P2M_REVISION=$REVISION RUST_BACKTRACE=${RUST_BACKTRACE:-1} run_child "$OUT/logs/$t.log" \
    timeout -k 30 $((SECS + 300)) "$FUZZ_BIN/$t" "${args[@]}" "${EXTRA_ARGS[@]}" "$work" "$seeds" \
    || rc=$?
  secs=$(($(date +%s) - CUR_START))
  execs=$(execs_from_log "$OUT/logs/$t.log")
  mapfile -t found < <(list_artifacts "$arts")
  new=$(count_files "$work")
  if [ "$MERGE" = 1 ]; then
    if [ "$new" -gt 0 ]; then
      log "$t: merging $new new inputs into $seeds"
      P2M_REVISION=$REVISION run_child "$OUT/logs/$t-merge.log" \
        "$FUZZ_BIN/$t" -merge=1 -timeout="$FUZZ_TIMEOUT" "$seeds" "$work" || log "$t: merge failed (see logs/$t-merge.log)"
    fi
    if [ "$CMIN" = 1 ]; then
      log "$t: cargo fuzz cmin $seeds"
      P2M_REVISION=$REVISION "${FUZZ_CARGO[@]}" cmin "${BUILD_FLAGS[@]}" "$t" "$seeds" \
        >"$OUT/logs/$t-cmin.log" 2>&1 || log "$t: cmin failed (see logs/$t-cmin.log)"
    fi
  fi
  after=$(count_files "$seeds")
  CUR_TARGET=""
  if [ "${#found[@]}" -gt 0 ]; then
    status=crashed
    FAILED_CRASH=1
  elif [ "$rc" -ne 0 ]; then
    status="error (exit $rc)"
    FAILED_GUARD=1
  elif [ "$execs" -lt "$MIN_EXECS" ]; then
    status="too few executions"
    FAILED_GUARD=1
  else
    status=clean
  fi
  log "$t: $status, $execs executions in ${secs}s, corpus $before -> $after, ${#found[@]} crash artifact(s)"
  record_stats "$t" "$status" "$execs" "$secs" "$before" "$after" "${#found[@]}"
  i=0
  for art in "${found[@]}"; do
    if [ "$i" -lt "$MAX_CRASHES" ]; then triage_full "$t" "$art" "$REVISION"
    else triage_quick "$t" "$art" "$REVISION"; fi
    i=$((i + 1))
    cls=$(divergence_line "$OUT/crashes/$t/$(basename "$art")/repro-raw.txt")
    log "$t: $(basename "$art"): ${cls:-no divergence reported by repro}"
  done
done

# ---------------------------------------------------------------------------------------------
canary_row() {  # revision target status seconds class cause artifact
  # (No empty fields: `read` with IFS=tab would merge them.)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:--}" "${6:--}" "${7:--}" \
    >>"$OUT/canary.tsv"
}

# canary_fuzz DIR REVISION TARGET SEED [ASSUMED...]: fuzz TARGET from an empty corpus under
# REVISION (with the ASSUMED switches at their fixed values) for at most $CANARY_SECONDS;
# sets CANARY_ART (first artifact, "" if none) and CANARY_RC.
canary_fuzz() {
  local d=$1 rev=$2 t=$3 seed=$4
  shift 4
  rm -rf "$d"
  mkdir -p "$d/corpus" "$d/artifacts"
  CANARY_RC=0
  P2M_REVISION=$rev P2M_ASSUME_FIXED="$*" RUST_BACKTRACE=0 run_child "$d/fuzz.log" \
    timeout -k 10 $((CANARY_SECONDS + 60)) "$FUZZ_BIN/$t" -max_total_time="$CANARY_SECONDS" \
    "${DICT_ARGS[@]}" -seed="$seed" -timeout="$FUZZ_TIMEOUT" -artifact_prefix="$d/artifacts/" "$d/corpus" \
    || CANARY_RC=$?
  CANARY_ART=$(list_artifacts "$d/artifacts" | sed -n 1p)
  if [ -n "$CANARY_ART" ]; then mode_fixed_copy "$t" "$CANARY_ART" "$d/input.bin"; fi
}

# Simple canary: TARGET under REVISION must find a divergence that is clean under the
# baseline (retried with other seeds while what it finds also diverges under the baseline).
canary_simple() {
  local rev=$1 t=$2
  local d="$OUT/canary/$rev-$t" c0 attempt=1 status cls="" cause="" r1 r2 secs
  c0=$(date +%s)
  while :; do
    canary_fuzz "$d" "$rev" "$t" "$attempt"
    cls=""
    cause=""
    if [ -z "$CANARY_ART" ]; then
      if [ "$CANARY_RC" -eq 0 ]; then status="NOT FOUND: harness lost its teeth"; else status="error (exit $CANARY_RC)"; fi
      break
    fi
    r1=0; "$P2M_FUZZ" repro --revision "$rev" "$d/input.bin" >"$d/repro.txt" 2>&1 || r1=$?
    r2=0; "$P2M_FUZZ" repro --revision "$CANARY_BASELINE" "$d/input.bin" >"$d/repro-baseline.txt" 2>&1 || r2=$?
    cls=$(divergence_line "$d/repro.txt" | sed 's/^DIVERGENCE: //')
    cause=$(root_cause "$rev" "$d/input.bin")
    if [ "$r1" -eq 1 ] && [ "$r2" -eq 0 ]; then
      status="found (expected)"
      if [ "$attempt" -gt 1 ]; then status="found (expected; attempt $attempt)"; fi
      break
    elif [ "$r1" -ne 1 ]; then
      status="ERROR: p2m-fuzz repro exit $r1 on the crash"
      break
    fi
    status="INCONCLUSIVE: $attempt input(s) found, all also diverge under $CANARY_BASELINE"
    [ "$attempt" -lt "$CANARY_ATTEMPTS" ] || break
    attempt=$((attempt + 1))
  done
  secs=$(($(date +%s) - c0))
  case "$status" in found*) ;; *) FAILED_GUARD=1 ;; esac
  log "canary $rev/$t: $status after ${secs}s${cls:+: $cls}${cause:+ (root cause: $cause)}"
  canary_row "$rev" "$t" "$status" "$secs" "$cls" "$cause" \
    "${CANARY_ART:+canary/$rev-$t/artifacts/$(basename "$CANARY_ART")}"
}

# The switches of REVISION (per `p2m-fuzz revisions`) whose values differ from the canary
# baseline (`fixed`, or `master-fixed` for the master line), less the ones given.
differing_switches() {
  local rev=$1
  shift
  "$P2M_FUZZ" revisions | awk -v r="$rev" -v b="$CANARY_BASELINE" -v skip=" $* " '
    want { for (i = 1; i <= NF; i++) sw[r, i] = $i; n[r] = NF; want = 0 }
    wantf { for (i = 1; i <= NF; i++) sw["fixed", i] = $i; n["fixed"] = NF; wantf = 0 }
    $1 == r { want = 1 }
    $1 == b { wantf = 1 }
    END {
      for (i = 1; i <= n[r]; i++) if (sw[r, i] != sw["fixed", i]) {
        split(sw[r, i], kv, "="); if (index(skip, " " kv[1] " ") == 0) printf "%s ", kv[1]
      }
    }'
}

# unexplained_trace REVISION [ASSUMED...]: prints the first trace of
# corpus/regressions/REVISION/ that still diverges under REVISION with the ASSUMED switches
# fixed and succeeds; fails when every trace is clean.
unexplained_trace() {
  local rev=$1 f
  shift
  for f in corpus/regressions/"$rev"/*.trace; do
    [ -f "$f" ] || continue
    if ! P2M_REVISION=$rev P2M_ASSUME_FIXED="$*" "$P2M_FUZZ" repro "$f" >/dev/null 2>&1; then
      basename "$f" .trace
      return 0
    fi
  done
  return 1
}

# Peeling canary (needs `p2m-fuzz blame --assume-fixed` and P2M_ASSUME_FIXED in the targets):
# fuzz TARGET under REVISION; name the root cause of what it finds with `p2m-fuzz blame`;
# assume that switch fixed and fuzz again, until a run finds nothing. Then every regression
# trace of corpus/regressions/REVISION/ must be clean under REVISION with the switches found
# assumed fixed: each known historical hole was rediscovered by the fuzzer (or is explained
# by a root cause it rediscovered). A trace still diverging = a hole the harness lost.
canary_peel() {
  local rev=$1 t=$2
  local base="$OUT/canary/$rev-$t" c0 step=0 d cause cls secs s0 f rc
  local assumed=() found=() missed=() blame_args=() more=() traces=0 attempt
  c0=$(date +%s)
  while [ "$step" -lt "$CANARY_MAX_PEEL" ]; do
    # Every regression trace explained: the canary has what it came for (a further step
    # would only end on a run that finds nothing, or on an input no switch explains).
    if [ "$step" -gt 0 ] && ! unexplained_trace "$rev" "${assumed[@]}" >/dev/null; then
      log "canary $rev/$t: every regression trace explained after $step steps"
      break
    fi
    step=$((step + 1))
    d="$base/step-$step"
    s0=$(date +%s)
    attempt=1
    while :; do
      canary_fuzz "$d" "$rev" "$t" "$attempt" "${assumed[@]}"
      # An empty run while a regression trace still diverges: rare holes (one magic frame,
      # one op order) may need another seed before the harness is blamed.
      if [ -n "$CANARY_ART" ] || [ "$CANARY_RC" -ne 0 ] || [ "$attempt" -ge "$CANARY_ATTEMPTS" ] ||
        ! unexplained_trace "$rev" "${assumed[@]}" >/dev/null; then
        break
      fi
      log "canary $rev/$t step $step: nothing in ${CANARY_SECONDS}s (seed $attempt) while $(unexplained_trace "$rev" "${assumed[@]}") still diverges; another seed"
      attempt=$((attempt + 1))
    done
    if [ -z "$CANARY_ART" ]; then
      if [ "$CANARY_RC" -ne 0 ]; then
        log "canary $rev/$t step $step: fuzzer error (exit $CANARY_RC), see $d/fuzz.log"
        canary_row "$rev" "$t#$step" "error (exit $CANARY_RC)" "$(($(date +%s) - s0))" "" "" ""
        FAILED_GUARD=1
        return 0
      fi
      log "canary $rev/$t step $step: nothing left in ${CANARY_SECONDS}s with ${assumed[*]:-nothing} assumed fixed"
      break
    fi
    blame_args=()
    for f in "${assumed[@]}"; do blame_args+=(--assume-fixed "$f"); done
    { "$P2M_FUZZ" blame --revision "$rev" "${blame_args[@]}" "$d/input.bin" || true; } >"$d/blame.txt" 2>&1
    cause=$(sed -n 's/.*root cause: //p' "$d/blame.txt" | sed -n 1p)
    P2M_REVISION=$rev P2M_ASSUME_FIXED="${assumed[*]}" "$P2M_FUZZ" repro "$d/input.bin" >"$d/repro.txt" 2>&1 || true
    cls=$(divergence_line "$d/repro.txt" | sed 's/^DIVERGENCE: //')
    secs=$(($(date +%s) - s0))
    log "canary $rev/$t step $step: ${cls:-?} after ${secs}s, root cause: ${cause:-?}"
    if [[ "$cause" =~ ^[a-z0-9_]+(,\ [a-z0-9_]+)*$ ]]; then
      # One switch (or any one of several) removes it: assume them fixed.
      read -r -a more <<<"${cause//,/ }"
    else
      # "no single switch": find the first pair of the revision's remaining switches that
      # removes it together.
      more=()
      local diff=() i j
      read -r -a diff <<<"$(differing_switches "$rev" "${assumed[@]}")"
      for ((i = 0; i < ${#diff[@]} && ${#more[@]} == 0; i++)); do
        for ((j = i + 1; j < ${#diff[@]}; j++)); do
          if P2M_REVISION=$rev P2M_ASSUME_FIXED="${assumed[*]} ${diff[i]} ${diff[j]}" \
            "$P2M_FUZZ" repro "$d/input.bin" >/dev/null 2>&1; then
            more=("${diff[i]}" "${diff[j]}")
            break
          fi
        done
      done
      if [ "${#more[@]}" -gt 0 ]; then
        cause="${more[0]} + ${more[1]} (together)"
        log "canary $rev/$t step $step: combined root cause: $cause"
      fi
    fi
    local status="found (expected)"
    if [ "${#more[@]}" -eq 0 ] &&
      ! "$P2M_FUZZ" repro --revision "$CANARY_BASELINE" "$d/input.bin" >"$d/repro-baseline.txt" 2>&1; then
      # No switch explains it because the baseline diverges too: a false positive of the
      # harness, or a hole no revision has a switch for (the raw API's internal-API-only
      # ones among them: see the report's `reachable:` line). Reported, not fatal: the
      # regression traces decide the canary.
      status="DIVERGES UNDER $CANARY_BASELINE too: false positive or unmodelled hole? (repro-baseline.txt)"
      log "canary $rev/$t step $step: the input diverges under $CANARY_BASELINE too (false positive, or a hole no switch models): $d/input.bin"
    fi
    canary_row "$rev" "$t#$step" "$status" "$secs" "$cls" "$cause" \
      "canary/$rev-$t/step-$step/artifacts/$(basename "$CANARY_ART")"
    if [ "${#more[@]}" -eq 0 ]; then
      log "canary $rev/$t: cannot peel past '${cause:-no blame output}'"
      break
    fi
    found+=("$cause")
    assumed+=("${more[@]}")
  done
  for f in corpus/regressions/"$rev"/*.trace; do
    [ -f "$f" ] || continue
    traces=$((traces + 1))
    rc=0
    P2M_REVISION=$rev P2M_ASSUME_FIXED="${assumed[*]}" "$P2M_FUZZ" repro "$f" >/dev/null 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
      missed+=("$(basename "$f" .trace) ($(sed -n 's/^# root-cause: //p' "$f" | head -1))")
    fi
  done
  secs=$(($(date +%s) - c0))
  local status
  if [ "${#found[@]}" -eq 0 ]; then
    status="NOT FOUND: harness lost its teeth"
  elif [ "${#missed[@]}" -gt 0 ]; then
    status="MISSED: $(IFS=';'; echo "${missed[*]}")"
  else
    status="${#found[@]} holes rediscovered; all $traces regression traces explained"
  fi
  case "$status" in MISSED*|NOT*) FAILED_GUARD=1 ;; esac
  log "canary $rev/$t: $status (${secs}s)"
  canary_row "$rev" "$t (all)" "$status" "$secs" "" "$(IFS=','; echo "${assumed[*]}")" ""
}

if [ "$CANARY" = 1 ]; then
  # The historical holes include internal-API ones (George's case is a raw set_entry):
  # the canary fuzzes, reproduces and blames with the raw API; the main runs above use the
  # targets' default, caller ops only.
  export P2M_API=raw
  PEEL_OK=0
  if [ -n "$CANARY_PEEL_TARGET" ] && "$P2M_FUZZ" blame --help 2>/dev/null | grep -q -- --assume-fixed; then
    PEEL_OK=1
  fi
  for rev in "${CANARY_REV_LIST[@]}"; do
    for t in "${CANARY_TARGET_LIST[@]}"; do canary_simple "$rev" "$t"; done
    if [ -n "$CANARY_PEEL_TARGET" ]; then
      if [ "$PEEL_OK" = 1 ]; then canary_peel "$rev" "$CANARY_PEEL_TARGET"
      else canary_simple "$rev" "$CANARY_PEEL_TARGET"; fi
    fi
  done
fi

write_summary
if [ "$FAILED_CRASH" -ne 0 ]; then
  log "FAILED: crashes under $REVISION (see $OUT/summary.md)"
  exit 1
fi
if [ "$FAILED_GUARD" -ne 0 ]; then
  log "FAILED: harness guard (see $OUT/summary.md)"
  exit 3
fi
log "passed"

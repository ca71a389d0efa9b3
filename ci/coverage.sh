#!/usr/bin/env bash
# Source coverage of the fuzz corpora: `cargo +nightly fuzz coverage <target> <corpus>` for each
# target, profiles merged with llvm-profdata, an HTML report rendered with `llvm-cov show`, and
# a one-line summary of p2m-core's line coverage on stdout (last line).
#
# Usage: ci/coverage.sh [TARGET...]                  (default: ept npt shadow mixed)
#
# Environment (optional):
#   P2M_COVERAGE_CORPUS     corpus root holding <target>/ dirs (default corpus; e.g.
#                           target/nightly-fuzz/corpus for the inputs of the last nightly run)
#   P2M_COVERAGE_OUT        output dir (default target/coverage)
#   P2M_COVERAGE_TOOLCHAIN  rustup toolchain with llvm-tools (default nightly)
#   P2M_REVISION            revision the targets run under (default fixed)
#
# Output: $P2M_COVERAGE_OUT/html/index.html, merged.profdata, report.txt (per file, all
# project sources), p2m-core.txt (per file, p2m-core/src), summary.txt (the summary line).
# Needs: rustup toolchain $P2M_COVERAGE_TOOLCHAIN with llvm-tools (installed on demand with
# `rustup component add llvm-tools-preview`), cargo-fuzz, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never

if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=(ept npt shadow mixed); fi
CORPUS=${P2M_COVERAGE_CORPUS:-corpus}
OUT=${P2M_COVERAGE_OUT:-target/coverage}
TOOLCHAIN=${P2M_COVERAGE_TOOLCHAIN:-nightly}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CORPUS=$(cd "$CORPUS" 2>/dev/null && pwd || echo "$CORPUS")
rm -rf "$OUT/html" "$OUT/profdata" "$OUT/merged.profdata" "$OUT/report.txt" "$OUT/p2m-core.txt" \
  "$OUT/p2m-core.json" "$OUT/summary.txt" "$OUT/merge.log" "$OUT/llvm-cov.log"
mkdir -p "$OUT/profdata"

log() { echo "coverage: $*" >&2; }

SYSROOT=$(rustc "+$TOOLCHAIN" --print sysroot)
find_tool() { find "$SYSROOT"/lib/rustlib/*/bin -maxdepth 1 -name "$1" -type f -print -quit 2>/dev/null; }
if [ -z "$(find_tool llvm-cov)" ]; then
  log "installing llvm-tools-preview for $TOOLCHAIN"
  rustup component add llvm-tools-preview --toolchain "$TOOLCHAIN" >&2
fi
LLVM_COV=$(find_tool llvm-cov)
LLVM_PROFDATA=$(find_tool llvm-profdata)
if [ ! -x "$LLVM_COV" ] || [ ! -x "$LLVM_PROFDATA" ]; then log "no llvm-cov/llvm-profdata in $SYSROOT"; exit 2; fi
TRIPLE=$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')

profiles=()
objects=()
inputs=0
for t in "${TARGETS[@]}"; do
  n=$(find "$CORPUS/$t" -maxdepth 1 -type f 2>/dev/null | wc -l | tr -d ' ')
  if [ "$n" -eq 0 ]; then
    log "$t: no corpus in $CORPUS/$t, skipped"
    continue
  fi
  log "$t: cargo +$TOOLCHAIN fuzz coverage over $n inputs"
  rm -rf "fuzz/coverage/$t"
  if ! P2M_REVISION=${P2M_REVISION:-fixed} cargo "+$TOOLCHAIN" fuzz coverage -s none "$t" "$CORPUS/$t" \
    >"$OUT/$t.log" 2>&1; then
    tail -n 30 "$OUT/$t.log" >&2
    log "$t: cargo fuzz coverage failed (log: $OUT/$t.log)"
    exit 1
  fi
  cp "fuzz/coverage/$t/coverage.profdata" "$OUT/profdata/$t.profdata"
  # cargo-fuzz puts the instrumented binary under <target dir>/<triple>/coverage/<triple>/release/.
  bin=$(find "$ROOT/target" "$ROOT/fuzz/target" ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR"} \
    -path "*/coverage/$TRIPLE/release/$t" -type f -printf '%T@ %p\n' 2>/dev/null | sort -rn | sed -n 1p |
    cut -d' ' -f2-)
  [ -n "$bin" ] || { log "$t: instrumented binary not found"; exit 1; }
  profiles+=("$OUT/profdata/$t.profdata")
  objects+=("$bin")
  inputs=$((inputs + n))
done
[ "${#profiles[@]}" -gt 0 ] || { log "no corpus for any of ${TARGETS[*]} under $CORPUS (run ci/nightly-fuzz.sh first, or set P2M_COVERAGE_CORPUS)"; exit 1; }

# (The per-target entry points share names but differ: llvm-profdata warns about a few
# "functions with mismatched data"; that warning is kept in merge.log.)
"$LLVM_PROFDATA" merge -sparse "${profiles[@]}" -o "$OUT/merged.profdata" >"$OUT/merge.log" 2>&1 ||
  { cat "$OUT/merge.log" >&2; exit 1; }
obj_args=("${objects[0]}")
for o in "${objects[@]:1}"; do obj_args+=(-object "$o"); done
ignore='(\.cargo/registry|\.cargo/git|/rustc/|\.rustup/|/library/std/)'

# llvm-cov's own warnings (the same "mismatched data" note) go to llvm-cov.log.
cov() { "$LLVM_COV" "$@" 2>>"$OUT/llvm-cov.log" || { cat "$OUT/llvm-cov.log" >&2; exit 1; }; }
cov show -format=html -output-dir="$OUT/html" -instr-profile="$OUT/merged.profdata" \
  -ignore-filename-regex="$ignore" -show-line-counts-or-regions -show-instantiations=false \
  -project-title="p2m-iommu-fuzz: fuzz corpus coverage (${TARGETS[*]})" "${obj_args[@]}"
cov report -instr-profile="$OUT/merged.profdata" -ignore-filename-regex="$ignore" \
  "${obj_args[@]}" >"$OUT/report.txt"
cov report -instr-profile="$OUT/merged.profdata" "${obj_args[@]}" "$ROOT/p2m-core/src" \
  >"$OUT/p2m-core.txt"
cov export -summary-only -instr-profile="$OUT/merged.profdata" "${obj_args[@]}" \
  "$ROOT/p2m-core/src" >"$OUT/p2m-core.json"

used=()
for p in "${profiles[@]}"; do used+=("$(basename "$p" .profdata)"); done
line=$(python3 - "$OUT/p2m-core.json" "${used[*]}" "$inputs" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["data"][0]["totals"]
l, f, r = d["lines"], d["functions"], d["regions"]
print(f"p2m-core line coverage: {l['percent']:.2f}% ({l['covered']}/{l['count']} lines; "
      f"functions {f['percent']:.2f}%, regions {r['percent']:.2f}%) "
      f"from {sys.argv[3]} corpus inputs of {sys.argv[2]}")
EOF
)
echo "$line" >"$OUT/summary.txt"
log "HTML report: $OUT/html/index.html"
echo "$line"

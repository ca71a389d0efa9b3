#!/usr/bin/env bash
# Checks the OSS-Fuzz / ClusterFuzzLite build script without Docker: runs
# .clusterfuzzlite/build.sh (which runs ci/oss-fuzz/build.sh) the way the infra does, with
# SRC, OUT and WORK set to temporary dirs ($SRC/p2m-iommu-fuzz links to this checkout) and
# SANITIZER=none so it builds on stable, then checks that every shipped target binary, its
# .options file and its seed-corpus zip land in $OUT, and that each binary runs every input
# of its unzipped seed corpus once (libFuzzer -runs=0 over the corpus dir) and one input file.
#
# When corpus/<target>/ is absent or empty in this checkout, the check ships a one-input
# synthetic seed corpus for that target instead (P2M_SEED_CORPUS_ROOT), so the zip path is
# always exercised. Set KEEP=1 to keep the temporary dirs. Exit 0 on success.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGETS=(ept npt shadow mixed)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-build-sh.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then echo "check-build-sh: keeping $TMP"; else trap 'rm -rf "$TMP"' EXIT; fi

fail() { echo "check-build-sh: FAIL: $*" >&2; exit 1; }

export SRC="$TMP/src" OUT="$TMP/out" WORK="$TMP/work"
export SANITIZER=none FUZZING_ENGINE=libfuzzer FUZZING_LANGUAGE=rust ARCHITECTURE=x86_64
mkdir -p "$SRC" "$OUT" "$WORK"
ln -s "$ROOT" "$SRC/p2m-iommu-fuzz"
cp "$ROOT/.clusterfuzzlite/build.sh" "$SRC/build.sh"

# Seed corpora: the checkout's, or a synthetic one-input corpus where a target has none.
seeds="$ROOT/corpus"
for t in "${TARGETS[@]}"; do
  if [ -z "$(find "$ROOT/corpus/$t" -maxdepth 1 -type f -print -quit 2>/dev/null)" ]; then
    seeds="$TMP/seeds"
  fi
done
if [ "$seeds" != "$ROOT/corpus" ]; then
  for t in "${TARGETS[@]}"; do
    mkdir -p "$seeds/$t"
    if [ -d "$ROOT/corpus/$t" ]; then cp -R "$ROOT/corpus/$t/." "$seeds/$t/"; fi
    if [ -z "$(find "$seeds/$t" -maxdepth 1 -type f -print -quit)" ]; then
      # Header 0x00 (ept, vt-d, no sharing) and one op: order 0, gfn 0x10, pool frame 1,
      # ram_rw, access rwx.
      printf '\000\000\020\000\000\000\001\000\000\000\000\000\007' >"$seeds/$t/synthetic-seed"
      echo "check-build-sh: corpus/$t is empty here: shipping a synthetic one-input seed corpus"
    fi
  done
  export P2M_SEED_CORPUS_ROOT="$seeds"
fi

echo "check-build-sh: running build.sh (SRC=$SRC OUT=$OUT WORK=$WORK SANITIZER=$SANITIZER)"
start=$(date +%s)
(cd "$SRC" && bash "$SRC/build.sh") >"$TMP/build.log" 2>&1 || { tail -n 40 "$TMP/build.log" >&2; fail "build.sh failed"; }
grep '^build.sh:' "$TMP/build.log" || true
echo "check-build-sh: build.sh took $(($(date +%s) - start))s"

for t in "${TARGETS[@]}"; do
  [ -x "$OUT/$t" ] || fail "$OUT/$t missing or not executable"
  [ -s "$OUT/$t.options" ] || fail "$OUT/$t.options missing"
  grep -q '^max_len = [0-9]' "$OUT/$t.options" || fail "$OUT/$t.options has no max_len"
  cmp -s fuzz/p2m.dict "$OUT/$t.dict" || fail "$OUT/$t.dict is not fuzz/p2m.dict"
  zip="$OUT/${t}_seed_corpus.zip"
  [ -s "$zip" ] || fail "$zip missing"
  expected=$(find "$seeds/$t" -maxdepth 1 -type f | wc -l)
  mkdir -p "$TMP/unzipped/$t"
  if command -v unzip >/dev/null 2>&1; then unzip -q "$zip" -d "$TMP/unzipped/$t"
  else python3 -m zipfile -e "$zip" "$TMP/unzipped/$t"; fi
  got=$(find "$TMP/unzipped/$t" -type f | wc -l)
  [ "$got" -eq "$expected" ] || fail "$zip holds $got files, corpus has $expected"
  # Every seed once, from the unzipped corpus (as ClusterFuzz does on the first run).
  "$OUT/$t" -runs=0 -dict="$OUT/$t.dict" "$TMP/unzipped/$t" >"$TMP/run-$t.log" 2>&1 ||
    { tail -n 40 "$TMP/run-$t.log" >&2; fail "$t did not run its seed corpus cleanly"; }
  grep -q 'INITED\|Done' "$TMP/run-$t.log" || { tail -n 20 "$TMP/run-$t.log" >&2; fail "$t: no libFuzzer status line"; }
  grep -q '^Dictionary: [1-9]' "$TMP/run-$t.log" || fail "$t: libFuzzer did not load $OUT/$t.dict"
  # One input file, as a reproducer run does.
  # (sed, not head: with pipefail a producer cut off by SIGPIPE fails the pipeline)
  one=$(find "$TMP/unzipped/$t" -type f | sort | sed -n 1p)
  "$OUT/$t" -runs=1 "$one" >"$TMP/one-$t.log" 2>&1 ||
    { tail -n 40 "$TMP/one-$t.log" >&2; fail "$t did not run $one"; }
  echo "check-build-sh: $t ok: binary, $(tail -1 "$OUT/$t.options"), $got seed inputs zipped and run"
done
[ ! -e "$OUT/ceiling" ] || fail "ceiling (decode-only) is not meant to be shipped"
echo "check-build-sh: PASS"

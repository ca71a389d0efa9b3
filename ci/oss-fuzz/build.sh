#!/bin/bash -eu
# OSS-Fuzz / ClusterFuzzLite build script for p2m-iommu-fuzz (shared: .clusterfuzzlite/build.sh
# delegates here; in google/oss-fuzz, projects/p2m-iommu-fuzz/build.sh is a copy of this file).
#
# Builds the cargo-fuzz targets with `cargo fuzz build -O` and copies them into $OUT, with
# a seed corpus $OUT/<target>_seed_corpus.zip made of the raw files of corpus/<target>/ and a
# $OUT/<target>.options file (libFuzzer max_len = one header byte + MAX_OPS ops) and the
# dictionary fuzz/p2m.dict as $OUT/<target>.dict (picked up by OSS-Fuzz and ClusterFuzzLite).
#
# Shipped targets: ept, npt, shadow, mixed (they run the differential oracle under the
# `fixed` revision; P2M_REVISION is not set by the infra). `ceiling` is not shipped: it only
# decodes the input (a throughput baseline for `p2m-fuzz bench`), so fuzzing it finds nothing.
# The text traces under corpus/regressions/ are not fuzz inputs and are not shipped.
#
# Environment: SRC, OUT (and WORK, SANITIZER) as set by OSS-Fuzz / ClusterFuzzLite;
#   PROJECT_DIR            checkout (default $SRC/p2m-iommu-fuzz)
#   SANITIZER=none         build with `-s none` (works on stable Rust; for ci/check-build-sh.sh);
#                          any other value keeps cargo-fuzz's default and lets the base
#                          image's cargo wrapper add OSS-Fuzz's own flags (address, coverage, ...)
#   CARGO_FUZZ_FLAGS       extra `cargo fuzz build` flags (word-split)
#   P2M_SEED_CORPUS_ROOT   where the <target>/ seed dirs are (default $PROJECT_DIR/corpus)
set -euo pipefail

PROJECT_DIR=${PROJECT_DIR:-$SRC/p2m-iommu-fuzz}
SEEDS=${P2M_SEED_CORPUS_ROOT:-$PROJECT_DIR/corpus}
TARGETS=(ept npt shadow mixed)
cd "$PROJECT_DIR"

flags=(-O --debug-assertions)
if [ "${SANITIZER:-address}" = none ]; then flags+=(-s none); fi
read -r -a extra <<<"${CARGO_FUZZ_FLAGS:-}"
cargo fuzz build "${flags[@]}" "${extra[@]}"

# Where cargo put the binaries (fuzz/target unless CARGO_TARGET_DIR says otherwise).
target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path fuzz/Cargo.toml |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$triple/release"

# max_len: inputs past 1 + MAX_OPS * OP_SIZE bytes are ignored by the decoder.
max_ops=$(sed -n 's/^pub const MAX_OPS: usize = \([0-9]*\);.*/\1/p' harness/src/scenario/mod.rs)
op_size=$(sed -n 's/^pub const OP_SIZE: usize = \([0-9]*\);.*/\1/p' harness/src/scenario/bytes.rs)

make_zip() {  # make_zip ZIP DIR: the regular files of DIR, flat
  local zip=$1 dir=$2
  rm -f "$zip"
  if command -v zip >/dev/null 2>&1; then
    (cd "$dir" && find . -maxdepth 1 -type f -printf '%f\n' | zip -q -j "$zip" -@)
  else
    (cd "$dir" && find . -maxdepth 1 -type f -printf '%f\n' | xargs python3 -m zipfile -c "$zip")
  fi
}

for t in "${TARGETS[@]}"; do
  cp "$bin_dir/$t" "$OUT/$t"
  cp fuzz/p2m.dict "$OUT/$t.dict"
  if [ -n "$max_ops" ] && [ -n "$op_size" ]; then
    printf '[libfuzzer]\nmax_len = %d\n' $((1 + max_ops * op_size)) >"$OUT/$t.options"
  fi
  n=$(find "$SEEDS/$t" -maxdepth 1 -type f 2>/dev/null | wc -l)
  if [ "$n" -gt 0 ]; then
    make_zip "$OUT/${t}_seed_corpus.zip" "$SEEDS/$t"
    echo "build.sh: $t: $n seed inputs -> $OUT/${t}_seed_corpus.zip"
  else
    echo "build.sh: $t: no seed corpus in $SEEDS/$t (fuzzing starts empty)"
  fi
done

#!/usr/bin/env bash
# Time to first divergence of the master line's deep-hole revisions (test-only, not Xen
# history; issue 13): `deep-coalesce-short`, `deep-free-empty-short`,
# `deep-last-unmap-noflush`, each hole alone with the pinned master's own findings assumed
# fixed — `ci/ttf-matrix.sh` over these rows (hunt with / without macro ops; libFuzzer's
# `mixed` with the op-level mutator on / off × macro ops on / off; seeds 1..N, median and
# maximum). Prints a markdown table (BENCHMARKS.md, "Deep holes").
# Usage: ci/deep-ttf.sh [SEEDS (default 5)] [BUDGET seconds (default 60)]
# Env: as ci/ttf-matrix.sh; P2M_DEEP_ROWS — "REVISION SWITCH" lines replacing the default rows.
set -euo pipefail
cd "$(dirname "$0")/.."
P2M_TTF_ROWS=${P2M_DEEP_ROWS:-"deep-coalesce-short coalesce_compares_halves
deep-free-empty-short free_empty_checks_halves
deep-last-unmap-noflush emptying_unmap_sets_modified"} exec bash ci/ttf-matrix.sh "$@"

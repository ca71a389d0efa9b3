#!/usr/bin/env bash
# Prints the switches of the harness's proposed fixes of its master findings: those whose
# value differs between `xen-master` and `master-fixed` (`p2m-fuzz revisions`), one per line.
# Usage: ci/master-fixes.sh [P2M_FUZZ_BINARY]   (default target/release/p2m-fuzz)
set -euo pipefail
"${1:-target/release/p2m-fuzz}" revisions | awk '
  want { for (i = 1; i <= NF; i++) v[name, i] = $i; n = NF; want = 0 }
  $1 == "xen-master" || $1 == "master-fixed" { name = $1; want = 1 }
  END { for (i = 1; i <= n; i++) if (v["xen-master", i] != v["master-fixed", i]) { split(v["master-fixed", i], kv, "="); print kv[1] } }'

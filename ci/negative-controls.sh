#!/usr/bin/env bash
# Negative controls of the master line (issue 11): revisions that undo one master change
# which only adds flushes or updates (`p2m-fuzz revisions`, kind "negative control") must
# stay clean.
# - `hunt` per permitted configuration, with every written-up master finding assumed fixed
#   (the controls are the pinned master with one change undone, so master's own findings
#   would otherwise mask them);
# - `exhaustive --depth 3 --baseline xen-master --reachable`: only sequences clean under the
#   pinned master count, i.e. what the control itself would break, and only those a Xen
#   caller can produce (e70a9a043a-undone breaks one internal-API-only sequence: README).
# Writes $NEG_OUT/summary.md (default target/negctl). Exit 1 when a control diverges.
#
# Usage: ci/negative-controls.sh [SECONDS_PER_CONFIGURATION]   (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
out=${NEG_OUT:-target/negctl}
cargo build --release -q -p harness
cli=target/release/p2m-fuzz
mkdir -p "$out"
assume=()
# The written-up master findings, by their proposed-fix switches (ci/master-fixes.sh).
for s in $(bash ci/master-fixes.sh "$cli"); do assume+=(--assume-fixed "$s"); done
configs=("mode=ept vendor=vtd share=on" "mode=ept vendor=vtd share=off"
  "mode=npt vendor=amd share=off" "mode=shadow vendor=vtd share=off"
  "mode=shadow vendor=amd share=off")
controls=$("$cli" revisions | awk '/\[xen-master, negative control\]/ {print $1}')
[ -n "$controls" ] || { echo "negative-controls: no negative-control revision listed" >&2; exit 2; }
failed=0
{
  echo "## Negative controls of the master line (\`ci/negative-controls.sh $secs\`, $(date -u +%Y-%m-%d))"
  echo
  echo "| control | run | verdict |"
  echo "|---|---|---|"
} >"$out/summary.md"
for r in $controls; do
  i=0
  for c in "${configs[@]}"; do
    i=$((i + 1))
    log="$out/$r-$i.log"
    "$cli" hunt --raw --revision "$r" --config "$c" --seconds "$secs" "${assume[@]}" --seed "$i" \
      --out "$out/$r-$i" >"$log" 2>&1 || failed=1
    v=$(grep -E '^hunt: (clean|divergence)' "$log" | head -1 | sed 's/ (revision.*//')
    echo "| $r | hunt $c, $secs s | ${v:-no verdict (see $log)} |" | tee -a "$out/summary.md"
  done
  log="$out/exh-$r.log"
  "$cli" exhaustive --revision "$r" --baseline xen-master --depth 3 --reachable >"$log" 2>&1 || failed=1
  v=$(grep -E '^(total|verdict)' "$log" | tr '\n' ' ')
  echo "| $r | exhaustive --depth 3 --baseline xen-master --reachable | ${v:-no verdict (see $log)} |" | tee -a "$out/summary.md"
done
exit "$failed"

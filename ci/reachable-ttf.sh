#!/usr/bin/env bash
# Time to first divergence of every reachable historical hole with the default `hunt`
# (caller ops only, caller-chain findings only): each hole alone — its revision with every
# other switch that differs from the line's fixed revision assumed fixed, except those the
# row keeps (a proposed fix that also closes the hole, e.g. the present-leaf check that
# subsumes 6c0e4ad608) — seeds 1..N, median. Prints a markdown table (BENCHMARKS.md,
# "Reachable holes").
# Usage: ci/reachable-ttf.sh [SEEDS (default 5)] [BUDGET seconds (default 60)]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5}
budget=${2:-60}
cargo build --release -q -p harness --bin p2m-fuzz
cli=target/release/p2m-fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# others REV BASE HOLE KEEP: the switches of REV that differ from BASE, HOLE and KEEP
# (comma-separated) excluded.
others() {
  "$cli" revisions | awk -v r="$1" -v b="$2" -v hole="$3" -v keep=",$4," '
    want { for (i = 1; i <= NF; i++) sw[r, i] = $i; n = NF; want = 0 }
    wantb { for (i = 1; i <= NF; i++) sw[b, i] = $i; wantb = 0 }
    $1 == r { want = 1 }
    $1 == b { wantb = 1 }
    END { for (i = 1; i <= n; i++) if (sw[r, i] != sw[b, i]) {
      split(sw[r, i], kv, "=")
      if (kv[1] != hole && index(keep, "," kv[1] ",") == 0) printf "--assume-fixed %s ", kv[1] } }'
}

median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "| revision | hole (switch) | found (of $seeds) | median s | max s | caller chain of the first find |"
echo "|---|---|---|---|---|---|"
while read -r rev base hole keep; do
  [ -n "$rev" ] || continue
  args=$(others "$rev" "$base" "$hole" "${keep:-}")
  times=()
  chain=""
  for s in $(seq 1 "$seeds"); do
    # shellcheck disable=SC2086
    "$cli" hunt --revision "$rev" $args --seed "$s" --seconds "$budget" --out "$work/h" \
      >"$work/out" 2>"$work/err" || true
    t=$(sed -n 's/^hunt: divergence after \([0-9.]*\)s.*/\1/p' "$work/err" | head -1)
    if [ -n "$t" ]; then
      times+=("$t")
      [ -n "$chain" ] || chain=$(sed -n 's/^ *reachable: reachable via //p' "$work/out" | head -1)
    fi
  done
  med=$(printf '%s\n' "${times[@]}" | { grep . || true; } | median)
  max=$(printf '%s\n' "${times[@]}" | { grep . || true; } | sort -g | tail -1)
  echo "| $rev | \`$hole\` | ${#times[@]} | $med | ${max:--} | ${chain:--} |"
done <<'EOF'
xen-4.6-pre fixed ept_need_modify_checks_iommu_flags ept_need_modify_requires_present_leaf
xen-4.6-pre fixed pt_shadow_ignores_share
committed fixed amd_map_flush_on_perm_change
committed fixed amd_suppress_pte_merging
committed fixed flush_covers_split_superpage
committed fixed guest_remove_page_flushes
committed fixed add_to_physmap_keeps_same_page
committed fixed batch_holds_page_refs
committed fixed iommu_map_failure_crashes_domu
committed fixed guest_remove_page_checks_remove_rc
committed fixed iommu_populate_uses_p2m_type
xen-master master-fixed flush_covers_split_superpage
xen-master master-fixed batch_flush_keeps_deferred_flags
xen-master master-fixed ept_need_modify_requires_present_leaf
xen-master master-fixed batch_holds_failed_page_ref
xsa346-ref master-fixed batch_holds_page_refs
xsa346-remove master-fixed guest_remove_page_flushes
ept-perm-noflush master-fixed ept_need_modify_checks_iommu_flags ept_need_modify_requires_present_leaf
pt-perm-noflush master-fixed pt_step_checks_iommu_flags
amd-perm-noflush master-fixed amd_pte_change_checks_perms
pt-no-sync master-fixed pt_syncs_iommu
mmio-nobreak master-fixed mmio_direct_mapped
ept-free-first master-fixed ept_free_entry_last
xsa378-access master-fixed mmio_direct_honours_access
EOF

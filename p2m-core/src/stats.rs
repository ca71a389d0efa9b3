//! Counters of what a model did, shared by the lines (a line leaves the counters of
//! machinery it does not have at zero). The harness sums them to show that a run
//! exercised something.

macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $( #[doc = $d:literal] pub $f:ident ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $( #[doc = $d] pub $f: u64 ),* }

        impl $name {
            /// Every counter as `(name, value)`, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($f), self.$f) ),*]
            }
            /// Adds another set of counters.
            pub fn add(&mut self, o: &$name) {
                $( self.$f += o.$f; )*
            }
        }
    };
}

counters! {
/// What the p2m side and the IOMMU side of a model did so far.
pub struct ModelStats {
    /// p2m superpages split (`ept_split_super_page`, `p2m_next_level`).
    pub superpage_splits,
    /// Present intermediate p2m entries replaced by a leaf.
    pub intermediate_replaced,
    /// Table frames freed (p2m and IOMMU).
    pub tables_freed,
    /// Times `need_modify_vtd_table` was cleared.
    pub need_modify_cleared,
    /// IOMMU steps taken by `set_entry` (map/unmap or shared flush decision).
    pub iommu_steps,
    /// VT-d page-selective invalidations issued (one per page of a per-page loop).
    pub vtd_psi,
    /// VT-d page-selective invalidations skipped (non-present flush, no caching mode).
    pub vtd_psi_skipped,
    /// VT-d domain-selective invalidations.
    pub vtd_dsi,
    /// AMD `INVALIDATE_IOMMU_PAGES` of order 0.
    pub amd_pages_4k,
    /// AMD `INVALIDATE_IOMMU_PAGES` of order 9 or 18.
    pub amd_pages_large,
    /// AMD all-pages invalidations.
    pub amd_all,
    /// Pages passed to the IOMMU map path.
    pub map_pages,
    /// Pages passed to the IOMMU unmap path.
    pub unmap_pages,
    /// Cache records created (stale state that may exist).
    pub records_created,
    /// IOMMU superpages shattered at level 2 (a 2 MiB entry into 4 KiB entries).
    pub iommu_shatters_2m,
    /// IOMMU superpages shattered at level 3 (a 1 GiB entry into 2 MiB entries).
    pub iommu_shatters_1g,
    /// IOMMU tables coalesced into a 2 MiB superpage.
    pub iommu_coalesce_2m,
    /// IOMMU tables coalesced into a 1 GiB superpage.
    pub iommu_coalesce_1g,
    /// IOMMU tables freed (queued) because they became empty.
    pub iommu_tables_freed_empty,
    /// IOMMU tables queued for freeing (`iommu_queue_free_pgtable`).
    pub iommu_tables_queued,
    /// Tables queued while `iommu_dont_flush_iotlb` was set.
    pub iommu_queued_while_dont_flush,
    /// Drains of the deferred-free queue (`free_queued_pgtables`) that freed something.
    pub iommu_drains_nonempty,
    /// Pages the `XENMAPSPACE_gmfn_range` batch moved.
    pub physmap_pages_moved,
    /// Continuations of that batch.
    pub physmap_continuations,
    /// Guest pages freed (`guest_remove_page`, a batch's `put_page`).
    pub guest_pages_freed,
}
}

/// Adds `n` to a counter. Counters are bookkeeping, not decisions: kept out of the decision
/// functions so that mutation testing (`.cargo/mutants.toml`) does not count them.
pub fn bump(counter: &mut u64, n: u64) {
    *counter += n;
}

/// Adds one to a counter when `cond` holds (see [`bump`]).
pub fn bump_if(counter: &mut u64, cond: bool) {
    if cond {
        *counter += 1;
    }
}

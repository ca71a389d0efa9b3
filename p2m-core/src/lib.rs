//! Executable model of Xen's x86 p2m `set_entry` paths and the IOMMU they keep in sync.
//!
//! Shared machinery, used by every Xen line: [`frames`] (machine memory, frame states,
//! allocation and freeing), [`tables`] (sparse 512-entry tables stored as runs),
//! [`cache`] (conservative IOTLB / paging-structure cache records and invalidations),
//! [`walk`] (the IOMMU's page walk), [`view`] (CPU and device views), [`events`] (what
//! an op did, for the oracle), [`recalc`] (the log-dirty rangeset of the lazy type
//! change) and [`stats`]. Each Xen line is a folder over it:
//! [`xen46`] (Xen 4.6, 2015) and [`master`] (Xen master, 2026). [`Domain`] and [`Revision`] are the one interface the
//! harness sees; the revision chooses the line. See `README.md` in this crate for the
//! fidelity tables.

pub mod cache;
pub mod callers;
pub mod domain;
pub mod events;
pub mod frames;
pub mod master;
pub mod physmap;
pub mod recalc;
pub mod revision;
pub mod stats;
pub mod tables;
pub mod types;
pub mod view;
pub mod walk;
pub mod xen46;

pub use domain::Domain;
pub use revision::{Line, Revision, RevisionKind, Switches};
pub use stats::ModelStats;
pub use types::*;
pub use view::{CpuExtent, DeviceView, P2mEntry, ViewSource};

/// A small deterministic generator for the crate's randomized tests.
#[cfg(test)]
pub(crate) struct Lcg(pub(crate) u64);

#[cfg(test)]
impl Lcg {
    /// A value in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

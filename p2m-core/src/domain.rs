//! The one interface the harness drives: a domain of some Xen line under some revision.
//!
//! [`Domain`] dispatches to the line the revision belongs to; everything it returns
//! (views, cache records, the op log, counters) is shared vocabulary, so the oracle and
//! the reference never see a line's internals.

use crate::cache::CacheRecord;
use crate::events::OpLog;
use crate::frames::MachineMemory;
use crate::revision::{Line, Revision, Switches};
use crate::stats::ModelStats;
use crate::types::{Config, GfnRange, Mfn, P2mAccess, P2mError, P2mType};
use crate::view::{CpuExtent, DeviceView, P2mEntry};
use crate::walk::{IoTables, WalkResult};
use crate::xen46;

/// A domain with a host p2m and an IOMMU, modelled by the line of its revision.
#[derive(Clone, Debug)]
pub enum Domain {
    /// The Xen 4.6 line.
    Xen46(xen46::domain::Domain),
}

impl Domain {
    /// A fresh domain of `revision`'s line with passthrough enabled.
    pub fn new(cfg: Config, revision: Revision) -> Domain {
        match revision.switches {
            Switches::Xen46(_) => Domain::Xen46(xen46::domain::Domain::new(cfg, revision)),
            Switches::Master(_) => unimplemented!("the master line is being built"),
        }
    }

    /// The line modelled.
    pub fn line(&self) -> Line {
        match self {
            Domain::Xen46(_) => Line::Xen46,
        }
    }

    /// The configuration (normalized).
    pub fn config(&self) -> Config {
        match self {
            Domain::Xen46(d) => d.cfg,
        }
    }

    /// The revision modelled.
    pub fn revision(&self) -> Revision {
        match self {
            Domain::Xen46(d) => d.revision,
        }
    }

    /// The 4.6 domain, if this is one.
    pub fn as_xen46(&self) -> Option<&xen46::domain::Domain> {
        match self {
            Domain::Xen46(d) => Some(d),
        }
    }

    /// Models the host p2m's `set_entry` (the internal API: any order, frame and type).
    pub fn set_entry(
        &mut self,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        access: P2mAccess,
    ) -> Result<(), P2mError> {
        match self {
            Domain::Xen46(d) => d.set_entry(gfn, mfn, order, p2mt, access),
        }
    }

    /// What the last op recorded for the oracle.
    pub fn op_log(&self) -> &OpLog {
        match self {
            Domain::Xen46(d) => &d.log,
        }
    }

    /// Models `p2m->get_entry()` (query only).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        match self {
            Domain::Xen46(d) => d.get_entry(gfn),
        }
    }

    /// The CPU view of `range` as extents, consistent with [`Domain::get_entry`].
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<CpuExtent> {
        match self {
            Domain::Xen46(d) => d.cpu_extents(range),
        }
    }

    /// The structure the IOMMU hardware walks.
    pub fn io_tables(&self) -> &dyn IoTables {
        match self {
            Domain::Xen46(d) => d.io_tables(),
        }
    }

    /// Machine memory (frame states and allocation history).
    pub fn mem(&self) -> &MachineMemory {
        match self {
            Domain::Xen46(d) => &d.mem,
        }
    }

    /// Live cache records.
    pub fn cache_records(&self) -> &[CacheRecord] {
        match self {
            Domain::Xen46(d) => d.cache_records(),
        }
    }

    /// The current tables' translations for `range` (no caches).
    pub fn current_view(&self, range: GfnRange) -> WalkResult {
        match self {
            Domain::Xen46(d) => d.current_view(range),
        }
    }

    /// Everything a device could reach for `range`.
    pub fn device_view(&self, range: GfnRange) -> DeviceView {
        match self {
            Domain::Xen46(d) => d.device_view(range),
        }
    }

    /// Writes everything in the domain that can influence a later op or oracle check
    /// (tables, machine memory, separate IOMMU tables), leaving out counters and the cache
    /// records (the caller writes those without their sequence numbers).
    pub fn write_state(&self, w: &mut dyn std::fmt::Write) -> std::fmt::Result {
        match self {
            Domain::Xen46(d) => write!(w, "{:?}|{:?}|{:?}", d.p2m, d.mem, d.iommu.separate),
        }
    }

    /// A plain-data picture of the tables, caches and bad frames (for `--dot`).
    pub fn snapshot(&self) -> crate::xen46::snapshot::Snapshot {
        match self {
            Domain::Xen46(d) => crate::xen46::snapshot::Snapshot::of(d),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ModelStats {
        match self {
            Domain::Xen46(d) => d.model_stats(),
        }
    }
}

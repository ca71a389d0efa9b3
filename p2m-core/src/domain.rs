//! The one interface the harness drives: a domain of some Xen line under some revision.
//!
//! [`Domain`] dispatches to the line the revision belongs to; everything it returns
//! (views, cache records, the op log, counters) is shared vocabulary, so the oracle and
//! the reference never see a line's internals.

use crate::cache::CacheRecord;
use crate::callers::{CallerOp, InterleavedBatch, InterleavedOutcome};
use crate::events::OpLog;
use crate::frames::MachineMemory;
use crate::physmap::{AddToPhysmapRange, BatchOutcome};
use crate::revision::{Line, Revision, Switches};
use crate::stats::ModelStats;
use crate::types::{Config, GfnRange, Mfn, P2mAccess, P2mError, P2mType};
use crate::view::{CpuExtent, DeviceView, P2mEntry};
use crate::walk::{IoTables, WalkResult};
use crate::{master, xen46};

/// A domain with a host p2m and an IOMMU, modelled by the line of its revision.
#[derive(Clone, Debug)]
pub enum Domain {
    /// The Xen 4.6 line.
    Xen46(Box<xen46::domain::Domain>),
    /// The Xen master line.
    Master(Box<master::domain::Domain>),
}

/// Dispatches an expression to the line's domain.
macro_rules! each_line {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            Domain::Xen46($d) => $e,
            Domain::Master($d) => $e,
        }
    };
}

impl Domain {
    /// A fresh domain of `revision`'s line with passthrough enabled.
    pub fn new(cfg: Config, revision: Revision) -> Domain {
        match revision.switches {
            Switches::Xen46(_) => {
                Domain::Xen46(Box::new(xen46::domain::Domain::new(cfg, revision)))
            }
            Switches::Master(_) => {
                Domain::Master(Box::new(master::domain::Domain::new(cfg, revision)))
            }
        }
    }

    /// The line modelled.
    pub fn line(&self) -> Line {
        match self {
            Domain::Xen46(_) => Line::Xen46,
            Domain::Master(_) => Line::Master,
        }
    }

    /// The configuration (normalized).
    pub fn config(&self) -> Config {
        each_line!(self, d => d.cfg)
    }

    /// The revision modelled.
    pub fn revision(&self) -> Revision {
        each_line!(self, d => d.revision)
    }

    /// The 4.6 domain, if this is one.
    pub fn as_xen46(&self) -> Option<&xen46::domain::Domain> {
        match self {
            Domain::Xen46(d) => Some(d),
            Domain::Master(_) => None,
        }
    }

    /// The master domain, if this is one.
    pub fn as_master(&self) -> Option<&master::domain::Domain> {
        match self {
            Domain::Master(d) => Some(d),
            Domain::Xen46(_) => None,
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
        each_line!(self, d => d.set_entry(gfn, mfn, order, p2mt, access))
    }

    /// Models the hypercall `XENMEM_add_to_physmap` with `XENMAPSPACE_gmfn_range` as the
    /// line's `common/memory.c` runs it (see [`crate::physmap`]).
    pub fn add_to_physmap_range(&mut self, op: AddToPhysmapRange) -> BatchOutcome {
        each_line!(self, d => d.add_to_physmap_range(op))
    }

    /// Models one call of a Xen caller of the host p2m (see [`crate::callers`]).
    pub fn call(&mut self, op: CallerOp) -> BatchOutcome {
        each_line!(self, d => d.call(op))
    }

    /// Models the batch with a second vCPU's caller op inside it (see
    /// [`crate::callers::Interleave`]).
    pub fn add_to_physmap_interleaved(&mut self, ib: InterleavedBatch) -> InterleavedOutcome {
        each_line!(self, d => d.add_to_physmap_interleaved(ib))
    }

    /// Fault injection: the `nth` table allocation (p2m or IOMMU, 1 = the first) of the
    /// next op fails as Xen's allocator does when its pool or heap is exhausted.
    pub fn arm_alloc_failure(&mut self, nth: u32) {
        each_line!(self, d => d.mem.arm_alloc_failure(nth))
    }

    /// Turns the run steps of the p2m's 4 KiB chunk loops on (the default) or off (one
    /// literal call per chunk; see `xen46::p2m_pt::run`): a knob for the equivalence
    /// tests, not a Xen behaviour. The master line has no such step yet.
    pub fn set_run_fast_path(&mut self, on: bool) {
        if let Domain::Xen46(d) = self {
            match &mut d.p2m {
                xen46::domain::P2m::Pt(p) => p.run_fast_path = on,
                xen46::domain::P2m::Ept(e) => e.run_fast_path = on,
            }
        }
    }

    /// Whether the allocation failure injected into the last op fired.
    pub fn alloc_failed(&self) -> bool {
        each_line!(self, d => d.mem.alloc_failed())
    }

    /// `domain_crash()` was called (and why): the domain runs no further op.
    pub fn crashed(&self) -> Option<&'static str> {
        match self {
            Domain::Xen46(d) => d.crashed,
            Domain::Master(d) => d.iommu.crashed,
        }
    }

    /// What the last op recorded for the oracle.
    pub fn op_log(&self) -> &OpLog {
        each_line!(self, d => &d.log)
    }

    /// Models `p2m->get_entry()` (query only).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        each_line!(self, d => d.get_entry(gfn))
    }

    /// `p2m->max_mapped_pfn` (see `recalc::RecalcState`).
    pub fn max_mapped_pfn(&self) -> u64 {
        each_line!(self, d => d.max_mapped_pfn())
    }

    /// The CPU view of `range` as extents: the p2m's stored content.
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<CpuExtent> {
        each_line!(self, d => d.cpu_extents(range))
    }

    /// The frame of the host p2m's table of `level` (1 holds 4 KiB entries, 4 is the
    /// root) on the walk to `gfn` as the tables are now: `None` when an empty or
    /// superpage entry above that level ends the walk, or `level` is not 1..=4.
    pub fn p2m_table_at(&self, gfn: u64, level: u8) -> Option<u64> {
        each_line!(self, d => d.p2m_table_at(gfn, level))
    }

    /// The structure the IOMMU hardware walks.
    pub fn io_tables(&self) -> &dyn IoTables {
        each_line!(self, d => d.io_tables())
    }

    /// Machine memory (frame states and allocation history).
    pub fn mem(&self) -> &MachineMemory {
        each_line!(self, d => &d.mem)
    }

    /// Live cache records.
    pub fn cache_records(&self) -> &[CacheRecord] {
        each_line!(self, d => d.cache_records())
    }

    /// The current tables' translations for `range` (no caches).
    pub fn current_view(&self, range: GfnRange) -> WalkResult {
        each_line!(self, d => d.current_view(range))
    }

    /// Everything a device could reach for `range`.
    pub fn device_view(&self, range: GfnRange) -> DeviceView {
        each_line!(self, d => d.device_view(range))
    }

    /// Writes everything in the domain that can influence a later op or oracle check
    /// (tables, machine memory, separate IOMMU tables), leaving out counters and the cache
    /// records (the caller writes those without their sequence numbers).
    pub fn write_state(&self, w: &mut dyn std::fmt::Write) -> std::fmt::Result {
        each_line!(self, d => d.write_state(w))
    }

    /// A plain-data picture of the tables, caches and bad frames (for `--dot`); `None`
    /// for a line that has no picture yet.
    pub fn snapshot(&self) -> Option<crate::xen46::snapshot::Snapshot> {
        match self {
            Domain::Xen46(d) => Some(crate::xen46::snapshot::Snapshot::of(d)),
            Domain::Master(_) => None,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ModelStats {
        each_line!(self, d => d.model_stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Mode, Vendor, INVALID_MFN};

    /// `p2m_table_at` follows the walk of both p2m flavours: root at level 4, fresh
    /// tables after a 4 KiB map, `None` below a superpage or an empty entry, and the
    /// new tables after a superpage split.
    #[test]
    fn p2m_table_at_follows_the_walk() {
        for mode in Mode::ALL {
            let cfg = Config::new(*mode, Vendor::Vtd, false).normalized();
            let mut d = Domain::new(cfg, Revision::fixed());
            let root = d.mem().ever_allocated()[0];
            let g = 0x40000 + 0x200 + 1;
            assert_eq!(d.p2m_table_at(g, 4), Some(root), "{cfg}");
            // Nothing below the empty root yet; levels outside 1..=4 name nothing.
            for level in [0, 1, 2, 3, 5, u8::MAX] {
                assert_eq!(d.p2m_table_at(g, level), None, "{cfg} level {level}");
            }
            let (p, a) = (P2mType::RamRw, P2mAccess::Rwx);
            d.set_entry(g, Mfn(0x100000), 0, p, a).unwrap();
            let l3 = d.p2m_table_at(g, 3).expect("L3 table");
            let l2 = d.p2m_table_at(g, 2).expect("L2 table");
            let l1 = d.p2m_table_at(g, 1).expect("L1 table");
            let mut all = vec![root, l3, l2, l1];
            all.dedup();
            assert_eq!(all.len(), 4, "{cfg}: {all:x?}");
            for f in &all[1..] {
                assert!(d.mem().ever_allocated().contains(f), "{cfg}");
            }
            // A sibling 4 KiB gfn shares the L1 table; another 2 MiB region does not.
            assert_eq!(d.p2m_table_at(g + 1, 1), Some(l1));
            assert_eq!(d.p2m_table_at(g - 0x200, 2), Some(l2));
            assert_eq!(d.p2m_table_at(g - 0x200, 1), None, "{cfg}");
            // A 2 MiB leaf over the L1 table: no L1 table under it any more.
            d.set_entry(g & !0x1ff, Mfn(0x100200), 9, p, a).unwrap();
            assert_eq!(d.p2m_table_at(g, 2), Some(l2));
            assert_eq!(d.p2m_table_at(g, 1), None, "{cfg}");
            // Splitting it again gives a (re)allocated L1 table.
            d.set_entry(g, INVALID_MFN, 0, P2mType::Invalid, a).unwrap();
            let l1b = d.p2m_table_at(g, 1).expect("L1 table after the split");
            assert_eq!(d.p2m_table_at(g, 2), Some(l2));
            assert!(d.mem().ever_allocated().contains(&l1b));
            // A non-present 1 GiB entry ends the walk at level 3.
            d.set_entry(0x40000, Mfn(0x100000), 18, P2mType::Invalid, a)
                .unwrap();
            assert_eq!(d.p2m_table_at(g, 3), Some(l3));
            assert_eq!(d.p2m_table_at(g, 2), None, "{cfg}");
        }
    }
}

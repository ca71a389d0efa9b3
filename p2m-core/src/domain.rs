//! A domain with a host p2m and an IOMMU: the entry point the harness drives.

use crate::ept::Ept;
use crate::iommu::cache::{CacheRecord, RecordKind};
use crate::iommu::walk::{walk, walk_root, IoTables, Translation, WalkFault, WalkResult};
use crate::iommu::{Iommu, IommuStats};
use crate::machine::MachineMemory;
use crate::p2m_pt::P2mPt;
use crate::revision::{Revision, Switches};
use crate::types::*;

/// What `get_entry` returns for a gfn with a valid entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct P2mEntry {
    /// Frame (offset within a superpage applied), or `INVALID_MFN`.
    pub mfn: Mfn,
    /// Type.
    pub p2mt: P2mType,
    /// Access.
    pub access: P2mAccess,
}

/// Counters of what the p2m side did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct P2mStats {
    /// Superpages split (`ept_split_super_page`, `p2m_next_level`).
    pub superpage_splits: u64,
    /// Present intermediate entries replaced by a leaf.
    pub intermediate_replaced: u64,
    /// Table frames freed.
    pub tables_freed: u64,
    /// Times `need_modify_vtd_table` was cleared.
    pub need_modify_cleared: u64,
    /// IOMMU steps taken (map/unmap loop or shared flush decision).
    pub iommu_steps: u64,
}

/// Context passed down a `set_entry`.
pub struct Cx<'a> {
    /// Machine memory.
    pub mem: &'a mut MachineMemory,
    /// The domain's IOMMU.
    pub iommu: &'a mut Iommu,
    /// The revision's switches.
    pub sw: &'a Switches,
    /// The configuration.
    pub cfg: Config,
    /// Sequence number of this `set_entry` (tags cache records).
    pub seq: u64,
    /// Counters.
    pub stats: &'a mut P2mStats,
}

/// The host p2m implementation in use.
#[derive(Clone, Debug)]
pub enum P2m {
    /// `p2m-ept.c`.
    Ept(Ept),
    /// `p2m-pt.c` (NPT or shadow).
    Pt(P2mPt),
}

/// Where a translation in the device view comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ViewSource {
    /// The tables as they are now.
    Current,
    /// A cache record left by `set_entry` number `seq`.
    Cached {
        /// The `set_entry` that overwrote the entry.
        seq: u64,
        /// True for a paging-structure (non-leaf) record.
        nonleaf: bool,
    },
}

/// Everything a device could reach for a gfn range.
#[derive(Clone, Debug, Default)]
pub struct DeviceView {
    /// Translations with their source.
    pub translations: Vec<(Translation, ViewSource)>,
    /// Walks through frames that are not live tables.
    pub faults: Vec<(WalkFault, ViewSource)>,
}

/// One domain: configuration, revision, machine memory, p2m and IOMMU.
#[derive(Clone, Debug)]
pub struct Domain {
    /// Configuration (normalized).
    pub cfg: Config,
    /// Revision being modelled.
    pub revision: Revision,
    /// Machine memory.
    pub mem: MachineMemory,
    /// The host p2m.
    pub p2m: P2m,
    /// The IOMMU.
    pub iommu: Iommu,
    /// p2m-side counters.
    pub stats: P2mStats,
    seq: u64,
}

impl Domain {
    /// A fresh domain with passthrough (`need_iommu(d)`) enabled.
    pub fn new(cfg: Config, revision: Revision) -> Self {
        let cfg = cfg.normalized();
        let mut mem = MachineMemory::new();
        let p2m = match cfg.mode {
            Mode::Ept => P2m::Ept(Ept::new(&mut mem)),
            Mode::Npt | Mode::Shadow => P2m::Pt(P2mPt::new(&mut mem)),
        };
        let iommu = Iommu::new(cfg.vendor, &mut mem);
        Domain {
            cfg,
            revision,
            mem,
            p2m,
            iommu,
            stats: P2mStats::default(),
            seq: 0,
        }
    }

    /// Sequence number the next `set_entry` will get (the first is 1).
    pub fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// Models `p2m->set_entry()` on the host p2m.
    pub fn set_entry(
        &mut self,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        access: P2mAccess,
    ) -> Result<(), P2mError> {
        self.seq += 1;
        self.iommu.touched.clear();
        let sw = self.revision.switches;
        let mut cx = Cx {
            mem: &mut self.mem,
            iommu: &mut self.iommu,
            sw: &sw,
            cfg: self.cfg,
            seq: self.seq,
            stats: &mut self.stats,
        };
        match &mut self.p2m {
            P2m::Ept(e) => e.set_entry(&mut cx, gfn, mfn, order, p2mt, access),
            P2m::Pt(p) => p.set_entry(&mut cx, gfn, mfn, order, p2mt, access),
        }
    }

    /// Guest ranges the last `set_entry` changed in the IOMMU beyond its own range
    /// (merged or split AMD superpages); the oracle must check them too.
    pub fn iommu_touched(&self) -> &[GfnRange] {
        &self.iommu.touched
    }

    /// Models `p2m->get_entry()` (query only).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        match &self.p2m {
            P2m::Ept(e) => e.get_entry(gfn),
            P2m::Pt(p) => p.get_entry(gfn),
        }
    }

    /// The structure the IOMMU hardware walks: the p2m when `iommu_use_hap_pt(d)`,
    /// else its own tables.
    pub fn io_tables(&self) -> &dyn IoTables {
        if self.cfg.iommu_use_hap_pt() {
            match &self.p2m {
                P2m::Ept(e) => e,
                P2m::Pt(p) => p,
            }
        } else {
            &self.iommu.separate
        }
    }

    /// Live cache records.
    pub fn cache_records(&self) -> &[CacheRecord] {
        self.iommu.caches.records()
    }

    /// The current tables' translations for `range` (no caches).
    pub fn current_view(&self, range: GfnRange) -> WalkResult {
        walk_root(self.io_tables(), &self.mem, range)
    }

    /// Everything a device could reach for `range`: the current tables, every
    /// IOTLB record covering it, and walks from every paging-structure record
    /// covering it through the tables as they are now.
    pub fn device_view(&self, range: GfnRange) -> DeviceView {
        let mut v = DeviceView::default();
        let cur = self.current_view(range);
        v.translations.extend(
            cur.translations
                .into_iter()
                .map(|t| (t, ViewSource::Current)),
        );
        v.faults
            .extend(cur.faults.into_iter().map(|f| (f, ViewSource::Current)));
        let tables = self.io_tables();
        for r in self.cache_records() {
            let Some(hit) = r.range.intersect(&range) else {
                continue;
            };
            match r.kind {
                RecordKind::Leaf {
                    mfn,
                    perm,
                    leaf_pages,
                } => v.translations.push((
                    Translation {
                        range: hit,
                        mfn: mfn.wrapping_add(hit.start - r.range.start),
                        perm,
                        leaf_pages,
                    },
                    ViewSource::Cached {
                        seq: r.seq,
                        nonleaf: false,
                    },
                )),
                RecordKind::NonLeaf {
                    table,
                    level,
                    generation,
                    perm,
                } => {
                    let mut w = WalkResult::default();
                    walk(
                        tables,
                        &self.mem,
                        table,
                        level,
                        r.range.start,
                        hit,
                        perm,
                        Some(generation),
                        &mut w,
                    );
                    let src = ViewSource::Cached {
                        seq: r.seq,
                        nonleaf: true,
                    };
                    v.translations
                        .extend(w.translations.into_iter().map(|t| (t, src)));
                    v.faults.extend(w.faults.into_iter().map(|f| (f, src)));
                }
            }
        }
        v
    }

    /// IOMMU-side counters.
    pub fn iommu_stats(&self) -> IommuStats {
        self.iommu.stats
    }

    /// Frames currently holding tables (p2m and IOMMU).
    pub fn live_table_frames(&self) -> usize {
        self.mem.live_tables()
    }
}

//! Machine memory: the allocator of page-table frames and the state of each frame.
//!
//! Models `p2m_alloc_ptp` / `p2m_free_ptp` (the HAP/shadow pool) and the IOMMU's
//! `alloc_pgtable_maddr` / `alloc_amd_iommu_pgtable` / `free_amd_iommu_pgtable`:
//! one frame space shared with guest memory, and LIFO reuse of freed frames so that
//! a freed table is quickly handed out again, as on a busy host.

/// First frame of the page-table pool.
pub const TABLE_POOL_BASE: u64 = 0x40000;
/// Distance between fresh pool frames: keeps table frames 2 MiB-aligned, so that a
/// table frame can also be a legal order-9 `mfn` argument.
pub const TABLE_POOL_STRIDE: u64 = 512;

use crate::types::GfnRange;

/// Who owns a table frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TableOwner {
    /// A p2m (EPT or p2m-pt) table.
    P2m,
    /// A separate IOMMU (VT-d or AMD-Vi) table.
    Iommu,
}

/// State of a pool frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameState {
    /// Back in the pool.
    Free,
    /// Holds a table of `owner` at `level` (1 = 4 KiB leaves).
    Table {
        /// Which structure it belongs to.
        owner: TableOwner,
        /// Level of the table.
        level: u8,
    },
}

/// Bookkeeping of one frame that has ever been a table.
#[derive(Clone, Copy, Debug)]
pub struct FrameInfo {
    /// Current state.
    pub state: FrameState,
    /// Bumped at every allocation: a cache record naming an older generation
    /// points at a frame that was freed (and perhaps reused) since.
    pub generation: u32,
    /// The guest frames the table translates, when its allocator said so
    /// ([`MachineMemory::alloc_for`]): where to look for whatever still links it.
    pub span: Option<GfnRange>,
}

/// The frame allocator and the per-frame state.
#[derive(Clone, Debug, Default)]
pub struct MachineMemory {
    /// Info of every frame ever handed out, indexed by pool slot (the frame of
    /// slot `k` is `ever[k]`: fresh frames are handed out in slot order).
    frames: Vec<FrameInfo>,
    free_list: Vec<u64>,
    next_fresh: u64,
    ever: Vec<u64>,
    frees: u64,
    /// Fault injection: the table allocation of the next op that must fail (1 = its first).
    armed: Option<u32>,
    /// Allocations of the current op still to go before the injected failure.
    countdown: Option<u32>,
    /// The injected failure fired during the current (or last) op.
    failed: bool,
}

impl MachineMemory {
    /// An empty pool.
    pub fn new() -> Self {
        MachineMemory {
            next_fresh: TABLE_POOL_BASE,
            ..Default::default()
        }
    }

    /// Allocates a table frame for the table at `level` that translates `gfn`: as
    /// [`Self::alloc`], also recording the guest span the table covers.
    pub fn alloc_for(&mut self, owner: TableOwner, level: u8, gfn: u64) -> u64 {
        let m = self.alloc(owner, level);
        let pages = crate::tables::pages_per_table(level);
        if let Some(info) = Self::slot(m).and_then(|s| self.frames.get_mut(s)) {
            info.span = Some(GfnRange {
                start: gfn & !(pages - 1),
                end: (gfn & !(pages - 1)).saturating_add(pages),
            });
        }
        m
    }

    /// Fault injection: the `nth` table allocation (1 = the first) of the next op returns
    /// NULL, as `p2m_alloc_ptp` / `alloc_pgtable_maddr` / `alloc_amd_iommu_pgtable` /
    /// `iommu_alloc_pgtable` do when the pool or the heap is exhausted.
    pub fn arm_alloc_failure(&mut self, nth: u32) {
        self.armed = Some(nth.max(1));
    }

    /// Starts an op: an armed failure applies to it and to no later op.
    pub fn begin_op(&mut self) {
        self.countdown = self.armed.take();
        self.failed = false;
    }

    /// Ends an op: an injected failure that did not fire is dropped.
    pub fn end_op(&mut self) {
        self.countdown = None;
    }

    /// Whether the injected allocation failure fired during the last op.
    pub fn alloc_failed(&self) -> bool {
        self.failed
    }

    /// Like [`Self::alloc_for`], but `None` when this is the allocation the op was armed
    /// to fail (Xen's allocator returning NULL): nothing is allocated then.
    pub fn try_alloc_for(&mut self, owner: TableOwner, level: u8, gfn: u64) -> Option<u64> {
        self.injected_failure()
            .then(|| self.alloc_for(owner, level, gfn))
    }

    /// Like [`Self::alloc`], but `None` for the allocation the op was armed to fail.
    pub fn try_alloc(&mut self, owner: TableOwner, level: u8) -> Option<u64> {
        self.injected_failure().then(|| self.alloc(owner, level))
    }

    /// Counts one fallible allocation: `false` when it is the one that fails.
    fn injected_failure(&mut self) -> bool {
        match self.countdown {
            Some(1) => {
                self.countdown = None;
                self.failed = true;
                false
            }
            Some(k) => {
                self.countdown = Some(k - 1);
                true
            }
            None => true,
        }
    }

    /// Allocates a table frame: the most recently freed one, else a fresh one.
    pub fn alloc(&mut self, owner: TableOwner, level: u8) -> u64 {
        let mfn = match self.free_list.pop() {
            Some(m) => m,
            None => {
                let m = self.next_fresh;
                self.next_fresh += TABLE_POOL_STRIDE;
                self.ever.push(m);
                m
            }
        };
        let slot = Self::slot(mfn).expect("pool frame");
        if slot == self.frames.len() {
            self.frames.push(FrameInfo {
                state: FrameState::Free,
                generation: 0,
                span: None,
            });
        }
        let info = &mut self.frames[slot];
        info.state = FrameState::Table { owner, level };
        info.generation += 1;
        info.span = None;
        mfn
    }

    /// Records the guest span the live table in `frame` translates, where a caller links
    /// it (the range of the entry pointing at it): bookkeeping the oracle checks the op
    /// log's spans against, not Xen state.
    pub fn set_span(&mut self, frame: u64, span: GfnRange) {
        if let Some(info) = Self::slot(frame).and_then(|s| self.frames.get_mut(s)) {
            if info.state != FrameState::Free {
                info.span = Some(span);
            }
        }
    }

    /// Returns a table frame to the pool (pushed on the LIFO free list).
    pub fn free(&mut self, mfn: u64) {
        if let Some(info) = Self::slot(mfn).and_then(|s| self.frames.get_mut(s)) {
            if info.state != FrameState::Free {
                info.state = FrameState::Free;
                self.free_list.push(mfn);
                self.frees += 1;
            }
        }
    }

    /// State and generation of a frame that has been a table, `None` for any other frame.
    pub fn info(&self, mfn: u64) -> Option<FrameInfo> {
        self.frames.get(Self::slot(mfn)?).copied()
    }

    /// Pool slot of `mfn`, if it is a pool frame.
    fn slot(mfn: u64) -> Option<usize> {
        crate::tables::pool_slot(mfn)
    }

    /// True when `mfn` currently holds a live table of `owner`.
    pub fn is_live_table(&self, mfn: u64, owner: TableOwner) -> bool {
        matches!(self.info(mfn), Some(FrameInfo { state: FrameState::Table { owner: o, .. }, .. }) if o == owner)
    }

    /// Every frame ever handed out, in first-allocation order.
    pub fn ever_allocated(&self) -> &[u64] {
        &self.ever
    }

    /// Frames currently holding a table.
    pub fn live_tables(&self) -> usize {
        self.frames
            .iter()
            .filter(|i| i.state != FrameState::Free)
            .count()
    }

    /// How many frees happened so far.
    pub fn free_count(&self) -> u64 {
        self.frees
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An armed failure hits the `nth` fallible allocation of the next op only, and an
    /// unfired one does not outlive that op.
    #[test]
    fn armed_failure_hits_the_nth_allocation_of_one_op() {
        let mut m = MachineMemory::new();
        m.arm_alloc_failure(2);
        m.begin_op();
        assert!(m.try_alloc(TableOwner::P2m, 1).is_some());
        assert!(!m.alloc_failed());
        assert!(m.try_alloc(TableOwner::P2m, 1).is_none());
        assert!(m.alloc_failed());
        assert!(m.try_alloc(TableOwner::P2m, 1).is_some());
        m.end_op();
        m.arm_alloc_failure(5);
        m.begin_op();
        assert!(!m.alloc_failed());
        m.end_op();
        m.begin_op();
        for _ in 0..6 {
            assert!(m.try_alloc(TableOwner::Iommu, 1).is_some());
        }
        m.end_op();
    }

    #[test]
    fn lifo_reuse_bumps_generation() {
        let mut m = MachineMemory::new();
        let a = m.alloc(TableOwner::P2m, 4);
        let b = m.alloc(TableOwner::P2m, 3);
        assert_eq!(b, a + TABLE_POOL_STRIDE);
        m.free(a);
        m.free(b);
        assert_eq!(m.alloc(TableOwner::Iommu, 1), b);
        assert_eq!(m.info(b).unwrap().generation, 2);
        assert_eq!(m.alloc(TableOwner::P2m, 1), a);
        assert!(m.is_live_table(b, TableOwner::Iommu));
        assert_eq!(m.ever_allocated(), &[a, b]);
    }
}

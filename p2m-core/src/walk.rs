//! The IOMMU's page walk over whatever tables it uses (its own or the p2m's).

use crate::frames::{FrameState, MachineMemory, TableOwner};
use crate::tables::{index_of, pages_per_entry, pages_per_table};
use crate::types::{GfnRange, IommuPerm};

/// One entry as the IOMMU hardware reads it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IoEntry {
    /// Not present: no translation, never cached.
    NotPresent,
    /// A leaf: the frame of the entry's first page and the permission bits.
    Leaf {
        /// Frame of the first page the entry maps.
        mfn: u64,
        /// Read/write bits of the entry.
        perm: IommuPerm,
    },
    /// A pointer to a table of `level` held in frame `table`.
    Next {
        /// Frame holding the next table.
        table: u64,
        /// Level the hardware will treat that table as.
        level: u8,
        /// Read/write bits of the entry (ANDed along the walk).
        perm: IommuPerm,
    },
}

impl IoEntry {
    /// The `k`-th entry of a run that starts with `self` at `level`.
    pub fn nth(self, k: u64, level: u8) -> IoEntry {
        match self {
            IoEntry::Leaf { mfn, perm } => IoEntry::Leaf {
                mfn: mfn.wrapping_add(k * pages_per_entry(level)),
                perm,
            },
            other => other,
        }
    }
}

/// A structure the IOMMU can walk: separate IOMMU tables, EPT or p2m-pt tables.
pub trait IoTables {
    /// Owner that every frame of this structure must have.
    fn owner(&self) -> TableOwner;
    /// Root table frame and its level.
    fn io_root(&self) -> (u64, u8);
    /// Entries `[lo, hi)` of the table in frame `t`, as runs `(index, len, first)`;
    /// `None` when `t` holds no table of this structure.
    fn io_runs(&self, t: u64, lo: u16, hi: u16) -> Option<Vec<(u16, u16, IoEntry)>> {
        let mut out = Vec::new();
        self.for_each_io_run(t, lo, hi, &mut |s, l, e| out.push((s, l, e)))
            .then_some(out)
    }
    /// Calls `f` on each run [`Self::io_runs`] would return, in order, without
    /// allocating; false (and no call) when `t` holds no table of this structure.
    fn for_each_io_run(
        &self,
        t: u64,
        lo: u16,
        hi: u16,
        f: &mut dyn FnMut(u16, u16, IoEntry),
    ) -> bool;
}

/// A translation the device can use: frames `range` map linearly from `mfn`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Translation {
    /// Guest frames covered.
    pub range: GfnRange,
    /// Machine frame of `range.start`.
    pub mfn: u64,
    /// What the device may do.
    pub perm: IommuPerm,
    /// Size in frames of the leaf that provides it (1, 512 or 262144).
    pub leaf_pages: u64,
}

/// A walk step through a frame that is not a live table of the structure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalkFault {
    /// The frame was freed (and maybe reused) since the pointer to it was read.
    FreedFrame {
        /// The frame.
        frame: u64,
        /// Guest frames whose walk passes through it.
        range: GfnRange,
    },
    /// The frame never held a table of this structure (e.g. guest data).
    NonTableFrame {
        /// The frame.
        frame: u64,
        /// Guest frames whose walk passes through it.
        range: GfnRange,
    },
}

/// What a walk found: translations, non-leaf entries passed, faults.
#[derive(Clone, Debug, Default)]
pub struct WalkResult {
    /// Leaves reached.
    pub translations: Vec<Translation>,
    /// Non-leaf entries passed: `(range, table frame, level, generation, perm)`.
    pub nonleaf: Vec<(GfnRange, u64, u8, u32, IommuPerm)>,
    /// Frames walked through that are not live tables.
    pub faults: Vec<WalkFault>,
}

/// Walks `range` starting at table `frame` of `level` whose first gfn is `base`.
/// `expect_gen` is the generation the pointer was read at (for cache records).
#[allow(clippy::too_many_arguments)]
pub fn walk(
    tables: &dyn IoTables,
    mem: &MachineMemory,
    frame: u64,
    level: u8,
    base: u64,
    range: GfnRange,
    perm_above: IommuPerm,
    expect_gen: Option<u32>,
    out: &mut WalkResult,
) {
    let span = GfnRange {
        start: base,
        end: base + pages_per_table(level),
    };
    let Some(range) = range.intersect(&span) else {
        return;
    };
    match mem.info(frame) {
        None => {
            out.faults.push(WalkFault::NonTableFrame { frame, range });
            return;
        }
        Some(info) => {
            let stale_gen = expect_gen.is_some_and(|g| g != info.generation);
            match info.state {
                FrameState::Free => {
                    out.faults.push(WalkFault::FreedFrame { frame, range });
                    return;
                }
                _ if stale_gen => {
                    out.faults.push(WalkFault::FreedFrame { frame, range });
                    return;
                }
                FrameState::Table { owner, .. } if owner != tables.owner() => {
                    out.faults.push(WalkFault::NonTableFrame { frame, range });
                    return;
                }
                _ => {}
            }
        }
    }
    let lo = index_of(range.start, level);
    let hi = index_of(range.end - 1, level) + 1;
    let per = pages_per_entry(level);
    let found = tables.for_each_io_run(frame, lo, hi, &mut |idx, len, first| match first {
        IoEntry::NotPresent => {}
        IoEntry::Leaf { mfn, perm } => {
            let run = GfnRange {
                start: base + idx as u64 * per,
                end: base + (idx + len) as u64 * per,
            };
            if let Some(r) = run.intersect(&range) {
                out.translations.push(Translation {
                    range: r,
                    mfn: mfn.wrapping_add(r.start - run.start),
                    perm: perm.and(perm_above),
                    leaf_pages: per,
                });
            }
        }
        IoEntry::Next { .. } => {
            for k in 0..len {
                let IoEntry::Next {
                    table,
                    level: nl,
                    perm,
                } = first.nth(k as u64, level)
                else {
                    continue;
                };
                let ebase = base + (idx + k) as u64 * per;
                let erange = GfnRange {
                    start: ebase,
                    end: ebase + per,
                };
                let Some(r) = erange.intersect(&range) else {
                    continue;
                };
                let p = perm.and(perm_above);
                if nl == 0 || nl >= level {
                    // An invalid next-level value: the hardware faults the walk.
                    continue;
                }
                let gen = mem.info(table).map(|i| i.generation).unwrap_or(0);
                out.nonleaf.push((erange, table, nl, gen, p));
                // A level-skipping pointer covers the same span with a lower table;
                // the base of that table is still the entry's base.
                walk(tables, mem, table, nl, ebase, r, p, None, out);
            }
        }
    });
    if !found {
        out.faults.push(WalkFault::NonTableFrame { frame, range });
    }
}

/// Walks `range` from the structure's root.
pub fn walk_root(tables: &dyn IoTables, mem: &MachineMemory, range: GfnRange) -> WalkResult {
    let (root, level) = tables.io_root();
    let mut out = WalkResult::default();
    walk(
        tables,
        mem,
        root,
        level,
        0,
        range,
        IommuPerm::RW,
        None,
        &mut out,
    );
    out
}

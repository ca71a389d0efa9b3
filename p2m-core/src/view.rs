//! What the harness reads back from a model: the CPU view of a gfn and the device view
//! of a gfn range, with where each translation comes from.

use crate::cache::{CacheRecord, RecordKind};
use crate::frames::MachineMemory;
use crate::types::{GfnRange, Mfn, P2mAccess, P2mType};
use crate::walk::{walk, walk_root, IoTables, Translation, WalkFault, WalkResult};

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

/// A run of the CPU view: every gfn of `range` has `type` and `access`, and maps
/// `mfn + (gfn - range.start)` (or `INVALID_MFN` for all of them); consistent with
/// `get_entry` at every gfn (an unmapped gfn reads as `INVALID_MFN`, `invalid`, `rwx`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CpuExtent {
    /// Guest frames covered.
    pub range: GfnRange,
    /// Frame of `range.start`, or `INVALID_MFN`.
    pub mfn: Mfn,
    /// Type.
    pub p2mt: P2mType,
    /// Access.
    pub access: P2mAccess,
}

/// Appends an extent to `out`, merging it into the last one when it continues it (same
/// type and access, adjacent, and the frames linear or both `INVALID_MFN`).
pub fn push_cpu_extent(out: &mut Vec<CpuExtent>, e: CpuExtent) {
    if e.range.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        let linear = if last.mfn == crate::types::INVALID_MFN {
            e.mfn == crate::types::INVALID_MFN
        } else {
            e.mfn != crate::types::INVALID_MFN && last.mfn.plus(last.range.len()) == e.mfn
        };
        if last.range.end == e.range.start
            && last.p2mt == e.p2mt
            && last.access == e.access
            && linear
        {
            last.range.end = e.range.end;
            return;
        }
    }
    out.push(e);
}

/// True when the entries `first..=last` of a leaf run whose entry 0 holds frame `m0`
/// (entry `k` holding `m0 + k·per` in a 40-bit field) are one linear extent: the field
/// does not wrap and no entry holds one of the `invalid` field values that `get_entry`
/// reports as `INVALID_MFN`.
pub fn leaf_run_is_plain(m0: u64, per: u64, first: u64, last: u64, invalid: &[u64]) -> bool {
    let Some(top) = last.checked_mul(per).and_then(|x| x.checked_add(m0)) else {
        return false;
    };
    if top > crate::types::PTE_MFN_MASK {
        return false;
    }
    !invalid.iter().any(|&v| {
        v >= m0
            && (v - m0).is_multiple_of(per)
            && ((v - m0) / per) >= first
            && (v - m0) / per <= last
    })
}

/// Fills the gaps of `out` (extents in order, inside `range`) with unmapped extents
/// (`INVALID_MFN`, `invalid`, `rwx`), so that the result covers `range` exactly.
pub fn fill_cpu_gaps(range: GfnRange, found: Vec<CpuExtent>) -> Vec<CpuExtent> {
    let mut out = Vec::with_capacity(found.len() * 2 + 1);
    let mut at = range.start;
    let gap = |start: u64, end: u64| CpuExtent {
        range: GfnRange { start, end },
        mfn: crate::types::INVALID_MFN,
        p2mt: P2mType::Invalid,
        access: P2mAccess::Rwx,
    };
    for e in found {
        if e.range.start > at {
            push_cpu_extent(&mut out, gap(at, e.range.start));
        }
        at = e.range.end;
        push_cpu_extent(&mut out, e);
    }
    if at < range.end {
        push_cpu_extent(&mut out, gap(at, range.end));
    }
    out
}

/// Where a translation in the device view comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ViewSource {
    /// The tables as they are now.
    Current,
    /// A cache record left by op number `seq`.
    Cached {
        /// The op that overwrote the entry.
        seq: u64,
        /// True for a paging-structure (non-leaf) record.
        nonleaf: bool,
        /// The record itself.
        record: CacheRecord,
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

/// Everything a device could reach for `range` through `tables`: the current tables,
/// every IOTLB record covering it, and walks from every paging-structure record covering
/// it through the tables as they are now.
pub fn device_view(
    tables: &dyn IoTables,
    mem: &MachineMemory,
    records: &[CacheRecord],
    range: GfnRange,
) -> DeviceView {
    let mut v = DeviceView::default();
    let cur = walk_root(tables, mem, range);
    v.translations.extend(
        cur.translations
            .into_iter()
            .map(|t| (t, ViewSource::Current)),
    );
    v.faults
        .extend(cur.faults.into_iter().map(|f| (f, ViewSource::Current)));
    for r in records {
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
                    record: *r,
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
                    mem,
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
                    record: *r,
                };
                v.translations
                    .extend(w.translations.into_iter().map(|t| (t, src)));
                v.faults.extend(w.faults.into_iter().map(|f| (f, src)));
            }
        }
    }
    v
}

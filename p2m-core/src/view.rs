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
                };
                v.translations
                    .extend(w.translations.into_iter().map(|t| (t, src)));
                v.faults.extend(w.faults.into_iter().map(|f| (f, src)));
            }
        }
    }
    v
}

//! What one op did that the oracle must look at, recorded while it runs: the guest
//! ranges it may have changed, the invalidation commands it issued, every frame it
//! freed together with whatever could still reach that frame *at the moment of the
//! free*, frees of frames that were not live tables, and tables it unlinked from their
//! structure (a leak when still allocated at the end of the op).
//!
//! The log is cleared at the start of each op. Recording costs what the op touches:
//! one range per written entry or chunk, one event per freed subtree.

use crate::cache::{CacheRecord, Issued, RecordKind};
use crate::frames::{FrameState, MachineMemory, TableOwner};
use crate::types::{GfnRange, IommuPerm};
use crate::walk::{walk, walk_root, IoTables, WalkResult};

/// What was freed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Freed {
    /// A page-table frame of `owner` at `level`.
    Table {
        /// Structure it belonged to.
        owner: TableOwner,
        /// Its level.
        level: u8,
    },
    /// A guest page returned to the heap (`guest_remove_page`, a batch's `put_page`).
    GuestPage {
        /// The gfn it was last mapped at.
        gfn: u64,
    },
}

/// How something could still reach a frame when it was freed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReachVia {
    /// A walk through the current IOMMU-visible tables passes through it.
    CurrentWalk,
    /// A walk starting at a paging-structure cache record left by op `seq` passes
    /// through it (or the record points at it).
    CachedWalk {
        /// The op that left the record.
        seq: u64,
    },
}

/// One way a freed frame could still be reached: how, and for which guest frames.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Reach {
    /// How.
    pub via: ReachVia,
    /// Guest frames whose translation goes through the frame.
    pub range: GfnRange,
    /// The cache record involved, if any.
    pub record: Option<CacheRecord>,
}

/// One frame freed during an op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreeEvent {
    /// The frame.
    pub frame: u64,
    /// What it held.
    pub what: Freed,
    /// Guest frames the freed subtree translated.
    pub span: GfnRange,
    /// Guest frames the frame itself translated, as recorded where it was linked
    /// ([`MachineMemory::set_span`]): must lie within `span`.
    pub table_span: Option<GfnRange>,
    /// Everything that could still reach it at the moment it was freed (empty: a safe free).
    pub reaches: Vec<Reach>,
}

/// A free of a frame that was not a live table of the structure freeing it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BadFree {
    /// The frame.
    pub frame: u64,
    /// The structure that freed it.
    pub owner: TableOwner,
    /// Its state at that moment (`None`: never a table frame, e.g. guest memory).
    pub state: Option<FrameState>,
}

/// A table unlinked from its structure during an op.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Unlinked {
    /// The frame.
    pub frame: u64,
    /// Its allocation generation when it was unlinked.
    pub generation: u32,
    /// Its structure.
    pub owner: TableOwner,
    /// Its level.
    pub level: u8,
    /// Guest frames it translated.
    pub span: GfnRange,
    /// Guest frames it translated as recorded where it was linked
    /// ([`MachineMemory::set_span`]): must equal `span`.
    pub table_span: Option<GfnRange>,
    /// Its level as the frame allocator knows it (a live table): must equal `level`.
    pub table_level: Option<u8>,
}

/// A superpage split into a table of smaller entries during an op.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Split {
    /// Guest frames of the superpage.
    pub range: GfnRange,
    /// The Xen function that split it.
    pub by: &'static str,
}

/// Everything one op recorded for the oracle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpLog {
    /// Guest ranges whose translation (CPU or device side) the op may have changed:
    /// every written entry's range (so a split or a replaced subtree counts whole), every
    /// chunk the IOMMU wrote, every bounded invalidation, every freed span.
    pub changed: Vec<GfnRange>,
    /// The part of `changed` the p2m itself wrote (its entries, splits of its
    /// superpages): the only ranges where the CPU view can have changed. An IOMMU-only
    /// change (a shattered IOMMU superpage, a flush) leaves the CPU view alone, so the
    /// oracle's CPU check need not walk it.
    pub p2m_changed: Vec<GfnRange>,
    /// Invalidation commands issued, in order.
    pub invalidations: Vec<Issued>,
    /// Frames freed, in order.
    pub frees: Vec<FreeEvent>,
    /// Frees of frames that were not live tables of the freeing structure.
    pub bad_frees: Vec<BadFree>,
    /// Tables unlinked from their structure.
    pub unlinked: Vec<Unlinked>,
    /// `(frame, generation)` of each entry of `unlinked`: the once-per-allocation check
    /// of [`OpLog::unlink`] in `O(log n)` (an op that replaces 512 tables unlinks 512).
    unlinked_keys: std::collections::BTreeSet<(u64, u32)>,
    /// Superpages split (their ranges are in `changed` too).
    pub splits: Vec<Split>,
    /// `(gfn, frame)` a batch refused as a guest page because a Xen table lived in the
    /// frame when it read the entry at `gfn`.
    pub xen_frames: Vec<(u64, u64)>,
    /// The same, for the reads of a second vCPU's op inside a batch (a frame may become
    /// a table between the batch's read and the second op's).
    pub xen_frames_second: Vec<(u64, u64)>,
    /// `(frame, gfn)` of each page a batch of this op unmapped from its source gfn before
    /// moving it: while the batch has not flushed, the IOTLB may still translate that gfn
    /// to the page (see [`OpLog::free_guest_page`]).
    pub moved_from: Vec<(u64, u64)>,
}

impl OpLog {
    /// Forgets the previous op.
    pub fn clear(&mut self) {
        self.changed.clear();
        self.p2m_changed.clear();
        self.invalidations.clear();
        self.frees.clear();
        self.bad_frees.clear();
        self.unlinked.clear();
        self.unlinked_keys.clear();
        self.splits.clear();
        self.xen_frames.clear();
        self.xen_frames_second.clear();
        self.moved_from.clear();
    }

    /// Notes a superpage split by the Xen function `by`.
    pub fn split(&mut self, range: GfnRange, by: &'static str) {
        self.changed(range);
        self.splits.push(Split { range, by });
    }

    /// Notes a superpage of the p2m split by the Xen function `by`.
    pub fn p2m_split(&mut self, range: GfnRange, by: &'static str) {
        self.p2m_changed(range);
        self.splits.push(Split { range, by });
    }

    /// Notes a guest range whose p2m entries the op wrote (the field `p2m_changed`).
    pub fn p2m_changed(&mut self, r: GfnRange) {
        if !r.is_empty() {
            self.p2m_changed.push(r);
        }
        self.changed(r);
    }

    /// Notes a guest range the op changed.
    pub fn changed(&mut self, r: GfnRange) {
        if !r.is_empty() {
            self.changed.push(r);
        }
    }

    /// Notes that the table in `frame` was unlinked (its pointer overwritten or its
    /// parent freed), once per allocation of the frame.
    pub fn unlink(
        &mut self,
        mem: &MachineMemory,
        frame: u64,
        owner: TableOwner,
        level: u8,
        span: GfnRange,
    ) {
        let info = mem.info(frame);
        let generation = info.map_or(0, |i| i.generation);
        let live = info.filter(|i| i.state != FrameState::Free);
        let table_span = live.and_then(|i| i.span);
        let table_level = match live.map(|i| i.state) {
            Some(FrameState::Table { level, .. }) => Some(level),
            _ => None,
        };
        // Several paths may see the same unlink (the overwritten pointer, the freeing of
        // its parent, the vendor's own queueing): one record each.
        if !self.unlinked_keys.insert((frame, generation)) {
            return;
        }
        self.unlinked.push(Unlinked {
            frame,
            generation,
            owner,
            level,
            span,
            table_span,
            table_level,
        });
    }

    /// Frees the tables of one subtree of `owner` (`frames`, with their levels), all
    /// within guest span `span`: first records, for each, whatever could still reach it
    /// now — a walk of the current IOMMU-visible tables `io` over `span`, and every
    /// paging-structure record of `records` pointing at it or walking through it — then
    /// returns each frame to `mem`, noting frees of frames that are not live tables of
    /// `owner`.
    pub fn free_tables(
        &mut self,
        mem: &mut MachineMemory,
        io: &dyn IoTables,
        records: &[CacheRecord],
        owner: TableOwner,
        frames: &[(u64, u8)],
        span: GfnRange,
    ) {
        self.free_tables_own(mem, io, io, records, owner, frames, span)
    }

    /// [`Self::free_tables`] for a structure `own` that the IOMMU may not walk (a p2m
    /// with separate IOMMU tables): a current walk of `own` still reaching a freed frame
    /// (its root included) is a reach too — the structure freed a table it still links.
    #[allow(clippy::too_many_arguments)]
    pub fn free_tables_own(
        &mut self,
        mem: &mut MachineMemory,
        io: &dyn IoTables,
        own: &dyn IoTables,
        records: &[CacheRecord],
        owner: TableOwner,
        frames: &[(u64, u8)],
        span: GfnRange,
    ) {
        if frames.is_empty() {
            return;
        }
        self.changed(span);
        let mut sorted: Vec<u64> = frames.iter().map(|f| f.0).collect();
        sorted.sort_unstable();
        let hit = |t: u64| sorted.binary_search(&t).is_ok();
        let mut reaches: Vec<(u64, Reach)> = Vec::new();
        let same = std::ptr::addr_eq(io as *const dyn IoTables, own as *const dyn IoTables);
        let structures: &[&dyn IoTables] = if same { &[io] } else { &[io, own] };
        // Where to look: the freed span, and the span a freed frame was allocated for when
        // that lies elsewhere (a wrong free of a table linked under other gfns).
        let mut spans = vec![span];
        for &(f, _) in frames {
            if let Some(s) = mem.info(f).and_then(|i| i.span) {
                if s.intersect(&span) != Some(s) && !spans.contains(&s) {
                    spans.push(s);
                }
            }
        }
        for (&structure, &look) in structures
            .iter()
            .flat_map(|s| spans.iter().map(move |l| (s, l)))
        {
            if structure.owner() != owner {
                continue;
            }
            let (root, _) = structure.io_root();
            if hit(root) && look == span {
                reaches.push((
                    root,
                    Reach {
                        via: ReachVia::CurrentWalk,
                        range: span,
                        record: None,
                    },
                ));
            }
            let cur = walk_root(structure, mem, look);
            for &(range, table, ..) in &cur.nonleaf {
                if hit(table) {
                    reaches.push((
                        table,
                        Reach {
                            via: ReachVia::CurrentWalk,
                            range,
                            record: None,
                        },
                    ));
                }
            }
        }
        // Cached walks only ever enter frames of the structure the IOMMU walks.
        if io.owner() == owner {
            for r in records {
                let RecordKind::NonLeaf {
                    table,
                    level,
                    generation,
                    perm,
                } = r.kind
                else {
                    continue;
                };
                let live_gen = mem.info(table).map(|i| i.generation) == Some(generation);
                let via = ReachVia::CachedWalk { seq: r.seq };
                if hit(table) && live_gen {
                    reaches.push((
                        table,
                        Reach {
                            via,
                            range: r.range,
                            record: Some(*r),
                        },
                    ));
                    continue;
                }
                let Some(part) = r.range.intersect(&span) else {
                    continue;
                };
                let mut w = WalkResult::default();
                walk(
                    io,
                    mem,
                    table,
                    level,
                    r.range.start,
                    part,
                    perm,
                    Some(generation),
                    &mut w,
                );
                for &(range, t, ..) in &w.nonleaf {
                    if hit(t) {
                        reaches.push((
                            t,
                            Reach {
                                via,
                                range,
                                record: Some(*r),
                            },
                        ));
                    }
                }
            }
        }
        for &(frame, expected_level) in frames {
            let state = mem.info(frame).map(|i| i.state);
            let (live, level) = match state {
                Some(FrameState::Table { owner: o, level }) if o == owner => (true, level),
                _ => (false, expected_level),
            };
            if !live {
                self.bad_frees.push(BadFree {
                    frame,
                    owner,
                    state,
                });
                continue;
            }
            let table_span = mem.info(frame).and_then(|i| i.span);
            mem.free(frame);
            self.frees.push(FreeEvent {
                frame,
                what: Freed::Table { owner, level },
                span,
                table_span,
                reaches: reaches
                    .iter()
                    .filter(|(f, _)| *f == frame)
                    .map(|(_, r)| *r)
                    .collect(),
            });
        }
    }

    /// Frees the guest page `frame`, removed from `gfn`, recording whatever could still
    /// reach it now (with some permission) at `gfn` and at the gfns a batch of this op
    /// moved it from ([`OpLog::moved_from`]: a second vCPU may free a page the batch has
    /// moved but not flushed yet): a leaf of the current IOMMU-visible tables `io` (the
    /// page mapped back where it was removed, as 4.6 did), an IOTLB record of `records`,
    /// or a walk from a paging-structure record. Mappings of the page at other gfns are
    /// not looked for: Xen keeps one gfn per page (the M2P), so only the internal API can
    /// alias a page elsewhere, and a stale mapping left by an earlier op was already
    /// reported at that op. Costs the records per gfn looked at.
    pub fn free_guest_page(
        &mut self,
        mem: &MachineMemory,
        io: &dyn IoTables,
        records: &[CacheRecord],
        frame: u64,
        gfn: u64,
    ) {
        let mut reaches = Vec::new();
        let mut gfns = vec![gfn];
        gfns.extend(
            self.moved_from
                .iter()
                .filter(|&&(f, g)| f == frame && g != gfn)
                .map(|&(_, g)| g),
        );
        for g in gfns {
            Self::reaches_at(mem, io, records, frame, g, &mut reaches);
        }
        self.frees.push(FreeEvent {
            frame,
            what: Freed::GuestPage { gfn },
            span: GfnRange::of_order(gfn, 0),
            table_span: None,
            reaches,
        });
    }

    /// What could still reach guest page `frame` at `gfn` (see [`OpLog::free_guest_page`]).
    fn reaches_at(
        mem: &MachineMemory,
        io: &dyn IoTables,
        records: &[CacheRecord],
        frame: u64,
        gfn: u64,
        reaches: &mut Vec<Reach>,
    ) {
        let at = GfnRange::of_order(gfn, 0);
        let hits =
            |w: &WalkResult, via: ReachVia, record: Option<CacheRecord>, out: &mut Vec<Reach>| {
                for t in &w.translations {
                    if t.perm != IommuPerm::NONE
                        && frame >= t.mfn
                        && frame - t.mfn < t.range.len()
                        && t.range.start + (frame - t.mfn) == gfn
                    {
                        out.push(Reach {
                            via,
                            range: at,
                            record,
                        });
                    }
                }
            };
        hits(
            &walk_root(io, mem, at),
            ReachVia::CurrentWalk,
            None,
            reaches,
        );
        for r in records {
            let via = ReachVia::CachedWalk { seq: r.seq };
            match r.kind {
                RecordKind::Leaf { mfn, perm, .. } => {
                    let maps_here =
                        r.range.contains(gfn) && mfn.wrapping_add(gfn - r.range.start) == frame;
                    if perm != IommuPerm::NONE && maps_here {
                        reaches.push(Reach {
                            via,
                            range: at,
                            record: Some(*r),
                        });
                    }
                }
                RecordKind::NonLeaf {
                    table,
                    level,
                    generation,
                    perm,
                } => {
                    if let Some(part) = at.intersect(&r.range) {
                        let mut w = WalkResult::default();
                        walk(
                            io,
                            mem,
                            table,
                            level,
                            r.range.start,
                            part,
                            perm,
                            Some(generation),
                            &mut w,
                        );
                        hits(&w, via, Some(*r), reaches);
                    }
                }
            }
        }
    }

    /// Tables unlinked during the op and still allocated (same generation) now.
    pub fn leaked<'a>(&'a self, mem: &'a MachineMemory) -> impl Iterator<Item = &'a Unlinked> + 'a {
        self.unlinked.iter().filter(move |u| {
            mem.info(u.frame).is_some_and(|i| {
                i.generation == u.generation && matches!(i.state, FrameState::Table { .. })
            })
        })
    }
}

//! Shared state of the lazy type change (`p2m_change_type_range` and its recalc), the
//! same on both lines: `p2m->logdirty_ranges` (a rangeset), `p2m->global_logdirty` and
//! `p2m->max_mapped_pfn` of `struct p2m_domain`, and `p2m_is_logdirty_range`.
//!
//! A range type change does not rewrite leaves: it marks the entries that cover the range
//! (EPT: `emt = MTRR_NUM_TYPES` plus `recalc`; p2m-pt: the recalc flag in place of
//! `_PAGE_USER`), and the leaf gets its new type when the mark is resolved — on a CPU
//! access (an EPT misconfig exit, an NPT fault) or at the start of the next `set_entry`
//! on a gfn below the mark — from where the gfn sits in these ranges. Each line's p2m
//! module holds its own `p2m_is_changeable` / `p2m_recalc_type`.

use crate::types::{GfnRange, P2mType, INVALID_MFN};
use crate::view::{push_cpu_extent, CpuExtent};

/// `p2m_is_logdirty_range()`'s answer (`p2m.c:69-82` master, `p2m.c:107-120` 4.6).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogdirtyOverlap {
    /// No gfn of the range is log-dirty (`0`).
    None,
    /// Every gfn is (`1`): global log-dirty, or a rangeset range holds the whole range.
    All,
    /// Some are (`-1`): a superpage must be split.
    Partial,
}

/// `p2m->logdirty_ranges`, `p2m->global_logdirty` and `p2m->max_mapped_pfn`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecalcState {
    /// The rangeset: sorted, disjoint, non-adjacent ranges.
    ranges: Vec<GfnRange>,
    /// `global_logdirty` (never set in the model: global log-dirty is refused for a
    /// domain with a device, `paging_log_dirty_enable`; kept for `p2m_is_logdirty_range`).
    pub global_logdirty: bool,
    /// `max_mapped_pfn`: the highest gfn any successful `set_entry` has written with a
    /// type other than `p2m_invalid` (0 before the first).
    pub max_mapped_pfn: u64,
    /// Some entry has carried a recalc mark (lets the CPU view skip looking for marks
    /// in a p2m that never had one).
    pub marks_set: bool,
    /// The range `hap_track_dirty_vram` tracks (`d->arch.hvm.dirty_vram`, a domain field
    /// kept here beside the p2m state it drives).
    pub dirty_vram: Option<GfnRange>,
}

impl RecalcState {
    /// The rangeset's ranges, in order.
    pub fn ranges(&self) -> &[GfnRange] {
        &self.ranges
    }

    /// `rangeset_add_range(logdirty_ranges, first, last)` (inclusive bounds). An inverted
    /// range (`first > last`: 4.6 passes one when the whole range lies past
    /// `max_mapped_pfn`) adds nothing here; Xen only asserts against it.
    pub fn add_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let mut r = GfnRange {
            start: first,
            end: last.saturating_add(1),
        };
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &x in &self.ranges {
            if x.end < r.start || x.start > r.end {
                out.push(x);
            } else {
                r.start = r.start.min(x.start);
                r.end = r.end.max(x.end);
            }
        }
        out.push(r);
        out.sort_by_key(|x| x.start);
        self.ranges = out;
    }

    /// `rangeset_remove_range(logdirty_ranges, first, last)` (inclusive bounds; an
    /// inverted range removes nothing).
    pub fn remove_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let cut = GfnRange {
            start: first,
            end: last.saturating_add(1),
        };
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &x in &self.ranges {
            if x.intersect(&cut).is_none() {
                out.push(x);
                continue;
            }
            if x.start < cut.start {
                out.push(GfnRange {
                    start: x.start,
                    end: cut.start,
                });
            }
            if x.end > cut.end {
                out.push(GfnRange {
                    start: cut.end,
                    end: x.end,
                });
            }
        }
        self.ranges = out;
    }

    /// `p2m_is_logdirty_range(p2m, start, end)` (inclusive bounds): global log-dirty or a
    /// range holding all of it → `All`; one overlapping it → `Partial`; else `None`.
    pub fn is_logdirty_range(&self, start: u64, end: u64) -> LogdirtyOverlap {
        if self.global_logdirty {
            return LogdirtyOverlap::All;
        }
        let q = GfnRange {
            start,
            end: end.saturating_add(1),
        };
        let mut any = false;
        for x in &self.ranges {
            if x.start <= q.start && q.end <= x.end {
                return LogdirtyOverlap::All;
            }
            any |= x.intersect(&q).is_some();
        }
        if any {
            LogdirtyOverlap::Partial
        } else {
            LogdirtyOverlap::None
        }
    }

    /// `r` cut where the log-dirty rangeset starts or ends, each piece with whether the
    /// rangeset (or global log-dirty) holds it. Cost: the ranges that meet `r`.
    pub fn logdirty_pieces(&self, r: GfnRange) -> Vec<(GfnRange, bool)> {
        if r.is_empty() {
            return Vec::new();
        }
        if self.global_logdirty {
            return vec![(r, true)];
        }
        let mut out = Vec::new();
        let mut cur = r.start;
        let first = self.ranges.partition_point(|x| x.end <= r.start);
        for x in self.ranges[first..].iter().take_while(|x| x.start < r.end) {
            if x.start > cur {
                out.push((
                    GfnRange {
                        start: cur,
                        end: x.start,
                    },
                    false,
                ));
                cur = x.start;
            }
            let end = x.end.min(r.end);
            out.push((GfnRange { start: cur, end }, true));
            cur = end;
        }
        if cur < r.end {
            out.push((
                GfnRange {
                    start: cur,
                    end: r.end,
                },
                false,
            ));
        }
        out
    }

    /// The `max_mapped_pfn` update at the end of a successful `set_entry` of `2^order`
    /// pages at `gfn` with a type other than `p2m_invalid`.
    pub fn note_mapped(&mut self, gfn: u64, order: u32) {
        let last = gfn + (1u64 << order) - 1;
        self.max_mapped_pfn = self.max_mapped_pfn.max(last);
    }
}

/// What `hap_track_dirty_vram` does to the p2m for one call (`hap.c`, the same decision on
/// both lines; each line carries it out with its own `p2m_change_type_range` and
/// `p2m_change_type_one`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VramStep {
    /// A new range: the old one (if any) `ram_logdirty` → `ram_rw`, then the new one
    /// `ram_rw` → `ram_logdirty`, by range type changes.
    Move {
        /// The range tracked until now.
        old: Option<GfnRange>,
        /// The range tracked from now on.
        new: GfnRange,
    },
    /// The same range again: each gfn `ram_rw` → `ram_logdirty` by `p2m_change_type_one`
    /// (`p2m_log_dirty_range`), failures ignored.
    Rearm(GfnRange),
    /// `nr` = 0: the tracked range back to `ram_rw`, tracking ends.
    Stop(GfnRange),
    /// `nr` = 0 with nothing tracked.
    Nothing,
}

/// The decision of `hap_track_dirty_vram(d, begin_pfn, nr)` given the tracked range
/// (`d->arch.hvm.dirty_vram`, updated here).
pub fn hap_track_dirty_vram_step(st: &mut RecalcState, begin_pfn: u64, nr: u64) -> VramStep {
    let tracked = st.dirty_vram.filter(|r| !r.is_empty());
    if nr == 0 {
        st.dirty_vram = None;
        return tracked.map_or(VramStep::Nothing, VramStep::Stop);
    }
    let new = GfnRange {
        start: begin_pfn,
        end: begin_pfn.saturating_add(nr),
    };
    if tracked == Some(new) {
        return VramStep::Rearm(new);
    }
    st.dirty_vram = Some(new);
    VramStep::Move { old: tracked, new }
}

/// The loop of `ept_change_entry_type_range` / `p2m_pt_change_entry_type_range` (the
/// same in both files and on both lines): covers `first..=last` (inclusive) with pieces
/// that each lie in one table, the unaligned head and tail at the lowest level (1 = 4 KiB
/// entries) that fits them, working in from both ends one level at a time up to 4;
/// `mark(level, first, last)` marks one piece, and its first error stops the loop. A
/// range of the whole 2^36-page space marks nothing (the levels run out first), as in Xen.
pub fn for_each_range_piece<E>(
    first_gfn: u64,
    last_gfn: u64,
    mut mark: impl FnMut(u8, u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    let (mut first, mut last) = (first_gfn, last_gfn);
    let mut mask: u64 = 511;
    let mut level = 1u8;
    while level <= 4 {
        if first & mask != 0 {
            let end = (first | mask).min(last);
            mark(level, first, end)?;
            if end >= last {
                break;
            }
            first = end + 1;
        } else if last & mask != mask {
            let start = first.max(last & !mask);
            mark(level, start, last)?;
            if start <= first {
                break;
            }
            last = start - 1;
        } else {
            level += 1;
            mask |= mask << 9;
        }
    }
    Ok(())
}

/// The CPU view of a p2m with recalc marks: what `get_entry` reports, without writing,
/// for a gfn whose walk meets a mark (`marked`: those gfns, sorted and disjoint) —
/// `recalc(stored type, gfn is log-dirty)` — merged back into canonical extents. Cost:
/// the extents, marked ranges and rangeset ranges that meet, never the pages.
pub fn overlay_recalc(
    extents: Vec<CpuExtent>,
    marked: &[GfnRange],
    st: &RecalcState,
    recalc: &dyn Fn(P2mType, bool) -> P2mType,
) -> Vec<CpuExtent> {
    if marked.is_empty() {
        return extents;
    }
    let piece = |e: &CpuExtent, r: GfnRange, p2mt: P2mType| CpuExtent {
        range: r,
        mfn: if e.mfn == INVALID_MFN {
            INVALID_MFN
        } else {
            crate::types::Mfn(e.mfn.0 + (r.start - e.range.start))
        },
        p2mt,
        access: e.access,
    };
    let mut out = Vec::with_capacity(extents.len());
    let mut j = 0;
    for e in extents {
        while j < marked.len() && marked[j].end <= e.range.start {
            j += 1;
        }
        let mut cur = e.range.start;
        for m in marked[j..].iter().take_while(|m| m.start < e.range.end) {
            let Some(hit) = m.intersect(&e.range) else {
                continue;
            };
            let before = GfnRange {
                start: cur,
                end: hit.start,
            };
            if !before.is_empty() {
                push_cpu_extent(&mut out, piece(&e, before, e.p2mt));
            }
            for (r, ld) in st.logdirty_pieces(hit) {
                push_cpu_extent(&mut out, piece(&e, r, recalc(e.p2mt, ld)));
            }
            cur = hit.end;
        }
        let rest = GfnRange {
            start: cur,
            end: e.range.end,
        };
        if !rest.is_empty() {
            push_cpu_extent(&mut out, piece(&e, rest, e.p2mt));
        }
    }
    out
}

/// Adds `r` to the sorted, disjoint list `out`, merging it with the last range when they
/// touch (callers add in ascending order).
pub fn push_marked(out: &mut Vec<GfnRange>, r: GfnRange) {
    if r.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.end == r.start {
            last.end = r.end;
            return;
        }
    }
    out.push(r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rangeset_add_remove_and_overlap() {
        let mut s = RecalcState::default();
        s.add_range(10, 19);
        s.add_range(20, 29);
        assert_eq!(s.ranges(), &[GfnRange { start: 10, end: 30 }]);
        assert_eq!(s.is_logdirty_range(12, 29), LogdirtyOverlap::All);
        assert_eq!(s.is_logdirty_range(0, 10), LogdirtyOverlap::Partial);
        assert_eq!(s.is_logdirty_range(30, 40), LogdirtyOverlap::None);
        s.remove_range(15, 16);
        assert_eq!(
            s.ranges(),
            &[
                GfnRange { start: 10, end: 15 },
                GfnRange { start: 17, end: 30 }
            ]
        );
        assert_eq!(s.is_logdirty_range(14, 17), LogdirtyOverlap::Partial);
        s.remove_range(0, 100);
        assert!(s.ranges().is_empty());
        s.note_mapped(0x200, 9);
        assert_eq!(s.max_mapped_pfn, 0x3ff);
    }
}

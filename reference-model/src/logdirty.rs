//! Log-dirty VRAM tracking as the reference sees it: `track_dirty_vram`
//! (`hap_track_dirty_vram` and `p2m_change_type_range`) and a vCPU's own access
//! (`guest_access`), written from Xen's callers (master `hap.c:54-163`, `p2m.c:845-972`;
//! 4.6 `hap.c:68-178`, `p2m.c:840-896`) without `p2m-core`'s model.
//!
//! Xen changes types lazily: the range op marks entries and each is rewritten when it is
//! next touched, from the log-dirty rangeset *at that time*. The reference applies the
//! change at once, from the rangeset after the op: each page under a changeable type
//! (`ram_rw`, `ram_logdirty`) in the marked range becomes `ram_logdirty` when the rangeset
//! holds it, else `ram_rw`. Lazy and eager agree whenever the rangeset never changes for a
//! page without the page being marked again — every rangeset change marks its range,
//! except two, where the reference says it cannot tell (`Extent::either`):
//! - master marks nothing for a one-page range (`change_type_range` marks only when
//!   `invalidate_start < invalidate_end`) but still changes the rangeset: a page a
//!   previous range op marked may still hold its mark (and will read the new membership)
//!   or may have been resolved already (keeping the old one);
//! - EPT never marks a page that is not present (a changeable type with access `n`, or
//!   `ram_logdirty` with access `w`), yet `ept_get_entry` reads it through a marked table
//!   entry above it as recalculated until `resolve_misconfig` pushes the mark past it.
//!   Only the CPU view is ambiguous there: `resolve_misconfig` recalculates present
//!   entries only, so such an entry keeps the r/w bits it was written with, and a device
//!   reads them (unless an earlier mark may still be pending on the page: it was present
//!   then, and may still resolve to the other type).
//!
//! A page that may read either type ends with one type after `p2m_change_type_one` (a
//! re-arm, a vCPU's write), but not necessarily without its mark: Xen writes nothing when
//! the page already reads the new type, and only a write's `resolve_misconfig` takes a
//! mark off. Such a page keeps `maybe_pending`, and so does a page whose type the
//! reference takes from the model after an op only the model can decide
//! (`RefModel::resync`). An EPT page that is not present keeps `either` through that
//! resync: the model read it through a mark the next `resolve_misconfig` above it undoes.
//!
//! Then the rules:
//! - `track_dirty_vram gfn nr` (HAP only; shadow mode tracks in shadow entries and leaves
//!   the p2m alone): a new range moves tracking — the old range `ram_logdirty` →
//!   `ram_rw`, then the new one `ram_rw` → `ram_logdirty`; the same range again re-arms
//!   it page by page (every `ram_rw` page in it becomes `ram_logdirty`); `nr` 0 stops
//!   tracking (the old range back to `ram_rw`).
//! - A range change is cut at `max_mapped_pfn`, the highest gfn ever written with a type
//!   other than `invalid`. Master: nothing at all when the range starts past it; marks
//!   only a range of two pages or more; the rangeset gains/loses the cut range. 4.6: from
//!   gfn 0 past `max_mapped_pfn` every page is marked; otherwise the cut range is; the
//!   rangeset gains/loses the cut range (nothing when it is empty).
//! - `guest_access gfn write` (HAP only): a write to a `ram_logdirty` page whose access
//!   allows writing (always on NPT, whose p2m keeps no access) makes it `ram_rw` with
//!   access `rwx` (`hvm_hap_nested_page_fault`'s
//!   log-dirty arm, `p2m_change_type_one`); a write the access forbids goes to the access
//!   checks and changes nothing; a read changes nothing.

use p2m_core::{GfnRange, Mfn, Mode, P2mAccess, P2mType};

use crate::model::{Extent, RefModel};
use crate::permissions::IommuPolicy;

/// The rangeset (inclusive bounds, sorted, disjoint), `max_mapped_pfn` and the tracked
/// VRAM range `[begin, end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogDirty {
    ranges: Vec<(u64, u64)>,
    max_mapped: u64,
    vram: Option<(u64, u64)>,
}

impl LogDirty {
    /// A write of `range` with type `t`: `max_mapped_pfn` follows every non-`invalid` one.
    pub(crate) fn note_written(&mut self, range: GfnRange, t: P2mType) {
        if t != P2mType::Invalid && !range.is_empty() {
            self.max_mapped = self.max_mapped.max(range.end - 1);
        }
    }

    /// Whether the rangeset holds `gfn`.
    fn holds(&self, gfn: u64) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= gfn && gfn <= b)
    }

    /// Adds `[a, b]` (nothing when inverted).
    fn add(&mut self, a: u64, b: u64) {
        if a > b {
            return;
        }
        let (mut lo, mut hi) = (a, b);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(x, y) in &self.ranges {
            if y.saturating_add(1) < lo || x > hi.saturating_add(1) {
                out.push((x, y));
            } else {
                lo = lo.min(x);
                hi = hi.max(y);
            }
        }
        out.push((lo, hi));
        out.sort_unstable();
        self.ranges = out;
    }

    /// Removes `[a, b]` (nothing when inverted).
    fn remove(&mut self, a: u64, b: u64) {
        if a > b {
            return;
        }
        let mut out = Vec::new();
        for &(x, y) in &self.ranges {
            if y < a || x > b {
                out.push((x, y));
                continue;
            }
            if x < a {
                out.push((x, a - 1));
            }
            if y > b {
                out.push((b + 1, y));
            }
        }
        self.ranges = out;
    }

    /// The gfns in `r` where the rangeset's membership changes, with `r`'s bounds.
    fn cuts(&self, r: GfnRange) -> Vec<u64> {
        let mut c: Vec<u64> = self
            .ranges
            .iter()
            .flat_map(|&(a, b)| [a, b.saturating_add(1)])
            .filter(|&x| x > r.start && x < r.end)
            .collect();
        c.push(r.start);
        c.push(r.end);
        c.sort_unstable();
        c.dedup();
        c
    }
}

/// Whether a range type change rewrites type `t` (`p2m_is_changeable`; master's
/// `ioreq_server` keeps its type while a server is mapped, which it always is here).
pub(crate) fn changeable(t: P2mType) -> bool {
    matches!(t, P2mType::RamRw | P2mType::RamLogdirty)
}

/// Whether an EPT entry of type `t` with access `a` is present (some of r/w/x left after
/// the type's and the access's restrictions).
fn ept_present(t: P2mType, a: P2mAccess) -> bool {
    use P2mAccess::*;
    match t {
        P2mType::RamRw => !matches!(a, N | N2rwx),
        _ => !matches!(a, N | N2rwx | W),
    }
}

impl RefModel {
    /// After an op took one of Xen's error paths (see [`RefModel::resync`]): like the
    /// p2m's content, `max_mapped_pfn` is what Xen's error path left — it counts every
    /// entry written before the failure, also one a rollback removed again (master's
    /// `XEN_DOMCTL_memory_mapping` unmaps what it mapped), which the content no longer
    /// shows. The harness hands over the model's value.
    pub fn resync_max_mapped(&mut self, max_mapped_pfn: u64) {
        self.logdirty.max_mapped = max_mapped_pfn;
    }

    /// `track_dirty_vram gfn nr` (see the module docs).
    pub(crate) fn track_dirty_vram(&mut self, gfn: u64, nr: u64) {
        if self.config().mode == Mode::Shadow {
            return;
        }
        let tracked = self.logdirty.vram;
        if nr > 0 {
            let new = (gfn, gfn + nr);
            let old = tracked.unwrap_or((0, 0));
            if old != new {
                self.logdirty.vram = Some(new);
                if old.1 > old.0 {
                    self.change_type_range(old.0, old.1, false);
                }
                self.change_type_range(new.0, new.1, true);
            } else {
                self.retype_all(
                    GfnRange {
                        start: new.0,
                        end: new.1,
                    },
                    |t| t == P2mType::RamRw,
                    P2mType::RamLogdirty,
                );
            }
        } else if let Some(old) = tracked {
            self.logdirty.vram = None;
            if old.1 > old.0 {
                self.change_type_range(old.0, old.1, false);
            }
        }
    }

    /// `p2m_change_type_range(start, end_exclusive)` from `ram_rw` to `ram_logdirty`
    /// (`to_logdirty`) or back, with each line's cut and marking rules.
    fn change_type_range(&mut self, start: u64, end_exclusive: u64, to_logdirty: bool) {
        let max = self.logdirty.max_mapped;
        let (marked, rs) = if self.policy() == IommuPolicy::Master {
            let end = (end_exclusive - 1).min(max);
            if start > end {
                return;
            }
            let marked = (start < end).then_some(GfnRange {
                start,
                end: end + 1,
            });
            if let Some(m) = marked {
                self.pt_set_recalc_range_splits(m, start == 0 && end == max);
            }
            // A global change marks everything, but only the cut range can change type.
            (marked, (start, end))
        } else {
            let end = end_exclusive.min(max + 1);
            let marked = (start < end).then_some(GfnRange { start, end });
            (marked, (start, end.wrapping_sub(1)))
        };
        if to_logdirty {
            self.logdirty.add(rs.0, rs.1);
        } else {
            self.logdirty.remove(rs.0, rs.1);
        }
        match marked {
            Some(r) => self.mark(r),
            None if rs.0 <= rs.1 => self.unmarked_change(GfnRange {
                start: rs.0,
                end: rs.1 + 1,
            }),
            None => {}
        }
    }

    /// Marks `range`: each changeable page takes the type the rangeset gives it; an EPT
    /// page that is not present is never marked and becomes [`Extent::either`].
    fn mark(&mut self, range: GfnRange) {
        let ept = self.config().mode == Mode::Ept;
        let ld = self.logdirty.clone();
        self.rewrite(range, &|e: &Extent, g: u64| {
            if !changeable(e.p2mt) {
                return None;
            }
            if ept && !ept_present(e.p2mt, e.access) {
                return Some(Extent { either: true, ..*e });
            }
            let t = if ld.holds(g) {
                P2mType::RamLogdirty
            } else {
                P2mType::RamRw
            };
            Some(Extent {
                p2mt: t,
                maybe_pending: true,
                either: false,
                ..*e
            })
        });
    }

    /// A rangeset change without marks over `range` (master's one-page range): a page
    /// that may still hold an earlier mark may read either type now.
    fn unmarked_change(&mut self, range: GfnRange) {
        self.rewrite(range, &|e: &Extent, _| {
            (changeable(e.p2mt) && e.maybe_pending).then_some(Extent { either: true, ..*e })
        });
    }

    /// Every page in `range` whose type `pick` accepts becomes `nt` with access `rwx`
    /// (`p2m_change_type_one` page by page; failures on other types ignored). Xen writes a
    /// page whose type it reads as the old one (master `p2m.c:833-837`), and the write's
    /// `resolve_misconfig` takes any pending mark off it (`p2m-ept.c:829`). A page that may
    /// read either type may also already read `nt`: then nothing is written and a mark it
    /// may hold stays pending (it ends `nt` either way, but keeps `maybe_pending`).
    fn retype_all(&mut self, range: GfnRange, pick: impl Fn(P2mType) -> bool, nt: P2mType) {
        self.rewrite(range, &|e: &Extent, _| {
            pick(e.p2mt).then_some(Extent {
                p2mt: nt,
                access: P2mAccess::Rwx,
                maybe_pending: e.either && e.maybe_pending,
                either: false,
                ..*e
            })
        });
    }

    /// Master p2m-pt: a range change that is not global (`p2m.c` `change_type_range`) goes
    /// through `p2m_pt_change_entry_type_range` (`p2m-pt.c:976-1011`), which marks the
    /// range's unaligned ends at level 1: `p2m_pt_set_recalc_range` walks there with
    /// `p2m_next_level` (`:332-349`), splitting the superpages on the way, so the 2 MiB
    /// regions holding those ends show their frames ([`Extent::hidden_frame`]).
    fn pt_set_recalc_range_splits(&mut self, marked: GfnRange, global: bool) {
        if self.config().mode != Mode::Npt || global {
            return;
        }
        let mut ends = Vec::new();
        if !marked.start.is_multiple_of(512) {
            ends.push(marked.start);
        }
        if !marked.end.is_multiple_of(512) {
            ends.push(marked.end - 1);
        }
        for g in ends {
            self.show_frames(GfnRange::of_order(g & !511, 9));
        }
    }

    /// After [`RefModel::resync`] over `range`, where the reference could not tell a
    /// page's type: an EPT page that is not present stays [`Extent::either`]. Xen never
    /// marks such an entry (`ept_invalidate_emt_subtree` and `resolve_misconfig`'s
    /// level-0 loop skip it, master `p2m-ept.c:389-391,661-662`), so the type the model
    /// read through a mark still pending above it is undone by the next
    /// `resolve_misconfig` on that walk: the read is one of the two, not the answer.
    pub(crate) fn keep_unmarked_either(&mut self, range: GfnRange) {
        if self.config().mode != Mode::Ept {
            return;
        }
        self.rewrite(range, &|e: &Extent, _| {
            (changeable(e.p2mt) && !ept_present(e.p2mt, e.access) && !e.either)
                .then_some(Extent { either: true, ..*e })
        });
    }

    /// `guest_access gfn write` (see the module docs).
    pub(crate) fn guest_access(&mut self, gfn: u64, write: bool) {
        if self.config().mode == Mode::Shadow || !write {
            return;
        }
        let Some((_, e)) = self.lookup(gfn) else {
            return;
        };
        // p2m-pt keeps no access (its `get_entry` reports `rwx`).
        let writes = self.config().mode != Mode::Ept
            || matches!(
                e.access,
                P2mAccess::W | P2mAccess::Wx | P2mAccess::Rw | P2mAccess::Rwx
            );
        if !writes {
            return;
        }
        let was_either = e.either && changeable(e.p2mt);
        let range = GfnRange::of_order(gfn, 0);
        if was_either {
            // ram_logdirty becomes ram_rw, ram_rw stays: ram_rw either way.
            self.retype_all(range, changeable, P2mType::RamRw);
        } else {
            self.retype_all(range, |t| t == P2mType::RamLogdirty, P2mType::RamRw);
        }
    }

    /// Applies `f(extent piece, its first gfn)` to the pieces of `range`, cut where the
    /// rangeset's membership changes; `None` keeps a piece as it is.
    fn rewrite(&mut self, range: GfnRange, f: &dyn Fn(&Extent, u64) -> Option<Extent>) {
        let cuts = self.logdirty.cuts(range);
        let pieces: Vec<(u64, Extent)> = self
            .extents_overlapping(range)
            .map(|(s, e)| (s, *e))
            .collect();
        let mut writes = Vec::new();
        for (s, e) in pieces {
            let lo = s.max(range.start);
            let hi = (s + e.len).min(range.end);
            let mut at = lo;
            for &c in cuts.iter().filter(|&&c| c > lo && c <= hi).chain([&hi]) {
                if c <= at {
                    continue;
                }
                let mut piece = e;
                piece.mfn = if e.mfn == p2m_core::INVALID_MFN {
                    e.mfn
                } else {
                    Mfn(e.mfn.0 + (at - s))
                };
                piece.len = c - at;
                if let Some(n) = f(&piece, at) {
                    writes.push((at, n));
                }
                at = c;
            }
        }
        for (at, n) in writes {
            self.put_extent(at, n);
        }
    }
}

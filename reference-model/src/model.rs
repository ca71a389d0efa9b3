//! The flat reference map: extents of `(mfn, type, access)` and the device view they give.

use std::collections::BTreeMap;

use p2m_core::{
    in_mmio_ro_ranges, Config, GfnRange, IommuPerm, Mfn, P2mAccess, P2mError, P2mType, INVALID_MFN,
    MMIO_RO_FRAMES,
};

use crate::entry::{validate_for, writes_real_entry_for};
use crate::permissions::{
    column_for_policy, depends_on_frame, device_perm_at, Column, IommuPolicy,
};

/// A run of `len` guest frames with one type and access; frame `i` maps `mfn + i`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Extent {
    /// Number of frames (at least 1).
    pub len: u64,
    /// Frame of the first gfn; `INVALID_MFN` stays invalid for every frame.
    pub mfn: Mfn,
    /// p2m type of every frame.
    pub p2mt: P2mType,
    /// p2m access of every frame.
    pub access: P2mAccess,
    /// Master p2m-pt only: the frames sit in grant superpage entries, whose frame
    /// `p2m_pt_get_entry` does not report (it returns the frame of a superpage only for
    /// `p2m_is_valid` types, `p2m-pt.c:860-870`); a 4 KiB change inside splits the 2 MiB
    /// region it falls in down to 4 KiB entries, which report it.
    pub hidden_frame: bool,
    /// A range type change covered these frames (see [`crate::logdirty`]): Xen may not
    /// have resolved their mark yet.
    pub maybe_pending: bool,
    /// Xen's type here may be either `ram_rw` or `ram_logdirty` (which one depends on
    /// when Xen resolved a mark, a matter of table layout the flat reference does not
    /// keep; see [`crate::logdirty`]): the CPU view accepts both, the device may have
    /// what either grants and must have what both grant — unless no mark may still cover
    /// the page (`!maybe_pending`): then Xen never marked its entry and the device reads
    /// it as written.
    pub either: bool,
}

impl Extent {
    /// The frame `off` pages into the extent.
    fn mfn_at(&self, off: u64) -> Mfn {
        if self.mfn == INVALID_MFN {
            INVALID_MFN
        } else {
            self.mfn.plus(off)
        }
    }

    /// The tail of this extent starting `off` frames in.
    fn tail(&self, off: u64) -> Extent {
        Extent {
            len: self.len - off,
            mfn: self.mfn_at(off),
            ..*self
        }
    }
}

/// Whether `next`, placed right after `prev`, continues it: the same type, access and
/// flags, and the frame after `prev`'s last (or both without a frame).
fn continues(prev: &Extent, next: &Extent) -> bool {
    let frames = if prev.mfn == INVALID_MFN || next.mfn == INVALID_MFN {
        prev.mfn == next.mfn
    } else {
        prev.mfn.0.checked_add(prev.len) == Some(next.mfn.0)
    };
    frames
        && prev.p2mt == next.p2mt
        && prev.access == next.access
        && prev.hidden_frame == next.hidden_frame
        && prev.maybe_pending == next.maybe_pending
        && prev.either == next.either
}

/// A piece of the device view: every gfn in `range` maps linearly from `mfn` with `perm`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RefView {
    /// The gfns covered.
    pub range: GfnRange,
    /// Frame of `range.start` (`INVALID_MFN` when `perm` is none).
    pub mfn: Mfn,
    /// What a device may do.
    pub perm: IommuPerm,
}

impl RefView {
    /// Frame number at `gfn` (in `range`): `INVALID_MFN` stays invalid for every frame
    /// (an internal-API `mmio_direct` entry written with `INVALID_MFN` holds the same
    /// all-ones field on every page).
    pub fn frame_at(&self, gfn: u64) -> u64 {
        if self.mfn == INVALID_MFN {
            INVALID_MFN.0
        } else {
            self.mfn.0.wrapping_add(gfn - self.range.start)
        }
    }
}

/// Which end of an [`Extent::either`] page's device permission to take.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bound {
    /// What a device may have (the over-permission check).
    Most,
    /// What a device must have (the under-permission check).
    Least,
}

/// The reference p2m: a flat map of extents keyed by their first gfn, no tables, no caches.
#[derive(Clone, Debug)]
pub struct RefModel {
    config: Config,
    policy: IommuPolicy,
    column: Column,
    extents: BTreeMap<u64, Extent>,
    /// A device is assigned: until then (`pci=hotplug`) no device reaches anything.
    assigned: bool,
    /// Identity-mapped ranges `[base, end)` with their access and reference count
    /// (master `hd->arch.identity_maps`, 4.6 `hd->arch.mapped_rmrrs`).
    pub(crate) identity: Vec<(u64, u64, P2mAccess, u32)>,
    /// Log-dirty state: the rangeset, `max_mapped_pfn`, the tracked VRAM range.
    pub(crate) logdirty: crate::logdirty::LogDirty,
}

impl RefModel {
    /// An empty p2m for `config`, judged with the permission policy `policy`.
    pub fn new(config: Config, policy: IommuPolicy) -> Self {
        RefModel {
            config,
            policy,
            column: column_for_policy(&config, policy),
            extents: BTreeMap::new(),
            assigned: !config.pci_hotplug,
            identity: Vec::new(),
            logdirty: Default::default(),
        }
    }

    /// The device arrives (`assign_device`): from now on it may reach what the p2m grants.
    pub(crate) fn assign_device(&mut self) {
        self.assigned = true;
    }

    /// The configuration the model was built for.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The permission policy revision in use.
    pub fn policy(&self) -> IommuPolicy {
        self.policy
    }

    /// The permission column devices see through (see [`column_for`](crate::permissions::column_for)).
    pub fn column(&self) -> Column {
        self.column
    }

    /// Sets `2^order` frames from `gfn` to `(mfn + i, p2mt, access)`, or to empty when Xen
    /// would write an empty entry; on error nothing changes. O(log n + extents overlapped).
    pub fn set_entry(
        &mut self,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        access: P2mAccess,
    ) -> Result<(), P2mError> {
        validate_for(self.policy, self.config.mode, gfn, mfn, order, p2mt, access)?;
        let range = GfnRange::of_order(gfn, order);
        self.logdirty.note_written(range, p2mt);
        self.carve(range);
        if writes_real_entry_for(self.policy, self.config.mode, mfn, order, p2mt) {
            let hidden_frame = self.policy == IommuPolicy::Master
                && self.config.mode != p2m_core::Mode::Ept
                && order > 0
                && matches!(p2mt, P2mType::GrantMapRw | P2mType::GrantMapRo);
            self.insert_joined(
                gfn,
                Extent {
                    len: range.len(),
                    mfn,
                    p2mt,
                    access,
                    hidden_frame,
                    maybe_pending: false,
                    either: false,
                },
            );
        }
        Ok(())
    }

    /// Writes `range` as one run `mfn + i` of type `p2mt` and access `access`, as a
    /// caller's chunked `p2m_set_entry` of valid 4 KiB-aligned pieces leaves it (empty
    /// where Xen writes an empty entry). No argument checks: callers pass valid ones.
    pub(crate) fn write_run(
        &mut self,
        range: GfnRange,
        mfn: Mfn,
        p2mt: P2mType,
        access: P2mAccess,
    ) {
        self.write_run_pending(range, mfn, p2mt, access, false);
    }

    /// [`Self::write_run`], the written extent marked [`Extent::maybe_pending`] when
    /// `maybe_pending`.
    fn write_run_pending(
        &mut self,
        range: GfnRange,
        mfn: Mfn,
        p2mt: P2mType,
        access: P2mAccess,
        maybe_pending: bool,
    ) {
        self.logdirty.note_written(range, p2mt);
        self.carve(range);
        if writes_real_entry_for(self.policy, self.config.mode, mfn, 0, p2mt) {
            self.insert_joined(
                range.start,
                Extent {
                    len: range.len(),
                    mfn,
                    p2mt,
                    access,
                    hidden_frame: false,
                    maybe_pending,
                    either: false,
                },
            );
        }
    }

    /// Takes `extents` (covering `range`: frame of each start, type, access) as the
    /// content of `range` wherever they differ from the reference: after an op that took
    /// one of Xen's error paths (an allocation failure), what the p2m holds is Xen's
    /// result, and the IOMMU must agree with it. On EPT frame, type and access are
    /// compared. p2m-pt keeps no access (its `get_entry` reports `rwx`), so there the
    /// access comes from the reference: where frame and type agree with it the reference
    /// keeps its entry; where they agree with `before` (the reference before the op: the
    /// op did not get to that page) `before`'s entry comes back; elsewhere the p2m's entry
    /// is taken with `access_hint` (the access the op asked for) when given. Parts of
    /// `extents` outside `range` are ignored.
    pub fn resync(
        &mut self,
        range: GfnRange,
        extents: impl Iterator<Item = (GfnRange, Mfn, P2mType, P2mAccess)>,
        before: &RefModel,
        access_hint: Option<P2mAccess>,
    ) {
        let with_access = self.config.mode == p2m_core::Mode::Ept;
        // Where the reference could not tell the type before the op or after its own
        // reading of it (see `keep_unmarked_either`).
        let unsure: Vec<GfnRange> = [before, &*self]
            .iter()
            .flat_map(|m| {
                m.extents_overlapping(range)
                    .filter(|(_, e)| e.either)
                    .map(|(st, e)| GfnRange {
                        start: st.max(range.start),
                        end: (st + e.len).min(range.end),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let theirs: Vec<CpuRun> = extents
            .filter_map(|(r, m, t, a)| {
                r.intersect(&range)
                    .map(|c| (c, frame_at(r, m, c.start), t, a))
            })
            .collect();
        let same = |x: &CpuRun, y: &CpuRun, g: u64| {
            frame_at(x.0, x.1, g) == frame_at(y.0, y.1, g)
                && x.2 == y.2
                && (!with_access || x.3 == y.3)
        };
        // A page whose type a model cannot tell (`either`) agrees with the p2m's reading
        // of either type, same frame and (EPT) access: a mark pending above a page Xen
        // never marks gives ram_rw now and ram_logdirty once a walk resolves it.
        let either_now = spans_where(self, range, |e| e.either);
        let either_before = spans_where(before, range, |e| e.either);
        let either_agrees = |spans: &[GfnRange], x: &CpuRun, y: &CpuRun, g: u64| {
            spans.iter().any(|r| r.contains(g))
                && crate::logdirty::changeable(x.2)
                && crate::logdirty::changeable(y.2)
                && frame_at(x.0, x.1, g) == frame_at(y.0, y.1, g)
                && (!with_access || x.3 == y.3)
        };
        // Where `before` could not tell the type for sure (a mark may have been pending,
        // or either type), a p2m reading as before may be Xen's untouched entry even where
        // it also reads as the reference's own write.
        let unsure_before = spans_where(before, range, |e| e.either || e.maybe_pending);
        let mut writes = Vec::new();
        // Pieces the op did not get to in the p2m: `before`'s extents come back as they
        // were (flags included; a 4 KiB rewrite would not hold e.g. a PoD superpage's
        // frameless entry, and a page that was `either` stays so).
        let mut restores = Vec::new();
        // Pieces the p2m no longer reads as before (the op got there).
        let mut changed = Vec::new();
        for (piece, t, now) in cut(&theirs, &self.cpu_extents(range)) {
            let kept =
                same(&t, &now, piece.start) || either_agrees(&either_now, &t, &now, piece.start);
            let mine = (piece, frame_at(t.0, t.1, piece.start), t.2, t.3);
            for (sub, t, was) in cut(&[mine], &before.cpu_extents(piece)) {
                let as_before =
                    same(&t, &was, sub.start) || either_agrees(&either_before, &t, &was, sub.start);
                if !as_before {
                    changed.push(sub);
                }
                if as_before && (!kept || unsure_before.iter().any(|r| r.contains(sub.start))) {
                    restores.push(sub);
                } else if !kept {
                    let access = if with_access {
                        t.3
                    } else {
                        access_hint.unwrap_or(t.3)
                    };
                    writes.push((sub, frame_at(t.0, t.1, sub.start), t.2, access));
                }
            }
        }
        // The p2m's type is what Xen reads now; a range op's mark that may still be
        // pending on a page (`maybe_pending` before the op) may still be there: a
        // `p2m_change_type_one` that found the type already changed wrote nothing.
        for (piece, mfn, p2mt, access) in writes {
            let mut at = piece.start;
            let pending: Vec<(u64, u64)> = before
                .extents_overlapping(piece)
                .filter(|(_, e)| e.maybe_pending)
                .map(|(st, e)| (st.max(piece.start), (st + e.len).min(piece.end)))
                .collect();
            let put = |m: &mut Self, a: u64, b: u64, pend: bool| {
                if a < b {
                    let f = frame_at(piece, mfn, a);
                    m.write_run_pending(GfnRange { start: a, end: b }, f, p2mt, access, pend);
                }
            };
            for (a, b) in pending {
                put(self, at, a, false);
                put(self, a, b, true);
                at = b;
            }
            put(self, at, piece.end, false);
        }
        for r in restores {
            self.copy_from(before, r);
        }
        self.rehide_unsplit_regions(range, &changed, before);
        for r in unsure {
            self.keep_unmarked_either(r);
        }
    }

    /// Master p2m-pt, after [`Self::resync`]: the reference's own op showed the frames of
    /// every 2 MiB region its range meets ([`Self::carve`]), but in a region where the
    /// p2m still reads as `before` (no `changed` piece) the op failed before splitting the
    /// grant superpage there (the level-1 table is allocated right before the write,
    /// `p2m_next_level`), so the region reads as in `before` again, frames hidden.
    fn rehide_unsplit_regions(&mut self, range: GfnRange, changed: &[GfnRange], before: &RefModel) {
        if self.policy != IommuPolicy::Master || self.config.mode == p2m_core::Mode::Ept {
            return;
        }
        let mut region = range.start & !511;
        while region < range.end {
            let r = GfnRange {
                start: region,
                end: region + 512,
            };
            region += 512;
            let hidden = before.extents_overlapping(r).any(|(_, e)| e.hidden_frame);
            if hidden && !changed.iter().any(|c| c.intersect(&r).is_some()) {
                self.copy_from(before, r);
            }
        }
    }

    /// Makes `region` hold exactly `before`'s extents there, flags included (no frames
    /// shown: unlike [`Self::carve`] this is a restore, not a write).
    fn copy_from(&mut self, before: &RefModel, region: GfnRange) {
        for at in [region.start, region.end] {
            if let Some((&st, &e)) = self.extents.range(..at).next_back() {
                if st + e.len > at {
                    self.extents.insert(st, Extent { len: at - st, ..e });
                    self.extents.insert(at, e.tail(at - st));
                }
            }
        }
        let inside: Vec<u64> = self
            .extents
            .range(region.start..region.end)
            .map(|(&st, _)| st)
            .collect();
        for st in inside {
            self.extents.remove(&st);
        }
        let parts: Vec<(u64, Extent)> = before
            .extents_overlapping(region)
            .map(|(st, e)| {
                let lo = st.max(region.start);
                let mut part = e.tail(lo - st);
                part.len = (st + e.len).min(region.end) - lo;
                (lo, part)
            })
            .collect();
        for (lo, part) in parts {
            self.insert_joined(lo, part);
        }
    }

    /// Removes every mapping in `range`, splitting extents that straddle its ends. The
    /// part of a [`Extent::hidden_frame`] extent in a 2 MiB region the range meets stops
    /// being hidden (Xen split that superpage down to 4 KiB entries).
    pub(crate) fn carve(&mut self, range: GfnRange) {
        let mut pieces: Vec<(u64, Extent)> = Vec::new();
        // An extent starting before the range and reaching into it.
        if let Some((&start, &ext)) = self.extents.range(..range.start).next_back() {
            let end = start + ext.len;
            if end > range.start {
                self.extents.remove(&start);
                pieces.push((
                    start,
                    Extent {
                        len: range.start - start,
                        ..ext
                    },
                ));
                if end > range.end {
                    pieces.push((range.end, ext.tail(range.end - start)));
                }
            }
        }
        // Extents starting inside the range.
        let inside: Vec<u64> = self
            .extents
            .range(range.start..range.end)
            .map(|(&s, _)| s)
            .collect();
        for start in inside {
            let ext = self.extents.remove(&start).expect("present");
            let end = start + ext.len;
            if end > range.end {
                pieces.push((range.end, ext.tail(range.end - start)));
            }
        }
        let (lo, hi) = (range.start & !511, range.end.next_multiple_of(512));
        for (start, ext) in pieces {
            let end = start + ext.len;
            if !ext.hidden_frame || end <= lo || start >= hi {
                self.extents.insert(start, ext);
                continue;
            }
            // Split at the 2 MiB bounds of the touched regions; the part inside shows.
            let cuts = [start, lo.max(start), hi.min(end), end];
            for w in cuts.windows(2) {
                if w[0] < w[1] {
                    let mut e = ext.tail(w[0] - start);
                    e.len = w[1] - w[0];
                    e.hidden_frame = !(lo..hi).contains(&w[0]);
                    self.extents.insert(w[0], e);
                }
            }
        }
    }

    /// The [`Extent::hidden_frame`] pages of `region` (one 2 MiB region) show their
    /// frames: Xen split the superpage there down to 4 KiB entries.
    pub(crate) fn show_frames(&mut self, region: GfnRange) {
        let hidden: Vec<(u64, Extent)> = self
            .extents_overlapping(region)
            .filter(|(_, e)| e.hidden_frame)
            .map(|(st, e)| (st, *e))
            .collect();
        for (st, e) in hidden {
            let lo = st.max(region.start);
            let mut part = e.tail(lo - st);
            part.len = (st + e.len).min(region.end) - lo;
            part.hidden_frame = false;
            self.put_extent(lo, part);
        }
    }

    /// Stores `ext` at `start` in place of whatever covered its frames.
    pub(crate) fn put_extent(&mut self, start: u64, ext: Extent) {
        self.carve(GfnRange {
            start,
            end: start + ext.len,
        });
        self.insert_joined(start, ext);
    }

    /// Stores `ext` at `start` (its frames are free) and joins it with the extents right
    /// before and after it when the three continue one another (same type, access and
    /// flags, frames advancing by one): the map stays one extent per uniform run however
    /// many ops wrote it, so its cost follows the runs, not the pages.
    fn insert_joined(&mut self, mut start: u64, mut ext: Extent) {
        if let Some((&ps, &prev)) = self.extents.range(..start).next_back() {
            if ps + prev.len == start && continues(&prev, &ext) {
                self.extents.remove(&ps);
                ext = Extent {
                    len: prev.len + ext.len,
                    ..prev
                };
                start = ps;
            }
        }
        let end = start + ext.len;
        if let Some(next) = self.extents.get(&end).copied() {
            if continues(&ext, &next) {
                self.extents.remove(&end);
                ext.len += next.len;
            }
        }
        self.extents.insert(start, ext);
    }

    /// The extent holding `gfn`, with the offset of `gfn` in it.
    pub(crate) fn lookup(&self, gfn: u64) -> Option<(u64, &Extent)> {
        let (&start, ext) = self.extents.range(..=gfn).next_back()?;
        (gfn - start < ext.len).then_some((gfn - start, ext))
    }

    /// Whether Xen's `get_entry` hides the frame at `gfn` (see [`Extent::hidden_frame`]).
    pub fn frame_hidden(&self, gfn: u64) -> bool {
        self.lookup(gfn).is_some_and(|(_, e)| e.hidden_frame)
    }

    /// The CPU view of `gfn`: `(mfn, type, access)`; unmapped or empty gives
    /// `(INVALID_MFN, invalid, rwx)`.
    pub fn get_entry(&self, gfn: u64) -> (Mfn, P2mType, P2mAccess) {
        match self.lookup(gfn) {
            Some((off, ext)) => (ext.mfn_at(off), ext.p2mt, ext.access),
            None => (INVALID_MFN, P2mType::Invalid, P2mAccess::Rwx),
        }
    }

    /// What a device may do through an entry of this type and access, in this configuration
    /// (for a frame outside `mmio_ro_ranges`).
    pub fn perm_of(&self, p2mt: P2mType, access: P2mAccess) -> IommuPerm {
        device_perm_at(self.column, self.policy, p2mt, access, false)
    }

    /// [`Self::perm_of`] for the page whose frame is `mfn`. On the master line an entry
    /// without a frame (`INVALID_MFN`, e.g. `mmio_direct`, which p2m-pt accepts without
    /// one) gives a device nothing to reach.
    pub fn perm_at(&self, p2mt: P2mType, access: P2mAccess, mfn: Mfn) -> IommuPerm {
        if self.policy == IommuPolicy::Master && mfn == INVALID_MFN {
            return IommuPerm::NONE;
        }
        device_perm_at(
            self.column,
            self.policy,
            p2mt,
            access,
            in_mmio_ro_ranges(mfn),
        )
    }

    /// What a device may do through the extent `ext` at frame `mfn`: [`Self::perm_at`],
    /// or for an [`Extent::either`] extent that may still hold a mark what `ram_rw` or
    /// `ram_logdirty` grants ([`Bound::Most`]) or what both grant ([`Bound::Least`]).
    fn ext_perm(&self, ext: &Extent, mfn: Mfn, bound: Bound) -> IommuPerm {
        let p = self.perm_at(ext.p2mt, ext.access, mfn);
        // Models EPT marking and recalculating only present entries: an `either` page no
        // mark may still cover was not present when marked, so its own r/w bits stay as
        // written, and only `ept_get_entry` reads its type through a mark above it.
        if !ext.either || !ext.maybe_pending {
            return p;
        }
        let q = self.perm_at(P2mType::RamRw, ext.access, mfn);
        let r = self.perm_at(P2mType::RamLogdirty, ext.access, mfn);
        match bound {
            Bound::Most => IommuPerm {
                read: p.read || q.read || r.read,
                write: p.write || q.write || r.write,
            },
            Bound::Least => p.and(q).and(r),
        }
    }

    /// Whether Xen's type at `gfn` may be either `ram_rw` or `ram_logdirty` (see
    /// [`Extent::either`]): the CPU view accepts both there.
    pub fn type_either(&self, gfn: u64) -> bool {
        self.lookup(gfn).is_some_and(|(_, e)| e.either)
    }

    /// Whether some page of `range` is [`Extent::either`].
    pub fn type_either_in(&self, range: GfnRange) -> bool {
        self.extents_overlapping(range).any(|(_, e)| e.either)
    }

    /// Splits `clip` (frames from `mfn`) where a page's permission may change: at the
    /// bounds of `mmio_ro_ranges`, when the type's permission depends on the frame.
    fn frame_pieces(&self, p2mt: P2mType, clip: GfnRange, mfn: Mfn) -> Vec<(GfnRange, Mfn)> {
        if !depends_on_frame(self.policy, p2mt) || mfn == INVALID_MFN {
            return vec![(clip, mfn)];
        }
        let mut out = Vec::new();
        let mut at = clip.start;
        while at < clip.end {
            let m = mfn.0 + (at - clip.start);
            let next_bound = [MMIO_RO_FRAMES.start, MMIO_RO_FRAMES.end]
                .into_iter()
                .filter(|&b| b > m)
                .min()
                .map_or(clip.end, |b| (at + (b - m)).min(clip.end));
            out.push((
                GfnRange {
                    start: at,
                    end: next_bound,
                },
                Mfn(m),
            ));
            at = next_bound;
        }
        out
    }

    /// The device view of `gfn`: `(mfn, perm)`, `(INVALID_MFN, none)` when nothing is granted
    /// (the most a device may have, as in [`Self::device_extents`]).
    pub fn device_entry(&self, gfn: u64) -> (Mfn, IommuPerm) {
        match self.lookup(gfn).filter(|_| self.assigned) {
            Some((off, ext)) => {
                let perm = self.ext_perm(ext, ext.mfn_at(off), Bound::Most);
                if perm.is_none() {
                    (INVALID_MFN, IommuPerm::NONE)
                } else {
                    (ext.mfn_at(off), perm)
                }
            }
            None => (INVALID_MFN, IommuPerm::NONE),
        }
    }

    /// The device view of `range`, in order, covering all of it; gaps and entries granting
    /// nothing appear as `(INVALID_MFN, none)`. Neighbours that continue each other linearly
    /// with the same permission are merged. This is the most a device may have: see
    /// [`Self::device_extents_required`] for the least it must have.
    pub fn device_extents(&self, range: GfnRange) -> Vec<RefView> {
        self.device_view(range, Bound::Most)
    }

    /// [`Self::device_extents`] as the least a device must have: on an [`Extent::either`]
    /// page that may still hold a mark, what both `ram_rw` and `ram_logdirty` grant (Xen
    /// may have resolved the mark before the page stopped being present, or not yet).
    pub fn device_extents_required(&self, range: GfnRange) -> Vec<RefView> {
        self.device_view(range, Bound::Least)
    }

    /// [`Self::device_extents`] with the [`Extent::either`] pages at `bound`.
    fn device_view(&self, range: GfnRange, bound: Bound) -> Vec<RefView> {
        let mut out: Vec<RefView> = Vec::new();
        let mut push = |v: RefView| {
            if let Some(last) = out.last_mut() {
                let same_mfn = if v.perm.is_none() {
                    true
                } else {
                    last.mfn != INVALID_MFN && last.mfn.plus(last.range.len()) == v.mfn
                };
                if last.range.end == v.range.start && last.perm == v.perm && same_mfn {
                    last.range.end = v.range.end;
                    return;
                }
            }
            out.push(v);
        };
        if range.is_empty() {
            return Vec::new();
        }
        if !self.assigned {
            return vec![RefView {
                range,
                mfn: INVALID_MFN,
                perm: IommuPerm::NONE,
            }];
        }
        let mut cursor = range.start;
        for (start, ext) in self.extents_overlapping(range) {
            let ext_range = GfnRange {
                start,
                end: start + ext.len,
            };
            let Some(clip) = ext_range.intersect(&range) else {
                continue;
            };
            if clip.start > cursor {
                push(RefView {
                    range: GfnRange {
                        start: cursor,
                        end: clip.start,
                    },
                    mfn: INVALID_MFN,
                    perm: IommuPerm::NONE,
                });
            }
            for (piece, first) in self.frame_pieces(ext.p2mt, clip, ext.mfn_at(clip.start - start))
            {
                let perm = self.ext_perm(ext, first, bound);
                let mfn = if perm.is_none() { INVALID_MFN } else { first };
                push(RefView {
                    range: piece,
                    mfn,
                    perm,
                });
            }
            cursor = clip.end;
        }
        if cursor < range.end {
            push(RefView {
                range: GfnRange {
                    start: cursor,
                    end: range.end,
                },
                mfn: INVALID_MFN,
                perm: IommuPerm::NONE,
            });
        }
        out
    }

    /// The CPU view of `range`, in order, covering all of it: `(gfns, frame of the first,
    /// type, access)`; gaps read as `(INVALID_MFN, invalid, rwx)` like [`Self::get_entry`].
    /// O(log n + extents overlapped).
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<(GfnRange, Mfn, P2mType, P2mAccess)> {
        let mut out = Vec::new();
        if range.is_empty() {
            return out;
        }
        let mut cursor = range.start;
        let gap = |a: u64, b: u64| {
            (
                GfnRange { start: a, end: b },
                INVALID_MFN,
                P2mType::Invalid,
                P2mAccess::Rwx,
            )
        };
        for (start, ext) in self.extents_overlapping(range) {
            let ext_range = GfnRange {
                start,
                end: start + ext.len,
            };
            let Some(clip) = ext_range.intersect(&range) else {
                continue;
            };
            if clip.start > cursor {
                out.push(gap(cursor, clip.start));
            }
            out.push((clip, ext.mfn_at(clip.start - start), ext.p2mt, ext.access));
            cursor = clip.end;
        }
        if cursor < range.end {
            out.push(gap(cursor, range.end));
        }
        out
    }

    /// Number of stored (non-empty) extents.
    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// The stored extents in gfn order, as `(first gfn, extent)`.
    pub fn extents(&self) -> impl Iterator<Item = (u64, &Extent)> + '_ {
        self.extents.iter().map(|(&s, e)| (s, e))
    }

    /// The stored extents that overlap `range`, in gfn order: O(log n + extents overlapped).
    pub fn extents_overlapping(
        &self,
        range: GfnRange,
    ) -> impl Iterator<Item = (u64, &Extent)> + '_ {
        let first = self
            .extents
            .range(..range.start)
            .next_back()
            .filter(|(&s, e)| s + e.len > range.start);
        first
            .into_iter()
            .chain(self.extents.range(range.start..range.end.max(range.start)))
            .map(|(&s, e)| (s, e))
    }
}

/// One run of a CPU view: the gfns, the frame of the first, type and access.
type CpuRun = (GfnRange, Mfn, P2mType, P2mAccess);

/// The extents of `m` meeting `range` that `pick` accepts, whole.
fn spans_where(m: &RefModel, range: GfnRange, pick: impl Fn(&Extent) -> bool) -> Vec<GfnRange> {
    m.extents_overlapping(range)
        .filter(|(_, e)| pick(e))
        .map(|(st, e)| GfnRange {
            start: st,
            end: st + e.len,
        })
        .collect()
}

/// The frame at `g` of a run starting at `r.start` with frame `m`.
fn frame_at(r: GfnRange, m: Mfn, g: u64) -> Mfn {
    if m == INVALID_MFN {
        m
    } else {
        m.plus(g - r.start)
    }
}

/// The overlaps of two sorted, disjoint run lists: `(piece, run of a, run of b)` for each
/// piece both cover, in order (one merge walk).
fn cut(a: &[CpuRun], b: &[CpuRun]) -> Vec<(GfnRange, CpuRun, CpuRun)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        if let Some(piece) = a[i].0.intersect(&b[j].0) {
            out.push((piece, a[i], b[j]));
        }
        if a[i].0.end <= b[j].0.end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::writes_real_entry;
    use p2m_core::{Mode, Vendor, MAX_PAGE};

    const RWX: P2mAccess = P2mAccess::Rwx;

    fn cfg(mode: Mode, share: bool) -> Config {
        Config::new(
            mode,
            if mode == Mode::Npt {
                Vendor::Amd
            } else {
                Vendor::Vtd
            },
            share,
        )
    }

    fn model(mode: Mode, share: bool) -> RefModel {
        RefModel::new(cfg(mode, share), IommuPolicy::Xen46)
    }

    fn view(start: u64, end: u64, mfn: Mfn, perm: IommuPerm) -> RefView {
        RefView {
            range: GfnRange { start, end },
            mfn,
            perm,
        }
    }

    #[test]
    fn errors_change_nothing() {
        let mut m = model(Mode::Ept, false);
        m.set_entry(0, Mfn(0), 18, P2mType::RamRw, RWX).unwrap();
        assert_eq!(
            m.set_entry(0x200, INVALID_MFN, 9, P2mType::Invalid, RWX),
            Err(P2mError::Misaligned)
        );
        assert_eq!(
            m.set_entry(0, Mfn(0), 3, P2mType::Invalid, RWX),
            Err(P2mError::BadOrder)
        );
        assert_eq!(
            m.set_entry(1 << 36, Mfn(0), 0, P2mType::RamRw, RWX),
            Err(P2mError::GfnOutOfRange)
        );
        assert_eq!(m.extent_count(), 1);
        assert_eq!(m.get_entry(0x201).0, Mfn(0x201));
    }

    #[test]
    fn overwrite_splits_1g_4k_2m() {
        let mut m = model(Mode::Ept, false);
        let base = 1u64 << 18; // gfn 0x40000
        let mbase = 3u64 << 18;
        m.set_entry(base, Mfn(mbase), 18, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(m.extent_count(), 1);
        // 4 KiB read-only page inside.
        m.set_entry(base + 0x1234, Mfn(7), 0, P2mType::RamRo, RWX)
            .unwrap();
        assert_eq!(m.extent_count(), 3);
        assert_eq!(
            m.get_entry(base + 0x1233),
            (Mfn(mbase + 0x1233), P2mType::RamRw, RWX)
        );
        assert_eq!(m.get_entry(base + 0x1234), (Mfn(7), P2mType::RamRo, RWX));
        assert_eq!(
            m.get_entry(base + 0x1235),
            (Mfn(mbase + 0x1235), P2mType::RamRw, RWX)
        );
        // 2 MiB grant mapping covering that page.
        m.set_entry(
            base + 0x1200,
            Mfn(0x8000),
            9,
            P2mType::GrantMapRo,
            P2mAccess::R,
        )
        .unwrap();
        assert_eq!(m.extent_count(), 3);
        assert_eq!(
            m.get_entry(base + 0x1234),
            (Mfn(0x8034), P2mType::GrantMapRo, P2mAccess::R)
        );
        assert_eq!(m.get_entry(base + 0x1400).0, Mfn(mbase + 0x1400));
        let r = GfnRange {
            start: base + 0x11ff,
            end: base + 0x1401,
        };
        assert_eq!(
            m.device_extents(r),
            vec![
                view(
                    base + 0x11ff,
                    base + 0x1200,
                    Mfn(mbase + 0x11ff),
                    IommuPerm::RW
                ),
                view(base + 0x1200, base + 0x1400, Mfn(0x8000), IommuPerm::R),
                view(
                    base + 0x1400,
                    base + 0x1401,
                    Mfn(mbase + 0x1400),
                    IommuPerm::RW
                ),
            ]
        );
        // Empty 2 MiB entry in the middle (RAM type above max_page): a gap.
        m.set_entry(base + 0x1200, Mfn(MAX_PAGE), 9, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(m.extent_count(), 2);
        assert_eq!(
            m.get_entry(base + 0x1234),
            (INVALID_MFN, P2mType::Invalid, RWX)
        );
        assert_eq!(
            m.device_extents(r),
            vec![
                view(
                    base + 0x11ff,
                    base + 0x1200,
                    Mfn(mbase + 0x11ff),
                    IommuPerm::RW
                ),
                view(base + 0x1200, base + 0x1400, INVALID_MFN, IommuPerm::NONE),
                view(
                    base + 0x1400,
                    base + 0x1401,
                    Mfn(mbase + 0x1400),
                    IommuPerm::RW
                ),
            ]
        );
        // Whole-range view with gaps before and after the 1 GiB mapping.
        let all = m.device_extents(GfnRange {
            start: base - 2,
            end: base + (1 << 18) + 2,
        });
        assert_eq!(
            all.first().unwrap(),
            &view(base - 2, base, INVALID_MFN, IommuPerm::NONE)
        );
        assert_eq!(
            all.last().unwrap(),
            &view(
                base + (1 << 18),
                base + (1 << 18) + 2,
                INVALID_MFN,
                IommuPerm::NONE
            )
        );
        let covered: u64 = all.iter().map(|v| v.range.len()).sum();
        assert_eq!(covered, (1 << 18) + 4);
        for w in all.windows(2) {
            assert_eq!(w[0].range.end, w[1].range.start);
        }
    }

    #[test]
    fn one_gig_ops_are_extent_based() {
        let mut m = model(Mode::Npt, true);
        // Frames in reverse order: no two neighbours continue each other.
        let frame = |i: u64| Mfn((63 - i) << 18);
        for i in 0..64u64 {
            m.set_entry(i << 18, frame(i), 18, P2mType::RamRw, RWX)
                .unwrap();
        }
        assert_eq!(m.extent_count(), 64);
        // Punch 4 KiB holes everywhere, then cover them again with 1 GiB ops.
        for i in 0..64u64 {
            m.set_entry((i << 18) + 5, INVALID_MFN, 0, P2mType::Invalid, RWX)
                .unwrap();
        }
        assert_eq!(m.extent_count(), 128);
        for i in 0..64u64 {
            m.set_entry(i << 18, frame(i), 18, P2mType::RamRo, RWX)
                .unwrap();
        }
        assert_eq!(m.extent_count(), 64);
        assert_eq!(
            m.device_extents(GfnRange::of_order(0, 18)),
            vec![view(0, 1 << 18, frame(0), IommuPerm::R)]
        );
        // Unmapping 1 GiB leaves nothing stored.
        m.set_entry(0, Mfn(MAX_PAGE), 18, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(m.extent_count(), 63);
    }

    /// The joined extents against a per-page map over 100,000 random 4 KiB and 2 MiB
    /// writes (half of them continuing a linear mapping, so extents join): the same CPU
    /// view and device view page by page, and no extent continues the next.
    #[test]
    fn joined_extents_equal_the_per_page_form() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const PAGES: u64 = 4 * 512;
        for mode in [Mode::Ept, Mode::Npt] {
            let mut m = model(mode, false);
            let mut flat: Vec<(Mfn, P2mType)> =
                vec![(INVALID_MFN, P2mType::Invalid); PAGES as usize];
            for step in 0..100_000 {
                let order = if next(8) == 0 { 9 } else { 0 };
                let gfn = next(PAGES) & !((1u64 << order) - 1);
                let (mfn, t) = match next(6) {
                    // EPT takes INVALID_MFN at 4 KiB only (see `validate`).
                    0 if order == 0 || mode != Mode::Ept => (INVALID_MFN, P2mType::Invalid),
                    0 => (Mfn(0x40_0000 + gfn), P2mType::Invalid),
                    1 => (Mfn(0x10_0000 + next(1 << 16) * 512), P2mType::RamRw),
                    2 => (Mfn(0x40_0000 + gfn), P2mType::RamRo),
                    _ => (Mfn(0x40_0000 + gfn), P2mType::RamRw),
                };
                m.set_entry(gfn, mfn, order, t, RWX).unwrap();
                for i in 0..1u64 << order {
                    // An `invalid` entry is empty whatever its frame.
                    let empty = mfn == INVALID_MFN || t == P2mType::Invalid;
                    let page_mfn = if empty { INVALID_MFN } else { mfn.plus(i) };
                    flat[(gfn + i) as usize] = (page_mfn, t);
                }
                let lo = next(PAGES);
                let hi = lo + next(PAGES - lo) + 1;
                let range = GfnRange { start: lo, end: hi };
                for (r, mfn, t, _) in m.cpu_extents(range) {
                    for g in r.start..r.end {
                        let want = flat[g as usize];
                        let got = if mfn == INVALID_MFN {
                            mfn
                        } else {
                            mfn.plus(g - r.start)
                        };
                        assert_eq!((got, t), want, "step {step} gfn {g:#x}");
                    }
                }
                for v in m.device_extents(range) {
                    for g in v.range.start..v.range.end {
                        let (fm, ft) = flat[g as usize];
                        let want = m.perm_of(ft, RWX);
                        assert_eq!(v.perm, want, "step {step} gfn {g:#x}");
                        if !want.is_none() {
                            assert_eq!(v.mfn.plus(g - v.range.start), fm, "step {step}");
                        }
                    }
                }
                let exts: Vec<(u64, Extent)> = m.extents().map(|(s, e)| (s, *e)).collect();
                for w in exts.windows(2) {
                    let ((a, x), (b, y)) = (w[0], w[1]);
                    assert!(
                        a + x.len != b || !continues(&x, &y),
                        "step {step}: not joined"
                    );
                }
            }
        }
    }

    #[test]
    fn linear_neighbours_join_into_one_extent() {
        let mut m = model(Mode::Ept, false);
        // 512 one-page ops in any order, frames advancing with the gfn: one extent.
        for i in (0..512u64).rev().step_by(2).chain((0..512u64).step_by(2)) {
            m.set_entry(0x200 + i, Mfn(0x1200 + i), 0, P2mType::RamRw, RWX)
                .unwrap();
        }
        assert_eq!(m.extent_count(), 1);
        // A different type or a frame out of line in the middle splits it in three.
        m.set_entry(0x300, Mfn(0x1300), 0, P2mType::RamRo, RWX)
            .unwrap();
        assert_eq!(m.extent_count(), 3);
        m.set_entry(0x300, Mfn(0x1300), 0, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(m.extent_count(), 1);
        m.set_entry(0x301, Mfn(0x9999), 0, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(m.extent_count(), 3);
        assert_eq!(m.get_entry(0x302), (Mfn(0x1302), P2mType::RamRw, RWX));
    }

    #[test]
    fn empty_entries_per_mode() {
        let mmio = Mfn(MAX_PAGE);
        // PoD at order 9: real (typed, no device access) on p2m-pt, empty on EPT.
        let mut pt = model(Mode::Npt, false);
        pt.set_entry(0x200, mmio, 9, P2mType::PopulateOnDemand, RWX)
            .unwrap();
        assert_eq!(pt.get_entry(0x210).1, P2mType::PopulateOnDemand);
        assert_eq!(pt.device_entry(0x210), (INVALID_MFN, IommuPerm::NONE));
        let mut ept = model(Mode::Ept, false);
        ept.set_entry(0x200, mmio, 9, P2mType::PopulateOnDemand, RWX)
            .unwrap();
        assert_eq!(ept.get_entry(0x210), (INVALID_MFN, P2mType::Invalid, RWX));
        // mmio_direct above max_page: EPT at any order, p2m-pt only at 4 KiB.
        ept.set_entry(0, mmio, 18, P2mType::MmioDirect, RWX)
            .unwrap();
        assert_eq!(ept.get_entry(3).0, mmio.plus(3));
        pt.set_entry(1 << 18, mmio, 18, P2mType::MmioDirect, RWX)
            .unwrap();
        assert_eq!(pt.get_entry(1 << 18).1, P2mType::Invalid);
        pt.set_entry(1 << 18, mmio, 0, P2mType::MmioDirect, RWX)
            .unwrap();
        assert_eq!(pt.get_entry(1 << 18), (mmio, P2mType::MmioDirect, RWX));
        // Paging types with INVALID_MFN at 4 KiB.
        let mut sh = model(Mode::Shadow, true);
        sh.set_entry(9, INVALID_MFN, 0, P2mType::RamPagingOut, RWX)
            .unwrap();
        assert_eq!(sh.get_entry(9), (INVALID_MFN, P2mType::RamPagingOut, RWX));
        ept.set_entry(9, INVALID_MFN, 0, P2mType::RamPagingOut, RWX)
            .unwrap();
        assert_eq!(ept.get_entry(9).1, P2mType::Invalid);
        ept.set_entry(9, INVALID_MFN, 0, P2mType::RamPaged, RWX)
            .unwrap();
        assert_eq!(ept.get_entry(9), (INVALID_MFN, P2mType::RamPaged, RWX));
        // Plain RAM above max_page is empty everywhere.
        for mode in Mode::ALL {
            let mut m = model(*mode, false);
            m.set_entry(0, mmio, 0, P2mType::RamRw, RWX).unwrap();
            assert_eq!(m.extent_count(), 0);
        }
    }

    #[test]
    fn device_view_uses_the_right_column() {
        let cases = [
            // (mode, share, type, access, expected)
            (Mode::Ept, true, P2mType::RamRw, P2mAccess::R, IommuPerm::R),
            (
                Mode::Ept,
                false,
                P2mType::RamRw,
                P2mAccess::R,
                IommuPerm::RW,
            ),
            (Mode::Ept, true, P2mType::MmioDirect, RWX, IommuPerm::RW),
            (Mode::Ept, false, P2mType::MmioDirect, RWX, IommuPerm::NONE),
            (Mode::Ept, true, P2mType::RamLogdirty, RWX, IommuPerm::R),
            (Mode::Ept, false, P2mType::RamLogdirty, RWX, IommuPerm::RW),
            (Mode::Ept, true, P2mType::RamShared, RWX, IommuPerm::R),
            (Mode::Npt, true, P2mType::RamLogdirty, RWX, IommuPerm::RW),
            (Mode::Npt, true, P2mType::MmioDirect, RWX, IommuPerm::NONE),
            (Mode::Npt, true, P2mType::RamRw, P2mAccess::N, IommuPerm::RW),
            (
                Mode::Shadow,
                true,
                P2mType::RamRw,
                P2mAccess::N,
                IommuPerm::RW,
            ),
        ];
        for (mode, share, t, a, want) in cases {
            let mut m = model(mode, share);
            m.set_entry(0x10, Mfn(0x99), 0, t, a).unwrap();
            let want_mfn = if want.is_none() {
                INVALID_MFN
            } else {
                Mfn(0x99)
            };
            assert_eq!(
                m.device_entry(0x10),
                (want_mfn, want),
                "{mode} {share} {t} {a}"
            );
            assert_eq!(
                m.device_extents(GfnRange::of_order(0x10, 0)),
                vec![view(0x10, 0x11, want_mfn, want)]
            );
        }
    }

    #[test]
    fn views_merge_linear_neighbours() {
        let mut m = model(Mode::Ept, false);
        m.set_entry(0, Mfn(0x100), 0, P2mType::RamRw, RWX).unwrap();
        m.set_entry(1, Mfn(0x101), 0, P2mType::RamRw, RWX).unwrap();
        m.set_entry(2, Mfn(0x200), 0, P2mType::RamRw, RWX).unwrap();
        m.set_entry(3, Mfn(0x201), 0, P2mType::MmioDm, RWX).unwrap();
        // The first two continue each other: one extent.
        assert_eq!(m.extent_count(), 3);
        assert_eq!(
            m.device_extents(GfnRange { start: 0, end: 6 }),
            vec![
                view(0, 2, Mfn(0x100), IommuPerm::RW),
                view(2, 3, Mfn(0x200), IommuPerm::RW),
                view(3, 6, INVALID_MFN, IommuPerm::NONE),
            ]
        );
        assert!(m.device_extents(GfnRange { start: 4, end: 4 }).is_empty());
    }

    /// Cross-check against a naive per-page map on a small gfn space.
    #[test]
    fn matches_per_page_oracle() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for mode in Mode::ALL {
            for share in [false, true] {
                let mut m = model(*mode, share);
                let space = 2u64 << 18;
                let mut pages: Vec<Option<(Mfn, P2mType, P2mAccess)>> = vec![None; space as usize];
                let mut touched: Vec<u64> = Vec::new();
                for _ in 0..300 {
                    let order = [0, 0, 0, 0, 9, 9, 9, 18][(rnd() % 8) as usize];
                    let gfn = (rnd() % space) & !((1u64 << order) - 1);
                    let mfn = match rnd() % 4 {
                        0 => INVALID_MFN,
                        1 => Mfn(MAX_PAGE + ((rnd() % 8) << 18)),
                        _ => Mfn((rnd() % (1 << 30)) & !((1u64 << order) - 1)),
                    };
                    let t = P2mType::ALL[(rnd() % 16) as usize];
                    let a = P2mAccess::ALL[(rnd() % 10) as usize];
                    let res = m.set_entry(gfn, mfn, order, t, a);
                    if res.is_err() {
                        continue;
                    }
                    touched.extend([gfn.saturating_sub(1), gfn, gfn + (1 << order)]);
                    let real = writes_real_entry(*mode, mfn, order, t);
                    for i in 0..(1u64 << order) {
                        let f = if mfn == INVALID_MFN { mfn } else { mfn.plus(i) };
                        pages[(gfn + i) as usize] = real.then_some((f, t, a));
                    }
                }
                let views = m.device_extents(GfnRange {
                    start: 0,
                    end: space,
                });
                let mut covered = 0;
                for v in &views {
                    assert_eq!(v.range.start, covered);
                    covered = v.range.end;
                }
                assert_eq!(covered, space);
                let mut vi = 0;
                touched.sort_unstable();
                touched.dedup();
                let mut ti = 0;
                for g in 0..space {
                    // Every gfn next to an operation's edge, and a sample of the rest.
                    while ti < touched.len() && touched[ti] < g {
                        ti += 1;
                    }
                    let edge = touched.get(ti) == Some(&g);
                    if !edge && g % 97 != 0 {
                        continue;
                    }
                    let slot = pages[g as usize];
                    let want = slot.unwrap_or((INVALID_MFN, P2mType::Invalid, RWX));
                    assert_eq!(m.get_entry(g), want, "{mode} gfn {g:#x}");
                    let perm = if slot.is_some() {
                        m.perm_of(want.1, want.2)
                    } else {
                        IommuPerm::NONE
                    };
                    let dev = if perm.is_none() {
                        (INVALID_MFN, perm)
                    } else {
                        (want.0, perm)
                    };
                    assert_eq!(m.device_entry(g), dev);
                    while !views[vi].range.contains(g) {
                        vi += 1;
                    }
                    let v = views[vi];
                    let vm = if v.mfn == INVALID_MFN {
                        INVALID_MFN
                    } else {
                        v.mfn.plus(g - v.range.start)
                    };
                    assert_eq!((vm, v.perm), dev, "view at {g:#x}");
                }
            }
        }
    }

    #[test]
    fn either_page_never_marked_grants_its_own_entry() {
        let w = P2mAccess::W;
        let wo = IommuPerm {
            read: false,
            write: true,
        };
        let mut m = model(Mode::Ept, true);
        // ram_logdirty with access w: r/w/x all clear, so the range op skips it.
        m.set_entry(0x400, Mfn(0x1000), 0, P2mType::RamLogdirty, w)
            .unwrap();
        m.track_dirty_vram(0x3ff, 2);
        assert!(m.type_either(0x400));
        assert_eq!(m.device_entry(0x400), (INVALID_MFN, IommuPerm::NONE));
        // Present when first marked (ram_rw, w): the mark may still be pending when the
        // range moves away, so the device may keep what ram_rw grants.
        let mut m = model(Mode::Ept, true);
        m.set_entry(0x400, Mfn(0x1000), 0, P2mType::RamRw, w)
            .unwrap();
        m.track_dirty_vram(0x3ff, 2);
        assert!(!m.type_either(0x400));
        m.track_dirty_vram(0x1000, 2);
        assert!(m.type_either(0x400));
        assert_eq!(m.device_entry(0x400), (Mfn(0x1000), wo));
        // If Xen resolved the first mark before, the page is ram_logdirty with r/w/x
        // clear and the range op skipped it: the device need not have anything.
        let page = GfnRange {
            start: 0x400,
            end: 0x401,
        };
        assert_eq!(
            m.device_extents_required(page),
            vec![view(0x400, 0x401, INVALID_MFN, IommuPerm::NONE)]
        );
        assert_eq!(
            m.device_extents(page),
            vec![view(0x400, 0x401, Mfn(0x1000), wo)]
        );
    }

    #[test]
    fn rearm_over_an_either_page_keeps_its_pending_mark() {
        // Master marks no one-page range: after [0, 2) then [0, 1) gfn 0 may read either
        // type; re-arming [0, 1) leaves it ram_logdirty but possibly still marked, so the
        // stop (another unmarked one-page change) makes it either again.
        let mut m = RefModel::new(cfg(Mode::Ept, false), IommuPolicy::Master);
        m.set_entry(0, Mfn(0x1a0000), 9, P2mType::RamRw, RWX)
            .unwrap();
        m.track_dirty_vram(0, 2);
        m.track_dirty_vram(0, 1);
        assert!(m.type_either(0));
        m.track_dirty_vram(0, 1);
        assert_eq!(m.get_entry(0).1, P2mType::RamLogdirty);
        assert!(!m.type_either(0));
        m.track_dirty_vram(0, 0);
        assert!(m.type_either(0));
    }

    #[test]
    fn resync_keeps_an_unmarked_page_either() {
        // gfn 2 has access n (not present): tracking never marks it, so it may read either
        // type. The model's read through the still pending mark above it (ram_logdirty)
        // agrees with the either page, which stays as it is: the next resolve_misconfig
        // on that walk undoes the read. A page written present takes the write.
        let mut m = RefModel::new(cfg(Mode::Ept, false), IommuPolicy::Master);
        m.set_entry(0, Mfn(0x100000), 0, P2mType::RamRw, RWX)
            .unwrap();
        m.set_entry(2, Mfn(0x100002), 0, P2mType::RamRw, P2mAccess::N)
            .unwrap();
        m.track_dirty_vram(0, 4);
        assert!(m.type_either(2));
        assert!(!m.type_either(0));
        let before = m.clone();
        let read = |g: u64| {
            (
                GfnRange::of_order(g, 0),
                Mfn(0x100000 + g),
                P2mType::RamLogdirty,
                if g == 2 { P2mAccess::N } else { RWX },
            )
        };
        let range = GfnRange { start: 0, end: 4 };
        m.resync(range, [read(0), read(2)].into_iter(), &before, None);
        // The read agrees with the either page, which keeps the type it was written
        // with (Xen's stored `sa_p2mt`).
        assert_eq!(m.get_entry(2).1, P2mType::RamRw);
        assert!(m.type_either(2));
        assert!(!m.type_either(0));
        // Written present (the access restored): the read is the answer.
        let before = m.clone();
        let present = (GfnRange::of_order(2, 0), Mfn(0x100002), P2mType::RamRw, RWX);
        m.resync(range, [read(0), present].into_iter(), &before, None);
        assert!(!m.type_either(2));
    }

    #[test]
    fn resync_rehides_a_region_the_failed_op_left_unsplit() {
        // Master p2m-pt, a 1 GiB grant superpage: the reference's write of gfn 5 shows the
        // frames of [0, 0x200); the p2m failed before splitting anything (it still reads
        // as before), so the region reads as before again, frames hidden. Where the p2m
        // did write (gfn 0x205), its region keeps its frames shown.
        let mut m = RefModel::new(cfg(Mode::Npt, true), IommuPolicy::Master);
        m.set_entry(0, Mfn(0x180000), 18, P2mType::GrantMapRo, RWX)
            .unwrap();
        let before = m.clone();
        for g in [5, 0x205] {
            m.set_entry(g, Mfn(0x5), 0, P2mType::RamRw, RWX).unwrap();
        }
        assert!(!m.frame_hidden(0x10) && !m.frame_hidden(0x210));
        let grant = |r: GfnRange| (r, Mfn(0x180000 + r.start), P2mType::GrantMapRo, RWX);
        let theirs = [
            grant(GfnRange {
                start: 5,
                end: 0x205,
            }),
            (GfnRange::of_order(0x205, 0), Mfn(0x5), P2mType::RamRw, RWX),
        ];
        let range = GfnRange {
            start: 5,
            end: 0x206,
        };
        m.resync(range, theirs.into_iter(), &before, None);
        assert!(m.frame_hidden(5) && m.frame_hidden(0x10) && m.frame_hidden(0x1ff));
        assert_eq!(m.get_entry(5).0, Mfn(0x180005));
        assert!(!m.frame_hidden(0x210));
        assert_eq!(m.get_entry(0x205).0, Mfn(0x5));
        assert!(m.frame_hidden(0x400));
    }
}

//! The differential oracle (MODEL.md §4, MASTER.md §4.3).
//!
//! After each op it compares the model with the flat reference over *everything the op
//! changed* — the op's own range, every entry range the model wrote (so a superpage split
//! or a replaced subtree counts whole), every range the IOMMU wrote or invalidated, every
//! freed span — plus every range a live cache record covers. It also looks inside the op:
//! every frame the op freed was checked by the model *at the moment of the free* for a
//! current walk or a cached paging-structure record still reaching it.
//!
//! Classes (fatal ones stop the run; non-fatal ones are reported as notes and counted, and
//! become fatal with `--strict` / `P2M_STRICT=1`):
//!
//! - **over-permissive** (fatal): a translation the device could use — current tables, an
//!   IOTLB record, a walk from a paging-structure record — with a frame or right the
//!   reference does not grant for that gfn;
//! - **freed-frame-reachable** (fatal): a walk passes through a freed (or non-table) frame
//!   now, or a frame was freed while a current walk or a cached record still reached it;
//! - **bad-free** (fatal): a structure freed a frame that was not one of its live tables
//!   (a guest page, another structure's table, or a frame already free);
//! - **under-permissive** (fatal unless the scenario allows it): the current tables grant
//!   less than the reference over the ranges the op changed (on a page whose type the
//!   reference cannot tell, less than `RefModel::device_extents_required`);
//! - **cpu-view**: `set_entry`'s result or the CPU view (`get_entry`, compared as extents over
//!   the changed ranges) disagrees with the reference;
//! - **leaked-table** (non-fatal): a table was unlinked from its structure during the op
//!   and is still allocated at its end, not freed or queued for freeing — a memory leak in
//!   Xen (a denial-of-service class), not a DMA hole;
//! - **xen-bug** (non-fatal): the op hits one of Xen's `BUG_ON`s (a host crash, not a
//!   DMA hole); the model changes nothing and the reference is not applied. The inputs
//!   that reach them come from the internal API (e.g. `mmio_direct` with `INVALID_MFN`);
//! - **cached-under-permissive** (non-fatal): a walk from a paging-structure record that
//!   may still be cached reaches a table that no longer holds a mapping the reference
//!   grants (a table installed later in its range is missed): the device may fault where
//!   the guest expects DMA to work. It never gives access beyond the reference (a wrong
//!   frame there is over-permissive), so by default it is reported, not fatal.
//!
//! - **accepted-by-design** (non-fatal): with VT-d sharing the EPT, the device may write
//!   (or may not yet write) a `ram_rw` / `ram_logdirty` page of the right frame where the
//!   reference's EPT column says otherwise: a stale W left, with no IOTLB flush, by a
//!   type change between the two (the lazy recalc of `p2m_change_type_range`,
//!   `p2m_change_type_one`), or a W a pending recalc has not given yet (also where that
//!   leaves the device nothing: a `ram_logdirty` entry with access `wx` keeps only x,
//!   while the reference grants the `ram_rw` page W alone). Xen accepts this
//!   (`p2m-ept.c:53-62`: log-dirty and an IOMMU "won't work well" together; the separate
//!   tables' `p2m_get_iommu_flags` grants such a page RW anyway); MASTER.md §4.3 item 7.
//!   Reported and counted, fatal with `--strict`.
//!
//! - **model-invariant** (fatal): the op log contradicts the model's own bookkeeping
//!   (`log_check`): a harness bug to fix before any verdict of that run is trusted.
//!
//! Cost per op: proportional to the translations, extents and records in the checked
//! ranges and to the frames the op freed, never to the size of the gfn window.

use p2m_core::cache::{CacheRecord, Invalidation, Issued, RecordKind};
use p2m_core::events::{FreeEvent, Freed, ReachVia};
use p2m_core::frames::TableOwner;
use p2m_core::physmap::{AddToPhysmapRange, BatchOutcome};
use p2m_core::walk::{Translation, WalkFault};
use p2m_core::{Domain, GfnRange, HwSemantics, IommuPerm, Mfn, P2mError, ViewSource, INVALID_MFN};
use reference_model::{RefModel, RefView};
use std::fmt;

/// The kinds of divergence.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum DivergenceClass {
    /// The device can reach a frame or right the reference forbids.
    OverPermissive,
    /// A device walk passes (or passed, when the frame was freed) through a freed frame.
    FreedFrameReachable,
    /// The current IOMMU view grants less than the reference.
    UnderPermissive,
    /// The CPU-side p2m disagrees with the reference.
    CpuView,
    /// A structure freed a frame that was not one of its live tables.
    BadFree,
    /// A table was unlinked and neither freed nor queued (non-fatal by default).
    LeakedTable,
    /// A cached paging-structure walk misses a mapping the reference grants (non-fatal by
    /// default).
    CachedUnderPermissive,
    /// The op reached one of Xen's `BUG_ON`s (a host crash); the model changed nothing
    /// (non-fatal by default: the inputs come from the internal API).
    XenBug,
    /// The op log the model handed the oracle contradicts the model's own bookkeeping (a
    /// span that is not the freed or unlinked table's, a split that is no superpage): a
    /// harness bug, not a Xen finding, fatal because reports would mislead.
    ModelInvariant,
    /// A W-only difference on a `ram_rw` / `ram_logdirty` page of the right frame with
    /// VT-d sharing the EPT, which Xen accepts by design (non-fatal by default).
    AcceptedByDesign,
}

impl DivergenceClass {
    /// Every class.
    pub const ALL: [DivergenceClass; 10] = [
        DivergenceClass::OverPermissive,
        DivergenceClass::FreedFrameReachable,
        DivergenceClass::UnderPermissive,
        DivergenceClass::CpuView,
        DivergenceClass::BadFree,
        DivergenceClass::LeakedTable,
        DivergenceClass::CachedUnderPermissive,
        DivergenceClass::XenBug,
        DivergenceClass::ModelInvariant,
        DivergenceClass::AcceptedByDesign,
    ];

    /// Stable name (used in reports and regression file checks).
    pub fn name(self) -> &'static str {
        match self {
            DivergenceClass::OverPermissive => "over-permissive",
            DivergenceClass::FreedFrameReachable => "freed-frame-reachable",
            DivergenceClass::UnderPermissive => "under-permissive",
            DivergenceClass::CpuView => "cpu-view",
            DivergenceClass::BadFree => "bad-free",
            DivergenceClass::LeakedTable => "leaked-table",
            DivergenceClass::CachedUnderPermissive => "cached-under-permissive",
            DivergenceClass::XenBug => "xen-bug",
            DivergenceClass::ModelInvariant => "model-invariant",
            DivergenceClass::AcceptedByDesign => "accepted-by-design",
        }
    }

    /// Parses [`Self::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// True when a finding of this class stops the run (`strict`: every class does).
    pub fn is_fatal(self, strict: bool) -> bool {
        strict
            || !matches!(
                self,
                DivergenceClass::LeakedTable
                    | DivergenceClass::CachedUnderPermissive
                    | DivergenceClass::XenBug
                    | DivergenceClass::AcceptedByDesign
            )
    }
}

impl fmt::Display for DivergenceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the oracle found, before the runner adds the trace and configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Class.
    pub class: DivergenceClass,
    /// The first gfn concerned.
    pub gfn: u64,
    /// What the device (or CPU side) sees.
    pub device: String,
    /// What the reference permits.
    pub reference: String,
    /// Op sequence number that left the stale state (if from a cache record).
    pub stale_seq: Option<u64>,
    /// The cache record involved, if any (for the report's invalidation analysis).
    pub record: Option<CacheRecord>,
    /// Further lines for the report (the free, the split, ...), most important first.
    pub context: Vec<String>,
}

impl Finding {
    pub(crate) fn new(
        class: DivergenceClass,
        gfn: u64,
        device: String,
        reference: String,
    ) -> Finding {
        Finding {
            class,
            gfn,
            device,
            reference,
            stale_seq: None,
            record: None,
            context: Vec::new(),
        }
    }
}

fn describe_source(src: ViewSource) -> &'static str {
    match src {
        ViewSource::Current => "current tables",
        ViewSource::Cached { nonleaf: false, .. } => "IOTLB record",
        ViewSource::Cached { nonleaf: true, .. } => "paging-structure-cache walk",
    }
}

fn seq_of(src: ViewSource) -> Option<u64> {
    match src {
        ViewSource::Current => None,
        ViewSource::Cached { seq, .. } => Some(seq),
    }
}

fn record_of(src: ViewSource) -> Option<CacheRecord> {
    match src {
        ViewSource::Current => None,
        ViewSource::Cached { record, .. } => Some(record),
    }
}

fn ref_desc(v: &RefView) -> String {
    if v.perm.is_none() {
        format!("gfn {} → nothing", v.range)
    } else {
        format!("gfn {} → mfn {} {}", v.range, v.mfn, v.perm)
    }
}

/// The reference's device view of one gfn, described.
fn ref_at(refm: &RefModel, gfn: u64) -> String {
    refm.device_extents(GfnRange {
        start: gfn,
        end: gfn + 1,
    })
    .first()
    .map(ref_desc)
    .unwrap_or_default()
}

/// Describes a cache record on one line.
pub fn describe_record(r: &CacheRecord) -> String {
    match r.kind {
        RecordKind::Leaf {
            mfn,
            perm,
            leaf_pages,
        } => format!(
            "IOTLB record gfn {} → mfn {} {perm} ({}-page leaves)",
            r.range,
            Mfn(mfn),
            leaf_pages
        ),
        RecordKind::NonLeaf { table, level, .. } => format!(
            "paging-structure record gfn {} → L{level} table {table:#x}",
            r.range
        ),
    }
}

/// The 40-bit frame field a PTE can hold: frames are compared as the hardware
/// sees them (so `INVALID_MFN` written into an entry is its all-ones field).
fn frame_field(m: u64) -> u64 {
    m & p2m_core::PTE_MFN_MASK
}

/// Merges overlapping or adjacent ranges (sorted output).
pub fn merge_ranges(mut v: Vec<GfnRange>) -> Vec<GfnRange> {
    v.sort();
    let mut out: Vec<GfnRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

pub(crate) fn owner_name(o: TableOwner) -> &'static str {
    match o {
        TableOwner::P2m => "p2m",
        TableOwner::Iommu => "IOMMU",
    }
}

/// Frees of this op that happened while something still reached the frame.
pub fn check_free_events(dom: &Domain, refm: &RefModel, op_ranges: &[GfnRange]) -> Option<Finding> {
    let log = dom.op_log();
    // A guest page the reference still maps at a gfn the op did not name is reachable
    // there by the reference's own rules (one page at two gfns: a state only the internal
    // API makes); such reaches do not count. At a gfn the op named they do (4.6 freeing
    // the very page it maps back, ba45ae4d7f).
    let granted = |e: &FreeEvent, r: &p2m_core::events::Reach| {
        let g = r.range.start;
        matches!(e.what, Freed::GuestPage { .. }) && !op_ranges.iter().any(|o| o.contains(g)) && {
            let (m, p) = refm.device_entry(g);
            m == Mfn(e.frame) && p != p2m_core::IommuPerm::NONE
        }
    };
    let (ev, reach): (&FreeEvent, _) = log
        .frees
        .iter()
        .find_map(|e| e.reaches.iter().find(|r| !granted(e, r)).map(|r| (e, r)))?;
    let via = match reach.via {
        ReachVia::CurrentWalk => "a walk of the current tables".to_string(),
        // The runner names the op that made the record (`stale_seq`).
        ReachVia::CachedWalk { .. } => "a cached record".to_string(),
    };
    let (what, freed) = match ev.what {
        Freed::Table { owner, level } => (
            format!("{} L{level} table {:#x}", owner_name(owner), ev.frame),
            format!(
                "freed: {} L{level} table {:#x} (translating gfn {})",
                owner_name(owner),
                ev.frame,
                ev.span
            ),
        ),
        Freed::GuestPage { gfn } => (
            format!("guest page {:#x}", ev.frame),
            format!(
                "freed: guest page {:#x} (last mapped at gfn {gfn:#x}) back to the heap",
                ev.frame
            ),
        ),
    };
    let mut f = Finding::new(
        DivergenceClass::FreedFrameReachable,
        reach.range.start,
        format!(
            "{via} for gfn {} still reached {what} when this op freed it",
            reach.range
        ),
        ref_at(refm, reach.range.start),
    );
    if let ReachVia::CachedWalk { seq } = reach.via {
        f.stale_seq = Some(seq);
    }
    f.record = reach.record;
    f.context.push(freed);
    if let Some(r) = &reach.record {
        f.context.push(format!("record: {}", describe_record(r)));
    }
    Some(f)
}

/// An `add_to_physmap_range` whose outcome (pages moved, the error that stopped it)
/// differs between the model and the reference: a CPU-view divergence at the first gfn
/// the two disagree on.
pub fn check_batch(
    op: &AddToPhysmapRange,
    got: BatchOutcome,
    want: BatchOutcome,
) -> Option<Finding> {
    check_outcome("add_to_physmap_range", &op.to_string(), op.gpfn, got, want)
}

/// An op whose outcome (pages done, the error that stopped it) differs between the model
/// and the reference: a CPU-view divergence at `gfn`. `label` names the outcome in the
/// report lines, `subject` the op in the context line.
pub fn check_outcome(
    label: &str,
    subject: &str,
    gfn: u64,
    got: BatchOutcome,
    want: BatchOutcome,
) -> Option<Finding> {
    if got == want {
        return None;
    }
    let mut f = Finding::new(
        DivergenceClass::CpuView,
        gfn,
        format!("{label}: {got}"),
        format!("{label}: {want}"),
    );
    f.context.push(format!(
        "the sides part after {} pages of {subject}",
        got.done.min(want.done)
    ));
    Some(f)
}

/// A `BUG_ON` the op reached.
pub fn xen_bug(gfn: u64, what: &str) -> Finding {
    Finding::new(
        DivergenceClass::XenBug,
        gfn,
        format!("the op reaches a BUG_ON in Xen: {what}"),
        "no op a caller can issue crashes the host".into(),
    )
}

/// Frees of frames that were not live tables of the freeing structure.
pub fn check_bad_frees(dom: &Domain) -> Option<Finding> {
    let b = dom.op_log().bad_frees.first()?;
    let what = match b.state {
        None => "a frame that never held a table (guest memory?)".to_string(),
        Some(p2m_core::frames::FrameState::Free) => "a frame that was already free".to_string(),
        Some(p2m_core::frames::FrameState::Table { owner, level }) => {
            format!("an {} L{level} table", owner_name(owner))
        }
    };
    Some(Finding::new(
        DivergenceClass::BadFree,
        0,
        format!(
            "the {} structure freed frame {:#x}: {what}",
            owner_name(b.owner),
            b.frame
        ),
        "only live tables of the freeing structure are freed".into(),
    ))
}

/// Tables unlinked during the op that are still allocated at its end.
pub fn check_leaks(dom: &Domain) -> Option<Finding> {
    let u = dom.op_log().leaked(dom.mem()).next()?;
    Some(Finding::new(
        DivergenceClass::LeakedTable,
        u.span.start,
        format!(
            "{} L{} table {:#x} (translating gfn {}) was unlinked and is still allocated",
            owner_name(u.owner),
            u.level,
            u.frame,
            u.span
        ),
        "an unlinked table is freed, or queued for freeing".into(),
    ))
}

/// Checks the device view of `range` against the reference; `check_under` also judges
/// under-permission of the current tables. Returns the first fatal finding and the
/// first non-fatal note of each kind (cached-under-permissive, accepted-by-design).
pub fn check_range(
    dom: &Domain,
    refm: &RefModel,
    range: GfnRange,
    allow_under: bool,
    check_under: bool,
) -> (Option<Finding>, Vec<Finding>) {
    let dv = dom.device_view(range);
    if let Some((f, src)) = dv.faults.first() {
        let (frame, r, what) = match f {
            WalkFault::FreedFrame { frame, range } => (*frame, *range, "freed table frame"),
            WalkFault::NonTableFrame { frame, range } => {
                (*frame, *range, "frame that holds no table (guest data?)")
            }
        };
        let mut fd = Finding::new(
            DivergenceClass::FreedFrameReachable,
            r.start,
            format!(
                "{} for gfn {} walks through {} {:#x}",
                describe_source(*src),
                r,
                what,
                frame
            ),
            ref_at(refm, r.start),
        );
        fd.stale_seq = seq_of(*src);
        fd.record = record_of(*src);
        return (Some(fd), Vec::new());
    }
    let views = refm.device_extents(range);
    let by_design = |o: GfnRange, frame: u64, a: IommuPerm, b: IommuPerm| {
        w_only_difference(a, b) && accepted_logdirty_page(refm, o, frame)
    };
    let mut accepted: Option<Finding> = None;
    for (t, src) in &dv.translations {
        if t.perm.is_none() {
            continue;
        }
        if let Some(f) = over_permissive(t, *src, &views, &by_design, &mut accepted) {
            return (Some(f), accepted.into_iter().collect());
        }
    }
    // Under-permission is judged against what the device must have: less than `views`
    // where the reference cannot tell which type Xen resolved a page to.
    let fewer;
    let required: &[RefView] = if refm.type_either_in(range) {
        fewer = refm.device_extents_required(range);
        &fewer
    } else {
        &views
    };
    if check_under && !allow_under {
        let current: Vec<&Translation> = dv
            .translations
            .iter()
            .filter(|(_, s)| *s == ViewSource::Current)
            .map(|(t, _)| t)
            .collect();
        for v in required {
            let under = under_permissive(v, &current, "current tables", &by_design, &mut accepted);
            if let Some(f) = under {
                return (Some(f), accepted.into_iter().collect());
            }
        }
    }
    let mut notes: Vec<Finding> = accepted.into_iter().collect();
    notes.extend(cached_under_permissive(&dv.translations, required, range));
    (None, notes)
}

/// True when `a` and `b` differ in the write right only.
fn w_only_difference(a: IommuPerm, b: IommuPerm) -> bool {
    a.read == b.read && a.write != b.write
}

/// The pages of `o` are all `ram_rw` / `ram_logdirty` in the reference, mapping the
/// frames from `frame` (the device's), and VT-d walks the EPT: where Xen accepts a W that
/// is stale or not given yet (see [`DivergenceClass::AcceptedByDesign`]). The frames are
/// the reference's p2m entries', so a page whose type and access leave the EPT entry
/// nothing (e.g. `ram_logdirty` with access `w`) counts too.
fn accepted_logdirty_page(refm: &RefModel, o: GfnRange, frame: u64) -> bool {
    use p2m_core::P2mType::{RamLogdirty, RamRw};
    refm.column() == reference_model::Column::EptShared
        && refm.cpu_extents(o).iter().all(|&(r, m, t, _)| {
            matches!(t, RamRw | RamLogdirty)
                && m != INVALID_MFN
                && frame_field(m.0) == frame_field(frame.wrapping_add(r.start - o.start))
        })
}

/// A walk from a paging-structure record that lacks a mapping the reference grants.
fn cached_under_permissive(
    translations: &[(Translation, ViewSource)],
    views: &[RefView],
    range: GfnRange,
) -> Option<Finding> {
    let mut records: Vec<CacheRecord> = translations
        .iter()
        .filter_map(|(_, s)| match s {
            ViewSource::Cached {
                nonleaf: true,
                record,
                ..
            } => Some(*record),
            _ => None,
        })
        .collect();
    records.dedup();
    for rec in records {
        let Some(span) = rec.range.intersect(&range) else {
            continue;
        };
        let walk: Vec<&Translation> = translations
            .iter()
            .filter(|(_, s)| {
                matches!(s, ViewSource::Cached { nonleaf: true, record, .. } if *record == rec)
            })
            .map(|(t, _)| t)
            .collect();
        for v in views {
            let Some(part) = v.range.intersect(&span) else {
                continue;
            };
            let clipped = RefView {
                range: part,
                mfn: if v.perm.is_none() {
                    v.mfn
                } else {
                    v.mfn.plus(part.start - v.range.start)
                },
                perm: v.perm,
            };
            let none = |_: GfnRange, _: u64, _: IommuPerm, _: IommuPerm| false;
            let under = under_permissive(
                &clipped,
                &walk,
                "paging-structure-cache walk",
                &none,
                &mut None,
            );
            if let Some(mut f) = under {
                f.class = DivergenceClass::CachedUnderPermissive;
                f.stale_seq = Some(rec.seq);
                f.record = Some(rec);
                return Some(f);
            }
        }
    }
    None
}

/// The first piece of `t` the reference does not grant; a piece `by_design(gfns, device
/// frame, reference right, device right)` accepts is kept in `accepted` (the first one)
/// and the search goes on.
fn over_permissive(
    t: &Translation,
    src: ViewSource,
    views: &[RefView],
    by_design: &dyn Fn(GfnRange, u64, IommuPerm, IommuPerm) -> bool,
    accepted: &mut Option<Finding>,
) -> Option<Finding> {
    for v in views {
        let Some(o) = t.range.intersect(&v.range) else {
            continue;
        };
        let t_mfn = t.mfn.wrapping_add(o.start - t.range.start);
        let v_mfn = v.frame_at(o.start);
        let ok = !v.perm.is_none()
            && frame_field(v_mfn) == frame_field(t_mfn)
            && t.perm.is_subset_of(v.perm);
        if !ok {
            let mut f = Finding::new(
                DivergenceClass::OverPermissive,
                o.start,
                format!(
                    "{} maps gfn {} → mfn {} {} (leaf of {} pages)",
                    describe_source(src),
                    o,
                    Mfn(t_mfn),
                    t.perm,
                    t.leaf_pages
                ),
                ref_desc(&RefView {
                    range: o,
                    mfn: Mfn(v_mfn),
                    perm: v.perm,
                }),
            );
            f.stale_seq = seq_of(src);
            f.record = record_of(src);
            if by_design(o, t_mfn, v.perm, t.perm) {
                f.class = DivergenceClass::AcceptedByDesign;
                accepted.get_or_insert(f);
                continue;
            }
            return Some(f);
        }
    }
    None
}

/// The first gfn of `v` that `current` maps with less than `v` grants; pieces
/// `by_design` accepts (see [`over_permissive`]) go to `accepted`.
fn under_permissive(
    v: &RefView,
    current: &[&Translation],
    what: &str,
    by_design: &dyn Fn(GfnRange, u64, IommuPerm, IommuPerm) -> bool,
    accepted: &mut Option<Finding>,
) -> Option<Finding> {
    if v.perm.is_none() {
        return None;
    }
    let mut covered = v.range.start;
    let mut pieces: Vec<&Translation> = current
        .iter()
        .copied()
        .filter(|t| t.range.intersect(&v.range).is_some())
        .collect();
    pieces.sort_by_key(|t| t.range.start);
    let fail = |gfn: u64, dev: String| {
        Some(Finding::new(
            DivergenceClass::UnderPermissive,
            gfn,
            dev,
            ref_desc(v),
        ))
    };
    // A gap the device maps nothing in: by design too where the reference grants W only
    // and the entry Xen has not rewritten yet leaves VT-d nothing (a `ram_logdirty` page
    // with access `wx` keeps only x in the EPT until its mark resolves).
    let gap = |a: u64, b: u64, accepted: &mut Option<Finding>| {
        let g = GfnRange { start: a, end: b };
        if !by_design(g, v.frame_at(a), v.perm, IommuPerm::NONE) {
            return fail(a, format!("{what} map nothing at gfn {a:#x}"));
        }
        if let Some(mut f) = fail(a, format!("{what} map nothing at gfn {g}")) {
            f.class = DivergenceClass::AcceptedByDesign;
            accepted.get_or_insert(f);
        }
        None
    };
    for t in pieces {
        let o = t.range.intersect(&v.range)?;
        if o.start > covered {
            if let Some(f) = gap(covered, o.start, accepted) {
                return Some(f);
            }
        }
        let want = v.frame_at(o.start);
        let got = t.mfn.wrapping_add(o.start - t.range.start);
        if frame_field(got) != frame_field(want) || !v.perm.is_subset_of(t.perm) {
            if by_design(o, got, v.perm, t.perm) {
                if let Some(mut f) = fail(
                    o.start,
                    format!("{what} map gfn {} → mfn {} {}", o, Mfn(got), t.perm),
                ) {
                    f.class = DivergenceClass::AcceptedByDesign;
                    accepted.get_or_insert(f);
                }
                covered = covered.max(o.end);
                continue;
            }
            return fail(
                o.start,
                format!("{what} map gfn {} → mfn {} {}", o, Mfn(got), t.perm),
            );
        }
        covered = covered.max(o.end);
    }
    if covered < v.range.end {
        return gap(covered, v.range.end, accepted);
    }
    None
}

/// Compares the `set_entry` results, then the CPU view of every range in `ranges` as
/// extents (model `cpu_extents` against the reference's).
pub fn check_cpu(
    dom: &Domain,
    refm: &RefModel,
    real: Result<(), P2mError>,
    reference: Result<(), P2mError>,
    ranges: &[GfnRange],
) -> Option<Finding> {
    // Both must accept or both refuse; the error kinds may be checked in another
    // order (Xen's p2m-pt tests the type before anything else).
    if real.is_ok() != reference.is_ok() {
        return Some(Finding::new(
            DivergenceClass::CpuView,
            ranges.first().map_or(0, |r| r.start),
            format!("set_entry returned {real:?}"),
            format!("reference returned {reference:?}"),
        ));
    }
    for &range in ranges {
        let range = GfnRange {
            start: range.start,
            end: range.end.min(1u64 << p2m_core::GFN_BITS),
        };
        if range.is_empty() {
            continue;
        }
        let model = dom.cpu_extents(range);
        let want = refm.cpu_extents(range);
        let (mut i, mut j) = (0, 0);
        while i < model.len() && j < want.len() {
            let m = &model[i];
            let (wr, wmfn, wtype, _) = want[j];
            if let Some(o) = m.range.intersect(&wr) {
                let rmfn = if wmfn == INVALID_MFN {
                    INVALID_MFN
                } else {
                    wmfn.plus(o.start - wr.start)
                };
                let gmfn = if m.mfn == INVALID_MFN {
                    INVALID_MFN
                } else {
                    m.mfn.plus(o.start - m.range.start)
                };
                let mfn_ok = !rmfn.is_valid() || gmfn == rmfn;
                // Where the reference cannot tell `ram_rw` from `ram_logdirty` (a
                // resolved-or-not recalc mark, `reference_model::logdirty`), both pass.
                let either = {
                    use p2m_core::P2mType::{RamLogdirty, RamRw};
                    matches!(m.p2mt, RamRw | RamLogdirty)
                        && matches!(wtype, RamRw | RamLogdirty)
                        && refm.type_either(o.start)
                };
                if (m.p2mt != wtype && !either) || !mfn_ok {
                    return Some(Finding::new(
                        DivergenceClass::CpuView,
                        o.start,
                        format!("get_entry gives gfn {o} → mfn {gmfn} {}", m.p2mt),
                        format!("gfn {o} → mfn {rmfn} {wtype}"),
                    ));
                }
            }
            if m.range.end <= wr.end {
                i += 1;
            } else {
                j += 1;
            }
        }
    }
    None
}

/// Why `inv` did not remove the record `r` (or `None` if it would have), under `hw`.
pub fn why_not_covered(inv: &Issued, r: &CacheRecord, hw: HwSemantics) -> Option<String> {
    let (range, cmd_pages, nonleaf) = match inv.cmd {
        Invalidation::VtdDsi | Invalidation::AmdAllPages => return None,
        Invalidation::VtdPsi { gfn, order, ih } => {
            let start = gfn & !((1u64 << order) - 1);
            (
                GfnRange {
                    start,
                    end: start + (1u64 << order) * inv.pages.max(1),
                },
                1u64 << order,
                !ih,
            )
        }
        Invalidation::AmdPages { gfn, order } => {
            let start = gfn & !((1u64 << order) - 1);
            (
                GfnRange {
                    start,
                    end: start + (1u64 << order) * inv.pages.max(1),
                },
                1u64 << order,
                order != 0 || !hw.amd_pde0_keeps_pdc,
            )
        }
    };
    if r.range.intersect(&range).is_none() {
        return Some(format!("does not cover gfn {}", r.range));
    }
    match r.kind {
        RecordKind::NonLeaf { .. } if !nonleaf => Some(
            "keeps paging-structure (page-directory) entries: order 0 means PDE=0 on AMD, IH=1 on VT-d"
                .into(),
        ),
        RecordKind::Leaf { leaf_pages, .. }
            if leaf_pages > cmd_pages && hw.superpage_survives_partial_inval =>
        {
            Some(format!(
                "covers {cmd_pages} page(s) per command, less than the cached {leaf_pages}-page entry (hw: superpage-survives-partial-inval=yes)"
            ))
        }
        _ => None,
    }
}

/// What the report should say about the invalidations issued by ops `from..=to`
/// (`issued[op]` per op) and the stale record `r`: which command came closest and why it
/// missed, or that none was issued.
pub fn explain_record(
    r: &CacheRecord,
    issued: &[(usize, Issued)],
    from: usize,
    to: usize,
    hw: HwSemantics,
) -> String {
    let mut lines = Vec::new();
    for (op, inv) in issued.iter().filter(|(op, _)| (from..=to).contains(op)) {
        match why_not_covered(inv, r, hw) {
            Some(why) => lines.push(format!("op #{op} issued {inv}: {why}")),
            None => lines.push(format!(
                "op #{op} issued {inv}, which removes it if issued after the record was made"
            )),
        }
    }
    if lines.is_empty() {
        return format!("no invalidation was issued by ops #{from}..#{to}");
    }
    // The most informative: a command that hit the record's range but missed it.
    lines.sort_by_key(|l| l.contains("does not cover"));
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2m_core::IommuPerm;

    fn leaf(start: u64, len: u64, pages: u64) -> CacheRecord {
        CacheRecord {
            range: GfnRange {
                start,
                end: start + len,
            },
            kind: RecordKind::Leaf {
                mfn: 0x1000,
                perm: IommuPerm::RW,
                leaf_pages: pages,
            },
            seq: 1,
        }
    }

    #[test]
    fn invalidation_misses_are_explained() {
        let hw = HwSemantics::CONSERVATIVE;
        let psi0 = Issued {
            cmd: Invalidation::VtdPsi {
                gfn: 0x200,
                order: 0,
                ih: false,
            },
            pages: 1,
        };
        let why = why_not_covered(&psi0, &leaf(0x200, 512, 512), hw).unwrap();
        assert!(why.contains("less than the cached 512-page entry"), "{why}");
        assert!(why_not_covered(&psi0, &leaf(0x200, 1, 1), hw).is_none());
        let far = why_not_covered(&psi0, &leaf(0x400, 1, 1), hw).unwrap();
        assert!(far.contains("does not cover"));
        let nl = CacheRecord {
            kind: RecordKind::NonLeaf {
                table: 0x40000,
                level: 1,
                generation: 1,
                perm: IommuPerm::RW,
            },
            ..leaf(0x200, 512, 1)
        };
        let amd0 = Issued {
            cmd: Invalidation::AmdPages {
                gfn: 0x200,
                order: 0,
            },
            pages: 1,
        };
        assert!(why_not_covered(&amd0, &nl, hw).unwrap().contains("PDE=0"));
        assert_eq!(
            explain_record(&nl, &[], 1, 2, hw),
            "no invalidation was issued by ops #1..#2"
        );
    }

    #[test]
    fn non_fatal_classes() {
        assert!(!DivergenceClass::LeakedTable.is_fatal(false));
        assert!(DivergenceClass::LeakedTable.is_fatal(true));
        assert!(DivergenceClass::BadFree.is_fatal(false));
        for c in DivergenceClass::ALL {
            assert_eq!(DivergenceClass::from_name(c.name()), Some(c));
        }
    }
}

//! The differential oracle (spec §4).
//!
//! After each `set_entry` it compares, for the op's gfn range and every range a
//! live cache record covers, everything a device could reach through the IOMMU
//! (current tables, cached leaves, walks from cached non-leaf entries) with what
//! the flat reference permits:
//!
//! - **over-permissive** (fatal): a translation with a frame or a right the
//!   reference does not grant for that gfn;
//! - **freed-frame reachable** (fatal): a walk passes through a freed table frame
//!   (or one that holds no table of the structure);
//! - **under-permissive** (fatal unless the scenario allows it): the current tables
//!   grant less than the reference;
//! - **CPU view**: `get_entry` or the `set_entry` result disagrees with the reference.
//!
//! Cost per op: proportional to the translations and reference extents in the
//! checked ranges, never to the size of the gfn window.

use p2m_core::walk::{Translation, WalkFault};
use p2m_core::ViewSource;
use p2m_core::{Domain, GfnRange, Mfn, P2mError, INVALID_MFN};
use reference_model::{RefModel, RefView};
use std::fmt;

/// The kinds of divergence.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum DivergenceClass {
    /// The device can reach a frame or right the reference forbids.
    OverPermissive,
    /// A device walk passes through a freed (or non-table) frame.
    FreedFrameReachable,
    /// The current IOMMU view grants less than the reference.
    UnderPermissive,
    /// The CPU-side p2m disagrees with the reference.
    CpuView,
}

impl DivergenceClass {
    /// Stable name (used in reports and regression file checks).
    pub fn name(self) -> &'static str {
        match self {
            DivergenceClass::OverPermissive => "over-permissive",
            DivergenceClass::FreedFrameReachable => "freed-frame-reachable",
            DivergenceClass::UnderPermissive => "under-permissive",
            DivergenceClass::CpuView => "cpu-view",
        }
    }
    /// Parses [`Self::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [
            DivergenceClass::OverPermissive,
            DivergenceClass::FreedFrameReachable,
            DivergenceClass::UnderPermissive,
            DivergenceClass::CpuView,
        ]
        .into_iter()
        .find(|c| c.name() == s)
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
    /// `set_entry` sequence number that left the stale state (if from a cache record).
    pub stale_seq: Option<u64>,
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

fn ref_desc(v: &RefView) -> String {
    if v.perm.is_none() {
        format!("gfn {} → nothing", v.range)
    } else {
        format!("gfn {} → mfn {} {}", v.range, v.mfn, v.perm)
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

/// Checks the device view of `range` against the reference.
pub fn check_range(
    dom: &Domain,
    refm: &RefModel,
    range: GfnRange,
    allow_under: bool,
    check_under: bool,
) -> Option<Finding> {
    let dv = dom.device_view(range);
    if let Some((f, src)) = dv.faults.first() {
        let (frame, r, what) = match f {
            WalkFault::FreedFrame { frame, range } => (*frame, *range, "freed table frame"),
            WalkFault::NonTableFrame { frame, range } => {
                (*frame, *range, "frame that holds no table (guest data?)")
            }
        };
        return Some(Finding {
            class: DivergenceClass::FreedFrameReachable,
            gfn: r.start,
            device: format!(
                "{} for gfn {} walks through {} {:#x}",
                describe_source(*src),
                r,
                what,
                frame
            ),
            reference: refm
                .device_extents(GfnRange {
                    start: r.start,
                    end: r.start + 1,
                })
                .first()
                .map(ref_desc)
                .unwrap_or_default(),
            stale_seq: seq_of(*src),
        });
    }
    let views = refm.device_extents(range);
    for (t, src) in &dv.translations {
        if t.perm.is_none() {
            continue;
        }
        if let Some(f) = over_permissive(t, *src, &views) {
            return Some(f);
        }
    }
    if check_under && !allow_under {
        let current: Vec<&Translation> = dv
            .translations
            .iter()
            .filter(|(_, s)| *s == ViewSource::Current)
            .map(|(t, _)| t)
            .collect();
        for v in &views {
            if let Some(f) = under_permissive(v, &current) {
                return Some(f);
            }
        }
    }
    None
}

fn over_permissive(t: &Translation, src: ViewSource, views: &[RefView]) -> Option<Finding> {
    for v in views {
        let Some(o) = t.range.intersect(&v.range) else {
            continue;
        };
        let t_mfn = t.mfn.wrapping_add(o.start - t.range.start);
        let v_mfn = if v.mfn == INVALID_MFN {
            Some(INVALID_MFN.0)
        } else {
            Some(v.mfn.0.wrapping_add(o.start - v.range.start))
        };
        let ok = !v.perm.is_none()
            && v_mfn.map(frame_field) == Some(frame_field(t_mfn))
            && t.perm.is_subset_of(v.perm);
        if !ok {
            return Some(Finding {
                class: DivergenceClass::OverPermissive,
                gfn: o.start,
                device: format!(
                    "{} maps gfn {} → mfn {} {} (leaf of {} pages)",
                    describe_source(src),
                    o,
                    Mfn(t_mfn),
                    t.perm,
                    t.leaf_pages
                ),
                reference: ref_desc(&RefView {
                    range: o,
                    mfn: v_mfn.map(Mfn).unwrap_or(INVALID_MFN),
                    perm: v.perm,
                }),
                stale_seq: seq_of(src),
            });
        }
    }
    None
}

fn under_permissive(v: &RefView, current: &[&Translation]) -> Option<Finding> {
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
        Some(Finding {
            class: DivergenceClass::UnderPermissive,
            gfn,
            device: dev,
            reference: ref_desc(v),
            stale_seq: None,
        })
    };
    for t in pieces {
        let o = t.range.intersect(&v.range)?;
        if o.start > covered {
            return fail(
                covered,
                format!("current tables map nothing at gfn {covered:#x}"),
            );
        }
        let want = v.mfn.0.wrapping_add(o.start - v.range.start);
        let got = t.mfn.wrapping_add(o.start - t.range.start);
        if frame_field(got) != frame_field(want) || !v.perm.is_subset_of(t.perm) {
            return fail(
                o.start,
                format!("current tables map gfn {} → mfn {} {}", o, Mfn(got), t.perm),
            );
        }
        covered = covered.max(o.end);
    }
    if covered < v.range.end {
        return fail(
            covered,
            format!("current tables map nothing at gfn {covered:#x}"),
        );
    }
    None
}

/// Compares the `set_entry` results and the CPU view at a few gfns of the op range.
pub fn check_cpu(
    dom: &Domain,
    refm: &RefModel,
    real: Result<(), P2mError>,
    reference: Result<(), P2mError>,
    range: GfnRange,
) -> Option<Finding> {
    // Both must accept or both refuse; the error kinds may be checked in another
    // order (Xen's p2m-pt tests the type before anything else).
    if real.is_ok() != reference.is_ok() {
        return Some(Finding {
            class: DivergenceClass::CpuView,
            gfn: range.start,
            device: format!("set_entry returned {real:?}"),
            reference: format!("reference returned {reference:?}"),
            stale_seq: None,
        });
    }
    if real.is_err() || range.start >> p2m_core::GFN_BITS != 0 {
        return None;
    }
    let probes = [range.start, range.start + range.len() / 2, range.end - 1];
    for g in probes {
        let (rmfn, rtype, _) = refm.get_entry(g);
        let got = dom.get_entry(g);
        let (gmfn, gtype) = match got {
            Some(e) => (e.mfn, e.p2mt),
            None => (INVALID_MFN, p2m_core::P2mType::Invalid),
        };
        let mfn_ok = !rmfn.is_valid() || gmfn == rmfn;
        if gtype != rtype || !mfn_ok {
            return Some(Finding {
                class: DivergenceClass::CpuView,
                gfn: g,
                device: format!("get_entry gives mfn {gmfn} {gtype}"),
                reference: format!("mfn {rmfn} {rtype}"),
                stale_seq: None,
            });
        }
    }
    None
}

//! Op-level delta debugging: shrink a diverging scenario while it still shows the
//! same divergence class.
//!
//! # Frame selectors
//!
//! `ptf:K`, `tbl:L` and `cur` are resolved when their op runs, so dropping or simplifying
//! an earlier op can make them name another frame (`ptf:K` counts allocations, which
//! every dropped table-allocating op renumbers). The shrinker therefore remembers, for
//! every selector op, the frame it resolved to in the last accepted run, and the relative
//! selectors (`tbl:L`, `cur`) that named that frame there (its *roles*). A candidate
//! (ops dropped or one op simplified) is tried in two spellings; it is kept when one of
//! them keeps the divergence class, spelled the first way unless only the second keeps
//! the class or it needs fewer `ptf:` selectors:
//! 1. **same frames**: every selector op names the frame it named before, spelled, in
//!    order of preference, `INVALID_MFN` (it resolved to nothing), a plain literal (the
//!    frame is not a table frame of the candidate run), a relative selector that resolves
//!    to it at that op, `ptf:K` (the frame's allocation index there);
//! 2. **same roles**: every selector op keeps its first role (e.g. `tbl:1`: "the L1 table
//!    under this gfn", wherever the candidate allocated it), or its spelling when it had
//!    none.
//!
//! Per op, a selector is also tried as `INVALID_MFN`, and every op that names the same
//! table frame is tried at once as a plain literal frame with the same offset in its
//! 1 GiB page (the table-ness did not matter then); a literal frame at or above
//! `MAX_PAGE` (not `mfn_valid`) is tried as `INVALID_MFN` before anything else. A final
//! respelling of every selector in the order above leaves the run, and so the verdict,
//! unchanged: a minimized trace holds `ptf:` only for a table frame that no relative
//! selector names at its op.

use crate::oracle::DivergenceClass;
use crate::runner::{resolve_mfn, Session};
use crate::scenario::{MfnSel, Op, Scenario, SetEntryOp, MFN_POOL_BASE};
use p2m_core::callers::{CallerOp, InterleavedBatch};
use p2m_core::physmap::AddToPhysmapRange;
use p2m_core::{Domain, Mfn, P2mAccess, P2mType, INVALID_MFN, MAX_PAGE};

/// The revision a minimization runs under, and whether every class is fatal.
#[derive(Clone, Copy, Debug)]
struct RunAs {
    rev: p2m_core::Revision,
    strict: bool,
    /// The original divergence's reachability tier (see `crate::reach`): every candidate
    /// must have the same — minimizing never changes the reachability verdict, neither
    /// down (a caller chain stays one) nor up (dropping the op that made it internal-API
    /// only would report another finding).
    tier: (bool, bool),
}

impl RunAs {
    /// The reachability tier of `d`: (reachable, reached by a caller chain).
    fn tier_of(d: &crate::runner::Divergence) -> (bool, bool) {
        (d.is_reachable(), d.is_caller_chain())
    }

    /// Whether a candidate's divergence `d` keeps the original's reachability tier.
    fn keeps_reach(&self, d: &crate::runner::Divergence) -> bool {
        Self::tier_of(d) == self.tier
    }
}

/// Upper bound on shrinking rounds (each round strictly simplifies; this only guards
/// against a mistake in that argument).
const MAX_ROUNDS: usize = 10_000;

/// The relative selectors, in order of preference.
const RELATIVE: [MfnSel; 4] = [
    MfnSel::TableAt(1),
    MfnSel::TableAt(2),
    MfnSel::TableAt(3),
    MfnSel::Current,
];

/// One op of the scenario being shrunk, with what its frame was in the last accepted run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    /// The op as spelled now.
    op: Op,
    /// The frame its selector (or literal) resolved to in the last accepted run.
    frame: Mfn,
    /// Bit `i`: `RELATIVE[i]` resolved to `frame` at this op in that run.
    roles: u8,
}

impl Item {
    /// The op's frame selector (`Invalid` for an op without one).
    fn mfn(&self) -> MfnSel {
        self.op.mfn_sel()
    }
}

/// How a candidate's selector ops are spelled (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spelling {
    /// Each selector op names the frame it named in the last accepted run.
    SameFrames,
    /// Each selector op keeps its first role, or its spelling.
    SameRoles,
}

/// The scenario being shrunk: configuration, flag and items.
#[derive(Clone, Debug)]
struct Work {
    /// The scenario's configuration and flag (its ops are `items`).
    base: Scenario,
    /// The ops with their frames in the last accepted run.
    items: Vec<Item>,
}

impl Work {
    /// The scenario as spelled now.
    fn scenario(&self) -> Scenario {
        Scenario {
            ops: self.items.iter().map(|i| i.op).collect(),
            ..self.base.clone()
        }
        .with_hotplug_derived()
    }
}

/// `true` when `f` currently is, or ever was, a page-table frame of `dom`.
fn is_table_frame(dom: &Domain, f: Mfn) -> bool {
    dom.mem().ever_allocated().contains(&f.0)
}

/// The preferred spelling of frame `f` for an op on `gfn` in `dom`'s current state.
fn spell(dom: &Domain, gfn: u64, f: Mfn) -> MfnSel {
    if f == INVALID_MFN {
        return MfnSel::Invalid;
    }
    let ever = dom.mem().ever_allocated();
    let Some(k) = ever.iter().position(|&x| x == f.0) else {
        return MfnSel::Frame(f.0);
    };
    RELATIVE
        .into_iter()
        .find(|&sel| resolve_mfn(dom, gfn, sel) == f)
        .or_else(|| u16::try_from(k).ok().map(MfnSel::TableFrame))
        .unwrap_or(MfnSel::Frame(f.0))
}

/// The roles of frame `f` at an op on `gfn` in `dom`'s current state (bit `i`: `RELATIVE[i]`).
fn roles_of(dom: &Domain, gfn: u64, f: Mfn) -> u8 {
    if f == INVALID_MFN {
        return 0;
    }
    RELATIVE
        .iter()
        .enumerate()
        .filter(|&(_, &sel)| resolve_mfn(dom, gfn, sel) == f)
        .fold(0, |acc, (i, _)| acc | 1 << i)
}

/// Runs `items` (respelling selector ops per `how`; ops at `fixed` are taken as spelled)
/// under `rev`; returns the respelled items, refreshed, up to the op that showed `class`
/// — `None` when the run shows no divergence or another class first.
fn attempt(
    base: &Scenario,
    items: &[Item],
    fixed: Option<usize>,
    how: Spelling,
    rev: RunAs,
    class: DivergenceClass,
) -> Option<Vec<Item>> {
    let mut sess = Session::for_scenario(base, rev.rev);
    sess.set_strict(rev.strict);
    let mut out = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let Op::SetEntry(mut e) = it.op else {
            out.push(*it);
            if let Some(f) = sess.step(&it.op) {
                let keeps = f.class == class && rev.keeps_reach(&sess.divergence(f));
                return keeps.then_some(out);
            }
            continue;
        };
        if e.mfn.is_selector() && fixed != Some(i) {
            e.mfn = match how {
                Spelling::SameFrames => spell(sess.domain(), e.gfn, it.frame),
                Spelling::SameRoles => (0..RELATIVE.len())
                    .find(|b| it.roles & 1 << b != 0)
                    .map_or(e.mfn, |b| RELATIVE[b]),
            };
        }
        let dom = sess.domain();
        let frame = resolve_mfn(dom, e.gfn, e.mfn);
        let roles = roles_of(dom, e.gfn, frame);
        let op = Op::SetEntry(e);
        out.push(Item { op, frame, roles });
        if let Some(f) = sess.step(&op) {
            let keeps = f.class == class && rev.keeps_reach(&sess.divergence(f));
            return keeps.then_some(out);
        }
    }
    None
}

/// How simple the spelling of `items` is, smaller first: `ptf:` ops, then relative ones.
fn spelling_cost(items: &[Item]) -> (usize, usize) {
    items.iter().fold((0, 0), |(p, r), it| match it.mfn() {
        MfnSel::TableFrame(_) => (p + 1, r),
        MfnSel::TableAt(_) | MfnSel::Current => (p, r + 1),
        MfnSel::Frame(_) | MfnSel::Invalid => (p, r),
    })
}

/// The candidate `items` as a new [`Work`] when some spelling keeps `class`: same frames,
/// or same roles when only those keep it or they spell it with fewer `ptf:` selectors.
fn fit(
    w: &Work,
    items: Vec<Item>,
    fixed: Option<usize>,
    rev: RunAs,
    class: DivergenceClass,
) -> Option<Work> {
    let frames = attempt(&w.base, &items, fixed, Spelling::SameFrames, rev, class);
    let roles_differ = match &frames {
        None => true,
        Some(f) => f
            .iter()
            .zip(&items)
            .any(|(a, b)| matches!(a.mfn(), MfnSel::TableFrame(_)) && b.roles != 0),
    };
    let roles = if roles_differ {
        attempt(&w.base, &items, fixed, Spelling::SameRoles, rev, class)
    } else {
        None
    };
    let best = match (frames, roles) {
        (Some(f), Some(r)) if spelling_cost(&r) < spelling_cost(&f) => r,
        (Some(f), _) => f,
        (None, r) => r?,
    };
    Some(Work {
        base: w.base.clone(),
        items: best,
    })
}

/// Candidate simplifications of one op, simplest first.
fn simpler_ops(op: &Op) -> Vec<Op> {
    let e = match op {
        Op::SetEntry(e) => e,
        Op::AddToPhysmap(b) => {
            // Fewer pages, each candidate strictly smaller (so shrinking terminates).
            let mut sizes = vec![1, b.size / 2, b.size.saturating_sub(1)];
            sizes.retain(|&n| n < b.size);
            sizes.dedup();
            return sizes
                .into_iter()
                .map(|size| Op::AddToPhysmap(AddToPhysmapRange { size, ..*b }))
                .collect();
        }
        Op::Call(c) => return simpler_calls(c).into_iter().map(Op::Call).collect(),
        Op::FailAlloc { nth } => {
            let mut v: Vec<u32> = vec![1, nth / 2, nth.saturating_sub(1)];
            v.retain(|&k| k >= 1 && k < *nth);
            v.dedup();
            return v.into_iter().map(|nth| Op::FailAlloc { nth }).collect();
        }
        Op::Interleaved(ib) => {
            let mut v = Vec::new();
            let mut at = |ib2: InterleavedBatch| v.push(Op::Interleaved(ib2));
            if ib.second.after > 0 {
                let mut x = *ib;
                x.second.after = 0;
                at(x);
            }
            for size in [1, ib.batch.size / 2, ib.batch.size.saturating_sub(1)] {
                if size < ib.batch.size {
                    let mut x = *ib;
                    x.batch.size = size;
                    at(x);
                }
            }
            for c in simpler_calls(&ib.second.op) {
                let mut x = *ib;
                x.second.op = c;
                at(x);
            }
            return v;
        }
    };
    let mut v = Vec::new();
    let with_mfn = |mfn: MfnSel| {
        let mut s = *e;
        s.mfn = mfn;
        Op::SetEntry(s)
    };
    // A frame the machine does not have, or a selector: first of all, `INVALID_MFN`.
    let beyond = matches!(e.mfn, MfnSel::Frame(m) if m >= MAX_PAGE);
    if beyond || e.mfn.is_selector() {
        v.push(with_mfn(MfnSel::Invalid));
    }
    if e.order > 0 && e.order != 9 && e.order != 18 {
        v.push(Op::SetEntry(with_order(e, 0)));
    }
    if e.order == 18 {
        v.push(Op::SetEntry(with_order(e, 9)));
    }
    if e.order >= 9 {
        v.push(Op::SetEntry(with_order(e, 0)));
    }
    if e.access != P2mAccess::Rwx {
        let mut s = *e;
        s.access = P2mAccess::Rwx;
        v.push(Op::SetEntry(s));
    }
    // Only move toward simpler types (a strict order), so shrinking terminates.
    let rank = |t: P2mType| match t {
        P2mType::RamRw => 0,
        P2mType::Invalid => 1,
        P2mType::RamRo => 2,
        _ => 3,
    };
    for t in [P2mType::RamRw, P2mType::Invalid, P2mType::RamRo] {
        if rank(t) < rank(e.p2mt) {
            let mut s = *e;
            s.p2mt = t;
            v.push(Op::SetEntry(s));
        }
    }
    if !beyond && !matches!(e.mfn, MfnSel::Invalid) && !e.mfn.is_selector() {
        v.push(with_mfn(MfnSel::Invalid));
    }
    // Rounder numbers, each strictly smaller (so shrinking terminates): the gfn and a
    // literal frame aligned down to 1 GiB, then 2 MiB.
    for shift in [18u32, 9] {
        let g = e.gfn & !((1u64 << shift) - 1);
        if g < e.gfn {
            let mut s = *e;
            s.gfn = g;
            v.push(Op::SetEntry(s));
        }
        if let MfnSel::Frame(m) = e.mfn {
            let m2 = m & !((1u64 << shift) - 1);
            if m2 < m {
                v.push(with_mfn(MfnSel::Frame(m2)));
            }
        }
    }
    v
}

/// Candidate simplifications of a caller op, each strictly smaller in pages, order or
/// gfn (so shrinking terminates).
fn simpler_calls(c: &CallerOp) -> Vec<CallerOp> {
    let mut v = Vec::new();
    match *c {
        CallerOp::Populate { gfn, mfn, order } => {
            for o in [0, 9] {
                if o < order {
                    v.push(CallerOp::Populate { gfn, mfn, order: o });
                }
            }
        }
        CallerOp::DecreaseReservation { gfn, order } => {
            for o in [0, 9] {
                if o < order {
                    v.push(CallerOp::DecreaseReservation { gfn, order: o });
                }
            }
        }
        CallerOp::SetMemType { gfn, nr, mem_type } => {
            for n in [1, nr / 2] {
                if n > 0 && n < nr {
                    v.push(CallerOp::SetMemType {
                        gfn,
                        nr: n,
                        mem_type,
                    });
                }
            }
        }
        CallerOp::MemoryMapping { gfn, mfn, nr, add } => {
            for n in [1, nr / 2] {
                if n > 0 && n < nr {
                    v.push(CallerOp::MemoryMapping {
                        gfn,
                        mfn,
                        nr: n,
                        add,
                    });
                }
            }
        }
        CallerOp::SetMemAccess { gfn, nr, access } => {
            for n in [1, nr / 2] {
                if n > 0 && n < nr {
                    v.push(CallerOp::SetMemAccess { gfn, nr: n, access });
                }
            }
        }
        CallerOp::IdentityMap {
            gfn,
            nr,
            access,
            add,
        } => {
            for n in [1, nr / 2] {
                if n > 0 && n < nr {
                    v.push(CallerOp::IdentityMap {
                        gfn,
                        nr: n,
                        access,
                        add,
                    });
                }
            }
        }
        // A run of extents shrinks to fewer, down to the one-extent op it repeats.
        CallerOp::PopulateRun { gfn, mfn, nr } => {
            v.push(CallerOp::Populate { gfn, mfn, order: 0 });
            if nr / 2 > 1 {
                v.push(CallerOp::PopulateRun {
                    gfn,
                    mfn,
                    nr: nr / 2,
                });
            }
        }
        CallerOp::DecreaseRun { gfn, nr } => {
            v.push(CallerOp::DecreaseReservation { gfn, order: 0 });
            if nr / 2 > 1 {
                v.push(CallerOp::DecreaseRun { gfn, nr: nr / 2 });
            }
        }
        CallerOp::TrackDirtyVram { gfn, nr } => {
            for n in [1, nr / 2] {
                if n > 0 && n < nr {
                    v.push(CallerOp::TrackDirtyVram { gfn, nr: n });
                }
            }
        }
        CallerOp::GuestAccess { gfn, write: true } => {
            v.push(CallerOp::GuestAccess { gfn, write: false });
        }
        CallerOp::AssignDevice | CallerOp::SetBrokenPage { .. } | CallerOp::GuestAccess { .. } => {}
    }
    v
}

/// The frame selector of `op`.
fn cand_mfn(op: &Op) -> MfnSel {
    op.mfn_sel()
}

/// `e` with `order`.
fn with_order(e: &SetEntryOp, order: u32) -> SetEntryOp {
    let mut s = *e;
    s.order = order;
    s
}

/// A plain frame for table frame `f`: the same offset in a 1 GiB page of the pool (so
/// alignment is kept at every order), the first such frame that is no table frame of the
/// run `w` describes.
fn plain_frame(w: &Work, rev: RunAs, f: Mfn) -> Option<Mfn> {
    let mut sess = Session::for_scenario(&w.base, rev.rev);
    sess.set_strict(rev.strict);
    for it in &w.items {
        sess.step(&it.op);
    }
    let off = f.0 & ((1 << 18) - 1);
    (0..64u64)
        .map(|k| Mfn(MFN_POOL_BASE + (k << 18) + off))
        .find(|&p| !is_table_frame(sess.domain(), p))
}

/// Tries the frame simplifications of selector op `i`: every op naming its (table)
/// frame as one plain literal frame. Returns the new work when one keeps `class`.
fn plain_for_selector(w: &Work, i: usize, rev: RunAs, class: DivergenceClass) -> Option<Work> {
    let it = w.items[i];
    if !it.mfn().is_selector() || it.frame == INVALID_MFN {
        return None;
    }
    let p = plain_frame(w, rev, it.frame)?;
    let items: Vec<Item> = w
        .items
        .iter()
        .map(|o| match o.op {
            Op::SetEntry(mut e) if o.frame == it.frame && e.mfn != MfnSel::Invalid => {
                e.mfn = MfnSel::Frame(p.0);
                Item {
                    op: Op::SetEntry(e),
                    ..*o
                }
            }
            _ => *o,
        })
        .collect();
    // The group is spelled out now; other selector ops keep their frames or roles.
    fit(w, items, Some(i), rev, class)
}

/// Shrinks `s` to a 1-minimal op sequence (no single op can be dropped) that still
/// diverges with the same class under `rev`; then simplifies each op, keeping what each
/// frame selector names (see the module docs). Returns `s` unchanged when it does not
/// diverge.
pub fn minimize(s: &Scenario, rev: p2m_core::Revision) -> Scenario {
    minimize_with(s, rev, false)
}

/// [`minimize`], with every divergence class fatal when `strict` (so a leaked-table
/// finding shrinks like any other).
pub fn minimize_with(s: &Scenario, rev: p2m_core::Revision, strict: bool) -> Scenario {
    let Some(original) = crate::runner::run_with(s, rev, strict).divergence else {
        return s.clone();
    };
    let rev = RunAs {
        rev,
        strict,
        tier: RunAs::tier_of(&original),
    };
    let items: Vec<Item> = s
        .ops
        .iter()
        .map(|&op| Item {
            op,
            frame: INVALID_MFN,
            roles: 0,
        })
        .collect();
    let mut w = Work {
        base: Scenario {
            ops: Vec::new(),
            ..s.clone()
        },
        items,
    };
    // The original run, spelled as written: fixes every selector's frame and roles, and
    // truncates after the observing op.
    let Some(class) = crate::runner::run_with(s, rev.rev, strict)
        .divergence
        .map(|d| d.class())
    else {
        return s.clone();
    };
    match attempt(&w.base, &w.items, None, Spelling::SameRoles, rev, class) {
        // Every op keeps its spelling: roles are empty before the first run.
        Some(items) => w.items = items,
        None => return s.clone(),
    }
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        // Drop chunks, then single ops (ddmin-style, halving chunk size).
        let mut chunk = w.items.len() / 2;
        while chunk >= 1 {
            let mut i = 0;
            while i < w.items.len() && w.items.len() > 1 {
                let mut items = w.items.clone();
                let end = (i + chunk).min(items.len());
                items.drain(i..end);
                match fit(&w, items, None, rev, class) {
                    Some(t) if !t.items.is_empty() => {
                        w = t;
                        changed = true;
                    }
                    _ => i += chunk,
                }
            }
            chunk /= 2;
        }
        let mut i = 0;
        while i < w.items.len() {
            let mut next = None;
            for cand in simpler_ops(&w.items[i].op) {
                let mut items = w.items.clone();
                // A new frame is taken as spelled; otherwise the op's selector, too,
                // keeps naming its frame (or role).
                let pin = (cand_mfn(&cand) != items[i].mfn()).then_some(i);
                items[i].op = cand;
                if let Some(t) = fit(&w, items, pin, rev, class) {
                    next = Some(t);
                    break;
                }
            }
            if next.is_none() {
                next = plain_for_selector(&w, i, rev, class);
            }
            if let Some(t) = next {
                w = t;
                changed = true;
            }
            i += 1;
        }
        if w.base.allow_under_permissive {
            let mut t = w.clone();
            t.base.allow_under_permissive = false;
            if let Some(t) = fit(&t, t.items.clone(), None, rev, class) {
                w = t;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Respell every selector by the preference order; the frames, hence the run, stay.
    if let Some(items) = attempt(&w.base, &w.items, None, Spelling::SameFrames, rev, class) {
        w.items = items;
    }
    w.scenario()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse_trace;

    #[test]
    fn spelling_prefers_invalid_plain_relative_then_ptf() {
        let s = parse_trace(
            "config mode=ept share=on\n\
             set_entry gfn=0x40000 mfn=0x100000 order=0 ram_rw rwx\n",
        )
        .unwrap();
        let mut sess = Session::for_scenario(&s, p2m_core::Revision::fixed());
        sess.step(&s.ops[0]);
        let dom = sess.domain();
        let root = Mfn(dom.mem().ever_allocated()[0]);
        let l1 = Mfn(dom.p2m_table_at(0x40000, 1).unwrap());
        assert_eq!(spell(dom, 0x40000, INVALID_MFN), MfnSel::Invalid);
        assert_eq!(spell(dom, 0x40000, Mfn(0x100000)), MfnSel::Frame(0x100000));
        assert_eq!(spell(dom, 0x40000, l1), MfnSel::TableAt(1));
        assert_eq!(spell(dom, 0x40000, root), MfnSel::TableFrame(0));
        // Under another 2 MiB region the L1 table is no relative selector's frame.
        let k = dom.mem().ever_allocated().iter().position(|&f| f == l1.0);
        assert_eq!(
            spell(dom, 0x80000, l1),
            MfnSel::TableFrame(k.unwrap() as u16)
        );
        assert_eq!(roles_of(dom, 0x40000, l1), 0b0001);
        assert_eq!(roles_of(dom, 0x40000, Mfn(0x100000)), 0b1000);
        assert_eq!(roles_of(dom, 0x40000, INVALID_MFN), 0);
    }
}

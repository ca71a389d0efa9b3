//! Op-level delta debugging: shrink a diverging scenario while it still shows the
//! same divergence class.

use crate::oracle::DivergenceClass;
use crate::runner::run_with;
use crate::scenario::{MfnSel, Op, Scenario};
use p2m_core::{P2mAccess, P2mType, Revision};

fn class_of(s: &Scenario, rev: Revision, strict: bool) -> Option<DivergenceClass> {
    run_with(s, rev, strict).divergence.map(|d| d.class())
}

/// Candidate simplifications of one op, simplest first.
fn simpler_ops(op: &Op) -> Vec<Op> {
    let Op::SetEntry(e) = op;
    let mut v = Vec::new();
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
    if !matches!(e.mfn, MfnSel::Invalid) {
        let mut s = *e;
        s.mfn = MfnSel::Invalid;
        v.push(Op::SetEntry(s));
    }
    // Rounder numbers, each strictly smaller (so shrinking terminates): the gfn and a
    // literal frame aligned down to 1 GiB, then 2 MiB; the first page-table frame.
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
                let mut s = *e;
                s.mfn = MfnSel::Frame(m2);
                v.push(Op::SetEntry(s));
            }
        }
    }
    if let MfnSel::TableFrame(k) = e.mfn {
        if k > 0 {
            let mut s = *e;
            s.mfn = MfnSel::TableFrame(0);
            v.push(Op::SetEntry(s));
        }
    }
    v
}

fn with_order(e: &crate::scenario::SetEntryOp, order: u32) -> crate::scenario::SetEntryOp {
    let mut s = *e;
    s.order = order;
    s
}

/// Shrinks `s` to a 1-minimal op sequence (no single op can be dropped) that still
/// diverges with the same class under `rev`; then simplifies each op. Returns `s`
/// unchanged when it does not diverge.
pub fn minimize(s: &Scenario, rev: Revision) -> Scenario {
    minimize_with(s, rev, false)
}

/// [`minimize`], with every divergence class fatal when `strict` (so a leaked-table
/// finding shrinks like any other).
pub fn minimize_with(s: &Scenario, rev: Revision, strict: bool) -> Scenario {
    let Some(class) = class_of(s, rev, strict) else {
        return s.clone();
    };
    let mut cur = s.clone();
    // Truncate after the observing op.
    if let Some(d) = run_with(&cur, rev, strict).divergence {
        cur.ops.truncate(d.observed_op + 1);
    }
    loop {
        let mut changed = false;
        // Drop chunks, then single ops (ddmin-style, halving chunk size).
        let mut chunk = cur.ops.len() / 2;
        while chunk >= 1 {
            let mut i = 0;
            while i < cur.ops.len() && cur.ops.len() > 1 {
                let mut t = cur.clone();
                let end = (i + chunk).min(t.ops.len());
                t.ops.drain(i..end);
                if !t.ops.is_empty() && class_of(&t, rev, strict) == Some(class) {
                    cur = t;
                    changed = true;
                } else {
                    i += chunk;
                }
            }
            chunk /= 2;
        }
        for i in 0..cur.ops.len() {
            for cand in simpler_ops(&cur.ops[i]) {
                let mut t = cur.clone();
                t.ops[i] = cand;
                if class_of(&t, rev, strict) == Some(class) {
                    cur = t;
                    changed = true;
                    break;
                }
            }
        }
        if cur.allow_under_permissive {
            let mut t = cur.clone();
            t.allow_under_permissive = false;
            if class_of(&t, rev, strict) == Some(class) {
                cur = t;
                changed = true;
            }
        }
        if !changed {
            return cur;
        }
    }
}

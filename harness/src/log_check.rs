//! Self-checks of the op log: the spans and splits the model hands the oracle must agree
//! with the model's own bookkeeping, independently derived.
//!
//! Every range the oracle checks, and every range a report prints, comes from the op log
//! (`p2m_core::events::OpLog`). The log's spans are computed by each structure's free
//! and split code; the frame allocator separately records, where a table is linked, the
//! guest range of the entry pointing at it (`MachineMemory::set_span`). So:
//!
//! - a freed table lies within the span its free event names;
//! - an unlinked table is the table its unlink names: same span, same level;
//! - a split superpage is naturally aligned and 2 MiB or 1 GiB large, and (for a
//!   `set_entry`) lies on the walk to a gfn the op names.
//!
//! A violation is a `model-invariant` finding: a bug of the harness, fatal, since the
//! checked ranges and the reports of that run cannot be trusted.

use crate::oracle::{owner_name, DivergenceClass, Finding};
use p2m_core::events::{Freed, OpLog};
use p2m_core::GfnRange;

/// Pages of the superpages a split can take apart (2 MiB and 1 GiB).
const SUPERPAGE_PAGES: [u64; 2] = [1 << 9, 1 << 18];

/// Checks `log` (of one op) against the allocator's spans; `named`: the ranges of a
/// `set_entry` op, which every split must meet (`None` for a batch, whose removals
/// follow the M2P to gfns it does not name).
pub fn check_op_log(log: &OpLog, named: Option<&[GfnRange]>) -> Option<Finding> {
    for ev in &log.frees {
        let (Freed::Table { owner, level }, Some(own)) = (ev.what, ev.table_span) else {
            continue;
        };
        if !within(own, ev.span) {
            return Some(invariant(
                own.start,
                format!(
                    "the free of {} L{level} table {:#x} names gfn {}",
                    owner_name(owner),
                    ev.frame,
                    ev.span
                ),
                format!("the table translates gfn {own}, where it was linked"),
            ));
        }
    }
    for u in &log.unlinked {
        if u.table_level.is_some_and(|l| l != u.level) {
            return Some(invariant(
                u.span.start,
                format!(
                    "the unlink of {} table {:#x} names level {}",
                    owner_name(u.owner),
                    u.frame,
                    u.level
                ),
                format!(
                    "the frame holds a level-{} table",
                    u.table_level.unwrap_or(0)
                ),
            ));
        }
        let Some(own) = u.table_span else { continue };
        if own != u.span {
            return Some(invariant(
                own.start,
                format!(
                    "the unlink of {} L{} table {:#x} names gfn {}",
                    owner_name(u.owner),
                    u.level,
                    u.frame,
                    u.span
                ),
                format!("the table translates gfn {own}, where it was linked"),
            ));
        }
    }
    for sp in &log.splits {
        let r = sp.range;
        let sized = SUPERPAGE_PAGES.contains(&r.len()) && r.start % r.len() == 0;
        let on_walk = named.is_none_or(|n| n.iter().any(|o| o.intersect(&r).is_some()));
        if !sized || !on_walk {
            return Some(invariant(
                r.start,
                format!("{} split gfn {r}", sp.by),
                "a split takes apart one naturally aligned 2 MiB or 1 GiB superpage on \
                 the walk to a gfn the op names"
                    .into(),
            ));
        }
    }
    None
}

fn within(inner: GfnRange, outer: GfnRange) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn invariant(gfn: u64, got: String, want: String) -> Finding {
    let mut f = Finding::new(DivergenceClass::ModelInvariant, gfn, got, want);
    f.context
        .push("a harness bug (the model's op log), not a Xen finding".into());
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2m_core::events::{FreeEvent, Split, Unlinked};
    use p2m_core::frames::TableOwner;

    fn r(start: u64, end: u64) -> GfnRange {
        GfnRange { start, end }
    }

    #[test]
    fn a_free_naming_the_wrong_span_is_an_invariant_breach() {
        let mut log = OpLog::default();
        let ev = FreeEvent {
            frame: 0x7000_0000,
            what: Freed::Table {
                owner: TableOwner::P2m,
                level: 1,
            },
            span: r(0x400, 0x600),
            table_span: Some(r(0x400, 0x600)),
            reaches: Vec::new(),
        };
        log.frees.push(ev.clone());
        assert_eq!(check_op_log(&log, None), None);
        log.frees[0].span = r(0x600, 0x800);
        let f = check_op_log(&log, None).unwrap();
        assert_eq!(f.class, DivergenceClass::ModelInvariant);
        assert!(f.device.contains("0x70000000"), "{}", f.device);
    }

    #[test]
    fn an_unlink_names_exactly_the_table_it_unlinks() {
        let mut log = OpLog::default();
        log.unlinked.push(Unlinked {
            frame: 0x7000_0000,
            generation: 1,
            owner: TableOwner::Iommu,
            level: 1,
            span: r(0x200, 0x400),
            table_span: Some(r(0x200, 0x400)),
            table_level: Some(1),
        });
        assert_eq!(check_op_log(&log, None), None);
        for bad in [r(0, 0x200), r(0, 1 << 18)] {
            log.unlinked[0].span = bad;
            assert!(check_op_log(&log, None).is_some(), "{bad}");
        }
        log.unlinked[0].span = r(0x200, 0x400);
        log.unlinked[0].level = 2;
        assert!(check_op_log(&log, None).is_some());
    }

    #[test]
    fn splits_are_aligned_superpages_on_the_walk() {
        let split = |range| Split {
            range,
            by: "ept_split_super_page",
        };
        let named = [r(0x40205, 0x40206)];
        let mut log = OpLog::default();
        log.splits.push(split(r(0x40200, 0x40400)));
        assert_eq!(check_op_log(&log, Some(&named)), None);
        for bad in [
            r(0x40201, 0x40401),
            r(0x40200, 0x40600),
            r(0x40400, 0x40600),
        ] {
            log.splits[0] = split(bad);
            assert!(check_op_log(&log, Some(&named)).is_some(), "{bad}");
        }
        // A batch names no walk: only the shape is checked.
        log.splits[0] = split(r(0x40400, 0x40600));
        assert_eq!(check_op_log(&log, None), None);
    }
}

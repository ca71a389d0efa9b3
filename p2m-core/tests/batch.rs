//! The `XENMAPSPACE_gmfn_range` batch on both lines, driven through `crate::Domain`: the
//! flushes Xen issues for one page and for more than one call's worth, the backward order
//! of overlapping ranges, the page moves, the errors, and the frees the oracle checks.

use p2m_core::cache::Invalidation;
use p2m_core::events::Freed;
use p2m_core::master::iommu::FlushFlags;
use p2m_core::master::p2m::IommuCall;
use p2m_core::physmap::{AddToPhysmapRange, PhysmapError};
use p2m_core::*;

const RWX: P2mAccess = P2mAccess::Rwx;

/// A domain of `rev` in `cfg` with `n` 4 KiB RAM pages mapped from gfn `g0` to frames from
/// `m0`.
fn populated(cfg: Config, rev: &str, g0: u64, m0: u64, n: u64) -> Domain {
    let mut d = Domain::new(cfg, Revision::by_name(rev).expect("revision"));
    for i in 0..n {
        d.set_entry(g0 + i, Mfn(m0 + i), 0, P2mType::RamRw, RWX)
            .expect("map");
    }
    d
}

fn batch(idx: u64, gpfn: u64, size: u16) -> AddToPhysmapRange {
    AddToPhysmapRange { idx, gpfn, size }
}

/// The `iommu_iotlb_flush` calls of the last op (master).
fn flushes(d: &Domain) -> Vec<(u64, u64, FlushFlags)> {
    d.as_master()
        .expect("master")
        .calls
        .iter()
        .filter_map(|c| match *c {
            IommuCall::IotlbFlush {
                dfn,
                page_count,
                flags,
            } => Some((dfn, page_count, flags)),
            _ => None,
        })
        .collect()
}

const M: FlushFlags = FlushFlags {
    added: false,
    modified: true,
    all: false,
};
const AM: FlushFlags = FlushFlags {
    added: true,
    modified: true,
    all: false,
};

/// `done` = 1 on master: no flush inside the batch (`dont_flush`), then the old gfn with
/// `MODIFIED` and the new gfn with `ADDED | MODIFIED` (`memory.c:1065,1079`); the page moved.
#[test]
fn master_one_page_flushes_old_then_new() {
    for cfg in [
        Config::new(Mode::Ept, Vendor::Vtd, false),
        Config::new(Mode::Npt, Vendor::Amd, false),
        Config::new(Mode::Ept, Vendor::Vtd, true),
    ] {
        let mut d = populated(cfg, "xen-master", 0x1000, 0x101000, 1);
        let out = d.add_to_physmap_range(batch(0x1000, 0x2000, 1));
        assert_eq!((out.done, out.rc), (1, Ok(())), "{cfg}");
        assert_eq!(flushes(&d), [(0x1000, 1, M), (0x2000, 1, AM)], "{cfg}");
        assert_eq!(d.get_entry(0x1000), None, "{cfg}");
        let e = d.get_entry(0x2000).expect("moved");
        assert_eq!((e.mfn, e.p2mt), (Mfn(0x101000), P2mType::RamRw), "{cfg}");
        assert_eq!(d.stats().physmap_pages_moved, 1);
        assert_eq!(d.stats().physmap_continuations, 0);
    }
}

/// `done` > 16 on master: a continuation after 16 pages, each call flushing its own pages;
/// VT-d turns the aligned power-of-two counts into page-selective flushes of that order.
#[test]
fn master_continuation_every_16_pages() {
    let cfg = Config::new(Mode::Ept, Vendor::Vtd, false);
    let mut d = populated(cfg, "xen-master", 0x1000, 0x101000, 20);
    let out = d.add_to_physmap_range(batch(0x1000, 0x3000, 20));
    assert_eq!((out.done, out.rc), (20, Ok(())));
    assert_eq!(
        flushes(&d),
        [
            (0x1000, 16, M),
            (0x3000, 16, AM),
            (0x1010, 4, M),
            (0x3010, 4, AM)
        ]
    );
    assert_eq!(d.stats().physmap_continuations, 1);
    let psi: Vec<_> = d
        .op_log()
        .invalidations
        .iter()
        .map(|i| i.cmd)
        .filter(|c| matches!(c, Invalidation::VtdPsi { .. }))
        .collect();
    assert_eq!(
        psi,
        [
            Invalidation::VtdPsi {
                gfn: 0x1000,
                order: 4,
                ih: false
            },
            Invalidation::VtdPsi {
                gfn: 0x3000,
                order: 4,
                ih: false
            },
            Invalidation::VtdPsi {
                gfn: 0x1010,
                order: 2,
                ih: false
            },
            Invalidation::VtdPsi {
                gfn: 0x3010,
                order: 2,
                ih: false
            },
        ]
    );
    for i in 0..20 {
        assert_eq!(
            d.get_entry(0x3000 + i).map(|e| e.mfn),
            Some(Mfn(0x101000 + i))
        );
        assert_eq!(d.get_entry(0x1000 + i), None);
    }
}

/// A destination overlapping the source from above runs backwards on master (every page
/// moves by the offset); 4.6 runs forwards, so the first pages land on later sources,
/// pushing their pages out (freed), and are then moved on again.
#[test]
fn overlap_backwards_on_master_forwards_on_46() {
    let cfg = Config::new(Mode::Npt, Vendor::Amd, false);
    let mut m = populated(cfg, "xen-master", 0x1000, 0x101000, 4);
    let out = m.add_to_physmap_range(batch(0x1000, 0x1002, 4));
    assert_eq!((out.done, out.rc), (4, Ok(())));
    for i in 0..4 {
        assert_eq!(
            m.get_entry(0x1002 + i).map(|e| e.mfn),
            Some(Mfn(0x101000 + i))
        );
    }
    assert_eq!(m.get_entry(0x1000), None);
    assert_eq!(flushes(&m), [(0x1000, 4, M), (0x1002, 4, AM)]);

    let mut x = populated(cfg, "committed", 0x1000, 0x101000, 4);
    let out = x.add_to_physmap_range(batch(0x1000, 0x1002, 4));
    assert_eq!((out.done, out.rc), (4, Ok(())));
    // Pages 0 and 1 displace pages 2 and 3, then move on to 0x1004 and 0x1005.
    let freed: Vec<u64> = x.op_log().frees.iter().map(|f| f.frame).collect();
    assert_eq!(freed, [0x101002, 0x101003]);
    assert_eq!(x.get_entry(0x1004).map(|e| e.mfn), Some(Mfn(0x101000)));
    assert_eq!(x.get_entry(0x1005).map(|e| e.mfn), Some(Mfn(0x101001)));
    for g in 0x1000..0x1004 {
        assert_eq!(x.get_entry(g), None);
    }
}

/// Master's refusals: a source that is not `ram_rw`/`ram_logdirty` (`-EACCES`), a
/// `mmio_direct` destination (`-EPERM`), a grant destination (`guest_remove_page`:
/// `-ENXIO`); the pages before the error stay moved and flushed.
#[test]
fn master_errors_stop_the_batch() {
    let cfg = Config::new(Mode::Ept, Vendor::Vtd, false);
    let mut d = populated(cfg, "xen-master", 0x1000, 0x101000, 2);
    d.set_entry(0x1002, Mfn(0x101002), 0, P2mType::RamRo, RWX)
        .unwrap();
    let out = d.add_to_physmap_range(batch(0x1000, 0x2000, 3));
    assert_eq!((out.done, out.rc), (2, Err(PhysmapError::Acces)));
    assert_eq!(flushes(&d), [(0x1000, 2, M), (0x2000, 2, AM)]);

    let mut d = populated(cfg, "xen-master", 0x1000, 0x101000, 1);
    d.set_entry(0x2000, Mfn(0x100000000), 0, P2mType::MmioDirect, RWX)
        .unwrap();
    let out = d.add_to_physmap_range(batch(0x1000, 0x2000, 1));
    assert_eq!((out.done, out.rc), (0, Err(PhysmapError::Perm)));
    assert!(d.get_entry(0x1000).is_some(), "source kept");

    let mut d = populated(cfg, "xen-master", 0x1000, 0x101000, 1);
    d.set_entry(0x2000, Mfn(0x205000), 0, P2mType::GrantMapRw, RWX)
        .unwrap();
    let out = d.add_to_physmap_range(batch(0x1000, 0x2000, 1));
    assert_eq!((out.done, out.rc), (0, Err(PhysmapError::NxIo)));
}

/// A populated destination: its page is freed, on master only after a flush
/// (`guest_remove_page` clears `dont_flush`, dea460d869): nothing reaches it then. Without
/// that (`xsa346-remove`, and 4.6 on VT-d) an IOTLB record still maps it at the free.
#[test]
fn displaced_page_free_is_checked_at_the_free() {
    let cfg = Config::new(Mode::Ept, Vendor::Vtd, false);
    for (rev, reached) in [
        ("xen-master", false),
        ("xsa346-remove", true),
        ("committed", true),
        ("fixed", false),
    ] {
        let mut d = populated(cfg, rev, 0x1000, 0x101000, 1);
        d.set_entry(0x2000, Mfn(0x102000), 0, P2mType::RamRw, RWX)
            .unwrap();
        let out = d.add_to_physmap_range(batch(0x1000, 0x2000, 1));
        assert_eq!(out.done, 1, "{rev}");
        let ev: Vec<_> = d
            .op_log()
            .frees
            .iter()
            .filter(|f| matches!(f.what, Freed::GuestPage { .. }))
            .collect();
        assert_eq!(ev.len(), 1, "{rev}");
        assert_eq!(ev[0].frame, 0x102000, "{rev}");
        assert_eq!(ev[0].what, Freed::GuestPage { gfn: 0x2000 }, "{rev}");
        assert_eq!(!ev[0].reaches.is_empty(), reached, "{rev}: {:?}", ev[0]);
        assert_eq!(d.stats().guest_pages_freed, 1, "{rev}");
    }
}

/// 4.6 moving a page onto itself frees it while it is mapped (fixed by ba45ae4d7f);
/// master leaves it alone.
#[test]
fn same_gfn_frees_the_page_on_46_only() {
    let cfg = Config::new(Mode::Npt, Vendor::Amd, false);
    let mut x = populated(cfg, "committed", 0x1000, 0x101000, 1);
    let out = x.add_to_physmap_range(batch(0x1000, 0x1000, 1));
    assert_eq!(out.done, 1);
    let ev = &x.op_log().frees;
    assert_eq!(ev.len(), 1);
    assert!(
        !ev[0].reaches.is_empty(),
        "still mapped at 0x1000: {:?}",
        ev[0]
    );
    assert_eq!(x.get_entry(0x1000).map(|e| e.mfn), Some(Mfn(0x101000)));

    let mut m = populated(cfg, "xen-master", 0x1000, 0x101000, 1);
    let out = m.add_to_physmap_range(batch(0x1000, 0x1000, 1));
    assert_eq!(out.done, 1);
    assert!(m.op_log().frees.is_empty());
}

/// 4.6's end-of-batch flushes: VT-d a page-selective flush for one page and a
/// domain-selective one for more; AMD has no `->iotlb_flush` (its map/unmap flush
/// themselves, whatever `dont_flush` says).
#[test]
fn xen46_end_of_batch_flushes() {
    let vtd = Config::new(Mode::Ept, Vendor::Vtd, false);
    let mut d = populated(vtd, "committed", 0x1000, 0x101000, 3);
    d.add_to_physmap_range(batch(0x1000, 0x2000, 1));
    let cmds: Vec<_> = d.op_log().invalidations.iter().map(|i| i.cmd).collect();
    assert_eq!(
        cmds,
        [
            Invalidation::VtdPsi {
                gfn: 0x1000,
                order: 0,
                ih: false
            },
            Invalidation::VtdPsi {
                gfn: 0x2000,
                order: 0,
                ih: false
            }
        ]
    );
    d.add_to_physmap_range(batch(0x1001, 0x2001, 2));
    let cmds: Vec<_> = d.op_log().invalidations.iter().map(|i| i.cmd).collect();
    assert_eq!(cmds, [Invalidation::VtdDsi, Invalidation::VtdDsi]);

    let amd = Config::new(Mode::Npt, Vendor::Amd, false);
    let mut d = populated(amd, "committed", 0x1000, 0x101000, 1);
    d.add_to_physmap_range(batch(0x1000, 0x2000, 1));
    assert!(d
        .op_log()
        .invalidations
        .iter()
        .all(|i| matches!(i.cmd, Invalidation::AmdPages { order: 0, .. })));
}

/// The AMD empty-table hole (F6): moving the only page of an L1 table queues the table
/// while `dont_flush` is set; the batch's `MODIFIED` flush is order 0 with PDE=0, so a
/// page-directory record still points at the table the drain frees. `master-fixed` keeps
/// the dropped `IOMMU_FLUSHF_all` and flushes everything.
#[test]
fn amd_emptied_table_under_dont_flush() {
    let cfg = Config::new(Mode::Npt, Vendor::Amd, false);
    for (rev, reached) in [("xen-master", true), ("master-fixed", false)] {
        let mut d = populated(cfg, rev, 0x1000, 0x101000, 1);
        d.add_to_physmap_range(batch(0x1000, 0x2000, 1));
        let s = d.stats();
        assert!(s.iommu_queued_while_dont_flush >= 1, "{rev}: {s:?}");
        assert!(s.iommu_drains_nonempty >= 1, "{rev}: {s:?}");
        let tables: Vec<_> = d
            .op_log()
            .frees
            .iter()
            .filter(|f| matches!(f.what, Freed::Table { .. }))
            .collect();
        assert!(!tables.is_empty(), "{rev}");
        assert_eq!(
            tables.iter().any(|f| !f.reaches.is_empty()),
            reached,
            "{rev}: {tables:?}"
        );
    }
}

//! Fault injection at model level: "the k-th table allocation of this op fails", and the
//! error path each line's Xen takes (ignored return values, `domain_crash`, a partial
//! split freed, the superpage left in place).

use p2m_core::callers::CallerOp;
use p2m_core::{
    Config, Domain, GfnRange, Mfn, Mode, P2mAccess, P2mError, P2mType, Revision, Vendor,
};

fn dom(mode: Mode, vendor: Vendor, share: bool, rev: &str) -> Domain {
    let cfg = Config::new(mode, vendor, share).normalized();
    Domain::new(cfg, Revision::by_name(rev).expect(rev))
}

fn populate(gfn: u64, mfn: u64, order: u32) -> CallerOp {
    CallerOp::Populate { gfn, mfn, order }
}

/// The device's current translation of `gfn`, if any.
fn device_maps(d: &Domain, gfn: u64) -> Option<u64> {
    d.current_view(GfnRange::of_order(gfn, 0))
        .translations
        .iter()
        .find(|t| t.range.contains(gfn) && !t.perm.is_none())
        .map(|t| t.mfn + (gfn - t.range.start))
}

/// 4.6 EPT with separate VT-d tables: a 4 KiB map in a fresh 1 GiB region allocates the
/// p2m's L2 and L1 (allocations 1 and 2), then the IOMMU's (3 and 4). When the IOMMU's
/// fails, `intel_iommu_map_page` returns `-ENOMEM`, `iommu_map_page` passes it up and
/// `ept_set_entry` ignores it: the p2m grants the page, the IOMMU does not map it. With
/// 834c97baeb (`iommu_map_failure_crashes_domu`, in `fixed`) the domain is crashed.
#[test]
fn xen46_iommu_map_enomem_is_ignored_until_834c97baeb() {
    for nth in [3, 4] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, false, "committed");
        d.call(populate(0x1000, 0x101000, 0));
        d.arm_alloc_failure(nth);
        d.call(populate(0x40000, 0x102000, 0));
        assert!(d.alloc_failed(), "nth={nth}: the failure fired");
        let e = d.get_entry(0x40000).expect("the p2m maps the page");
        assert_eq!((e.mfn, e.p2mt), (Mfn(0x102000), P2mType::RamRw));
        assert_eq!(
            device_maps(&d, 0x40000),
            None,
            "nth={nth}: IOMMU has nothing"
        );
        assert_eq!(d.crashed(), None, "4.6 ignores the error");
        // The other pages are unaffected.
        assert_eq!(device_maps(&d, 0x1000), Some(0x101000));

        let mut d = dom(Mode::Ept, Vendor::Vtd, false, "fixed");
        d.call(populate(0x1000, 0x101000, 0));
        d.arm_alloc_failure(nth);
        d.call(populate(0x40000, 0x102000, 0));
        assert!(d.crashed().is_some(), "nth={nth}: fixed crashes the domU");
    }
}

/// A failure in the p2m's own walk (allocations 1 and 2 above) leaves the target entry
/// unwritten and the IOMMU untouched: `ept_next_level` fails with `-ENOENT` on 4.6 and
/// `-ENOMEM` on master; p2m-pt's `p2m_next_level` with `-ENOMEM`.
#[test]
fn walk_allocation_failure_writes_nothing() {
    for (mode, vendor) in [(Mode::Ept, Vendor::Vtd), (Mode::Npt, Vendor::Amd)] {
        for rev in ["committed", "xen-master"] {
            let mut d = dom(mode, vendor, false, rev);
            d.arm_alloc_failure(1);
            let rc = d.set_entry(0x40000, Mfn(0x102000), 0, P2mType::RamRw, P2mAccess::Rwx);
            let want = if mode == Mode::Ept && rev == "committed" {
                P2mError::TableNoEnt
            } else {
                P2mError::TableNoMem
            };
            assert_eq!(rc, Err(want), "{mode} {rev}");
            assert!(d.get_entry(0x40000).is_none(), "{mode} {rev}");
            assert_eq!(device_maps(&d, 0x40000), None, "{mode} {rev}");
            // The next op allocates normally.
            let rc = d.set_entry(0x40000, Mfn(0x102000), 0, P2mType::RamRw, P2mAccess::Rwx);
            assert_eq!(rc, Ok(()), "{mode} {rev}");
            assert_eq!(device_maps(&d, 0x40000), Some(0x102000), "{mode} {rev}");
        }
    }
}

/// Splitting a 1 GiB EPT leaf down to 4 KiB allocates the new L2 table, then the L1 tables
/// of its entries in order. When one of them fails, `ept_split_super_page` stops, Xen
/// frees the part built so far (`ept_free_entry` on its local copy), returns `-ENOMEM`,
/// and the 1 GiB leaf stays: the whole range still translates as before, on both lines,
/// and no table is left allocated.
#[test]
fn failed_ept_split_frees_the_partial_subtree_and_keeps_the_superpage() {
    for rev in ["committed", "fixed", "xen-master"] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, true, rev);
        d.call(populate(0x40000, 0x140000, 18));
        let live = d.mem().live_tables();
        d.arm_alloc_failure(3);
        let rc = d.set_entry(0x40400, Mfn(0x999000), 0, P2mType::RamRw, P2mAccess::Rwx);
        assert_eq!(rc, Err(P2mError::TableNoMem), "{rev}");
        assert_eq!(d.mem().live_tables(), live, "{rev}: partial subtree freed");
        assert!(
            d.p2m_table_at(0x40400, 2).is_none(),
            "{rev}: still a 1 GiB leaf"
        );
        for g in [0x40000, 0x40400, 0x7ffff] {
            assert_eq!(
                d.get_entry(g).map(|e| e.mfn),
                Some(Mfn(0x140000 + g - 0x40000))
            );
            assert_eq!(
                device_maps(&d, g),
                Some(0x140000 + g - 0x40000),
                "{rev} {g:#x}"
            );
        }
    }
}

/// 4.6 `guest_remove_page` with the removal failing (the 2 MiB leaf cannot be split):
/// 4.6 frees the page while the p2m and the IOMMU still map it (XSA-222); with a0cce6048d
/// (`guest_remove_page_checks_remove_rc`, in `fixed`) the page stays allocated and
/// `decrease_reservation` stops.
#[test]
fn xen46_failed_removal_frees_the_page_until_xsa222() {
    for (rev, freed) in [("committed", true), ("fixed", false)] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, false, rev);
        d.call(populate(0x40000, 0x140000, 9));
        d.arm_alloc_failure(1);
        let out = d.call(CallerOp::DecreaseReservation {
            gfn: 0x40000,
            order: 0,
        });
        assert!(d.alloc_failed());
        assert_eq!(
            d.get_entry(0x40000).map(|e| e.mfn),
            Some(Mfn(0x140000)),
            "{rev}"
        );
        assert_eq!(device_maps(&d, 0x40000), Some(0x140000), "{rev}");
        assert_eq!(d.stats().guest_pages_freed == 1, freed, "{rev}");
        assert_eq!(
            out.done == 1,
            freed,
            "{rev}: 4.6 counts the page as removed"
        );
    }
}

/// Master: an IOMMU table allocation failure in `iommu_map` crashes the domain (it is
/// never the hardware domain here); the p2m entry is already written.
#[test]
fn master_iommu_map_failure_crashes_the_domain() {
    for (mode, vendor) in [
        (Mode::Ept, Vendor::Vtd),
        (Mode::Npt, Vendor::Amd),
        (Mode::Shadow, Vendor::Vtd),
    ] {
        let mut d = dom(mode, vendor, false, "xen-master");
        d.call(populate(0x1000, 0x101000, 0));
        d.arm_alloc_failure(3);
        d.call(populate(0x40000, 0x102000, 0));
        assert!(d.crashed().is_some(), "{mode}");
        assert_eq!(
            d.get_entry(0x40000).map(|e| e.mfn),
            Some(Mfn(0x102000)),
            "{mode}"
        );
    }
}

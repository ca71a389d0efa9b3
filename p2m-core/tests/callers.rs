//! The caller ops at model level, per line: the order each one writes, what it refuses,
//! and how a second vCPU inside the batch sees `iommu_dont_flush_iotlb`.

use p2m_core::cache::Invalidation;
use p2m_core::callers::{CallerOp, HvmMemType, Interleave, InterleavedBatch};
use p2m_core::physmap::{AddToPhysmapRange, PhysmapError};
use p2m_core::{Config, Domain, Mfn, Mode, P2mAccess, P2mType, Revision, Vendor, MMIO_RO_FRAMES};

fn dom(mode: Mode, vendor: Vendor, share: bool, rev: &str) -> Domain {
    let cfg = Config::new(mode, vendor, share).normalized();
    Domain::new(cfg, Revision::by_name(rev).expect(rev))
}

fn populate(gfn: u64, mfn: u64, order: u32) -> CallerOp {
    CallerOp::Populate { gfn, mfn, order }
}

/// Whether `gfn` is mapped by a leaf above 4 KiB (no level-1 table on its walk).
fn superpage(d: &Domain, gfn: u64) -> bool {
    d.p2m_table_at(gfn, 1).is_none() && d.get_entry(gfn).is_some()
}

/// `populate_physmap` goes through `p2m_set_entry`'s chunking: under HAP an aligned
/// 2 MiB extent is one 2 MiB leaf on both lines; a misaligned one is 512 4 KiB entries;
/// shadow mode gets 2 MiB leaves on master (f2d947ac07) and 4 KiB entries on 4.6.
#[test]
fn populate_order_choice_per_line() {
    for (mode, vendor) in [(Mode::Ept, Vendor::Vtd), (Mode::Npt, Vendor::Amd)] {
        for rev in ["fixed", "master-fixed"] {
            let mut d = dom(mode, vendor, false, rev);
            assert_eq!(d.call(populate(0x200, 0x100200, 9)).done, 512);
            assert!(
                superpage(&d, 0x3ff),
                "{mode} {rev}: aligned extent is one leaf"
            );
            let mut d = dom(mode, vendor, false, rev);
            assert_eq!(d.call(populate(0x201, 0x100201, 9)).done, 512);
            assert!(
                !superpage(&d, 0x201),
                "{mode} {rev}: misaligned extent is 4 KiB"
            );
            assert_eq!(d.get_entry(0x400).map(|e| e.mfn), Some(Mfn(0x100400)));
        }
    }
    let mut master = dom(Mode::Shadow, Vendor::Vtd, false, "master-fixed");
    master.call(populate(0x200, 0x100200, 9));
    assert!(superpage(&master, 0x200), "master shadow: 2 MiB pages");
    let mut old = dom(Mode::Shadow, Vendor::Vtd, false, "fixed");
    old.call(populate(0x200, 0x100200, 9));
    assert!(!superpage(&old, 0x200), "4.6 shadow: 4 KiB pages only");
    assert_eq!(old.get_entry(0x3ff).map(|e| e.p2mt), Some(P2mType::RamRw));
    // A 1 GiB extent under HAP is one 1 GiB leaf (no level-2 table below the root's L3).
    let mut d = dom(Mode::Ept, Vendor::Vtd, false, "master-fixed");
    d.call(populate(0x40000, 0x140000, 18));
    assert!(d.p2m_table_at(0x40000, 2).is_none() && d.get_entry(0x7ffff).is_some());
}

/// Master `populate_physmap` over a grant entry crashes the domain (`p2m_add_page`,
/// `-EPERM`) before writing anything; 4.6 crashes it too but counts the extent as done
/// (`populate_physmap` ignores the result).
#[test]
fn populate_over_a_grant_crashes_the_domain() {
    for (rev, done, rc) in [
        ("master-fixed", 0, Err(PhysmapError::Perm)),
        ("fixed", 512, Ok(())),
    ] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, false, rev);
        d.set_entry(0x205, Mfn(0x180005), 0, P2mType::GrantMapRw, P2mAccess::Rwx)
            .unwrap();
        let out = d.call(populate(0x200, 0x100200, 9));
        assert_eq!((out.done, out.rc), (done, rc), "{rev}");
        assert!(d.crashed().is_some(), "{rev}");
        assert_eq!(d.get_entry(0x200), None, "{rev}: nothing written");
    }
}

/// `decrease_reservation` removes page by page (`guest_remove_page`), stopping at the
/// first gfn it cannot remove; master refuses extents above order 12, 4.6 above 18.
#[test]
fn decrease_reservation_page_by_page() {
    for rev in ["fixed", "master-fixed"] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, false, rev);
        d.call(populate(0x200, 0x100200, 9));
        let out = d.call(CallerOp::DecreaseReservation {
            gfn: 0x200,
            order: 0,
        });
        assert_eq!((out.done, out.rc), (1, Ok(())), "{rev}");
        assert_eq!(d.get_entry(0x200), None, "{rev}");
        assert!(d.get_entry(0x201).is_some(), "{rev}: the rest stays");
        // A hole in the middle of an extent stops the op there.
        let out = d.call(CallerOp::DecreaseReservation {
            gfn: 0x200,
            order: 9,
        });
        assert_eq!((out.done, out.rc.is_err()), (0, true), "{rev}");
        let out = d.call(CallerOp::DecreaseReservation {
            gfn: 0x201,
            order: 0,
        });
        assert_eq!(out.done, 1, "{rev}");
        assert!(
            d.op_log().frees.iter().any(|f| f.frame == 0x100201),
            "{rev}: the page is freed"
        );
    }
    let mut d = dom(Mode::Ept, Vendor::Vtd, false, "master-fixed");
    d.call(populate(0x40000, 0x140000, 18));
    let out = d.call(CallerOp::DecreaseReservation {
        gfn: 0x40000,
        order: 13,
    });
    assert_eq!((out.done, out.rc), (0, Ok(())), "above max_order: nothing");
}

/// The set-mem-type op: 4.6 and master both allow RAM → `ram_ro` and a hole → `mmio_dm`;
/// master allows `ioreq_server` only from and back to `ram_rw` (`allow_p2m_type_change`)
/// and needs HAP for it; 4.6 returns 0 for a refusal after a change.
#[test]
fn set_mem_type_transitions_per_line() {
    let ro = |gfn, nr| CallerOp::SetMemType {
        gfn,
        nr,
        mem_type: HvmMemType::RamRo,
    };
    for rev in ["fixed", "master-fixed"] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, false, rev);
        d.call(populate(0x200, 0x100200, 9));
        assert_eq!(d.call(ro(0x200, 1)).rc, Ok(()), "{rev}");
        let e = d.get_entry(0x200).unwrap();
        assert_eq!((e.mfn, e.p2mt), (Mfn(0x100200), P2mType::RamRo), "{rev}");
        assert!(
            !superpage(&d, 0x200),
            "{rev}: changed at 4 KiB, the superpage split"
        );
        // 0x400 is a hole: refused (-EINVAL), after 0x3ff changed.
        let out = d.call(ro(0x3ff, 2));
        let want = if rev == "fixed" {
            Ok(())
        } else {
            Err(PhysmapError::Inval)
        };
        assert_eq!((out.done, out.rc), (1, want), "{rev}");
    }
    let ioreq = |gfn| CallerOp::SetMemType {
        gfn,
        nr: 1,
        mem_type: HvmMemType::IoreqServer,
    };
    let mut d = dom(Mode::Ept, Vendor::Vtd, false, "master-fixed");
    d.call(populate(0x200, 0x100200, 0));
    d.call(ro(0x200, 1));
    assert_eq!(
        d.call(ioreq(0x200)).rc,
        Err(PhysmapError::Inval),
        "ram_ro ↛ ioreq"
    );
    let mut d = dom(Mode::Shadow, Vendor::Vtd, false, "master-fixed");
    d.call(populate(0x200, 0x100200, 0));
    assert_eq!(d.call(ioreq(0x200)).rc, Err(PhysmapError::OpNotSupp));
}

/// `XEN_DOMCTL_memory_mapping`: master maps 2 MiB at a time where `mmio_order` allows,
/// retries at 4 KiB over `mmio_ro_ranges`, and unmaps a 2 MiB entry with one
/// `INVALID_MFN` 2 MiB write (efa9596e9d); 4.6 maps 4 KiB entries and refuses more than
/// 64 frames.
#[test]
fn memory_mapping_orders_per_line() {
    let map = |gfn, mfn, nr, add| CallerOp::MemoryMapping { gfn, mfn, nr, add };
    let bar = 0x1_0000_1000u64; // device MMIO above the RAM, clear of mmio_ro_ranges
    let mut d = dom(Mode::Ept, Vendor::Vtd, false, "master-fixed");
    assert_eq!(d.call(map(0x200, bar, 512, true)).rc, Ok(()));
    assert!(superpage(&d, 0x200), "one 2 MiB mmio_direct entry");
    assert_eq!(d.call(map(0x200, bar, 512, false)).done, 512);
    assert_eq!(d.get_entry(0x300), None);
    let ro = MMIO_RO_FRAMES.start & !511;
    let mut d = dom(Mode::Ept, Vendor::Vtd, false, "master-fixed");
    assert_eq!(d.call(map(0x200, ro, 512, true)).rc, Ok(()));
    assert!(!superpage(&d, 0x200), "over mmio_ro_ranges: 4 KiB entries");
    let mut old = dom(Mode::Ept, Vendor::Vtd, false, "fixed");
    let out = old.call(map(0x200, bar, 65, true));
    assert_eq!((out.done, out.rc), (0, Err(PhysmapError::TooBig)));
    assert_eq!(old.call(map(0x200, bar, 64, true)).rc, Ok(()));
    assert!(!superpage(&old, 0x200));
    assert_eq!(
        old.get_entry(0x23f).map(|e| (e.mfn, e.p2mt)),
        Some((Mfn(bar + 0x3f), P2mType::MmioDirect))
    );
}

/// `XEN_DOMCTL_set_broken_page_p2m` retypes a RAM page to `ram_broken` on the same frame
/// and refuses anything else.
#[test]
fn set_broken_page_retypes_ram_only() {
    for rev in ["fixed", "master-fixed"] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, false, rev);
        d.call(populate(0x200, 0x100200, 0));
        let out = d.call(CallerOp::SetBrokenPage { gfn: 0x200 });
        assert_eq!((out.done, out.rc), (1, Ok(())), "{rev}");
        let e = d.get_entry(0x200).unwrap();
        assert_eq!(
            (e.mfn, e.p2mt),
            (Mfn(0x100200), P2mType::RamBroken),
            "{rev}"
        );
        let out = d.call(CallerOp::SetBrokenPage { gfn: 0x201 });
        assert_eq!(out.rc, Err(PhysmapError::Inval), "{rev}: a hole");
    }
}

/// A second vCPU inside the batch runs with `iommu_dont_flush_iotlb` clear (it is per
/// CPU): its removal is flushed at once (a VT-d PSI for its gfn) although the batch's
/// own unmaps are still deferred; the page it frees is checked at the gfn the batch
/// moved it from.
#[test]
fn second_vcpu_flushes_on_its_own_cpu() {
    for rev in ["xsa346-ref", "xen-master"] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, false, rev);
        for (g, m) in [(0x1000, 0x101000), (0x1001, 0x101001), (0x2001, 0x102001)] {
            d.call(populate(g, m, 0));
        }
        let out = d.add_to_physmap_interleaved(InterleavedBatch {
            batch: AddToPhysmapRange {
                idx: 0x1000,
                gpfn: 0x2000,
                size: 1,
            },
            second: Interleave {
                after: 1,
                op: CallerOp::DecreaseReservation {
                    gfn: 0x2000,
                    order: 0,
                },
            },
        });
        assert_eq!((out.batch.done, out.second.done), (1, 1), "{rev}");
        let cmds: Vec<Invalidation> = d.op_log().invalidations.iter().map(|i| i.cmd).collect();
        let psi = |gfn| Invalidation::VtdPsi {
            gfn,
            order: 0,
            ih: false,
        };
        // The second vCPU's flush of 0x2000 comes before the batch's flush of 0x1000.
        let second = cmds
            .iter()
            .position(|&c| c == psi(0x2000))
            .expect("PSI 0x2000");
        let batch = cmds
            .iter()
            .position(|&c| c == psi(0x1000))
            .expect("PSI 0x1000");
        assert!(second < batch, "{rev}: {cmds:?}");
        let free = d
            .op_log()
            .frees
            .iter()
            .find(|f| f.frame == 0x101000)
            .expect("the moved page is freed");
        // Without the held reference the page is freed before the batch's flush, while
        // the IOTLB still translates 0x1000 to it; with it, after.
        assert_eq!(
            free.reaches.iter().any(|r| r.range.start == 0x1000),
            rev == "xsa346-ref",
            "{rev}: {:?}",
            free.reaches
        );
    }
}

/// 4.6 hot-plug (`pci=hotplug`): `set_entry` leaves the IOMMU alone while `need_iommu(d)`
/// is 0; `assign_device` → `iommu_construct` → `arch_iommu_populate_page_table` then maps
/// every page of the domain read/write, the `ram_ro` one included, and flushes the IOTLB
/// once (VT-d: domain-selective). With `iommu_populate_uses_p2m_type` (`fixed`) the page
/// gets its type's permission. Master builds nothing at assignment: its tables mirrored
/// the p2m from creation.
#[test]
fn xen46_hotplug_assignment_maps_ram_ro_writable() {
    let hot = |rev: &str| {
        let mut cfg = Config::new(Mode::Ept, Vendor::Vtd, false).normalized();
        cfg.pci_hotplug = true;
        Domain::new(cfg, Revision::by_name(rev).expect(rev))
    };
    let leaf_perm = |d: &Domain, gfn: u64| {
        p2m_core::walk::walk_root(d.io_tables(), d.mem(), p2m_core::GfnRange::of_order(gfn, 0))
            .translations
            .first()
            .map(|t| t.perm)
    };
    for (rev, want) in [
        ("committed", p2m_core::IommuPerm::RW),
        ("fixed", p2m_core::IommuPerm::R),
    ] {
        let mut d = hot(rev);
        d.call(populate(0x1000, 0x101000, 0));
        d.call(CallerOp::SetMemType {
            gfn: 0x1000,
            nr: 1,
            mem_type: HvmMemType::RamRo,
        });
        assert_eq!(
            leaf_perm(&d, 0x1000),
            None,
            "{rev}: no IOMMU sync before the device"
        );
        assert!(d
            .device_view(p2m_core::GfnRange::of_order(0x1000, 0))
            .translations
            .is_empty());
        d.call(CallerOp::AssignDevice);
        assert_eq!(leaf_perm(&d, 0x1000), Some(want), "{rev}");
        assert!(d
            .op_log()
            .invalidations
            .iter()
            .any(|i| i.cmd == Invalidation::VtdDsi));
        // From now on `set_entry` syncs as for a domain created with its device.
        d.call(populate(0x2000, 0x102000, 0));
        assert_eq!(
            leaf_perm(&d, 0x2000),
            Some(p2m_core::IommuPerm::RW),
            "{rev}"
        );
    }
    let mut cfg = Config::new(Mode::Ept, Vendor::Vtd, false).normalized();
    cfg.pci_hotplug = true;
    let mut m = Domain::new(cfg, Revision::by_name("xen-master").expect("master"));
    m.call(populate(0x1000, 0x101000, 0));
    assert!(m
        .device_view(p2m_core::GfnRange::of_order(0x1000, 0))
        .translations
        .is_empty());
    m.call(CallerOp::AssignDevice);
    assert_eq!(
        m.device_view(p2m_core::GfnRange::of_order(0x1000, 0))
            .translations
            .len(),
        1
    );
}

/// Identity maps of a device's reserved range: master `iommu_identity_mapping` maps each
/// page 1:1 as `mmio_direct` with the range's access (a read-only AMD IVMD gives the device
/// read only; the same range again is one more user, with another access `-EADDRINUSE`;
/// removal at the last user clears the pages); a populated page inside the range is
/// `-EBUSY`. 4.6 maps VT-d RMRRs `rw` whatever the range says and has no IVMD path here.
#[test]
fn identity_maps_per_line() {
    let id = |gfn: u64, nr: u32, access: P2mAccess, add: bool| CallerOp::IdentityMap {
        gfn,
        nr,
        access,
        add,
    };
    let device_perm = |d: &Domain, gfn: u64| {
        d.device_view(p2m_core::GfnRange::of_order(gfn, 0))
            .translations
            .first()
            .map(|(t, _)| (t.mfn, t.perm))
    };
    let mut m = dom(Mode::Npt, Vendor::Amd, false, "xen-master");
    assert!(m.call(id(0x800, 2, P2mAccess::R, true)).rc.is_ok());
    assert_eq!(
        m.get_entry(0x801).map(|e| (e.mfn, e.p2mt)),
        Some((Mfn(0x801), P2mType::MmioDirect))
    );
    assert_eq!(
        device_perm(&m, 0x801),
        Some((0x801, p2m_core::IommuPerm::R))
    );
    assert!(
        m.call(id(0x800, 2, P2mAccess::R, true)).rc.is_ok(),
        "second user"
    );
    assert_eq!(
        m.call(id(0x800, 2, P2mAccess::Rw, true)).rc,
        Err(PhysmapError::AddrInUse)
    );
    assert_eq!(
        m.call(id(0x801, 4, P2mAccess::R, true)).rc,
        Err(PhysmapError::AddrInUse),
        "overlap"
    );
    assert!(m.call(id(0x800, 2, P2mAccess::X, false)).rc.is_ok());
    assert!(m.get_entry(0x800).is_some(), "one user left");
    assert!(m.call(id(0x800, 2, P2mAccess::X, false)).rc.is_ok());
    assert!(m.get_entry(0x800).is_none(), "cleared at the last user");
    assert_eq!(
        m.call(id(0x800, 2, P2mAccess::X, false)).rc,
        Err(PhysmapError::NoEnt)
    );
    m.call(populate(0x901, 0x100901, 0));
    let out = m.call(id(0x900, 4, P2mAccess::Rw, true));
    assert_eq!((out.done, out.rc), (1, Err(PhysmapError::Busy)));

    let mut old = dom(Mode::Ept, Vendor::Vtd, false, "committed");
    assert!(old.call(id(0x800, 1, P2mAccess::R, true)).rc.is_ok());
    assert_eq!(
        old.get_entry(0x800).map(|e| e.access),
        Some(P2mAccess::Rw),
        "RMRRs are rw"
    );
    let mut amd46 = dom(Mode::Npt, Vendor::Amd, false, "committed");
    assert_eq!(
        amd46.call(id(0x800, 1, P2mAccess::R, true)).rc,
        Err(PhysmapError::OpNotSupp)
    );
}

//! The lazy type change at model level, on each kind of IOMMU table and both lines:
//! `track_dirty_vram` (`hap_track_dirty_vram` → `p2m_change_type_range`) marks entries,
//! the CPU reads the new type at once, and the leaf is rewritten when a vCPU next touches
//! the page (`resolve_misconfig` / `do_recalc`) — with no IOMMU call and no flush.

use p2m_core::callers::CallerOp;
use p2m_core::walk::walk_root;
use p2m_core::{Config, Domain, GfnRange, IommuPerm, Mfn, Mode, P2mType, Revision, Vendor};

fn dom(mode: Mode, vendor: Vendor, share: bool, rev: &str) -> Domain {
    let cfg = Config::new(mode, vendor, share).normalized();
    Domain::new(cfg, Revision::by_name(rev).expect(rev))
}

/// What the current IOMMU tables give the device at `gfn` (frame and right).
fn current(d: &Domain, gfn: u64) -> Option<(u64, IommuPerm)> {
    walk_root(d.io_tables(), d.mem(), GfnRange::of_order(gfn, 0))
        .translations
        .first()
        .map(|t| (t.mfn, t.perm))
}

/// Every right a device may still use at `gfn`: current tables and cache records.
fn reachable(d: &Domain, gfn: u64) -> IommuPerm {
    d.device_view(GfnRange::of_order(gfn, 0))
        .translations
        .iter()
        .fold(IommuPerm::NONE, |p, (t, _)| IommuPerm {
            read: p.read || t.perm.read,
            write: p.write || t.perm.write,
        })
}

fn ty(d: &Domain, gfn: u64) -> Option<P2mType> {
    d.get_entry(gfn).map(|e| e.p2mt)
}

/// Two VRAM pages inside a populated 2 MiB page, then a vCPU reading one of them: the
/// range change splits the superpage at its edges and marks the two entries; the CPU
/// view says `ram_logdirty` at once; the read resolves the mark. The IOMMU is never told
/// (but for the proposed split flush on `fixed` / `master-fixed`):
/// separate tables (VT-d with EPT, AMD with NPT) keep RW (`p2m_get_iommu_flags` gives
/// `ram_logdirty` RW); shared EPT loses W in the current tables (log-dirty is
/// write-protected, PML off) while the IOTLB may keep it — no invalidation is issued.
#[test]
fn vram_tracking_on_each_kind_of_iommu_table() {
    let kinds = [
        (Mode::Ept, Vendor::Vtd, false, "separate VT-d"),
        (Mode::Ept, Vendor::Vtd, true, "shared EPT"),
        (Mode::Npt, Vendor::Amd, false, "separate AMD"),
    ];
    for rev in ["fixed", "master-fixed", "committed", "xen-master"] {
        for (mode, vendor, share, kind) in kinds {
            let what = format!("{rev} {kind}");
            let mut d = dom(mode, vendor, share, rev);
            d.call(CallerOp::Populate {
                gfn: 0x200,
                mfn: 0x100200,
                order: 9,
            });
            assert_eq!(
                current(&d, 0x201),
                Some((0x100201, IommuPerm::RW)),
                "{what}"
            );
            let out = d.call(CallerOp::TrackDirtyVram { gfn: 0x201, nr: 2 });
            assert_eq!(out.done, 2, "{what}");
            // Xen issues no IOMMU invalidation; the proposed fix
            // `flush_covers_split_superpage` flushes the shared superpage it split.
            let xen = rev == "committed" || rev == "xen-master";
            assert_eq!(
                d.op_log().invalidations.is_empty(),
                xen || !share,
                "{what}: invalidations of the range change"
            );
            // The CPU reads the recalculated type before any leaf is rewritten.
            assert_eq!(ty(&d, 0x201), Some(P2mType::RamLogdirty), "{what}");
            assert_eq!(ty(&d, 0x202), Some(P2mType::RamLogdirty), "{what}");
            assert_eq!(ty(&d, 0x200), Some(P2mType::RamRw), "{what}");
            assert_eq!(ty(&d, 0x203), Some(P2mType::RamRw), "{what}");
            assert!(
                d.p2m_table_at(0x201, 1).is_some(),
                "{what}: the edge split the superpage"
            );
            // Marks only: the device's current tables are as they were.
            assert_eq!(
                current(&d, 0x201),
                Some((0x100201, IommuPerm::RW)),
                "{what}"
            );
            d.call(CallerOp::GuestAccess {
                gfn: 0x201,
                write: false,
            });
            assert!(d.op_log().invalidations.is_empty(), "{what}: no flush");
            assert_eq!(ty(&d, 0x201), Some(P2mType::RamLogdirty), "{what}");
            if share {
                // `resolve_misconfig` rewrote the leaf: w cleared in the EPT VT-d walks…
                assert_eq!(current(&d, 0x201), Some((0x100201, IommuPerm::R)), "{what}");
                // …and the write the IOTLB may hold stays usable.
                assert!(reachable(&d, 0x201).write, "{what}: the stale W survives");
            } else {
                assert_eq!(
                    current(&d, 0x201),
                    Some((0x100201, IommuPerm::RW)),
                    "{what}"
                );
            }
            // The vCPU's write retypes the page `ram_rw` (hvm_hap_nested_page_fault).
            d.call(CallerOp::GuestAccess {
                gfn: 0x201,
                write: true,
            });
            assert_eq!(ty(&d, 0x201), Some(P2mType::RamRw), "{what}");
            assert_eq!(
                current(&d, 0x201),
                Some((0x100201, IommuPerm::RW)),
                "{what}"
            );
            // Stopping tracking: the other page is marked back and reads `ram_rw`.
            d.call(CallerOp::TrackDirtyVram { gfn: 0, nr: 0 });
            assert_eq!(ty(&d, 0x202), Some(P2mType::RamRw), "{what}");
            assert!(d.crashed().is_none(), "{what}");
        }
    }
}

/// Shadow mode tracks VRAM in shadow entries: the p2m keeps its types.
#[test]
fn shadow_vram_tracking_leaves_the_p2m() {
    for rev in ["fixed", "master-fixed"] {
        let mut d = dom(Mode::Shadow, Vendor::Vtd, false, rev);
        d.call(CallerOp::Populate {
            gfn: 0x200,
            mfn: 0x100200,
            order: 0,
        });
        d.call(CallerOp::TrackDirtyVram { gfn: 0x200, nr: 1 });
        d.call(CallerOp::GuestAccess {
            gfn: 0x200,
            write: true,
        });
        assert_eq!(ty(&d, 0x200), Some(P2mType::RamRw), "{rev}");
    }
}

/// The range is cut at `max_mapped_pfn`, and master marks nothing for a one-page range
/// (`invalidate_start < invalidate_end`, `p2m.c:893`), where 4.6 marks the page; the
/// same range again re-arms tracking page by page (`p2m_log_dirty_range`).
#[test]
fn one_page_range_per_line() {
    for (rev, marked) in [("master-fixed", false), ("fixed", true)] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, false, rev);
        d.call(CallerOp::Populate {
            gfn: 0x300,
            mfn: 0x100300,
            order: 0,
        });
        d.call(CallerOp::TrackDirtyVram { gfn: 0x300, nr: 1 });
        let want = if marked {
            P2mType::RamLogdirty
        } else {
            P2mType::RamRw
        };
        assert_eq!(ty(&d, 0x300), Some(want), "{rev}");
        d.call(CallerOp::TrackDirtyVram { gfn: 0x300, nr: 1 });
        assert_eq!(ty(&d, 0x300), Some(P2mType::RamLogdirty), "{rev}: re-armed");
    }
}

/// 4.6 `do_recalc` with an AMD IOMMU sharing the p2m (a configuration 4.6 never runs):
/// a recalculated 2 MiB leaf gets next-level 1, so the IOMMU walks the guest's frame as a
/// table, and `ram_logdirty` loses IR/IW. The proposed fix `pt_recalc_keeps_iommu_flags`
/// (`fixed`) writes the bits `set_entry` writes.
#[test]
fn xen46_shared_amd_recalc_leaf_bits() {
    for (rev, broken) in [("committed", true), ("fixed", false)] {
        let mut d = dom(Mode::Npt, Vendor::Amd, true, rev);
        d.call(CallerOp::Populate {
            gfn: 0x400,
            mfn: 0x100400,
            order: 0,
        });
        d.call(CallerOp::Populate {
            gfn: 0x600,
            mfn: 0x100600,
            order: 9,
        });
        d.call(CallerOp::TrackDirtyVram {
            gfn: 0x600,
            nr: 512,
        });
        d.call(CallerOp::GuestAccess {
            gfn: 0x600,
            write: false,
        });
        assert_eq!(ty(&d, 0x600), Some(P2mType::RamLogdirty), "{rev}");
        let w = walk_root(d.io_tables(), d.mem(), GfnRange::of_order(0x600, 9));
        if broken {
            assert!(
                !w.faults.is_empty(),
                "{rev}: walks the data frame as a table"
            );
        } else {
            assert!(w.faults.is_empty(), "{rev}");
            assert_eq!(current(&d, 0x600), Some((0x100600, IommuPerm::RW)), "{rev}");
        }
        assert_eq!(d.get_entry(0x601).map(|e| e.mfn), Some(Mfn(0x100601)));
    }
}

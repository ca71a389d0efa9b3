//! Cost bounds for 1 GiB operations and the error paths of `set_entry`.

use p2m_core::xen46::domain::{Domain, P2mStats};
use p2m_core::*;

const ALL_CONFIGS: [(Mode, Vendor); 4] = [
    (Mode::Ept, Vendor::Vtd),
    (Mode::Npt, Vendor::Amd),
    (Mode::Shadow, Vendor::Vtd),
    (Mode::Shadow, Vendor::Amd),
];

fn dom(mode: Mode, vendor: Vendor, share: bool, rev: &str) -> Domain {
    Domain::new(
        Config::new(mode, vendor, share),
        Revision::by_name(rev).unwrap(),
    )
}

const BIG_GFN: u64 = 0x40000;
const BIG_MFN: u64 = 0x40000 * 16;

/// Bound on live table frames (p2m + IOMMU) for a 1 GiB range on *separate* IOMMU
/// tables: Xen's `iommu_map_page` maps 4 KiB pages, so the IOMMU needs 512 L1 tables
/// for the range (plus a few upper levels); tables are not freed on unmap (VT-d
/// `dma_pte_clear_one` keeps them; AMD never frees) so a remap reuses them. Twice
/// that leaves room for one full set of replacements: `2 * 512 + 16`.
const SEPARATE_TABLE_BOUND: usize = 2 * 512 + 16;
/// Bound on live table frames when the IOMMU shares the p2m (NPT/EPT with the share
/// flag): the p2m holds a 1 GiB leaf, so a handful of tables at most.
const SHARED_TABLE_BOUND: usize = 16;
/// Bound on live cache records after each step, in any configuration: the caches
/// are flushed by every step here under `fixed`, so only a few records may remain
/// (records are ranges, never one per page).
const CACHE_RECORD_BOUND: usize = 16;

/// Map 1 GiB, unmap it, map 4 KiB inside, map 1 GiB again, in every mode/vendor/share
/// combination under `fixed`; table frames and cache records stay under the bounds
/// above, and the run finishes quickly because no step is per page.
#[test]
fn one_gib_map_unmap_remap_stays_bounded() {
    for (mode, vendor) in ALL_CONFIGS {
        for share in [false, true] {
            let mut d = dom(mode, vendor, share, "fixed");
            let separate = !d.cfg.iommu_use_hap_pt();
            let table_bound = if separate {
                SEPARATE_TABLE_BOUND
            } else {
                SHARED_TABLE_BOUND
            };
            let tag = format!("{mode:?}/{vendor:?}/share={share}");
            let check = |d: &Domain, step: &str| {
                let live = d.live_table_frames();
                assert!(
                    live <= table_bound,
                    "{tag} after {step}: {live} live table frames > bound {table_bound}"
                );
                let recs = d.cache_records().len();
                assert!(
                    recs <= CACHE_RECORD_BOUND,
                    "{tag} after {step}: {recs} cache records > bound {CACHE_RECORD_BOUND}: {:?}",
                    d.cache_records()
                );
            };

            d.set_entry(BIG_GFN, Mfn(BIG_MFN), 18, P2mType::RamRw, P2mAccess::Rwx)
                .unwrap();
            check(&d, "map 1G");
            let v = d.device_view(GfnRange::of_order(BIG_GFN, 18));
            let covered: u64 = v.translations.iter().map(|(t, _)| t.range.len()).sum();
            assert_eq!(covered, 1 << 18, "{tag}: the whole 1 GiB is mapped: {v:?}");

            if mode == Mode::Ept {
                // EPT rejects INVALID_MFN at order 18 (misaligned): unmap with mfn 0.
                d.set_entry(BIG_GFN, Mfn(0), 18, P2mType::Invalid, P2mAccess::Rwx)
                    .unwrap();
            } else {
                d.set_entry(BIG_GFN, INVALID_MFN, 18, P2mType::Invalid, P2mAccess::Rwx)
                    .unwrap();
            }
            check(&d, "unmap 1G");
            let v = d.device_view(GfnRange::of_order(BIG_GFN, 18));
            assert!(
                v.translations.is_empty() && v.faults.is_empty(),
                "{tag}: nothing reachable after unmap: {v:?}"
            );

            d.set_entry(
                BIG_GFN + 0x1234,
                Mfn(0x100000),
                0,
                P2mType::RamRw,
                P2mAccess::Rwx,
            )
            .unwrap();
            check(&d, "map 4K inside");

            d.set_entry(BIG_GFN, Mfn(BIG_MFN), 18, P2mType::RamRw, P2mAccess::Rwx)
                .unwrap();
            check(&d, "remap 1G");
            let v = d.device_view(GfnRange::of_order(BIG_GFN, 18));
            assert!(v.faults.is_empty(), "{tag}: no faults: {:?}", v.faults);
            for (t, _) in &v.translations {
                assert_eq!(
                    t.mfn,
                    BIG_MFN + (t.range.start - BIG_GFN),
                    "{tag}: only the 1 GiB mapping is reachable: {t:?}"
                );
            }
            let covered: u64 = v.translations.iter().map(|(t, _)| t.range.len()).sum();
            assert_eq!(covered, 1 << 18, "{tag}: the whole 1 GiB is mapped again");
            // The translations are runs, not pages.
            assert!(
                v.translations.len() <= 2 * 512 + 16,
                "{tag}: {} translations for 1 GiB: per-page work?",
                v.translations.len()
            );
        }
    }
}

/// Everything observable about a domain, for "unchanged" checks.
#[derive(Debug, PartialEq)]
struct Snapshot {
    view: Vec<String>,
    entries: Vec<Option<P2mEntry>>,
    live: usize,
    records: Vec<String>,
    stats: P2mStats,
    frees: u64,
}

const PROBES: [u64; 6] = [0x0, 0x10, 0x200, 0x201, 0x3ff, 0x400];

fn snapshot(d: &Domain) -> Snapshot {
    let v = d.device_view(GfnRange {
        start: 0,
        end: 0x800,
    });
    Snapshot {
        view: v
            .translations
            .iter()
            .map(|x| format!("{x:?}"))
            .chain(v.faults.iter().map(|x| format!("{x:?}")))
            .collect(),
        entries: PROBES.iter().map(|&g| d.get_entry(g)).collect(),
        live: d.live_table_frames(),
        records: d.cache_records().iter().map(|r| format!("{r:?}")).collect(),
        stats: d.stats,
        frees: d.mem.free_count(),
    }
}

fn populated(mode: Mode, vendor: Vendor, share: bool, rev: &str) -> Domain {
    let mut d = dom(mode, vendor, share, rev);
    d.set_entry(0x10, Mfn(0x100010), 0, P2mType::RamRw, P2mAccess::Rwx)
        .unwrap();
    d.set_entry(0x200, Mfn(0x100200), 9, P2mType::RamRo, P2mAccess::Rwx)
        .unwrap();
    d
}

fn expect_err(
    d: &mut Domain,
    what: &str,
    gfn: u64,
    mfn: Mfn,
    order: u32,
    t: P2mType,
    want: P2mError,
) {
    let before = snapshot(d);
    let got = d.set_entry(gfn, mfn, order, t, P2mAccess::Rwx);
    assert_eq!(
        got,
        Err(want),
        "{} {what}: set_entry({gfn:#x}, {mfn}, {order}, {t})",
        d.cfg
    );
    assert_eq!(
        snapshot(d),
        before,
        "{} {what}: a rejected set_entry must leave the domain unchanged",
        d.cfg
    );
}

#[test]
fn invalid_arguments_are_rejected_without_change() {
    for rev in ["xen-4.6-pre", "patch-v1", "committed", "fixed"] {
        for (mode, vendor) in ALL_CONFIGS {
            for share in [false, true] {
                let mut d = populated(mode, vendor, share, rev);
                let d = &mut d;
                use P2mError::*;
                use P2mType::RamRw;
                expect_err(
                    d,
                    "misaligned gfn",
                    0x201,
                    Mfn(0x100200),
                    9,
                    RamRw,
                    Misaligned,
                );
                expect_err(
                    d,
                    "misaligned mfn",
                    0x200,
                    Mfn(0x100201),
                    9,
                    RamRw,
                    Misaligned,
                );
                expect_err(
                    d,
                    "misaligned 1G gfn",
                    0x200,
                    Mfn(0x40000 * 16),
                    18,
                    RamRw,
                    Misaligned,
                );
                expect_err(
                    d,
                    "misaligned 1G mfn",
                    0x40000,
                    Mfn(0x100200),
                    18,
                    RamRw,
                    Misaligned,
                );
                for order in [1, 10, 27, u32::MAX] {
                    expect_err(d, "bad order", 0, Mfn(0x100000), order, RamRw, BadOrder);
                }
                expect_err(
                    d,
                    "gfn 1<<36",
                    1 << 36,
                    Mfn(0x100000),
                    0,
                    RamRw,
                    GfnOutOfRange,
                );
                expect_err(
                    d,
                    "gfn 1<<36 order 9",
                    1 << 36,
                    Mfn(0x100000),
                    9,
                    RamRw,
                    GfnOutOfRange,
                );
                expect_err(
                    d,
                    "gfn u64::MAX & !0x3ffff",
                    u64::MAX << 18,
                    Mfn(0),
                    18,
                    RamRw,
                    GfnOutOfRange,
                );
                if mode == Mode::Ept {
                    expect_err(
                        d,
                        "foreign order 9 on EPT",
                        0x400,
                        Mfn(0x100400),
                        9,
                        P2mType::MapForeign,
                        ForeignRejected,
                    );
                    expect_err(
                        d,
                        "foreign INVALID_MFN on EPT",
                        0x20,
                        INVALID_MFN,
                        0,
                        P2mType::MapForeign,
                        ForeignRejected,
                    );
                } else {
                    for order in [0, 9] {
                        expect_err(
                            d,
                            "foreign on p2m-pt",
                            0x400,
                            Mfn(0x100400),
                            order,
                            P2mType::MapForeign,
                            ForeignOnP2mPt,
                        );
                    }
                }
            }
        }
    }
}

/// A valid foreign 4 KiB mapping on EPT is accepted (the rejection above is about
/// the order / frame, not the type).
#[test]
fn foreign_4k_on_ept_is_accepted() {
    let mut d = dom(Mode::Ept, Vendor::Vtd, false, "fixed");
    d.set_entry(0x20, Mfn(0x100020), 0, P2mType::MapForeign, P2mAccess::Rwx)
        .unwrap();
    assert_eq!(d.get_entry(0x20).map(|e| e.p2mt), Some(P2mType::MapForeign));
}

/// `cpu_extents` agrees with `get_entry` at every probed gfn, after random op sequences on
/// both p2m flavours (including superpages, splits, INVALID_MFN and frames near 2^40).
#[test]
fn cpu_extents_agree_with_get_entry() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for case in 0..300 {
        let mode = [Mode::Ept, Mode::Npt, Mode::Shadow][case % 3];
        let mut d = Domain::new(
            Config::new(mode, Vendor::Amd, case % 2 == 0),
            Revision::fixed(),
        );
        for _ in 0..1 + next(8) {
            let order = [0u32, 9, 18][next(3) as usize];
            let gfn = (next(4) << 18 | next(4) << 9 | next(3)) & !((1u64 << order) - 1);
            let mfn = match next(4) {
                0 => INVALID_MFN,
                1 => Mfn(((1u64 << 40) - (1 << 18)) & !((1u64 << order) - 1)),
                _ => Mfn((0x100000 + (next(8) << 18) + (next(4) << 9)) & !((1u64 << order) - 1)),
            };
            let t = P2mType::ALL[next(16) as usize];
            let a = P2mAccess::ALL[next(10) as usize];
            let _ = d.set_entry(gfn, mfn, order, t, a);
        }
        let range = GfnRange {
            start: 0,
            end: 4 << 18,
        };
        let ext = d.cpu_extents(range);
        assert_eq!(ext.first().map(|e| e.range.start), Some(0));
        assert_eq!(ext.last().map(|e| e.range.end), Some(range.end));
        for w in ext.windows(2) {
            assert_eq!(w[0].range.end, w[1].range.start);
        }
        for _ in 0..200 {
            let g = next(range.end);
            let e = ext.iter().find(|e| e.range.contains(g)).unwrap();
            let want = d.get_entry(g);
            let got_mfn = if e.mfn == INVALID_MFN {
                INVALID_MFN
            } else {
                Mfn(e.mfn.0 + (g - e.range.start))
            };
            match want {
                None => assert_eq!(e.p2mt, P2mType::Invalid, "case {case} gfn {g:#x}"),
                Some(w) => {
                    assert_eq!(
                        (got_mfn, e.p2mt, e.access),
                        (w.mfn, w.p2mt, w.access),
                        "case {case} gfn {g:#x}"
                    )
                }
            }
        }
    }
}

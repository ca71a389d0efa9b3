//! The libFuzzer dictionary `fuzz/p2m.dict` says what its entries are: each frame value is
//! the frame its name says, and each whole-op entry decodes (after an EPT/VT-d header byte)
//! to the op its name says. The `op_mmio_direct_*_over_mmio_ro` entries are the ones that
//! make finding F5 (`mmio_ro_superpage_split`) a matter of seconds for the fuzz targets:
//! they must still diverge under `xen-master` and be clean under `master-fixed`.

use harness::scenario::{decode, MfnSel, Op};
use harness::{assume_fixed, revision_by_name, run_with};
use p2m_core::callers::CallerOp;
use p2m_core::types::MMIO_RO_FRAMES;
use p2m_core::P2mType;

/// The dictionary's `name="value"` entries, with `\xNN` escapes decoded.
fn entries() -> Vec<(String, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/p2m.dict");
    let text = std::fs::read_to_string(path).expect("fuzz/p2m.dict");
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').expect("name=\"value\"");
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
        let value = value.unwrap_or_else(|| panic!("{name}: value not quoted"));
        let mut bytes = Vec::new();
        let mut rest = value;
        while let Some(hex) = rest.strip_prefix("\\x") {
            bytes.push(u8::from_str_radix(&hex[..2], 16).expect("two hex digits"));
            rest = &hex[2..];
        }
        assert!(rest.is_empty(), "{name}: only \\xNN escapes are used");
        out.push((name.to_string(), bytes));
    }
    out
}

/// The scenario a dictionary entry of whole records decodes to (header byte 0: EPT,
/// VT-d, separate tables).
fn decode_entry(name: &str, bytes: &[u8]) -> harness::Scenario {
    let mut input = vec![0u8];
    input.extend_from_slice(bytes);
    decode(&input).unwrap_or_else(|| panic!("{name}: does not decode"))
}

/// The switches `master-fixed` sets differently from the pinned master (the proposed
/// fixes), `skip` left out.
fn master_fixes_except(skip: &str) -> Vec<String> {
    let master = revision_by_name("xen-master").unwrap();
    revision_by_name("master-fixed")
        .unwrap()
        .switches
        .differing(&master.switches)
        .into_iter()
        .filter(|f| *f != skip)
        .map(String::from)
        .collect()
}

fn le40(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |acc, &x| acc << 8 | u64::from(x))
}

#[test]
fn fuzz_dictionary_entries_decode_as_documented() {
    let entries = entries();
    assert!(entries.len() >= 10, "dictionary lost its entries");
    let (mut frames, mut ops, mut calls) = (0, 0, 0);
    for (name, bytes) in &entries {
        if let Some(what) = name.strip_prefix("mfn_") {
            frames += 1;
            assert_eq!(bytes.len(), 5, "{name}: a 40-bit frame field");
            let v = le40(bytes);
            match what {
                w if w.starts_with("mmio_ro") => assert!(MMIO_RO_FRAMES.contains(&v), "{name}"),
                "max_page" => assert_eq!(v, p2m_core::types::MAX_PAGE, "{name}"),
                "zero" => assert_eq!(v, 0),
                "field_top" => assert_eq!(v, (1 << 40) - 1),
                _ => panic!("{name}: undocumented frame entry"),
            }
        } else if let Some(what) = name.strip_prefix("op_") {
            ops += 1;
            assert_eq!(bytes.len(), harness::scenario::OP_SIZE, "{name}");
            let mut input = vec![0u8];
            input.extend_from_slice(bytes);
            let s = decode(&input).unwrap_or_else(|| panic!("{name}: does not decode"));
            let Op::SetEntry(e) = &s.ops[0] else {
                panic!("{name}: not a set_entry");
            };
            let MfnSel::Frame(m) = e.mfn else {
                panic!("{name}: not a literal frame");
            };
            let order = match what {
                w if w.contains("_4k") => 0,
                w if w.contains("_2m") => 9,
                w if w.contains("_1g") => 18,
                _ => panic!("{name}: no size in the name"),
            };
            assert_eq!(e.order, order, "{name}");
            assert_eq!(e.gfn & ((1 << order) - 1), 0, "{name}: aligned gfn");
            if what.starts_with("mmio_direct") {
                assert_eq!(e.p2mt, P2mType::MmioDirect, "{name}");
                let end = m + (1 << order);
                assert!(
                    m < MMIO_RO_FRAMES.end && MMIO_RO_FRAMES.start < end,
                    "{name}"
                );
            } else if what.starts_with("ram_rw") {
                assert_eq!((e.p2mt, m), (P2mType::RamRw, 0), "{name}");
            } else {
                panic!("{name}: undocumented op entry");
            }
            if what.contains("superpage") || what.ends_with("over_mmio_ro") {
                // The entry alone is finding F5 under the pinned master.
                let master = run_with(&s, revision_by_name("xen-master").unwrap(), false);
                assert!(master.divergence.is_some(), "{name}: F5 no longer diverges");
                let fixed = run_with(&s, revision_by_name("master-fixed").unwrap(), false);
                assert!(fixed.divergence.is_none(), "{name}: master-fixed diverges");
            }
        } else if let Some(what) = name.strip_prefix("call_") {
            calls += 1;
            assert_eq!(bytes.len(), harness::scenario::OP_SIZE, "{name}");
            let mut input = vec![0u8];
            input.extend_from_slice(bytes);
            let s = decode(&input).unwrap_or_else(|| panic!("{name}: does not decode"));
            let Op::Call(c) = &s.ops[0] else {
                panic!("{name}: not a caller op");
            };
            let entry = what
                .trim_end_matches("_neighbour")
                .trim_end_matches("_in_2m");
            let want = match entry {
                "populate_4k" | "populate_2m" => "populate_physmap",
                "decrease_4k" => "decrease_reservation",
                "set_mem_type_ram_ro" | "set_mem_type_ioreq_server" => "set_mem_type",
                "memory_mapping_add_mmio_ro" => "memory_mapping",
                "assign_device" => "assign_device",
                "identity_map_r_add" => "identity_map",
                "track_dirty_vram_2m" => "track_dirty_vram",
                "populate_run_2m" => "populate_physmap",
                "decrease_run_2m" => "decrease_reservation",
                "guest_access_write" => "guest_access",
                _ => panic!("{name}: undocumented caller entry"),
            };
            assert_eq!(c.name(), want, "{name}: {c}");
            match *c {
                CallerOp::TrackDirtyVram { gfn, nr } => {
                    assert_eq!((gfn, nr), (0x200, 512), "{name}: {c}")
                }
                CallerOp::GuestAccess { gfn, write } => {
                    assert!(write && (0x200..0x400).contains(&gfn), "{name}: {c}")
                }
                CallerOp::PopulateRun { gfn, mfn, nr } => {
                    assert_eq!((gfn, mfn, nr), (0x200, 0x100200, 512), "{name}: {c}")
                }
                CallerOp::DecreaseRun { gfn, nr } => {
                    assert_eq!((gfn, nr), (0x200, 512), "{name}: {c}")
                }
                _ => {}
            }
            if what.contains("mmio_ro") {
                let CallerOp::MemoryMapping { mfn, add, .. } = *c else {
                    unreachable!()
                };
                assert!(add && MMIO_RO_FRAMES.contains(&mfn), "{name}: {c}");
            }
        } else if name.starts_with("seq_") {
            // A whole reproducer: it alone diverges under its revision, not under master.
            let s = decode_entry(name, bytes);
            // With the master findings assumed fixed, as the peeling canary gets there.
            let fixes = master_fixes_except("");
            let r = |n| {
                let rev = assume_fixed(revision_by_name(n).unwrap(), &fixes).unwrap();
                run_with(&s, rev, false).divergence
            };
            let d = r("xsa346-ref").unwrap_or_else(|| panic!("{name}: clean:\n{s}"));
            assert!(d.is_caller_chain(), "{name}: not a caller chain");
            if let Some(d) = r("xen-master") {
                panic!("{name}: xen-master diverges:\n{d}");
            }
        } else if let Some(switch) = name.strip_prefix("hole_") {
            // The shape of one master finding, named by its proposed fix: under the pinned
            // master with every other proposed fix assumed (as the peeling canary gets
            // there) it diverges through a caller chain; `master-fixed` is clean.
            let s = decode_entry(name, bytes);
            let fixes = master_fixes_except(switch);
            assert_eq!(
                fixes.len() + 1,
                master_fixes_except("").len(),
                "{name}: `{switch}` is no proposed fix"
            );
            let rev = assume_fixed(revision_by_name("xen-master").unwrap(), &fixes).unwrap();
            let d = run_with(&s, rev, false)
                .divergence
                .unwrap_or_else(|| panic!("{name}: clean:\n{s}"));
            assert!(d.is_caller_chain(), "{name}: not a caller chain");
            let fixed = revision_by_name("master-fixed").unwrap();
            assert!(run_with(&s, fixed, false).divergence.is_none(), "{name}");
        } else if let Some(switch) = name.strip_prefix("hole46_") {
            // The shape of one 4.6 hole, named by its proposed fix: under `committed`
            // with every other fix of `fixed` assumed it diverges; `fixed` is clean. The
            // entry is a whole input, header byte first (its configuration is not the
            // default one).
            let s = decode(bytes).unwrap_or_else(|| panic!("{name}: does not decode"));
            let committed = revision_by_name("committed").unwrap();
            let fixes: Vec<String> = revision_by_name("fixed")
                .unwrap()
                .switches
                .differing(&committed.switches)
                .into_iter()
                .filter(|f| *f != switch)
                .map(String::from)
                .collect();
            let rev = assume_fixed(committed, &fixes).unwrap();
            assert!(
                run_with(&s, rev, false).divergence.is_some(),
                "{name}: clean:\n{s}"
            );
            let fixed = revision_by_name("fixed").unwrap();
            assert!(run_with(&s, fixed, false).divergence.is_none(), "{name}");
        } else if name.starts_with("pair_") {
            // Two records: a batch and its second vCPU's op.
            assert_eq!(bytes.len(), 2 * harness::scenario::OP_SIZE, "{name}");
            let mut input = vec![0u8];
            input.extend_from_slice(bytes);
            let s = decode(&input).unwrap_or_else(|| panic!("{name}: does not decode"));
            let [Op::Interleaved(ib)] = s.ops.as_slice() else {
                panic!("{name}: not one interleaved batch: {s}");
            };
            assert!(ib.second.after >= 1, "{name}: {ib}");
            // With the dictionary's populate entries it is the XSA-346 reference hole.
            let mut full = vec![0u8];
            for k in ["call_populate_4k", "call_populate_4k_neighbour"] {
                full.extend_from_slice(&entries.iter().find(|e| e.0 == k).expect(k).1);
            }
            full.extend_from_slice(bytes);
            let s = decode(&full).expect("decodes");
            let r = |n| run_with(&s, revision_by_name(n).unwrap(), false).divergence;
            assert!(
                r("xsa346-ref").is_some(),
                "{name}: xsa346-ref is clean:\n{s}"
            );
            if let Some(d) = r("xen-master") {
                panic!("{name}: xen-master diverges:\n{d}");
            }
        } else if let Some(what) = name.strip_prefix("fail_alloc_") {
            // A fault injection record: `fail_alloc nth=K`, K in the name.
            let k: u32 = what.parse().expect("nth in the name");
            let mut full = vec![0u8];
            full.extend_from_slice(bytes);
            let s = decode(&full).expect("decodes");
            assert_eq!(s.ops, vec![Op::FailAlloc { nth: k }], "{name}");
        } else if name.starts_with("type_") || name.starts_with("access_") {
            assert_eq!(bytes.len(), 1, "{name}");
        } else {
            panic!("{name}: unknown entry family");
        }
    }
    assert!(
        frames >= 3 && ops >= 3 && calls >= 4,
        "{frames} frame entries, {ops} op entries, {calls} caller entries"
    );
}

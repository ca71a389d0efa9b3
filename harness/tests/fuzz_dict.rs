//! The libFuzzer dictionary `fuzz/p2m.dict` says what its entries are: each frame value is
//! the frame its name says, and each whole-op entry decodes (after an EPT/VT-d header byte)
//! to the op its name says. The `op_mmio_direct_*_over_mmio_ro` entries are the ones that
//! make finding F5 (`mmio_ro_superpage_split`) a matter of seconds for the fuzz targets:
//! they must still diverge under `xen-master` and be clean under `master-fixed`.

use harness::scenario::{decode, MfnSel, Op};
use harness::{revision_by_name, run_with};
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

fn le40(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |acc, &x| acc << 8 | u64::from(x))
}

#[test]
fn fuzz_dictionary_entries_decode_as_documented() {
    let entries = entries();
    assert!(entries.len() >= 10, "dictionary lost its entries");
    let (mut frames, mut ops) = (0, 0);
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
        } else if name.starts_with("type_") || name.starts_with("access_") {
            assert_eq!(bytes.len(), 1, "{name}");
        } else {
            panic!("{name}: unknown entry family");
        }
    }
    assert!(
        frames >= 3 && ops >= 3,
        "{frames} frame entries, {ops} op entries"
    );
}

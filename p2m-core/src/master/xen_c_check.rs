//! Cross-check of the model's pure helpers against Xen's own C (test only).
//!
//! When `XEN_SRC` names a Xen checkout (pinned commit `c447b7308b`), the test reads the C
//! it needs from that checkout, writes one translation unit into a fresh directory under
//! [`std::env::temp_dir`], compiles it with `cc` (or `$CC`), feeds it inputs on stdin and
//! compares every printed answer with the Rust model. Without `XEN_SRC` it prints one line
//! and passes. The repository holds no Xen code: only the hand-written shim
//! (`p2m-core/xen-shim/prelude.h`: types, macros and hook prototypes; `driver.c`: the
//! recording hooks and a `main` that reads inputs and prints answers) and this file.
//!
//! Run: `XEN_SRC=/path/to/xen cargo test --release -p p2m-core --lib xen_c -- --nocapture`.
//!
//! **Taken from `$XEN_SRC` at run time** (function bodies found by name and brace
//! matching, macros by `#define` line, enums by one of their enumerators):
//!
//! * `asm/pt-contig-markers.h`, `#include`d whole (its own `#include`s resolve to empty
//!   files), compiled twice: with `CONTIG_MASK` = `IOMMU_PTE_CONTIG_MASK`
//!   (`amd/iommu-defs.h`) and = `DMA_PTE_CONTIG_MASK` (`vtd/iommu.h`); the starting tables
//!   come from `iommu_alloc_pgtable` (`x86/iommu.c`), prefilled or cleared.
//! * `mapping_order` (`iommu.c`).
//! * `flush_count` and `amd_iommu_flush_iotlb_pages` (`amd/iommu_map.c`).
//! * `iommu_flush_iotlb`, `iommu_flush_iotlb_psi`, `iommu_flush_iotlb_dsi` and the register
//!   hook `vtd_flush_iotlb_reg` (`vtd/iommu.c`), and the queued hook `flush_iotlb_qi`
//!   (`vtd/qinval.c`); each input runs once through each hook.
//! * `p2m_type_t` (`asm/p2m.h`), `p2m_access_t` (`xen/mem_access.h`),
//!   `p2m_access_to_iommu_flags` and `p2m_get_iommu_flags` (`asm/p2m.h`).
//! * Helpers they use: `dfn_eq`, `INVALID_DFN`, `IOMMUF_*`, `IOMMU_FLUSHF_*`
//!   (`xen/iommu.h`), `get_order_from_pages` (`xen/mm.h`), `IS_ALIGNED`, `MASK_EXTR`,
//!   `MASK_INSR`, `ISOLATE_LSB` (`xen/macros.h`), `PAGE_SHIFT`, `PADDR_BITS`
//!   (`asm/page-bits.h`), `dfn_to_daddr` (`asm/iommu.h`), the `cap_*`, `ecap_iotlb_offset`
//!   and `DMA_TLB_*` macros (`vtd/iommu.h`).
//!
//! **Shim, not Xen** (what the comparison trusts): `dfn_t`/`mfn_t` (the boxed debug-build
//! form), `ffs`/`ffsl` (`__builtin_ffs*`), `test_bit`; `ASSERT` counts failures and goes
//! on, as a release build would (the count is printed and reported); one remapping unit
//! (`for_each_drhd_unit`) with domain id 1 (`get_iommu_did`), page-selective invalidation
//! supported, read/write draining, the caching-mode bit and `cap_max_amask_val` set per
//! input; the register poll (`IOMMU_FLUSH_WAIT`) completes at once; the invalidation
//! commands (`dmar_writeq` of the IOTLB registers, `queue_invalidate_iotlb_sync`,
//! `amd_iommu_flush_pages`, `amd_iommu_flush_all_pages`) and the write-buffer flush are
//! recorded, not performed; `rangeset_contains_singleton(mmio_ro_ranges, ..)` tests the
//! model's [`MMIO_RO_FRAMES`]; the page allocator hands out one static frame.
//!
//! **How answers are compared.** Markers: the return of every call and the whole table's
//! markers (a hash of all 512 and the first 16 in full after each exhaustive sequence, so
//! also after every step of it, since every prefix is itself enumerated; a hash after each
//! random step and all 512 at the end), and the table `iommu_alloc_pgtable` starts from.
//! AMD: the commands, a dfn compared modulo 2^[`GFN_BITS`](crate::types::GFN_BITS) (the
//! model's dfn width; the alignment to the order happens below the extracted function, in
//! the command builder, as Xen's comment there says). VT-d: the commands (address compared
//! as a frame modulo 2^`GFN_BITS`, address mask, hint) and the write-buffer flushes, which
//! Xen issues exactly when a non-present flush was skipped (the model's
//! `vtd_psi_skipped`). ASSERT failures are not mismatches for the flush functions (inputs
//! outside their contract: no flag, count 0, `INVALID_DFN`; the release behaviour is still
//! compared) but are for the other pieces.
//!
//! Not covered: `page_sizes` bitmaps the model cannot express (4K+1G without 2M); VT-d
//! orders above [`GFN_BITS`](crate::types::GFN_BITS) (the model issues a DSI where Xen
//! issues a PSI; no such count exists in the model); units without page-selective
//! invalidation; more than one remapping unit.

use crate::Lcg;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cache::{Invalidation, IommuCaches, Issued};
use crate::frames::MachineMemory;
use crate::master::amd_iommu_map::amd_iommu_flush_iotlb_pages;
use crate::master::iommu::{FlushFlags, Hd, Iommu, IommuCounters, DFN_MASK};
use crate::master::p2m::{access_of_raw, p2m_get_iommu_flags, P2M_IOREQ_SERVER};
use crate::master::pt_contig_markers::{
    all_markers, get_marker, markers_cleared, markers_prefilled, prefilled_marker,
    pt_update_contig_markers, set_marker, Markers, PteKind, CONTIG_NR,
};
use crate::master::vtd_iommu::iommu_flush_iotlb;
use crate::revision::{Revision, Switches as LineSwitches};
use crate::types::{
    Config, HwSemantics, IommuPerm, Mfn, Mode, P2mAccess, P2mType, PageSizes, Vendor,
    MMIO_RO_FRAMES,
};

/// The commit the model reads.
const PINNED: &str = "c447b7308b";

const PRELUDE: &str = include_str!("../../xen-shim/prelude.h");
const DRIVER: &str = include_str!("../../xen-shim/driver.c");

/// What to take from one Xen file.
#[derive(Clone, Copy)]
enum Piece {
    /// A `#define` (with its continuation lines).
    Define(&'static str),
    /// The `enum` (with its `typedef`, if any) that has this enumerator.
    Enum(&'static str),
    /// A function definition.
    Function(&'static str),
}

use Piece::{Define, Enum, Function};

const VTD_H: &str = "xen/drivers/passthrough/vtd/iommu.h";
const CONTIG_H: &str = "xen/arch/x86/include/asm/pt-contig-markers.h";

/// Everything read from `$XEN_SRC`, by file; emitted as all macros, then all enums, then
/// `pt-contig-markers.h`, then all functions, each group in this order.
const SOURCES: &[(&str, &[Piece])] = &[
    (
        "xen/include/xen/macros.h",
        &[
            Define("IS_ALIGNED"),
            Define("ISOLATE_LSB"),
            Define("MASK_EXTR"),
            Define("MASK_INSR"),
        ],
    ),
    (
        "xen/arch/x86/include/asm/page-bits.h",
        &[
            Define("L1_PAGETABLE_SHIFT"),
            Define("PAGE_SHIFT"),
            Define("PADDR_BITS"),
        ],
    ),
    (
        "xen/include/xen/iommu.h",
        &[
            Define("INVALID_DFN"),
            Define("_IOMMUF_readable"),
            Define("IOMMUF_readable"),
            Define("_IOMMUF_writable"),
            Define("IOMMUF_writable"),
            Enum("_IOMMU_FLUSHF_added"),
            Define("IOMMU_FLUSHF_added"),
            Define("IOMMU_FLUSHF_modified"),
            Define("IOMMU_FLUSHF_all"),
            Function("dfn_eq"),
        ],
    ),
    (
        "xen/arch/x86/include/asm/iommu.h",
        &[
            Define("IOMMU_PAGE_SHIFT"),
            Define("__dfn_to_daddr"),
            Define("dfn_to_daddr"),
        ],
    ),
    ("xen/include/xen/mm.h", &[Function("get_order_from_pages")]),
    (
        "xen/drivers/passthrough/amd/iommu-defs.h",
        &[Define("IOMMU_PTE_CONTIG_MASK")],
    ),
    (
        VTD_H,
        &[
            Define("DMA_PTE_CONTIG_MASK"),
            Define("cap_read_drain"),
            Define("cap_write_drain"),
            Define("cap_max_amask_val"),
            Define("cap_pgsel_inv"),
            Define("cap_caching_mode"),
            Define("ecap_iotlb_offset"),
            Define("DMA_TLB_FLUSH_GRANU_OFFSET"),
            Define("DMA_TLB_GLOBAL_FLUSH"),
            Define("DMA_TLB_DSI_FLUSH"),
            Define("DMA_TLB_PSI_FLUSH"),
            Define("DMA_TLB_IAIG"),
            Define("DMA_TLB_DID"),
            Define("DMA_TLB_READ_DRAIN"),
            Define("DMA_TLB_WRITE_DRAIN"),
            Define("DMA_TLB_IVT"),
            Define("DMA_TLB_IVA_ADDR"),
        ],
    ),
    ("xen/include/xen/mem_access.h", &[Enum("p2m_access_n")]),
    (
        "xen/drivers/passthrough/x86/iommu.c",
        &[Function("iommu_alloc_pgtable")],
    ),
    (
        "xen/drivers/passthrough/iommu.c",
        &[Function("mapping_order")],
    ),
    (
        "xen/drivers/passthrough/amd/iommu_map.c",
        &[
            Function("flush_count"),
            Function("amd_iommu_flush_iotlb_pages"),
        ],
    ),
    (
        "xen/drivers/passthrough/vtd/iommu.c",
        &[Function("vtd_flush_iotlb_reg")],
    ),
    (
        "xen/drivers/passthrough/vtd/qinval.c",
        &[Function("flush_iotlb_qi")],
    ),
    (
        "xen/drivers/passthrough/vtd/iommu.c",
        &[
            Function("iommu_flush_iotlb_dsi"),
            Function("iommu_flush_iotlb_psi"),
            Function("iommu_flush_iotlb"),
        ],
    ),
    (
        "xen/arch/x86/include/asm/p2m.h",
        &[
            Enum("p2m_ram_rw"),
            Function("p2m_access_to_iommu_flags"),
            Function("p2m_get_iommu_flags"),
        ],
    ),
];

// ---------------------------------------------------------------------------------------
// Extraction from C text.

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// If a comment, string or character literal starts at `i`, the index just after it.
fn skip_non_code(b: &[u8], i: usize) -> Option<usize> {
    match (b[i], b.get(i + 1)) {
        (b'/', Some(b'*')) => {
            let mut j = i + 2;
            while j + 1 < b.len() && !(b[j] == b'*' && b[j + 1] == b'/') {
                j += 1;
            }
            Some((j + 2).min(b.len()))
        }
        (b'/', Some(b'/')) => {
            let mut j = i + 2;
            while j < b.len() && b[j] != b'\n' {
                j += 1;
            }
            Some(j)
        }
        (q @ (b'"' | b'\''), _) => {
            let mut j = i + 1;
            while j < b.len() && b[j] != q {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            Some((j + 1).min(b.len()))
        }
        _ => None,
    }
}

/// The index of the bracket closing the one at `open`, skipping comments and literals.
fn matching(b: &[u8], open: usize) -> Option<usize> {
    let (o, c) = (
        b[open],
        match b[open] {
            b'(' => b')',
            b'{' => b'}',
            _ => return None,
        },
    );
    let (mut depth, mut i) = (0usize, open);
    while i < b.len() {
        if let Some(j) = skip_non_code(b, i) {
            i = j;
            continue;
        }
        if b[i] == o {
            depth += 1;
        } else if b[i] == c {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

/// The first index from `i` that is neither whitespace nor inside a comment.
fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
        } else if b[i] == b'/' && matches!(b.get(i + 1), Some(b'*' | b'/')) {
            i = skip_non_code(b, i).unwrap_or(b.len());
        } else {
            break;
        }
    }
    i
}

/// Positions where `name` occurs as a whole identifier.
fn ident_positions(text: &str, name: &str) -> Vec<usize> {
    let b = text.as_bytes();
    text.match_indices(name)
        .map(|(p, _)| p)
        .filter(|&p| {
            (p == 0 || !is_ident(b[p - 1])) && b.get(p + name.len()).is_none_or(|&c| !is_ident(c))
        })
        .collect()
}

/// The definition of function `name`: from the start of its declarator's line (or the
/// line before, when the name opens its line) to its closing brace. Definitions start in
/// column 0 (Xen's style); calls and prototypes are not followed by a body.
fn extract_function(text: &str, name: &str) -> Result<String, String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    for p in ident_positions(text, name) {
        let line = text[..p].rfind('\n').map_or(0, |n| n + 1);
        if b[line].is_ascii_whitespace() || b[line] == b'#' {
            continue;
        }
        let open = skip_space(b, p + name.len());
        if b.get(open) != Some(&b'(') {
            continue;
        }
        let Some(close) = matching(b, open) else {
            continue;
        };
        let body = skip_space(b, close + 1);
        if b.get(body) != Some(&b'{') {
            continue;
        }
        let Some(end) = matching(b, body) else {
            return Err(format!("unbalanced braces in {name}"));
        };
        let start = if line == p && line > 0 {
            text[..line - 1].rfind('\n').map_or(0, |n| n + 1)
        } else {
            line
        };
        found.push(text[start..=end].to_string());
    }
    match found.len() {
        1 => Ok(found.pop().unwrap()),
        n => Err(format!("{n} definitions of function {name}")),
    }
}

/// The `#define name` line, with its continuation lines.
fn extract_define(text: &str, name: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.trim_start().strip_prefix('#') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix("define") else {
            continue;
        };
        let rest = rest.trim_start();
        if !rest.starts_with(name) || rest[name.len()..].bytes().next().is_some_and(is_ident) {
            continue;
        }
        let mut def = String::new();
        let mut j = i;
        loop {
            def.push_str(lines[j]);
            def.push('\n');
            if !lines[j].trim_end().ends_with('\\') || j + 1 == lines.len() {
                break;
            }
            j += 1;
        }
        found.push(def);
    }
    match found.len() {
        1 => Ok(found.pop().unwrap()),
        n => Err(format!("{n} definitions of macro {name}")),
    }
}

/// The `enum { ... };` (or `typedef enum { ... } name;`) one of whose enumerators is
/// `member`.
fn extract_enum(text: &str, member: &str) -> Result<String, String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    for p in ident_positions(text, "enum") {
        let mut i = skip_space(b, p + 4);
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let open = skip_space(b, i);
        if b.get(open) != Some(&b'{') {
            continue;
        }
        let Some(close) = matching(b, open) else {
            continue;
        };
        if ident_positions(&text[open..close], member).is_empty() {
            continue;
        }
        let Some(semi) = text[close..].find(';') else {
            continue;
        };
        let before = text[..p].trim_end();
        let start = if before.ends_with("typedef") {
            before.len() - "typedef".len()
        } else {
            p
        };
        found.push(format!("{};\n", &text[start..close + semi]));
    }
    match found.len() {
        1 => Ok(found.pop().unwrap()),
        n => Err(format!("{n} enums with enumerator {member}")),
    }
}

/// The enumerator names of an extracted enum.
fn enumerators(en: &str) -> Vec<String> {
    let b = en.as_bytes();
    let open = en.find('{').unwrap();
    let close = matching(b, open).unwrap();
    let mut code = String::new();
    let mut i = open + 1;
    while i < close {
        if let Some(j) = skip_non_code(b, i) {
            code.push(' ');
            i = j;
        } else {
            code.push(b[i] as char);
            i += 1;
        }
    }
    code.split(',')
        .filter_map(|item| {
            let name: String = item
                .trim()
                .chars()
                .take_while(|&c| c.is_ascii_alphanumeric() || c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Building and running the C.

/// The compiled programs and what the test needs to know about them.
struct Built {
    dir: PathBuf,
    /// The pieces, with `CONTIG_MASK` = `IOMMU_PTE_CONTIG_MASK`.
    amd_mask: PathBuf,
    /// The pieces, with `CONTIG_MASK` = `DMA_PTE_CONTIG_MASK`.
    vtd_mask: PathBuf,
    p2m_types: Vec<String>,
    p2m_accesses: Vec<String>,
}

fn read_xen(xen: &Path, rel: &str) -> Result<String, String> {
    std::fs::read_to_string(xen.join(rel)).map_err(|e| format!("cannot read $XEN_SRC/{rel}: {e}"))
}

/// Extracts the pieces, writes the translation unit into a fresh temporary directory
/// (created only once everything was read) and compiles it twice.
fn build(xen: &Path) -> Result<Built, String> {
    let (mut defines, mut enums, mut functions) = (String::new(), String::new(), String::new());
    let (mut p2m_types, mut p2m_accesses) = (Vec::new(), Vec::new());
    for &(rel, pieces) in SOURCES {
        let text = read_xen(xen, rel)?;
        for &piece in pieces {
            let (out, got) = match piece {
                Define(n) => (&mut defines, extract_define(&text, n)),
                Enum(n) => (&mut enums, extract_enum(&text, n)),
                Function(n) => (&mut functions, extract_function(&text, n)),
            };
            let got = got.map_err(|e| format!("$XEN_SRC/{rel}: {e}"))?;
            match piece {
                Enum("p2m_ram_rw") => p2m_types = enumerators(&got),
                Enum("p2m_access_n") => p2m_accesses = enumerators(&got),
                _ => {}
            }
            let _ = writeln!(out, "/* from $XEN_SRC/{rel} */\n{got}");
        }
    }

    // pt-contig-markers.h is included whole; its own includes become empty files.
    let contig = xen.join(CONTIG_H);
    let contig_text = read_xen(xen, CONTIG_H)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("xen_c_check-{}-{stamp}", std::process::id()));
    let inc = dir.join("include");
    std::fs::create_dir_all(&inc).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for l in contig_text.lines() {
        let l = l.trim_start();
        if let Some(rest) = l.strip_prefix("#include") {
            let rest = rest.trim();
            if let Some(h) = rest.strip_prefix('<').and_then(|r| r.strip_suffix('>')) {
                let p = inc.join(h);
                std::fs::create_dir_all(p.parent().unwrap())
                    .and_then(|_| std::fs::write(&p, "/* empty: xen_c_check */\n"))
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
        }
    }
    let contig_path = contig.to_str().filter(|s| !s.contains(['"', '\n', '\\']));
    let contig_path = contig_path.ok_or("XEN_SRC path cannot be #included")?;

    let table = |name: &str, names: &[String]| {
        let mut t = format!("static const struct shim_named {name}[] = {{\n");
        for n in names {
            let _ = writeln!(t, "    {{ \"{n}\", {n} }},");
        }
        t.push_str("    { NULL, 0 },\n};\n");
        t
    };
    let mut src = String::new();
    let _ = writeln!(
        src,
        "/* Generated by p2m-core master::xen_c_check from $XEN_SRC; not to be committed. */"
    );
    src.push_str(PRELUDE);
    src.push_str("\n/* ==== macros from $XEN_SRC ==== */\n");
    src.push_str(&defines);
    src.push_str("\n/* ==== enums from $XEN_SRC ==== */\n");
    src.push_str(&enums);
    let _ = write!(
        src,
        "\n/* ==== pt-contig-markers.h from $XEN_SRC ==== */\n\
         #if defined(SHIM_CONTIG_AMD)\n#define SHIM_CONTIG_MASK IOMMU_PTE_CONTIG_MASK\n\
         #elif defined(SHIM_CONTIG_VTD)\n#define SHIM_CONTIG_MASK DMA_PTE_CONTIG_MASK\n\
         #else\n#error SHIM_CONTIG_AMD or SHIM_CONTIG_VTD\n#endif\n\
         #define CONTIG_MASK SHIM_CONTIG_MASK\n#include \"{contig_path}\"\n"
    );
    src.push_str("\n/* ==== functions from $XEN_SRC ==== */\n");
    src.push_str(&functions);
    src.push_str("\n/* ==== enumerator names (generated) ==== */\n");
    src.push_str(&table("shim_p2m_types", &p2m_types));
    src.push_str(&table("shim_p2m_accesses", &p2m_accesses));
    src.push_str("\n/* ==== driver (shim) ==== */\n");
    src.push_str(DRIVER);

    let c_file = dir.join("xen_c_check.c");
    std::fs::write(&c_file, &src).map_err(|e| format!("cannot write {}: {e}", c_file.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let compile = |def: &str, exe: &str| -> Result<PathBuf, String> {
        let out = dir.join(exe);
        let r = Command::new(&cc)
            .args(["-std=gnu11", "-O2", "-w", "-D", def, "-I"])
            .arg(&inc)
            .arg("-o")
            .arg(&out)
            .arg(&c_file)
            .output()
            .map_err(|e| format!("cannot run {cc}: {e}"))?;
        if !r.status.success() {
            let log = dir.join(format!("{exe}.cc.log"));
            let err = String::from_utf8_lossy(&r.stderr);
            let _ = std::fs::write(&log, err.as_bytes());
            let first = err
                .lines()
                .find(|l| l.contains("error"))
                .or_else(|| err.lines().next())
                .unwrap_or("");
            return Err(format!(
                "{cc} failed on {} (full log {}): {first}",
                c_file.display(),
                log.display()
            ));
        }
        Ok(out)
    };
    let amd_mask = compile("SHIM_CONTIG_AMD", "xen_c_amd")?;
    let vtd_mask = compile("SHIM_CONTIG_VTD", "xen_c_vtd")?;
    Ok(Built {
        dir,
        amd_mask,
        vtd_mask,
        p2m_types,
        p2m_accesses,
    })
}

/// Runs `exe piece` with `input` on stdin; returns its stdout.
fn run(exe: &Path, piece: &str, input: String) -> Result<String, String> {
    let mut child = Command::new(exe)
        .arg(piece)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{} {piece}: {e}", exe.display()))?;
    let wrote = writer.join().expect("stdin writer");
    if !out.status.success() {
        return Err(format!(
            "{} {piece} exited with {}: {}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    wrote.map_err(|e| format!("{} {piece}: writing its input: {e}", exe.display()))?;
    String::from_utf8(out.stdout).map_err(|e| format!("{} {piece}: {e}", exe.display()))
}

/// Appends `n v1 .. vn` to `s`.
fn push_list(s: &mut String, vals: &[u64]) {
    let _ = write!(s, "{}", vals.len());
    for v in vals {
        let _ = write!(s, " {v}");
    }
    s.push('\n');
}

// ---------------------------------------------------------------------------------------
// Comparison bookkeeping.

/// Inputs, mismatches and ASSERT failures of one piece.
struct Tally {
    name: &'static str,
    inputs: u64,
    mismatches: u64,
    asserts: u64,
    first: Vec<String>,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Tally {
            name,
            inputs: 0,
            mismatches: 0,
            asserts: 0,
            first: Vec::new(),
        }
    }

    /// Compares one answer.
    fn check(&mut self, input: &dyn Fn() -> String, c: &str, model: &str) {
        self.inputs += 1;
        if c != model {
            self.mismatch(format!("{}: {}", input(), show_diff(c, model)));
        }
    }

    fn mismatch(&mut self, what: String) {
        self.mismatches += 1;
        if self.first.len() < 8 {
            self.first.push(what);
        }
    }
}

/// Both answers, or for long ones (whole tables) where and around what they differ.
fn show_diff(c: &str, model: &str) -> String {
    if c.len().max(model.len()) <= 100 {
        return format!("C `{c}`, model `{model}`");
    }
    let at = c
        .bytes()
        .zip(model.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(c.len().min(model.len()));
    let lo = at.saturating_sub(16);
    let window = |s: &str| s.get(lo..(at + 32).min(s.len())).unwrap_or("").to_string();
    format!(
        "differ from character {at}: C `…{}…`, model `…{}…`",
        window(c),
        window(model)
    )
}

/// Splits a driver line `records|asserts`.
fn split_line(line: &str) -> (&str, u32) {
    match line.rsplit_once('|') {
        Some((r, a)) => (r, a.parse().unwrap_or(u32::MAX)),
        None => (line, u32::MAX),
    }
}

/// The next output line, or an error naming the piece.
fn next<'a>(lines: &mut std::str::Lines<'a>, piece: &str) -> Result<&'a str, String> {
    lines
        .next()
        .ok_or_else(|| format!("{piece}: the C program printed fewer lines than inputs"))
}

fn expect_end(lines: &mut std::str::Lines, piece: &str) -> Result<(), String> {
    match lines.next() {
        None => Ok(()),
        Some(l) => Err(format!("{piece}: unexpected extra output `{l}`")),
    }
}

// ---------------------------------------------------------------------------------------
// Piece 1: pt_update_contig_markers (and the tables iommu_alloc_pgtable starts from).

/// The model's table: entries without marker bits beside a marker store.
#[derive(Clone)]
struct ContigTable {
    e: Vec<u64>,
    mk: Markers,
    level: u8,
}

impl ContigTable {
    /// Writes a whole entry (its marker becomes 0) and calls the marker function.
    fn step(&mut self, idx: u16, kind: PteKind, val: u64) -> bool {
        self.e[idx as usize] = val;
        set_marker(&mut self.mk, idx, 0);
        let e = &self.e;
        pt_update_contig_markers(&|i| e[i as usize], &mut self.mk, idx, self.level, kind)
    }

    /// All 512 markers, from the stored runs (every stored run holds one value).
    fn markers(&self) -> [u8; 512] {
        let mut m = [0u8; 512];
        for (i, v) in m.iter_mut().enumerate() {
            *v = prefilled_marker(i as u16);
        }
        for (s, l, _) in self.mk.iter_runs(0, CONTIG_NR) {
            let v = get_marker(&self.mk, s);
            m[s as usize..(s + l) as usize].fill(v);
        }
        m
    }
}

fn fnv(m: &[u8]) -> u64 {
    m.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn hex_markers(m: &[u8]) -> String {
    m.iter()
        .map(|&v| char::from_digit(v as u32, 16).unwrap_or('?'))
        .collect()
}

/// Base of the test leaves: a frame whose index bits are 0 at every level 1..=4.
const LEAF_BASE: u64 = 1 << 48;

/// Entry `c` for index `idx` at `level`, clear of both marker masks (AMD bits 1–4,
/// VT-d bits 52–55): null; a leaf congruent with its index (attributes A, B); a leaf one
/// entry off; a congruent leaf written as `PTE_kind_table` (VT-d's unsupported-superpage
/// case); a table pointer.
fn contig_content(c: u8, idx: u16, level: u8) -> (u64, PteKind) {
    let shift = (level as u32 - 1) * 9 + 12;
    let at = |i: u64| LEAF_BASE + (i << shift);
    let attr_a = 1 | 1 << 7 | 1 << 11;
    let attr_b = 1 | 1 << 5 | 1 << 11;
    match c {
        0 => (0, PteKind::Null),
        1 => (at(idx as u64) | attr_a, PteKind::Leaf),
        2 => (at(idx as u64) | attr_b, PteKind::Leaf),
        3 => (at(idx as u64 + 1) | attr_a, PteKind::Leaf),
        4 => (at(idx as u64) | attr_a, PteKind::Table),
        _ => (0x5_0000 << 12 | 1 | 1 << 9, PteKind::Table),
    }
}

/// Contents per exhaustive step.
const CONTIG_CONTENTS: u8 = 6;
/// Indices per exhaustive step: 0..8.
const CONTIG_INDICES: u16 = 8;
/// Longest exhaustive sequence.
const CONTIG_MAXLEN: u32 = 3;
/// Random sequences and their length.
const CONTIG_RANDOM: usize = 160;
const CONTIG_RANDOM_STEPS: usize = 300;

fn kind_code(k: PteKind) -> u8 {
    match k {
        PteKind::Null => 0,
        PteKind::Leaf => 1,
        PteKind::Table => 2,
    }
}

/// A base table: `level`, prefilled or cleared markers, every entry `bg` (content code
/// of [`contig_content`], 0 = null).
fn contig_base(level: u8, prefill: bool, bg: u8, input: &mut String) -> ContigTable {
    let e: Vec<u64> = (0..CONTIG_NR)
        .map(|i| contig_content(bg, i, level).0)
        .collect();
    let _ = write!(input, "84 {level} {}", prefill as u8);
    for v in &e {
        let _ = write!(input, " {v}");
    }
    input.push('\n');
    ContigTable {
        e,
        mk: if prefill {
            markers_prefilled()
        } else {
            markers_cleared()
        },
        level,
    }
}

/// One exhaustive configuration or random sequence, for replaying the output.
enum ContigJob {
    Exhaustive {
        base: ContigTable,
        alphabet: Vec<(u16, PteKind, u64)>,
    },
    Random {
        base: ContigTable,
        steps: Vec<(u16, PteKind, u64)>,
    },
}

fn check_contig(b: &Built, t: &mut Tally) -> Result<(u64, u64), String> {
    let mut input = String::new();
    let mut jobs = Vec::new();
    for level in [1u8, 2] {
        for prefill in [true, false] {
            for bg in [0u8, 1] {
                let base = contig_base(level, prefill, bg, &mut input);
                let alphabet: Vec<(u16, PteKind, u64)> = (0..CONTIG_INDICES)
                    .flat_map(|i| {
                        (0..CONTIG_CONTENTS).map(move |c| {
                            let (v, k) = contig_content(c, i, level);
                            (i, k, v)
                        })
                    })
                    .collect();
                let _ = write!(input, "69 {}", alphabet.len());
                for &(i, k, v) in &alphabet {
                    let _ = write!(input, " {i} {} {v}", kind_code(k));
                }
                let _ = writeln!(input, " {CONTIG_MAXLEN}");
                jobs.push(ContigJob::Exhaustive { base, alphabet });
            }
        }
    }
    let mut rng = Lcg(0x5eed_c0de);
    for _ in 0..CONTIG_RANDOM {
        let level = 1 + rng.below(3) as u8;
        let prefill = rng.below(4) != 0;
        let bg = [0u8, 0, 1, 2][rng.below(4) as usize];
        let base = contig_base(level, prefill, bg, &mut input);
        let mut at = rng.below(512) as u16;
        let mut steps = Vec::new();
        for _ in 0..CONTIG_RANDOM_STEPS {
            at = if rng.below(4) == 0 {
                rng.below(512) as u16
            } else {
                (at + 1) % 512
            };
            let c = [0u8, 0, 1, 1, 1, 2, 3, 4, 5][rng.below(9) as usize];
            let (v, k) = contig_content(c, at, level);
            steps.push((at, k, v));
        }
        let _ = write!(input, "82 {}", steps.len());
        for &(i, k, v) in &steps {
            let _ = write!(input, " {i} {} {v}", kind_code(k));
        }
        input.push('\n');
        jobs.push(ContigJob::Random { base, steps });
    }

    let outs = [
        ("AMD mask", run(&b.amd_mask, "contig", input.clone())?),
        ("VT-d mask", run(&b.vtd_mask, "contig", input)?),
    ];
    let mut lines: Vec<_> = outs.iter().map(|(_, o)| o.lines()).collect();
    let (mut sequences, mut calls) = (0u64, 0u64);
    let mut steps_buf = Vec::with_capacity(CONTIG_MAXLEN as usize);
    for job in &jobs {
        let base = match job {
            ContigJob::Exhaustive { base, .. } | ContigJob::Random { base, .. } => base,
        };
        let want_t = format!("T {}|0", hex_markers(&all_markers(&base.mk)));
        for (m, l) in outs.iter().zip(lines.iter_mut()) {
            let got = next(l, "contig")?;
            t.check(
                &|| format!("{}: iommu_alloc_pgtable, level {}", m.0, base.level),
                got,
                &want_t,
            );
        }
        match job {
            ContigJob::Exhaustive { base, alphabet } => {
                let n = alphabet.len() as u64;
                for len in 1..=CONTIG_MAXLEN {
                    let total = n.pow(len);
                    for s in 0..total {
                        let mut tab = base.clone();
                        let mut rets = String::new();
                        let mut div = total;
                        steps_buf.clear();
                        for _ in 0..len {
                            div /= n;
                            let (i, k, v) = alphabet[((s / div) % n) as usize];
                            steps_buf.push((i, k, v));
                            rets.push(if tab.step(i, k, v) { '1' } else { '0' });
                        }
                        let m = tab.markers();
                        let want = format!("{rets} {} {:016x}|0", hex_markers(&m[..16]), fnv(&m));
                        for (o, l) in outs.iter().zip(lines.iter_mut()) {
                            let got = next(l, "contig")?;
                            t.check(
                                &|| {
                                    format!(
                                        "{}: level {} prefilled {} bg {:#x}, steps (idx, kind, entry) {:x?}",
                                        o.0,
                                        base.level,
                                        get_marker(&base.mk, 0) == 9,
                                        base.e[0],
                                        steps_buf
                                    )
                                },
                                got,
                                &want,
                            );
                        }
                        sequences += 1;
                        calls += len as u64;
                    }
                }
            }
            ContigJob::Random { base, steps } => {
                let mut tab = base.clone();
                for (j, &(i, k, v)) in steps.iter().enumerate() {
                    let r = tab.step(i, k, v);
                    let m = all_markers(&tab.mk);
                    assert_eq!(m[..], tab.markers()[..], "marker runs read back wrongly");
                    let want = format!("{} {:016x}|0", r as u8, fnv(&m));
                    for (o, l) in outs.iter().zip(lines.iter_mut()) {
                        let got = next(l, "contig")?;
                        t.check(
                            &|| {
                                format!(
                                    "{}: random level {}, step {j} (idx {i}, {k:?}, {v:#x})",
                                    o.0, base.level
                                )
                            },
                            got,
                            &want,
                        );
                    }
                }
                let want = format!("F {}|0", hex_markers(&all_markers(&tab.mk)));
                for (o, l) in outs.iter().zip(lines.iter_mut()) {
                    let got = next(l, "contig")?;
                    t.check(&|| format!("{}: random final markers", o.0), got, &want);
                }
                sequences += 1;
                calls += steps.len() as u64;
            }
        }
    }
    for l in lines.iter_mut() {
        expect_end(l, "contig")?;
    }
    Ok((sequences, calls))
}

// ---------------------------------------------------------------------------------------
// Piece 2: mapping_order.

fn check_mapping_order(b: &Built, t: &mut Tally) -> Result<(), String> {
    let mut vals: Vec<u64> = (0..=8).collect();
    vals.extend([
        255,
        256,
        511,
        512,
        513,
        1023,
        1024,
        1536,
        (1 << 18) - 512,
        (1 << 18) - 1,
        1 << 18,
        (1 << 18) + 1,
        (1 << 18) + 512,
        1 << 19,
        (1 << 19) + 512,
        3 << 18,
        1 << 36,
        u64::MAX,
    ]);
    let mut nrs: Vec<u64> = (0..=1024).collect();
    nrs.extend([
        (1 << 18) - 2,
        (1 << 18) - 1,
        1 << 18,
        (1 << 18) + 1,
        (1 << 18) + 511,
        (1 << 18) + 512,
        (1 << 19) - 1,
        1 << 19,
        1 << 27,
        1 << 36,
        u64::MAX,
    ]);
    let sizes = PageSizes::ALL;
    let mut input = String::new();
    push_list(
        &mut input,
        &sizes.iter().map(|p| p.mask()).collect::<Vec<_>>(),
    );
    push_list(&mut input, &vals);
    push_list(&mut input, &vals);
    push_list(&mut input, &nrs);
    let out = run(&b.amd_mask, "order", input)?;
    let mut lines = out.lines();
    let mut mem = MachineMemory::new();
    for &ps in sizes {
        let cfg = Config {
            page_sizes: ps,
            ..Config::new(Mode::Ept, Vendor::Vtd, false)
        };
        let iommu = Iommu::new(&cfg, &mut mem);
        assert_eq!(iommu.page_sizes, ps);
        for &dfn in &vals {
            for &mfn in &vals {
                for &nr in &nrs {
                    let got = next(&mut lines, "order")?;
                    let want = format!("{}|0", iommu.mapping_order(dfn, mfn, nr));
                    t.check(
                        &|| {
                            format!(
                                "page_sizes {:#x} dfn {dfn:#x} mfn {mfn:#x} nr {nr:#x}",
                                ps.mask()
                            )
                        },
                        got,
                        &want,
                    );
                }
            }
        }
    }
    expect_end(&mut lines, "order")
}

// ---------------------------------------------------------------------------------------
// Pieces 3 and 4: the flush-range choice of AMD and VT-d.

fn flush_dfns() -> Vec<u64> {
    vec![
        0,
        1,
        2,
        511,
        512,
        513,
        1023,
        1024,
        (1 << 18) - 1,
        1 << 18,
        (1 << 18) + 1,
        (1 << 18) + 512,
        (1 << 36) - 1,
        1 << 36,
        u64::MAX - 512,
        u64::MAX - 1,
        u64::MAX,
    ]
}

fn flush_counts() -> Vec<u64> {
    let mut v: Vec<u64> = (0..=1025).collect();
    for k in 11..=18 {
        v.extend([(1 << k) - 1, 1 << k, (1 << k) + 1]);
    }
    v.extend([1 << 36, u64::MAX]);
    v
}

/// The flags of combination `m` (bit 0 added, 1 modified, 2 all), as the driver builds
/// them from `IOMMU_FLUSHF_*`.
fn flush_flags(m: u32) -> FlushFlags {
    FlushFlags {
        added: m & 1 != 0,
        modified: m & 2 != 0,
        all: m & 4 != 0,
    }
}

/// Runs a vendor flush function of the model on fresh caches; returns what it issued and
/// the skipped VT-d flushes.
fn model_flush(hw: HwSemantics, f: impl FnOnce(&mut Hd)) -> (Vec<Issued>, u64) {
    let mut caches = IommuCaches::new(hw);
    let mut queue = Vec::new();
    let mut ctr = IommuCounters::default();
    let mut crashed = None;
    let mut hd = Hd {
        caches: &mut caches,
        queue: &mut queue,
        ctr: &mut ctr,
        crashed: &mut crashed,
        page_sizes: PageSizes::Up1g,
        dont_flush: false,
    };
    f(&mut hd);
    let mut issued = Vec::new();
    caches.take_issued(&mut issued);
    (issued, ctr.vtd_psi_skipped)
}

fn model_records(issued: &[Issued], skipped: u64) -> String {
    let mut r: Vec<String> = issued
        .iter()
        .map(|i| {
            let s = match i.cmd {
                Invalidation::AmdPages { gfn, order } => format!("PAGES:{gfn}:{order}"),
                Invalidation::AmdAllPages => "ALL".into(),
                Invalidation::VtdPsi { gfn, order, ih } => {
                    format!("PSI:{gfn}:{order}:{}", ih as u8)
                }
                Invalidation::VtdDsi => "DSI".into(),
            };
            if i.pages == 1 {
                s
            } else {
                format!("{s}x{}", i.pages)
            }
        })
        .collect();
    r.extend((0..skipped).map(|_| "WBF".to_string()));
    r.join(",")
}

/// The C's records with addresses reduced as the model holds them: an AMD dfn modulo
/// 2^GFN_BITS, a VT-d address as its frame modulo 2^GFN_BITS.
fn normalise_c_records(rec: &str) -> String {
    rec.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let f: Vec<&str> = s.split(':').collect();
            match f.as_slice() {
                ["PAGES", dfn, order] => match dfn.parse::<u64>() {
                    Ok(d) => format!("PAGES:{}:{order}", d & DFN_MASK),
                    Err(_) => s.to_string(),
                },
                ["PSI", addr, am, ih] => match addr.parse::<u64>() {
                    Ok(a) if a & 0xfff == 0 => format!("PSI:{}:{am}:{ih}", (a >> 12) & DFN_MASK),
                    _ => s.to_string(),
                },
                _ => s.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn check_amd(b: &Built, t: &mut Tally) -> Result<(), String> {
    let (dfns, counts) = (flush_dfns(), flush_counts());
    let mut input = String::new();
    push_list(&mut input, &dfns);
    push_list(&mut input, &counts);
    let out = run(&b.amd_mask, "amd", input)?;
    let mut lines = out.lines();
    for m in 0..8 {
        for &dfn in &dfns {
            for &count in &counts {
                let (rec, asserts) = split_line(next(&mut lines, "amd")?);
                t.asserts += (asserts != 0) as u64;
                let (issued, _) = model_flush(HwSemantics::CONSERVATIVE, |hd| {
                    amd_iommu_flush_iotlb_pages(hd, dfn, count, flush_flags(m))
                });
                t.check(
                    &|| format!("flags {:?} dfn {dfn:#x} count {count:#x}", flush_flags(m)),
                    &normalise_c_records(rec),
                    &model_records(&issued, 0),
                );
            }
        }
    }
    expect_end(&mut lines, "amd")
}

/// VT-d units: (caching mode, `cap_max_amask_val`).
const VTD_UNITS: [(bool, u8); 8] = [
    (false, 0),
    (false, 9),
    (false, 18),
    (false, 63),
    (true, 0),
    (true, 9),
    (true, 18),
    (true, 63),
];

fn check_vtd(b: &Built, t: &mut Tally) -> Result<(), String> {
    let (dfns, counts) = (flush_dfns(), flush_counts());
    let mut input = String::new();
    let hw: Vec<u64> = VTD_UNITS
        .iter()
        .flat_map(|&(cm, am)| [cm as u64, am as u64])
        .collect();
    push_list(&mut input, &hw);
    push_list(&mut input, &dfns);
    push_list(&mut input, &counts);
    let out = run(&b.amd_mask, "vtd", input)?;
    let mut lines = out.lines();
    for hook in ["flush_iotlb_qi", "vtd_flush_iotlb_reg"] {
        for (cm, amask) in VTD_UNITS {
            let hw = HwSemantics {
                vtd_caching_mode: cm,
                vtd_max_amask: amask,
                ..HwSemantics::CONSERVATIVE
            };
            for m in 0..8 {
                for &dfn in &dfns {
                    for &count in &counts {
                        let (rec, asserts) = split_line(next(&mut lines, "vtd")?);
                        t.asserts += (asserts != 0) as u64;
                        let (issued, skipped) =
                            model_flush(hw, |hd| iommu_flush_iotlb(hd, dfn, count, flush_flags(m)));
                        t.check(
                            &|| {
                                format!(
                                    "{hook}, CM {cm}, max AM {amask}, flags {:?} dfn {dfn:#x} count {count:#x}",
                                    flush_flags(m)
                                )
                            },
                            &normalise_c_records(rec),
                            &model_records(&issued, skipped),
                        );
                    }
                }
            }
        }
    }
    expect_end(&mut lines, "vtd")
}

// ---------------------------------------------------------------------------------------
// Piece 5: p2m_get_iommu_flags.

/// The model's type for Xen master's enumerator `name`.
fn model_type(name: &str) -> Option<P2mType> {
    match name.strip_prefix("p2m_")? {
        "ioreq_server" => Some(P2M_IOREQ_SERVER),
        n => P2mType::from_name(n),
    }
}

/// The model's access for Xen's enumerator `name` (`r_pw` is read as `r`).
fn model_access(name: &str) -> Option<P2mAccess> {
    match name.strip_prefix("p2m_access_")? {
        "r_pw" => Some(access_of_raw(10)),
        n => P2mAccess::from_name(n),
    }
}

fn perm_str(p: IommuPerm) -> String {
    format!(
        "{}{}",
        if p.read { 'r' } else { '-' },
        if p.write { 'w' } else { '-' }
    )
}

fn check_flags(b: &Built, t: &mut Tally) -> Result<(), String> {
    let sw = match Revision::by_name("xen-master").map(|r| r.switches) {
        Some(LineSwitches::Master(s)) => s,
        _ => return Err("no revision xen-master".into()),
    };
    let (ro_s, ro_e) = (MMIO_RO_FRAMES.start, MMIO_RO_FRAMES.end);
    let mfns = [0, 1, ro_s - 1, ro_s, ro_s + 1, ro_e - 1, ro_e, u64::MAX];
    let mut input = format!("{ro_s} {ro_e}\n");
    push_list(&mut input, &mfns);
    let out = run(&b.amd_mask, "flags", input)?;
    let mut lines = out.lines();
    let (mut seen, mut seen_access) = (Vec::new(), Vec::new());
    for tn in &b.p2m_types {
        let ty = model_type(tn).ok_or_else(|| format!("Xen type {tn} unknown to the model"))?;
        seen.push(ty);
        for an in &b.p2m_accesses {
            let ac =
                model_access(an).ok_or_else(|| format!("Xen access {an} unknown to the model"))?;
            seen_access.push(ac);
            for &mfn in &mfns {
                let got = next(&mut lines, "flags")?;
                let f = p2m_get_iommu_flags(&sw, ty, ac, Mfn(mfn));
                let want = format!("{tn} {an} {mfn} {}|0", perm_str(f));
                t.check(&|| format!("{tn} {an} mfn {mfn:#x}"), got, &want);
            }
        }
    }
    for &ty in P2mType::ALL {
        if !seen.contains(&ty) {
            t.mismatch(format!(
                "model type {ty} has no enumerator in Xen's p2m_type_t"
            ));
        }
    }
    for &ac in P2mAccess::ALL {
        if !seen_access.contains(&ac) {
            t.mismatch(format!(
                "model access {ac} has no enumerator in Xen's p2m_access_t"
            ));
        }
    }
    expect_end(&mut lines, "flags")
}

// ---------------------------------------------------------------------------------------

/// Warns when `$XEN_SRC` is a git checkout at another commit than the pinned one.
fn warn_if_not_pinned(xen: &Path) {
    let head = Command::new("git")
        .arg("-C")
        .arg(xen)
        .args(["rev-parse", "HEAD"])
        .stderr(Stdio::null())
        .output();
    if let Ok(o) = head {
        let h = String::from_utf8_lossy(&o.stdout);
        if o.status.success() && !h.trim().starts_with(PINNED) {
            eprintln!(
                "xen_c_check: warning: $XEN_SRC is at {}, the model reads {PINNED}",
                h.trim()
            );
        }
    }
}

#[test]
fn xen_c_cross_check() {
    let xen = match std::env::var_os("XEN_SRC") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => {
            eprintln!("xen_c_check: skipped (set XEN_SRC to a Xen checkout at {PINNED})");
            return;
        }
    };
    warn_if_not_pinned(&xen);
    let fail = |e: String| -> ! { panic!("xen_c_check: XEN_SRC={}: {e}", xen.display()) };
    let built = build(&xen).unwrap_or_else(|e| fail(e));

    let mut contig = Tally::new("pt_update_contig_markers");
    let mut order = Tally::new("mapping_order");
    let mut amd = Tally::new("amd_iommu_flush_iotlb_pages");
    let mut vtd = Tally::new("iommu_flush_iotlb (VT-d)");
    let mut flags = Tally::new("p2m_get_iommu_flags");
    let (seqs, calls) = check_contig(&built, &mut contig).unwrap_or_else(|e| fail(e));
    check_mapping_order(&built, &mut order).unwrap_or_else(|e| fail(e));
    check_amd(&built, &mut amd).unwrap_or_else(|e| fail(e));
    check_vtd(&built, &mut vtd).unwrap_or_else(|e| fail(e));
    check_flags(&built, &mut flags).unwrap_or_else(|e| fail(e));

    eprintln!(
        "xen_c_check: {}: {seqs} sequences ({calls} calls) per marker mask, 2 masks, {} answers compared",
        contig.name, contig.inputs
    );
    for t in [&order, &amd, &vtd, &flags] {
        eprintln!("xen_c_check: {}: {} inputs compared", t.name, t.inputs);
    }
    for t in [&amd, &vtd] {
        eprintln!(
            "xen_c_check: {}: {} of them fail an ASSERT (outside the contract; compared as a release build)",
            t.name, t.asserts
        );
    }
    let all = [&contig, &order, &amd, &vtd, &flags];
    let bad: u64 = all.iter().map(|t| t.mismatches).sum();
    if bad == 0 {
        let _ = std::fs::remove_dir_all(&built.dir);
    }
    let mut msg = String::new();
    for t in all.iter().filter(|t| t.mismatches > 0) {
        let _ = writeln!(msg, "{}: {} mismatches, first:", t.name, t.mismatches);
        for f in &t.first {
            let _ = writeln!(msg, "  {f}");
        }
    }
    assert_eq!(
        bad,
        0,
        "xen_c_check: the C and the model disagree (generated C kept in {}):\n{msg}",
        built.dir.display()
    );
    eprintln!("xen_c_check: 0 mismatches");
}

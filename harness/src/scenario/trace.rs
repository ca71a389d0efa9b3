//! The text trace format: a human-readable, diff-friendly form of a [`Scenario`].
//!
//! ```text
//! # p2m-fuzz trace v1
//! config mode=npt vendor=amd share=on
//! set_entry gfn=0x200 mfn=0x100200 order=0 ram_rw rwx
//! set_entry gfn=0x200 mfn=INVALID_MFN order=9 invalid rwx
//! ```
//!
//! Grammar, line by line (blank lines and `#` comments are allowed anywhere, also after a
//! statement on the same line):
//! - `config mode=M [vendor=V] [share=on|off] [allow-under-permissive]`, exactly once and
//!   before the first op. `vendor` may be left out for `ept` (→ `vtd`) and `npt` (→ `amd`) and
//!   must agree with the mode when given; it is required for `shadow`. `share` defaults to
//!   `off`. `pci=hotplug` (default `boot`) assigns the device only at an `assign_device`
//!   op (see `Config::pci_hotplug`); it is required exactly when the trace has such an op.
//!   Keys may come in any order.
//! - `set_entry gfn=G mfn=F order=O TYPE ACCESS`: `gfn=`, `mfn=`, `order=` in any order, then
//!   the p2m type name and the access name (in that order) as bare words. Numbers are hex with
//!   `0x` or decimal. `mfn` is a literal below 2^40, `INVALID_MFN`, or a selector the runner
//!   resolves just before the op runs: `ptf:K` (the K-th page-table frame ever allocated, mod
//!   the count, K < 65536), `tbl:L` (the p2m table of level L = 1, 2 or 3 on the walk to
//!   this op's gfn) or `cur` (the frame the p2m maps at this gfn); `tbl:L` and `cur` give
//!   `INVALID_MFN` when there is no such frame. `order` is any u32: invalid orders are kept (Xen returns
//!   `-EINVAL` for them). `gfn` must be representable in the byte format: below
//!   [`GFN_WINDOW`], or a multiple of 0x10000 below 2^40 (this covers the out-of-range gfns
//!   from 2^36 up that Xen must refuse).
//! - `add_to_physmap_range idx=I gpfn=G size=N` (any key order): the guest hypercall
//!   `XENMEM_add_to_physmap` with `XENMAPSPACE_gmfn_range`, moving N pages (0..=255) from
//!   gfn I to gfn G; both gfns below [`GFN_WINDOW`].
//! - Caller ops (each the Xen entry point it names, see `p2m_core::callers`), keys in any
//!   order, gfns and frames below the byte format's limits:
//!   `populate_physmap gfn=G mfn=F order=O`, `decrease_reservation gfn=G order=O` (with
//!   `order=0 nr=N`: N extents, one page each, at consecutive gfns and frames),
//!   `set_mem_type gfn=G nr=N TYPE` (`ram_rw`, `ram_ro`, `mmio_dm`, `ioreq_server`),
//!   `memory_mapping gfn=G mfn=F nr=N add|remove`, `set_mem_access gfn=G nr=N ACCESS`,
//!   `set_broken_page_p2m gfn=G`, `assign_device`, `identity_map gfn=G nr=N rw|r|w add`,
//!   `identity_map gfn=G nr=N remove`, `track_dirty_vram gfn=G nr=N` (N may be 0: stop
//!   tracking), `guest_access gfn=G read|write`; N is 1..=16, 32, 64, 128, 256 or 512.
//! - `add_to_physmap_range idx=I gpfn=G size=N | after K: CALLER-OP`: the batch with a
//!   second vCPU running the caller op once K pages are moved (K ≤ 255).
//! - `fail_alloc nth=K` (1 ≤ K ≤ 256): fault injection, the K-th table allocation of the
//!   next op fails.
//! - A comment `# p2m-fuzz trace vN` with N other than 1 is refused (unknown version).
//!
//! At least one and at most [`MAX_OPS`] ops are required. Every scenario [`parse_trace`]
//! returns is canonical in the sense of [`super::bytes`], except that orders above 63 are
//! accepted here but saturate to 63 in bytes.

use std::fmt;
use std::str::FromStr;

use p2m_core::{Config, HwSemantics, Mode, P2mAccess, P2mType, PageSizes, Vendor};

use super::bytes::{call_pages, gfn_escape_ok, GFN_ESCAPE_SHIFT};
use super::{
    MfnSel, Op, Scenario, SetEntryOp, GFN_WINDOW, MAX_BATCH_SIZE, MAX_OPS, MFN_LITERAL_LIMIT,
    TABLE_LEVELS,
};
use p2m_core::callers::{CallerOp, HvmMemType, Interleave, InterleavedBatch, MAX_CALL_PAGES};
use p2m_core::physmap::AddToPhysmapRange;

/// First line of every trace [`to_trace`] writes.
pub const TRACE_MAGIC: &str = "# p2m-fuzz trace v1";

const MAGIC_PREFIX: &str = "# p2m-fuzz trace v";

/// A parse error: 1-based line number and a one-line message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TraceError {
    /// 1-based line the error was found on (the last line for "missing ..." errors).
    pub line: usize,
    /// What is wrong, on one line.
    pub msg: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

impl std::error::Error for TraceError {}

/// The trace of `s`: [`TRACE_MAGIC`], the config line, one op per line, final newline.
pub fn to_trace(s: &Scenario) -> String {
    format!("{TRACE_MAGIC}\n{s}\n")
}

/// Parses a trace in the format [`to_trace`] writes (see the module docs for the grammar).
pub fn parse_trace(text: &str) -> Result<Scenario, TraceError> {
    let mut config: Option<(usize, Config, bool)> = None;
    let mut ops = Vec::new();
    let mut op_lines = Vec::new();
    let mut last_line = 1;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        last_line = line;
        let err = |msg: String| TraceError { line, msg };
        let trimmed = raw.trim();
        if let Some(v) = trimmed.strip_prefix(MAGIC_PREFIX) {
            if v.trim() != "1" {
                return Err(err(format!(
                    "unsupported trace version `v{}` (this parser reads v1)",
                    v.trim()
                )));
            }
        }
        let body = match trimmed.find('#') {
            Some(i) => &trimmed[..i],
            None => trimmed,
        };
        let mut words = body.split_whitespace();
        let Some(head) = words.next() else { continue };
        match head {
            "config" => {
                if let Some((first, _, _)) = config {
                    return Err(err(format!("second config line (first on line {first})")));
                }
                if !ops.is_empty() {
                    return Err(err("config line after the first op".into()));
                }
                let (c, allow) = parse_config(words).map_err(err)?;
                config = Some((line, c, allow));
            }
            "set_entry"
            | "add_to_physmap_range"
            | "populate_physmap"
            | "decrease_reservation"
            | "set_mem_type"
            | "memory_mapping"
            | "set_mem_access"
            | "assign_device"
            | "set_broken_page_p2m"
            | "identity_map"
            | "track_dirty_vram"
            | "guest_access"
            | "fail_alloc" => {
                if config.is_none() {
                    return Err(err(format!("{head} before the config line")));
                }
                if ops.len() == MAX_OPS {
                    return Err(err(format!("more than {MAX_OPS} ops")));
                }
                op_lines.push(line);
                ops.push(match head {
                    "set_entry" => Op::SetEntry(parse_set_entry(words).map_err(err)?),
                    "add_to_physmap_range" => parse_batch_line(body).map_err(err)?,
                    "fail_alloc" => parse_fail_alloc(words).map_err(err)?,
                    _ => Op::Call(parse_call(head, words).map_err(err)?),
                });
            }
            other => {
                return Err(err(format!(
                    "unknown statement `{other}` (expected `config`, `set_entry`, \
                     `add_to_physmap_range` or a caller op: `populate_physmap`, \
                     `decrease_reservation`, `set_mem_type`, `memory_mapping`, \
                     `set_mem_access`, `set_broken_page_p2m`, `assign_device`, \
                     `identity_map`, `track_dirty_vram`, `guest_access`; or \
                     `fail_alloc`)"
                )))
            }
        }
    }
    let Some((_, config, allow_under_permissive)) = config else {
        return Err(TraceError {
            line: last_line,
            msg: "missing config line".into(),
        });
    };
    if ops.is_empty() {
        return Err(TraceError {
            line: last_line,
            msg: "no ops (a scenario needs at least one op)".into(),
        });
    }
    // Caller ops the byte format cannot hold (see `bytes`): refused here too, so every
    // parsed trace can be fuzzed and encoded.
    let hotplug = super::bytes::has_assign_device(&ops);
    if config.pci_hotplug != hotplug {
        return Err(TraceError {
            line: last_line,
            msg: if hotplug {
                "an assign_device op needs `pci=hotplug` on the config line".into()
            } else {
                "`pci=hotplug` needs an assign_device op".into()
            },
        });
    }
    for (k, op) in ops.iter().enumerate() {
        let c = match op {
            Op::Call(c) => c,
            Op::Interleaved(ib) => &ib.second.op,
            _ => continue,
        };
        if let Err(msg) = super::bytes::check_call(c, config.mode) {
            return Err(TraceError {
                line: op_lines[k],
                msg,
            });
        }
    }
    Ok(Scenario {
        config,
        allow_under_permissive,
        ops,
    })
}

/// Parses a trace ([`parse_trace`]).
impl FromStr for Scenario {
    type Err = TraceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_trace(s)
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, v: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("`{key}=` given twice"));
    }
    *slot = Some(v);
    Ok(())
}

/// Parses the words of a config line after `config` (as printed by `Config`'s
/// `Display`, plus `allow-under-permissive`): `(config, allow_under_permissive)`.
pub fn parse_config_words(line: &str) -> Result<(Config, bool), String> {
    parse_config(line.split_whitespace())
}

fn parse_config<'a>(words: impl Iterator<Item = &'a str>) -> Result<(Config, bool), String> {
    let (mut mode, mut vendor, mut share, mut allow) = (None, None, None, false);
    let (mut sizes, mut hw, mut pci) = (None, None, None);
    for w in words {
        if w == "allow-under-permissive" {
            if allow {
                return Err("`allow-under-permissive` given twice".into());
            }
            allow = true;
            continue;
        }
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("unexpected word `{w}` in config line"));
        };
        match k {
            "mode" => {
                let m = Mode::from_name(v)
                    .ok_or_else(|| format!("unknown mode `{v}` (ept, npt or shadow)"))?;
                set_once(&mut mode, k, m)?;
            }
            "vendor" => {
                let m = Vendor::from_name(v)
                    .ok_or_else(|| format!("unknown vendor `{v}` (vtd or amd)"))?;
                set_once(&mut vendor, k, m)?;
            }
            "share" => {
                let b = match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("bad share value `{v}` (on or off)")),
                };
                set_once(&mut share, k, b)?;
            }
            "superpages" => {
                let p = PageSizes::from_name(v)
                    .ok_or_else(|| format!("bad superpages value `{v}` (4k, 2m or 1g)"))?;
                set_once(&mut sizes, k, p)?;
            }
            "hw" => {
                let h = HwSemantics::preset(v).ok_or_else(|| {
                    let names: Vec<&str> = HwSemantics::PRESETS.iter().map(|p| p.0).collect();
                    format!("unknown hw preset `{v}` ({})", names.join(", "))
                })?;
                set_once(&mut hw, k, h)?;
            }
            "pci" => {
                let b = match v {
                    "hotplug" => true,
                    "boot" => false,
                    _ => return Err(format!("bad pci value `{v}` (boot or hotplug)")),
                };
                set_once(&mut pci, k, b)?;
            }
            _ => return Err(format!("unknown config key `{k}`")),
        }
    }
    let mode = mode.ok_or("config line without `mode=`")?;
    let implied = match mode {
        Mode::Ept => Some(Vendor::Vtd),
        Mode::Npt => Some(Vendor::Amd),
        Mode::Shadow => None,
    };
    let vendor = match (vendor, implied) {
        (Some(v), Some(i)) if v != i => {
            return Err(format!(
                "vendor={v} contradicts mode={mode} (which implies {i})"
            ))
        }
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => return Err("mode=shadow needs `vendor=` (vtd or amd)".into()),
    };
    let mut config = Config::new(mode, vendor, share.unwrap_or(false));
    config.page_sizes = sizes.unwrap_or_default();
    config.hw = hw.unwrap_or_default();
    config.pci_hotplug = pci.unwrap_or(false);
    debug_assert_eq!(config, config.normalized());
    Ok((config, allow))
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) if !h.is_empty() && !h.starts_with('+') => u64::from_str_radix(h, 16).ok(),
        Some(_) => None,
        None if !s.starts_with('+') => s.parse().ok(),
        None => None,
    }
}

fn parse_gfn(v: &str) -> Result<u64, String> {
    let g = parse_u64(v).ok_or_else(|| format!("bad gfn `{v}` (hex 0x.. or decimal)"))?;
    if g < GFN_WINDOW || gfn_escape_ok(g) {
        Ok(g)
    } else {
        Err(format!(
            "gfn {g:#x} not representable: must be below {GFN_WINDOW:#x} or a multiple of {:#x} below 2^40",
            1u64 << GFN_ESCAPE_SHIFT
        ))
    }
}

fn parse_mfn(v: &str) -> Result<MfnSel, String> {
    if v.eq_ignore_ascii_case("INVALID_MFN") {
        return Ok(MfnSel::Invalid);
    }
    if v == "cur" {
        return Ok(MfnSel::Current);
    }
    if let Some(k) = v.strip_prefix("ptf:") {
        return parse_u64(k)
            .and_then(|k| u16::try_from(k).ok())
            .map(MfnSel::TableFrame)
            .ok_or_else(|| format!("bad table-frame index `{k}` (0..65535)"));
    }
    if let Some(l) = v.strip_prefix("tbl:") {
        return parse_u64(l)
            .and_then(|l| u8::try_from(l).ok())
            .filter(|l| TABLE_LEVELS.contains(l))
            .map(MfnSel::TableAt)
            .ok_or_else(|| format!("bad table level `{l}` in `tbl:{l}` (1, 2 or 3)"));
    }
    let x = parse_u64(v).ok_or_else(|| {
        format!("bad mfn `{v}` (hex 0x.., decimal, INVALID_MFN, ptf:K, tbl:L or cur)")
    })?;
    if x >= MFN_LITERAL_LIMIT {
        return Err(format!(
            "mfn {x:#x} does not fit the 40-bit frame field (write INVALID_MFN for ~0)"
        ));
    }
    Ok(MfnSel::Frame(x))
}

fn parse_set_entry<'a>(words: impl Iterator<Item = &'a str>) -> Result<SetEntryOp, String> {
    let (mut gfn, mut mfn, mut order, mut p2mt, mut access) = (None, None, None, None, None);
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            match k {
                "gfn" => set_once(&mut gfn, k, parse_gfn(v)?)?,
                "mfn" => set_once(&mut mfn, k, parse_mfn(v)?)?,
                "order" => {
                    let o = parse_u64(v)
                        .and_then(|o| u32::try_from(o).ok())
                        .ok_or_else(|| format!("bad order `{v}` (a u32)"))?;
                    set_once(&mut order, k, o)?;
                }
                _ => return Err(format!("unknown set_entry key `{k}`")),
            }
        } else if p2mt.is_none() {
            p2mt = Some(P2mType::from_name(w).ok_or_else(|| format!("unknown p2m type `{w}`"))?);
        } else if access.is_none() {
            access =
                Some(P2mAccess::from_name(w).ok_or_else(|| format!("unknown p2m access `{w}`"))?);
        } else {
            return Err(format!("unexpected word `{w}` after the access"));
        }
    }
    Ok(SetEntryOp {
        gfn: gfn.ok_or("set_entry without `gfn=`")?,
        mfn: mfn.ok_or("set_entry without `mfn=`")?,
        order: order.ok_or("set_entry without `order=`")?,
        p2mt: p2mt.ok_or("set_entry without a p2m type")?,
        access: access.ok_or("set_entry without a p2m access")?,
    })
}

/// A whole `add_to_physmap_range` line (after comment removal), with its optional
/// `| after K: CALLER-OP` tail.
fn parse_batch_line(body: &str) -> Result<Op, String> {
    let (batch, tail) = match body.split_once('|') {
        Some((b, t)) => (b, Some(t)),
        None => (body, None),
    };
    let b = parse_batch(batch.split_whitespace().skip(1))?;
    let Some(tail) = tail else {
        return Ok(Op::AddToPhysmap(b));
    };
    let (when, op) = tail
        .split_once(':')
        .ok_or("interleave without `:` (write `| after K: CALLER-OP`)")?;
    let mut w = when.split_whitespace();
    let after = match (w.next(), w.next(), w.next()) {
        (Some("after"), Some(k), None) => parse_u64(k)
            .filter(|&k| k <= 255)
            .ok_or_else(|| format!("bad `after {k}` (0..=255 pages)"))?,
        _ => {
            return Err(format!(
                "bad interleave point `{}` (write `after K`)",
                when.trim()
            ))
        }
    };
    let mut words = op.split_whitespace();
    let head = words.next().ok_or("interleave without a caller op")?;
    let c = parse_call(head, words)?;
    Ok(Op::Interleaved(InterleavedBatch {
        batch: b,
        second: Interleave {
            after: after as u16,
            op: c,
        },
    }))
}

/// A caller op's words after its head.
fn parse_call<'a>(head: &str, words: impl Iterator<Item = &'a str>) -> Result<CallerOp, String> {
    let (mut gfn, mut mfn, mut order, mut nr, mut bare) = (None, None, None, None, Vec::new());
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            bare.push(w);
            continue;
        };
        match k {
            "gfn" => {
                let g = parse_u64(v)
                    .filter(|&g| g < GFN_WINDOW)
                    .ok_or_else(|| format!("bad gfn `{v}` (below {GFN_WINDOW:#x})"))?;
                set_once(&mut gfn, k, g)?;
            }
            "mfn" => {
                let m = parse_u64(v)
                    .filter(|&m| m < MFN_LITERAL_LIMIT)
                    .ok_or_else(|| format!("bad mfn `{v}` (a frame below 2^40)"))?;
                set_once(&mut mfn, k, m)?;
            }
            "order" => {
                let o = parse_u64(v)
                    .filter(|&o| o <= 63)
                    .ok_or_else(|| format!("bad order `{v}` (0..=63)"))?;
                set_once(&mut order, k, o as u32)?;
            }
            "nr" => {
                // `track_dirty_vram nr=0` stops tracking.
                let stop = head == "track_dirty_vram";
                let n = parse_u64(v)
                    .filter(|&n| {
                        (stop && n == 0) || (n <= u64::from(MAX_CALL_PAGES) && call_pages(n as u32))
                    })
                    .ok_or_else(|| {
                        format!(
                            "bad nr `{v}` ({}1..=16, 32, 64, 128, 256 or {MAX_CALL_PAGES})",
                            if stop { "0, " } else { "" }
                        )
                    })?;
                set_once(&mut nr, k, n as u32)?;
            }
            _ => return Err(format!("unknown {head} key `{k}`")),
        }
    }
    let need = |x: Option<u64>, k: &str| x.ok_or_else(|| format!("{head} without `{k}=`"));
    let gfn_of = |g: Option<u64>| need(g, "gfn");
    let one_word = |what: &str| -> Result<&str, String> {
        match bare.as_slice() {
            [w] => Ok(*w),
            [] => Err(format!("{head} without {what}")),
            _ => Err(format!("{head}: unexpected words `{}`", bare.join(" "))),
        }
    };
    let no_words = || {
        if bare.is_empty() {
            Ok(())
        } else {
            Err(format!("{head}: unexpected words `{}`", bare.join(" ")))
        }
    };
    let need_order = || order.ok_or_else(|| format!("{head} without `order=`"));
    let need_nr = || nr.ok_or_else(|| format!("{head} without `nr=`"));
    Ok(match head {
        // With `nr=N`: N extents of order 0 at consecutive gfns in one hypercall.
        "populate_physmap" => {
            no_words()?;
            let (gfn, mfn, order) = (gfn_of(gfn)?, need(mfn, "mfn")?, need_order()?);
            match nr {
                None => CallerOp::Populate { gfn, mfn, order },
                Some(nr) if order == 0 => CallerOp::PopulateRun { gfn, mfn, nr },
                Some(_) => return Err("populate_physmap with nr= takes order=0 extents".into()),
            }
        }
        "decrease_reservation" => {
            no_words()?;
            let (gfn, order) = (gfn_of(gfn)?, need_order()?);
            match nr {
                None => CallerOp::DecreaseReservation { gfn, order },
                Some(nr) if order == 0 => CallerOp::DecreaseRun { gfn, nr },
                Some(_) => return Err("decrease_reservation with nr= takes order=0 extents".into()),
            }
        }
        "set_mem_type" => {
            let w = one_word("a memory type (ram_rw, ram_ro, mmio_dm, ioreq_server)")?;
            CallerOp::SetMemType {
                gfn: gfn_of(gfn)?,
                nr: need_nr()?,
                mem_type: HvmMemType::from_name(w).ok_or_else(|| {
                    format!("unknown memory type `{w}` (ram_rw, ram_ro, mmio_dm, ioreq_server)")
                })?,
            }
        }
        "memory_mapping" => {
            let w = one_word("`add` or `remove`")?;
            let add = match w {
                "add" => true,
                "remove" => false,
                _ => {
                    return Err(format!(
                        "memory_mapping: `{w}` is neither `add` nor `remove`"
                    ))
                }
            };
            CallerOp::MemoryMapping {
                gfn: gfn_of(gfn)?,
                mfn: need(mfn, "mfn")?,
                nr: need_nr()?,
                add,
            }
        }
        "set_mem_access" => {
            let w = one_word("an access")?;
            CallerOp::SetMemAccess {
                gfn: gfn_of(gfn)?,
                nr: need_nr()?,
                access: P2mAccess::from_name(w)
                    .ok_or_else(|| format!("unknown p2m access `{w}`"))?,
            }
        }
        "set_broken_page_p2m" => {
            no_words()?;
            if mfn.is_some() || order.is_some() || nr.is_some() {
                return Err("set_broken_page_p2m takes only `gfn=`".into());
            }
            CallerOp::SetBrokenPage { gfn: gfn_of(gfn)? }
        }
        "track_dirty_vram" => {
            no_words()?;
            if mfn.is_some() || order.is_some() {
                return Err("track_dirty_vram takes `gfn=` and `nr=`".into());
            }
            CallerOp::TrackDirtyVram {
                gfn: gfn_of(gfn)?,
                nr: need_nr()?,
            }
        }
        "guest_access" => {
            if mfn.is_some() || order.is_some() || nr.is_some() {
                return Err("guest_access takes `gfn=` and `read` or `write`".into());
            }
            let write = match one_word("`read` or `write`")? {
                "read" => false,
                "write" => true,
                w => return Err(format!("guest_access: `{w}` is not `read` or `write`")),
            };
            CallerOp::GuestAccess {
                gfn: gfn_of(gfn)?,
                write,
            }
        }
        "identity_map" => {
            if mfn.is_some() || order.is_some() {
                return Err("identity_map takes `gfn=` and `nr=` (the frames are the gfns)".into());
            }
            let (gfn, nr) = (gfn_of(gfn)?, need_nr()?);
            match bare.as_slice() {
                ["remove"] => CallerOp::IdentityMap {
                    gfn,
                    nr,
                    access: P2mAccess::X,
                    add: false,
                },
                [a, "add"] => {
                    let access = P2mAccess::from_name(a)
                        .filter(|a| p2m_core::callers::IDENTITY_ACCESSES.contains(a))
                        .ok_or_else(|| format!("identity_map: access `{a}` is not rw, r or w"))?;
                    CallerOp::IdentityMap {
                        gfn,
                        nr,
                        access,
                        add: true,
                    }
                }
                _ => {
                    return Err(
                        "identity_map ends with `ACCESS add` (rw, r or w) or `remove`".into(),
                    )
                }
            }
        }
        "assign_device" => {
            no_words()?;
            if gfn.is_some() || mfn.is_some() || order.is_some() || nr.is_some() {
                return Err("assign_device takes no keys".into());
            }
            CallerOp::AssignDevice
        }
        other => return Err(format!("unknown caller op `{other}`")),
    })
}

/// `fail_alloc nth=K`.
fn parse_fail_alloc<'a>(mut words: impl Iterator<Item = &'a str>) -> Result<Op, String> {
    let (Some(w), None) = (words.next(), words.next()) else {
        return Err("fail_alloc takes exactly `nth=K`".into());
    };
    let v = w
        .strip_prefix("nth=")
        .ok_or_else(|| format!("fail_alloc: expected `nth=K`, got `{w}`"))?;
    match v.parse::<u32>() {
        Ok(nth) if (1..=super::MAX_FAIL_NTH).contains(&nth) => Ok(Op::FailAlloc { nth }),
        _ => Err(format!(
            "fail_alloc: nth `{v}` is not 1..={}",
            super::MAX_FAIL_NTH
        )),
    }
}

fn parse_batch<'a>(words: impl Iterator<Item = &'a str>) -> Result<AddToPhysmapRange, String> {
    let (mut idx, mut gpfn, mut size) = (None, None, None);
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("unexpected word `{w}` (expected idx=, gpfn=, size=)"))?;
        let window = |v: &str| {
            parse_u64(v)
                .filter(|&g| g < GFN_WINDOW)
                .ok_or_else(|| format!("bad gfn `{v}` (below {GFN_WINDOW:#x})"))
        };
        match k {
            "idx" => set_once(&mut idx, k, window(v)?)?,
            "gpfn" => set_once(&mut gpfn, k, window(v)?)?,
            "size" => {
                let n = parse_u64(v)
                    .filter(|&n| n <= u64::from(MAX_BATCH_SIZE))
                    .ok_or_else(|| format!("bad size `{v}` (0..={MAX_BATCH_SIZE})"))?;
                set_once(&mut size, k, n as u16)?;
            }
            _ => return Err(format!("unknown add_to_physmap_range key `{k}`")),
        }
    }
    Ok(AddToPhysmapRange {
        idx: idx.ok_or("add_to_physmap_range without `idx=`")?,
        gpfn: gpfn.ok_or("add_to_physmap_range without `gpfn=`")?,
        size: size.ok_or("add_to_physmap_range without `size=`")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode, encode, is_canonical};
    use super::*;

    const GEORGE: &str = "# p2m-fuzz trace v1\n\
        config mode=npt vendor=amd share=on\n\
        set_entry gfn=0x200 mfn=0x100200 order=0 ram_rw rwx\n\
        set_entry gfn=0x200 mfn=INVALID_MFN order=9 invalid rwx\n";

    const TRACES: &[&str] = &[
        GEORGE,
        "# p2m-fuzz trace v1\n\
         config mode=ept vendor=vtd share=off\n\
         set_entry gfn=0x1000 mfn=0x101000 order=0 ram_rw rwx\n\
         set_entry gfn=0x1000 mfn=0x101000 order=0 ram_ro rwx\n",
        "# p2m-fuzz trace v1\n\
         config mode=shadow vendor=amd share=on allow-under-permissive\n\
         set_entry gfn=0x0 mfn=0x1c0000 order=18 ram_rw rw\n\
         set_entry gfn=0x3 mfn=0x7 order=9 mmio_direct n2rwx\n\
         set_entry gfn=0xfffff mfn=ptf:7 order=0 grant_map_ro rx2rw\n\
         set_entry gfn=0x1000000000 mfn=0xffffffffff order=0 map_foreign x\n\
         set_entry gfn=0xffffff0000 mfn=0x0 order=1 mmio_write_dm wx\n\
         set_entry gfn=0x40000 mfn=0x1 order=63 populate_on_demand r\n\
         set_entry gfn=0x201 mfn=0x100000 order=9 ram_shared w\n\
         set_entry gfn=0x200 mfn=0x100001 order=9 ram_logdirty rx\n\
         set_entry gfn=0x10000 mfn=ptf:65535 order=18 ram_broken rwx\n\
         set_entry gfn=0x40000 mfn=0x200000 order=18 ram_paged rwx\n\
         set_entry gfn=0x80000 mfn=0xfffff order=18 ram_paging_in rwx\n\
         set_entry gfn=0x40200 mfn=tbl:1 order=9 ram_rw rwx\n\
         set_entry gfn=0x40000 mfn=tbl:2 order=18 ram_ro rwx\n\
         set_entry gfn=0x40201 mfn=tbl:3 order=0 ram_rw rwx\n\
         set_entry gfn=0x40201 mfn=cur order=0 invalid n\n",
        "# p2m-fuzz trace v1\n\
         config mode=npt vendor=amd share=off\n\
         set_entry gfn=0xc0000 mfn=INVALID_MFN order=18 invalid n\n",
    ];

    #[test]
    fn text_bytes_text_round_trip() {
        for t in TRACES {
            let s = parse_trace(t).unwrap_or_else(|e| panic!("{e}\n{t}"));
            assert!(is_canonical(&s), "{t}");
            assert_eq!(to_trace(&s), *t);
            let b = encode(&s);
            let s2 = decode(&b).expect("decodes");
            assert_eq!(s2, s);
            assert_eq!(to_trace(&s2), *t);
        }
    }

    #[test]
    fn george_case_parses() {
        let s = parse_trace(GEORGE).unwrap();
        assert_eq!(s.config, Config::new(Mode::Npt, Vendor::Amd, true));
        assert!(!s.allow_under_permissive);
        assert_eq!(
            s.ops,
            vec![
                Op::SetEntry(SetEntryOp {
                    gfn: 0x200,
                    mfn: MfnSel::Frame(0x100200),
                    order: 0,
                    p2mt: P2mType::RamRw,
                    access: P2mAccess::Rwx
                }),
                Op::SetEntry(SetEntryOp {
                    gfn: 0x200,
                    mfn: MfnSel::Invalid,
                    order: 9,
                    p2mt: P2mType::Invalid,
                    access: P2mAccess::Rwx
                }),
            ]
        );
        // The byte form needs no "keep misaligned" flag: both ops are aligned.
        let b = encode(&s);
        assert_eq!(b.len(), 1 + 2 * 12);
        assert_eq!(b[1 + 12] & 0b111, 1);
    }

    #[test]
    fn lenient_forms() {
        let t = "\n  # leading comment\n\
                 config share=on mode=npt   # vendor implied\n\
                 \n\
                 set_entry order=9 mfn=1048576 gfn=512 ram_rw rwx # trailing\n\
                 # between\n\
                 set_entry gfn=0X10 mfn=ptf:0x10 order=0 ram_ro r\n";
        let s = parse_trace(t).unwrap();
        assert_eq!(s.config.vendor, Vendor::Amd);
        assert!(s.config.iommu_hap_pt_share);
        assert_eq!(
            s.to_string(),
            "config mode=npt vendor=amd share=on\n\
             set_entry gfn=0x200 mfn=0x100000 order=9 ram_rw rwx\n\
             set_entry gfn=0x10 mfn=ptf:16 order=0 ram_ro r"
        );
        let s = parse_trace("config mode=ept\nset_entry gfn=1 mfn=2 order=4000000000 ram_rw n")
            .unwrap();
        assert_eq!(s.config.vendor, Vendor::Vtd);
        assert!(!s.config.iommu_hap_pt_share);
        let Op::SetEntry(o) = s.ops[0] else {
            panic!("set_entry")
        };
        assert_eq!(o.order, 4_000_000_000);
        assert!(!is_canonical(&s));
        // Saturates to order 63: still an invalid order.
        let Op::SetEntry(o2) = decode(&encode(&s)).unwrap().ops[0] else {
            panic!("set_entry")
        };
        assert_eq!(o2.order, 63);
        assert_eq!(
            "config mode=ept\nset_entry gfn=1 mfn=2 order=0 ram_rw n"
                .parse::<Scenario>()
                .unwrap()
                .ops
                .len(),
            1
        );
    }

    fn err_of(t: &str) -> TraceError {
        match parse_trace(t) {
            Ok(s) => panic!("accepted:\n{t}\nas\n{s}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_carry_line_numbers() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "# c\nconfig mode=npt\nset_entry gfn=0 mfn=0 order=0 ram_xx rwx\n",
                3,
                "unknown p2m type `ram_xx`",
            ),
            (
                "config mode=npt\n\n\nset_entry gfn=0 mfn=0 order=0 ram_rw rwxx\n",
                4,
                "unknown p2m access `rwxx`",
            ),
            (
                "config mode=hap\nset_entry gfn=0 mfn=0 order=0 ram_rw rwx\n",
                1,
                "unknown mode `hap`",
            ),
            (
                "# nothing\nset_entry gfn=0 mfn=0 order=0 ram_rw rwx\n",
                2,
                "set_entry before the config line",
            ),
            ("# a\n# b\n", 2, "missing config line"),
            ("config mode=ept\n# c\n", 2, "no ops"),
            ("config mode=npt vendor=vtd\n", 1, "contradicts"),
            ("config mode=shadow\n", 1, "needs `vendor=`"),
            (
                "config mode=ept\nconfig mode=ept\n",
                2,
                "second config line (first on line 1)",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=0x10000000000 order=0 ram_rw rwx\n",
                2,
                "40-bit",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=0xffffffffffffffff order=0 ram_rw rwx\n",
                2,
                "INVALID_MFN",
            ),
            (
                "config mode=ept\nset_entry gfn=0x100001 mfn=0 order=0 ram_rw rwx\n",
                2,
                "not representable",
            ),
            (
                "config mode=ept\nset_entry gfn=0x10000000000 mfn=0 order=0 ram_rw rwx\n",
                2,
                "not representable",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=0 order=-1 ram_rw rwx\n",
                2,
                "bad order",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=ptf:65536 order=0 ram_rw rwx\n",
                2,
                "table-frame",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=tbl:0 order=0 ram_rw rwx\n",
                2,
                "bad table level `0`",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=tbl:4 order=0 ram_rw rwx\n",
                2,
                "(1, 2 or 3)",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=tbl:256 order=0 ram_rw rwx\n",
                2,
                "bad table level",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=tbl: order=0 ram_rw rwx\n",
                2,
                "bad table level",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=tbl:x order=0 ram_rw rwx\n",
                2,
                "bad table level",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=tbl order=0 ram_rw rwx\n",
                2,
                "bad mfn `tbl`",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=current order=0 ram_rw rwx\n",
                2,
                "bad mfn `current`",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=cur:1 order=0 ram_rw rwx\n",
                2,
                "bad mfn",
            ),
            (
                "config mode=ept\nset_entry gfn=0 gfn=0 mfn=0 order=0 ram_rw rwx\n",
                2,
                "given twice",
            ),
            (
                "config mode=ept\nset_entry gfn=0 order=0 ram_rw rwx\n",
                2,
                "without `mfn=`",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=0 order=0 ram_rw\n",
                2,
                "without a p2m access",
            ),
            (
                "config mode=ept\nset_entry gfn=0 mfn=0 order=0 ram_rw rwx extra\n",
                2,
                "unexpected word",
            ),
            ("config mode=ept\nget_entry gfn=0\n", 2, "unknown statement"),
            (
                "# p2m-fuzz trace v2\nconfig mode=ept\n",
                1,
                "unsupported trace version",
            ),
            (
                "config mode=ept\nset_entry gfn=zz mfn=0 order=0 ram_rw rwx\n",
                2,
                "bad gfn",
            ),
        ];
        for (t, line, needle) in cases {
            let e = err_of(t);
            assert_eq!(e.line, *line, "{t}: {e}");
            assert!(e.msg.contains(needle), "{t}: {e}");
            assert!(!e.to_string().contains('\n'));
            assert!(e.to_string().starts_with(&format!("line {line}: ")));
        }
    }

    #[test]
    fn too_many_ops() {
        let mut t = String::from("config mode=ept\n");
        for i in 0..=MAX_OPS {
            t.push_str(&format!("set_entry gfn={i} mfn=0 order=0 ram_rw rwx\n"));
        }
        let e = err_of(&t);
        assert_eq!(e.line, MAX_OPS + 2);
    }
}

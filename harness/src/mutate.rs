//! An op-level, structure-aware mutator for the cargo-fuzz targets
//! (`LLVMFuzzerCustomMutator` / `LLVMFuzzerCustomCrossOver` through libfuzzer-sys'
//! `fuzz_mutator!` and `fuzz_crossover!`).
//!
//! A fuzz input is a header byte and 12-byte op records (`scenario::bytes`). libFuzzer's
//! own mutations flip bytes and splice at any offset, so they rarely build what the deep
//! states of the p2m need: several ops that agree with each other (the same gfn, its
//! neighbour, the other end of a 2 MiB region, the frame a populate handed out). This
//! mutator edits whole records:
//!
//! | kind | weight | what it does |
//! |---|---|---|
//! | insert | 24 | a new caller op at a gfn drawn from the input (see below), biased to the ops that build state: populate (4 KiB, 2 MiB, a run of one-page extents over a region), decrease (a page, a run), VRAM tracking, a vCPU's access, retype, a batch, fault injection |
//! | retarget | 16 | one record's gfn replaced by one drawn from the input |
//! | duplicate | 10 | a record copied next to itself (with a fresh gfn drawn from the input half the time) |
//! | delete | 8 | a record removed |
//! | swap | 7 | two records exchanged |
//! | libFuzzer | 35 | `fuzzer_mutate` (libFuzzer's own byte mutations, the dictionary included) |
//!
//! Gfns are drawn from the input's own ops: the same gfn, its neighbours (±1), the start,
//! last page and next 2 MiB region of its 2 MiB region, and the other 1 GiB half, so ops
//! land on each other's pages and tables. Crossover keeps the first input's header and
//! records up to a cut, then the second input's records from another cut. Both are
//! deterministic in their seed. `P2M_MUTATOR=off` gives every mutation to libFuzzer
//! (the fuzz targets read it once), to measure the mutator against the default.
//!
//! **Macro ops.** A run of one-page extents (`populate_physmap gfn=G mfn=M order=0 nr=N`,
//! `decrease_reservation gfn=G order=0 nr=N`) builds or empties much of a 2 MiB region in
//! one op: with a 2 MiB-aligned gfn and a frame congruent to it (`M ≡ G mod 512`) its pages
//! are the agreeing 4 KiB IOMMU entries that coalesce — the deep states no single 2 MiB op
//! makes (half a table of them, for the `deep-*` revisions). This mutator and `hunt`'s
//! generator (`crate::generate`) draw them; `P2M_MACRO=off` ([`macro_ops_enabled`], read
//! once) makes both draw one-page ops in their place, so a benchmark can compare the
//! search with and without them (`ci/deep-ttf.sh`). libFuzzer's own byte mutations and
//! the dictionary may still write runs.

use p2m_core::callers::{CallerOp, HvmMemType};
use p2m_core::physmap::AddToPhysmapRange;
use p2m_core::Config;

use crate::scenario::bytes::{decode_for_api, try_encode, HEADER_SIZE, OP_SIZE};
use crate::scenario::{Op, Scenario, GFN_WINDOW, MAX_OPS, MFN_POOL_BASE};

/// The mutation kinds, in the order of [`WEIGHTS`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A new caller op at a drawn gfn.
    Insert,
    /// One record's gfn replaced by a drawn one.
    Retarget,
    /// A record copied next to itself.
    Duplicate,
    /// A record removed.
    Delete,
    /// Two records exchanged.
    Swap,
    /// libFuzzer's own mutation.
    Fallback,
}

/// Each kind's share, out of the sum (100).
pub const WEIGHTS: [(Kind, u32); 6] = [
    (Kind::Insert, 24),
    (Kind::Retarget, 16),
    (Kind::Duplicate, 10),
    (Kind::Delete, 8),
    (Kind::Swap, 7),
    (Kind::Fallback, 35),
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u32) -> Self {
        Rng(u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Whole records in `size` bytes after the header.
fn records(size: usize) -> usize {
    size.saturating_sub(HEADER_SIZE) / OP_SIZE
}

/// The record `i` of `data`.
fn record(data: &[u8], i: usize) -> [u8; OP_SIZE] {
    let at = HEADER_SIZE + i * OP_SIZE;
    data[at..at + OP_SIZE].try_into().expect("a whole record")
}

/// The gfns the input's ops name (the same reading as the fuzz targets').
fn gfns_of(s: &Scenario) -> Vec<u64> {
    let mut v = Vec::new();
    for op in &s.ops {
        match op {
            Op::SetEntry(e) => v.push(e.gfn),
            Op::Call(c) => v.push(c.gfn()),
            Op::AddToPhysmap(b) => v.extend([b.idx, b.gpfn]),
            Op::Interleaved(ib) => v.extend([ib.batch.idx, ib.batch.gpfn, ib.second.op.gfn()]),
            Op::FailAlloc { .. } => {}
        }
    }
    v
}

/// A gfn near the input's: one of `known` (or 0x200 with none), moved to a neighbour, its
/// 2 MiB region's start, last page or the next region, or the other 1 GiB half.
fn draw_gfn(rng: &mut Rng, known: &[u64]) -> u64 {
    let base = if known.is_empty() {
        0x200
    } else {
        known[rng.below(known.len() as u64) as usize]
    };
    let g = match rng.below(8) {
        0 | 1 => base,
        2 => base + 1,
        3 => base.saturating_sub(1),
        4 => base & !511,
        5 => base | 511,
        6 => (base & !511) + 512,
        _ => base ^ (1 << 18),
    };
    g & (GFN_WINDOW - 1)
}

/// Whether the generators draw macro ops (runs of one-page extents): `P2M_MACRO=on` (the
/// default) or `off`, read once by the fuzz targets' mutator and by `hunt`'s generator; a
/// bad value stops the process at once (exit 2).
pub fn macro_ops_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("P2M_MACRO").as_deref() {
        Err(_) | Ok("on") | Ok("1") => true,
        Ok("off") | Ok("0") => false,
        Ok(v) => {
            eprintln!("p2m-fuzz: P2M_MACRO: `{v}` is not on or off");
            std::process::exit(2)
        }
    })
}

/// A caller op at `gfn` that builds or changes state, from the pool's frames.
fn fresh_call(rng: &mut Rng, gfn: u64) -> Op {
    fresh_call_with(rng, gfn, macro_ops_enabled())
}

/// [`fresh_call`], with macro ops (runs of one-page extents) drawn or not.
fn fresh_call_with(rng: &mut Rng, gfn: u64, macros: bool) -> Op {
    let call = |c: CallerOp| Op::Call(c);
    match rng.below(17) {
        0..=2 => call(CallerOp::Populate {
            gfn,
            mfn: MFN_POOL_BASE + (gfn & 0xfffff),
            order: 0,
        }),
        3 | 4 => {
            let g = gfn & !511;
            call(CallerOp::Populate {
                gfn: g,
                mfn: MFN_POOL_BASE + (g & 0xfffff),
                order: 9,
            })
        }
        5 | 6 => call(CallerOp::DecreaseReservation { gfn, order: 0 }),
        7 => call(CallerOp::TrackDirtyVram {
            gfn,
            nr: [0, 1, 2, 16, 512][rng.below(5) as usize],
        }),
        8 => call(CallerOp::GuestAccess {
            gfn,
            write: rng.below(3) != 0,
        }),
        9 => call(CallerOp::SetMemType {
            gfn,
            nr: 1,
            mem_type: HvmMemType::ALL[rng.below(4) as usize],
        }),
        10 | 11 => Op::AddToPhysmap(AddToPhysmapRange {
            idx: gfn,
            gpfn: (gfn + 1 + rng.below(512)) & (GFN_WINDOW - 1),
            size: [1, 2, 16, 17][rng.below(4) as usize],
        }),
        12 => Op::FailAlloc {
            nth: 1 + rng.below(3) as u32,
        },
        13 => call(CallerOp::SetBrokenPage { gfn }),
        14 if macros => {
            // A region ballooned in page by page, frames congruent to the gfns (the IOMMU
            // may coalesce it), or given back page by page.
            let g = gfn & !511;
            let nr = [16, 256, 512][rng.below(3) as usize];
            if rng.below(3) == 0 {
                call(CallerOp::DecreaseRun { gfn: g, nr })
            } else {
                call(CallerOp::PopulateRun {
                    gfn: g,
                    mfn: MFN_POOL_BASE + (g & 0xfffff),
                    nr,
                })
            }
        }
        14 => {
            // Without macro ops: one page at the same gfn, populated or given back.
            if rng.below(3) == 0 {
                call(CallerOp::DecreaseReservation { gfn, order: 0 })
            } else {
                call(CallerOp::Populate {
                    gfn,
                    mfn: MFN_POOL_BASE + (gfn & 0xfffff),
                    order: 0,
                })
            }
        }
        _ => call(CallerOp::MemoryMapping {
            gfn,
            mfn: p2m_core::MAX_PAGE + (gfn & 0xffff),
            nr: 1,
            add: rng.below(4) != 0,
        }),
    }
}

/// The record(s) `op` encodes to (an interleaved batch is two), `None` if the bytes cannot
/// hold it.
fn encode_op(op: Op) -> Option<Vec<u8>> {
    let s = Scenario {
        config: Config::new(p2m_core::Mode::Ept, p2m_core::Vendor::Vtd, false),
        allow_under_permissive: false,
        ops: vec![op],
    };
    try_encode(&s).ok().map(|b| b[HEADER_SIZE..].to_vec())
}

/// `op` with its gfn (a batch: its source) replaced by `gfn`.
fn with_gfn(op: Op, gfn: u64) -> Op {
    match op {
        Op::SetEntry(mut e) => {
            e.gfn = gfn;
            Op::SetEntry(e)
        }
        Op::AddToPhysmap(mut b) => {
            b.idx = gfn;
            Op::AddToPhysmap(b)
        }
        Op::Call(c) => Op::Call(match c {
            CallerOp::Populate { mfn, order, .. } => {
                let mask = (1u64 << order.min(18)) - 1;
                CallerOp::Populate {
                    gfn: gfn & !mask,
                    mfn,
                    order,
                }
            }
            CallerOp::DecreaseReservation { order, .. } => CallerOp::DecreaseReservation {
                gfn: gfn & !((1u64 << order.min(18)) - 1),
                order,
            },
            CallerOp::SetMemType { nr, mem_type, .. } => CallerOp::SetMemType { gfn, nr, mem_type },
            CallerOp::MemoryMapping { mfn, nr, add, .. } => {
                CallerOp::MemoryMapping { gfn, mfn, nr, add }
            }
            CallerOp::SetMemAccess { nr, access, .. } => CallerOp::SetMemAccess { gfn, nr, access },
            CallerOp::SetBrokenPage { .. } => CallerOp::SetBrokenPage { gfn },
            CallerOp::IdentityMap {
                nr, access, add, ..
            } => CallerOp::IdentityMap {
                gfn,
                nr,
                access,
                add,
            },
            CallerOp::TrackDirtyVram { nr, .. } => CallerOp::TrackDirtyVram { gfn, nr },
            CallerOp::PopulateRun { mfn, nr, .. } => CallerOp::PopulateRun { gfn, mfn, nr },
            CallerOp::DecreaseRun { nr, .. } => CallerOp::DecreaseRun { gfn, nr },
            CallerOp::GuestAccess { write, .. } => CallerOp::GuestAccess { gfn, write },
            CallerOp::AssignDevice => CallerOp::AssignDevice,
        }),
        other => other,
    }
}

/// Writes `recs` (whole records) after `data`'s header; returns the new size, at most
/// `max_size` (records that do not fit are dropped).
fn write_records(data: &mut [u8], recs: &[u8], max_size: usize) -> usize {
    let room = max_size.min(data.len()).saturating_sub(HEADER_SIZE) / OP_SIZE;
    let n = (recs.len() / OP_SIZE).min(room).min(MAX_OPS);
    data[HEADER_SIZE..HEADER_SIZE + n * OP_SIZE].copy_from_slice(&recs[..n * OP_SIZE]);
    HEADER_SIZE + n * OP_SIZE
}

/// One mutation of `data[..size]` (room for `max_size` bytes), `seed` choosing it;
/// `fallback` is libFuzzer's own mutator. Returns the new size.
pub fn mutate(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
    fallback: &mut dyn FnMut(&mut [u8], usize, usize) -> usize,
) -> usize {
    let mut rng = Rng::new(seed);
    let size = size.min(data.len());
    let max_size = max_size.min(data.len());
    if max_size < HEADER_SIZE + OP_SIZE {
        return fallback(data, size, max_size);
    }
    if size < HEADER_SIZE {
        data[0] = rng.below(256) as u8;
    }
    let total: u32 = WEIGHTS.iter().map(|w| w.1).sum();
    let mut pick = rng.below(total.into()) as u32;
    let mut kind = Kind::Fallback;
    for (k, w) in WEIGHTS {
        if pick < w {
            kind = k;
            break;
        }
        pick -= w;
    }
    let n = records(size.max(HEADER_SIZE));
    let mut recs: Vec<[u8; OP_SIZE]> = (0..n).map(|i| record(data, i)).collect();
    let reading = decode_for_api(&data[..HEADER_SIZE + n * OP_SIZE], None);
    let known = reading.as_ref().map(gfns_of).unwrap_or_default();
    let changed = match kind {
        Kind::Insert => {
            let gfn = draw_gfn(&mut rng, &known);
            let op = fresh_call(&mut rng, gfn);
            match encode_op(op) {
                Some(bytes) => {
                    let at = rng.below(recs.len() as u64 + 1) as usize;
                    let new: Vec<[u8; OP_SIZE]> = bytes
                        .chunks_exact(OP_SIZE)
                        .map(|c| c.try_into().expect("record"))
                        .collect();
                    recs.splice(at..at, new);
                    true
                }
                None => false,
            }
        }
        Kind::Retarget | Kind::Duplicate if recs.is_empty() => false,
        Kind::Retarget => {
            let i = rng.below(recs.len() as u64) as usize;
            retarget(&mut rng, data[0], &recs[i], &known).is_some_and(|r| {
                recs[i] = r;
                true
            })
        }
        Kind::Duplicate => {
            let i = rng.below(recs.len() as u64) as usize;
            let copy = if rng.below(2) == 0 {
                retarget(&mut rng, data[0], &recs[i], &known).unwrap_or(recs[i])
            } else {
                recs[i]
            };
            recs.insert(i + 1, copy);
            true
        }
        Kind::Delete if !recs.is_empty() => {
            let i = rng.below(recs.len() as u64) as usize;
            recs.remove(i);
            true
        }
        Kind::Swap if recs.len() >= 2 => {
            let i = rng.below(recs.len() as u64) as usize;
            let j = rng.below(recs.len() as u64) as usize;
            recs.swap(i, j);
            i != j
        }
        _ => false,
    };
    if !changed {
        return fallback(data, size.max(HEADER_SIZE), max_size);
    }
    let flat: Vec<u8> = recs.concat();
    write_records(data, &flat, max_size)
}

/// `rec` (read under header `h`) with its gfn drawn from `known`, if it re-encodes.
fn retarget(rng: &mut Rng, h: u8, rec: &[u8; OP_SIZE], known: &[u64]) -> Option<[u8; OP_SIZE]> {
    let mut one = vec![h];
    one.extend_from_slice(rec);
    let s = decode_for_api(&one, None)?;
    let op = *s.ops.first()?;
    let bytes = encode_op(with_gfn(op, draw_gfn(rng, known)))?;
    bytes.get(..OP_SIZE)?.try_into().ok()
}

/// Crossover of two inputs into `out`: `a`'s header and records up to a cut, then `b`'s
/// from another cut. Returns the size written.
pub fn crossover(a: &[u8], b: &[u8], out: &mut [u8], seed: u32) -> usize {
    let mut rng = Rng::new(seed);
    if out.len() < HEADER_SIZE {
        return 0;
    }
    out[0] = a.first().or(b.first()).copied().unwrap_or(0);
    let (na, nb) = (records(a.len()), records(b.len()));
    let ka = rng.below(na as u64 + 1) as usize;
    let kb = rng.below(nb as u64 + 1) as usize;
    let mut recs = Vec::with_capacity((ka + nb - kb) * OP_SIZE);
    recs.extend_from_slice(&a[HEADER_SIZE..HEADER_SIZE + ka * OP_SIZE]);
    recs.extend_from_slice(&b[HEADER_SIZE + kb * OP_SIZE..HEADER_SIZE + nb * OP_SIZE]);
    let max = out.len();
    write_records(out, &recs, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::bytes::encode;
    use crate::scenario::parse_trace;

    fn no_fallback(_: &mut [u8], size: usize, _: usize) -> usize {
        size
    }

    #[test]
    fn weights_sum_to_100() {
        assert_eq!(WEIGHTS.iter().map(|w| w.1).sum::<u32>(), 100);
    }

    /// Every mutation leaves whole records that decode, is deterministic in its seed,
    /// and inserts ops at the gfns the input already names (or their neighbours).
    #[test]
    fn mutations_keep_records_whole_and_draw_gfns_from_the_input() {
        let s = parse_trace(
            "config mode=ept vendor=vtd share=off\n\
             populate_physmap gfn=0x4200 mfn=0x104200 order=9\n\
             decrease_reservation gfn=0x4201 order=0\n",
        )
        .unwrap();
        let input = encode(&s);
        let (mut near, mut total) = (0, 0);
        for seed in 0..2000u32 {
            let mut buf = vec![0u8; 4096];
            buf[..input.len()].copy_from_slice(&input);
            let n = mutate(&mut buf, input.len(), 4096, seed, &mut no_fallback);
            let mut again = vec![0u8; 4096];
            again[..input.len()].copy_from_slice(&input);
            let m = mutate(&mut again, input.len(), 4096, seed, &mut no_fallback);
            assert_eq!((n, &buf[..n]), (m, &again[..m]), "seed {seed}");
            assert_eq!((n - HEADER_SIZE) % OP_SIZE, 0, "seed {seed}");
            let got = decode_for_api(&buf[..n], None).expect("decodes");
            if got.ops.len() > s.ops.len() {
                total += 1;
                near += gfns_of(&got)
                    .iter()
                    .any(|&g| (0x4000..0x4600).contains(&g) || (0x44000..0x44600).contains(&g))
                    as u32;
            }
        }
        assert!(total > 200, "{total} growing mutations");
        assert_eq!(near, total, "every new op lands near the input's gfns");
    }

    /// Inserted caller ops include runs of one-page extents over a 2 MiB region, frames
    /// congruent to the gfns, unless macro ops are off (`P2M_MACRO=off`).
    #[test]
    fn macro_ops_switch() {
        let is_run = |op: &Op| {
            matches!(
                op,
                Op::Call(CallerOp::PopulateRun { .. } | CallerOp::DecreaseRun { .. })
            )
        };
        let (mut on, mut off) = (0, 0);
        for seed in 0..3000u32 {
            let gfn = 0x4321 + u64::from(seed % 7);
            let op = fresh_call_with(&mut Rng::new(seed), gfn, true);
            if is_run(&op) {
                on += 1;
                if let Op::Call(CallerOp::PopulateRun { gfn, mfn, .. }) = op {
                    assert_eq!((gfn % 512, mfn % 512), (0, 0), "{op:?}");
                }
            }
            off += is_run(&fresh_call_with(&mut Rng::new(seed), gfn, false)) as u32;
        }
        assert!(on > 100, "{on} runs");
        assert_eq!(off, 0);
    }

    /// Crossover keeps whole records from both sides and the first input's header.
    #[test]
    fn crossover_splices_records() {
        let a = encode(
            &parse_trace(
                "config mode=npt vendor=amd share=off\n\
                 populate_physmap gfn=0x200 mfn=0x100200 order=0\n\
                 populate_physmap gfn=0x201 mfn=0x100201 order=0\n",
            )
            .unwrap(),
        );
        let b = encode(
            &parse_trace(
                "config mode=ept vendor=vtd share=on\n\
                 decrease_reservation gfn=0x200 order=0\n",
            )
            .unwrap(),
        );
        let mut seen_both = false;
        for seed in 0..200u32 {
            let mut out = vec![0u8; 512];
            let n = crossover(&a, &b, &mut out, seed);
            assert_eq!(out[0], a[0]);
            assert_eq!((n - HEADER_SIZE) % OP_SIZE, 0);
            if n == HEADER_SIZE {
                continue; // no record taken from either side
            }
            let s = decode_for_api(&out[..n], None).expect("decodes");
            let text = s.to_string();
            seen_both |= text.contains("populate_physmap") && text.contains("decrease");
        }
        assert!(seen_both);
    }

    /// With no room for a record, or an empty input, the mutator still returns a valid
    /// size (libFuzzer's mutator takes over where it cannot act).
    #[test]
    fn small_buffers_fall_back() {
        let mut buf = [0u8; 8];
        let mut called = false;
        let n = mutate(&mut buf, 3, 8, 1, &mut |_, s, _| {
            called = true;
            s
        });
        assert!(called && n == 3);
        let mut buf = vec![0u8; 64];
        for seed in 0..50 {
            let n = mutate(&mut buf, 0, 64, seed, &mut no_fallback);
            assert!(n <= 64 && (n == 0 || (n - HEADER_SIZE).is_multiple_of(OP_SIZE)));
        }
    }
}

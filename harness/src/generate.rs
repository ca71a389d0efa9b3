//! Swarm-style random scenario generator for `hunt` (stable Rust, no fuzzer).
//!
//! Each [`Swarm`] picks a random subset of orders, types, accesses and frame kinds
//! to favour; scenarios drawn from it are short sequences over a handful of gfns
//! placed at 4 KiB / 2 MiB / 1 GiB boundaries, so that ops overlap and replace
//! each other's tables. Caller ops include macro ops — a 2 MiB region ballooned in or out
//! page by page in one op, frames congruent to the gfns — unless `P2M_MACRO=off`
//! ([`crate::mutate::macro_ops_enabled`]), which draws one-page ops in their place.

use crate::scenario::{MfnSel, Op, Scenario, SetEntryOp, GFN_WINDOW, MFN_POOL_BASE};
use p2m_core::callers::{CallerOp, HvmMemType, Interleave, InterleavedBatch};
use p2m_core::physmap::AddToPhysmapRange;
use p2m_core::{Config, Mode, P2mAccess, P2mType, PageSizes, Vendor, MMIO_RO_FRAMES, PAGE_ORDERS};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// One swarm configuration: which parts of the op space to draw from.
#[derive(Clone, Debug)]
pub struct Swarm {
    /// Configuration of every scenario of this swarm.
    pub config: Config,
    orders: Vec<u32>,
    types: Vec<P2mType>,
    accesses: Vec<P2mAccess>,
    mfn_kinds: Vec<u8>,
    max_ops: usize,
    /// Chance that an op is an `add_to_physmap_range` batch (0 in half the swarms).
    batch_chance: f64,
    /// Chance that an op puts the previous op's range back to `ram_rw` on the frame
    /// mapped there (`cur`): a changed page inside a superpage reverts, so IOMMU tables
    /// that shattered coalesce again.
    revert_chance: f64,
    /// Frame of gfn 0 for the "linear" frame kind (a multiple of 1 GiB): maps keep
    /// `dfn ≡ mfn` modulo every table size, so IOMMU tables can coalesce.
    linear_base: u64,
    /// Chance that an op is a caller op (0 in a third of the swarms, every op in another).
    caller_chance: f64,
    /// Chance that a batch carries a second vCPU's caller op.
    interleave_chance: f64,
    /// Chance that an op is preceded by a fault injection (`fail_alloc`; 0 in half the
    /// swarms): one of its first table allocations fails.
    fail_chance: f64,
    /// Whether caller ops include runs of one-page extents (`P2M_MACRO`).
    macros: bool,
}

fn subset<T: Copy>(rng: &mut SmallRng, all: &[T]) -> Vec<T> {
    let mut v: Vec<T> = all.iter().copied().filter(|_| rng.gen_bool(0.5)).collect();
    if v.is_empty() {
        v.push(*all.choose(rng).expect("non-empty"));
    }
    v
}

impl Swarm {
    /// Draws a swarm; `mode` fixes the p2m mode if given.
    pub fn new(rng: &mut SmallRng, mode: Option<Mode>) -> Swarm {
        let mode = mode.unwrap_or(*Mode::ALL.choose(rng).expect("modes"));
        let vendor = if rng.gen_bool(0.5) {
            Vendor::Vtd
        } else {
            Vendor::Amd
        };
        let mut config = Config::new(mode, vendor, rng.gen_bool(0.5)).normalized();
        config.page_sizes = *PageSizes::ALL.choose(rng).expect("page sizes");
        let mut types = subset(rng, P2mType::ALL);
        // Always keep one type that maps something, so scenarios do something.
        if !types
            .iter()
            .any(|t| matches!(t, P2mType::RamRw | P2mType::RamRo))
        {
            types.push(P2mType::RamRw);
        }
        let mut accesses = subset(rng, P2mAccess::ALL);
        accesses.push(P2mAccess::Rwx);
        Swarm {
            config,
            orders: subset(rng, &PAGE_ORDERS),
            types,
            accesses,
            mfn_kinds: subset(rng, &[0u8, 1, 2, 3, 4, 5, 6]),
            max_ops: rng.gen_range(2..=12),
            revert_chance: if rng.gen_bool(0.5) {
                0.0
            } else {
                rng.gen_range(0.1..0.4)
            },
            batch_chance: if rng.gen_bool(0.5) {
                0.0
            } else {
                rng.gen_range(0.1..0.5)
            },
            linear_base: MFN_POOL_BASE + (rng.gen_range(0..4u64) << 18),
            caller_chance: match rng.gen_range(0..3u8) {
                0 => 0.0,
                1 => 1.0,
                _ => rng.gen_range(0.2..0.8),
            },
            interleave_chance: if rng.gen_bool(0.5) {
                0.0
            } else {
                rng.gen_range(0.3..1.0)
            },
            fail_chance: if rng.gen_bool(0.5) {
                0.0
            } else {
                rng.gen_range(0.05..0.3)
            },
            macros: crate::mutate::macro_ops_enabled(),
        }
    }

    /// The swarm with macro ops (runs of one-page extents) drawn or not, whatever
    /// `P2M_MACRO` says.
    pub fn with_macros(mut self, on: bool) -> Swarm {
        self.macros = on;
        self
    }

    /// A swarm that draws no caller ops besides the batch (the raw API as before caller
    /// ops existed: for properties of `set_entry` ops and their frame selectors).
    pub fn without_callers(mut self) -> Swarm {
        self.caller_chance = 0.0;
        self.interleave_chance = 0.0;
        self.fail_chance = 0.0;
        self
    }

    /// A swarm that draws caller ops only (every scenario a caller chain).
    pub fn callers_only(mut self) -> Swarm {
        self.caller_chance = 1.0;
        self.revert_chance = 0.0;
        self
    }

    /// Draws a swarm whose scenarios all have `config` (normalized).
    pub fn for_config(rng: &mut SmallRng, config: Config) -> Swarm {
        let mut s = Swarm::new(rng, Some(config.mode));
        s.config = config.normalized();
        s
    }

    /// Draws one scenario from the swarm.
    pub fn scenario(&self, rng: &mut SmallRng) -> Scenario {
        let n = rng.gen_range(1..=self.max_ops);
        let mut ops = Vec::with_capacity(n);
        let mut last_mfn = MFN_POOL_BASE;
        // The allocator of `populate_physmap`: fresh frames, handed out in order.
        let mut heap = MFN_POOL_BASE + (rng.gen_range(0..8u64) << 18);
        for _ in 0..n {
            let order = *self.orders.choose(rng).expect("orders");
            let region = rng.gen_range(0..4u64) << 18;
            let mid = *[0u64, 1, 2, 511].choose(rng).expect("mid") << 9;
            let low = *[0u64, 1, 511].choose(rng).expect("low");
            let mask = !((1u64 << order) - 1);
            let gfn = (region + mid + low) & mask;
            if self.fail_chance > 0.0 && rng.gen_bool(self.fail_chance) {
                // Mostly one of the few tables a walk allocates; now and then deep
                // inside a split or a long map loop.
                let nth = if rng.gen_bool(0.8) {
                    rng.gen_range(1..=6)
                } else {
                    rng.gen_range(7..=crate::scenario::MAX_FAIL_NTH)
                };
                ops.push(Op::FailAlloc { nth });
            }
            if let Some(Op::SetEntry(prev)) = ops.last() {
                if self.revert_chance > 0.0 && rng.gen_bool(self.revert_chance) {
                    let back = SetEntryOp {
                        mfn: MfnSel::Current,
                        p2mt: P2mType::RamRw,
                        access: P2mAccess::Rwx,
                        ..*prev
                    };
                    ops.push(Op::SetEntry(back));
                    continue;
                }
            }
            if self.batch_chance > 0.0 && rng.gen_bool(self.batch_chance) {
                let b = self.batch(rng, region + mid + low);
                if self.interleave_chance > 0.0 && rng.gen_bool(self.interleave_chance) {
                    // Most often the guest frees a page the batch moved.
                    let op = if rng.gen_bool(0.7) {
                        let k = rng.gen_range(0..u64::from(b.size.max(1)));
                        CallerOp::DecreaseReservation {
                            gfn: (b.gpfn + k) & (GFN_WINDOW - 1),
                            order: 0,
                        }
                    } else {
                        self.caller(rng, gfn, order, &mut heap)
                    };
                    ops.push(Op::Interleaved(InterleavedBatch {
                        batch: b,
                        second: Interleave {
                            after: rng.gen_range(0..=b.size.min(255)),
                            op,
                        },
                    }));
                } else {
                    ops.push(Op::AddToPhysmap(b));
                }
                continue;
            }
            if self.caller_chance > 0.0 && rng.gen_bool(self.caller_chance) {
                ops.push(Op::Call(self.caller(rng, gfn, order, &mut heap)));
                continue;
            }
            let mfn = match *self.mfn_kinds.choose(rng).expect("kinds") {
                0 => {
                    let m = (MFN_POOL_BASE
                        + (rng.gen_range(0..8u64) << 18)
                        + (rng.gen_range(0..4u64) << 9)
                        + rng.gen_range(0..4u64))
                        & mask;
                    last_mfn = m;
                    MfnSel::Frame(m)
                }
                1 => MfnSel::Frame(last_mfn & mask),
                2 => MfnSel::Invalid,
                3 => MfnSel::TableFrame(rng.gen_range(0..8)),
                4 => MfnSel::Frame((self.linear_base + gfn) & mask),
                6 => match rng.gen_range(0..4u8) {
                    0 => MfnSel::Current,
                    l => MfnSel::TableAt(l),
                },
                _ => {
                    // MMIO frames above the RAM, around and inside `mmio_ro_ranges`.
                    let m = MMIO_RO_FRAMES.start - 0x100 + rng.gen_range(0..0x300u64);
                    MfnSel::Frame(m & mask)
                }
            };
            ops.push(Op::SetEntry(SetEntryOp {
                gfn,
                mfn,
                order,
                p2mt: *self.types.choose(rng).expect("types"),
                access: if rng.gen_bool(0.7) {
                    P2mAccess::Rwx
                } else {
                    *self.accesses.choose(rng).expect("accesses")
                },
            }));
        }
        Scenario {
            config: self.config,
            allow_under_permissive: false,
            ops,
        }
        .with_hotplug_derived()
    }

    /// A caller op at `gfn` (aligned to `order`): mostly populating with fresh frames from
    /// `heap` and returning pages, else retyping (the device model's set-mem-type, the
    /// toolstack's broken-page marking), MMIO mapping (around and inside
    /// `mmio_ro_ranges`), device assignment, identity maps, VRAM tracking, a vCPU's own
    /// accesses, a region ballooned in or out page by page, rarely an introspection
    /// access change.
    fn caller(&self, rng: &mut SmallRng, gfn: u64, order: u32, heap: &mut u64) -> CallerOp {
        let nr = if rng.gen_bool(0.9) {
            *[1u32, 2, 3, 16].choose(rng).expect("nr")
        } else {
            512
        };
        match rng.gen_range(0..30u8) {
            0..=6 => {
                // 4.6 shadow mode writes a 1 GiB extent as 2^18 4 KiB entries: kept to
                // 2 MiB here so a search costs time per op, not per page.
                let order = if self.config.mode == Mode::Shadow {
                    order.min(9)
                } else {
                    order
                };
                let gfn = gfn & !((1u64 << order) - 1);
                let size = 1u64 << order;
                let mfn = heap.next_multiple_of(size);
                *heap = mfn + size;
                CallerOp::Populate { gfn, mfn, order }
            }
            7..=10 => CallerOp::DecreaseReservation {
                gfn,
                order: if rng.gen_bool(0.8) { 0 } else { order.min(9) },
            },
            11..=14 => CallerOp::SetMemType {
                gfn,
                nr,
                mem_type: *HvmMemType::ALL.choose(rng).expect("types"),
            },
            15..=17 => CallerOp::MemoryMapping {
                gfn,
                mfn: (MMIO_RO_FRAMES.start - 0x200 + rng.gen_range(0..0x400u64))
                    & !((1u64 << order.min(9)) - 1),
                nr,
                add: rng.gen_bool(0.7),
            },
            18 => CallerOp::AssignDevice,
            19 | 20 => CallerOp::SetBrokenPage { gfn },
            // A device with a reserved range (RMRR / IVMD) is assigned or deassigned; the
            // range is the frames of the same numbers as its gfns.
            21 | 22 => {
                let add = rng.gen_bool(0.75);
                CallerOp::IdentityMap {
                    gfn,
                    nr: nr.min(16),
                    access: if add {
                        *p2m_core::callers::IDENTITY_ACCESSES
                            .choose(rng)
                            .expect("accesses")
                    } else {
                        P2mAccess::X
                    },
                    add,
                }
            }
            // The device model tracks VRAM (a new range, the same one again, or stop), a
            // vCPU touches a page (resolving a pending type change, retyping a log-dirty
            // page it writes).
            23 | 24 => CallerOp::TrackDirtyVram {
                gfn,
                nr: if rng.gen_bool(0.15) { 0 } else { nr },
            },
            25 | 26 => CallerOp::GuestAccess {
                gfn,
                write: rng.gen_bool(0.7),
            },
            // A region ballooned in or out page by page (one hypercall, many extents):
            // fresh frames congruent to the gfns, so the IOMMU may coalesce the region.
            // Without macro ops, one page at the same gfn instead.
            28 | 29 if !self.macros => {
                if rng.gen_bool(0.5) {
                    let mfn = *heap;
                    *heap += 1;
                    CallerOp::Populate { gfn, mfn, order: 0 }
                } else {
                    CallerOp::DecreaseReservation { gfn, order: 0 }
                }
            }
            28 => {
                let g = gfn & !511;
                let nr = *[16u32, 256, 512].choose(rng).expect("nr");
                let mfn = heap.next_multiple_of(512) + (g & 511);
                *heap = mfn + u64::from(nr);
                CallerOp::PopulateRun { gfn: g, mfn, nr }
            }
            29 => CallerOp::DecreaseRun {
                gfn: gfn & !511,
                nr: *[1u32, 16, 256, 512].choose(rng).expect("nr"),
            },
            _ => CallerOp::SetMemAccess {
                gfn,
                nr,
                access: *self.accesses.choose(rng).expect("accesses"),
            },
        }
    }

    /// An `add_to_physmap_range` from `idx`: to an overlapping destination (either way),
    /// to another 2 MiB or 1 GiB region, or onto itself; sizes around the 16-page
    /// continuation and a level-1 table.
    fn batch(&self, rng: &mut SmallRng, idx: u64) -> AddToPhysmapRange {
        let size = *[1u16, 2, 3, 15, 16, 17, 33, 64, 255]
            .choose(rng)
            .expect("sizes");
        let gpfn = match rng.gen_range(0..5u8) {
            0 => idx.wrapping_add(rng.gen_range(1..=u64::from(size))),
            1 => idx.saturating_sub(rng.gen_range(1..=u64::from(size))),
            2 => idx ^ ((1 << 9) * rng.gen_range(1..4u64)),
            3 => idx ^ ((1 << 18) * rng.gen_range(1..4u64)),
            _ => idx,
        };
        AddToPhysmapRange {
            idx,
            gpfn: gpfn & (GFN_WINDOW - 1),
            size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Runs of one-page extents in `n` caller scenarios of swarms with macro ops `on`.
    fn runs(on: bool, n: usize) -> (usize, usize) {
        let mut rng = SmallRng::seed_from_u64(7);
        let (mut runs, mut congruent) = (0, 0);
        for _ in 0..n {
            let swarm = Swarm::new(&mut rng, None).callers_only().with_macros(on);
            for op in swarm.scenario(&mut rng).ops {
                match op {
                    Op::Call(CallerOp::PopulateRun { gfn, mfn, .. }) => {
                        runs += 1;
                        congruent += (gfn % 512 == 0 && mfn % 512 == gfn % 512) as usize;
                    }
                    Op::Call(CallerOp::DecreaseRun { gfn, .. }) => {
                        runs += 1;
                        congruent += (gfn % 512 == 0) as usize;
                    }
                    _ => {}
                }
            }
        }
        (runs, congruent)
    }

    /// With macro ops the swarms draw runs over whole 2 MiB regions, frames congruent to
    /// the gfns; without them (`P2M_MACRO=off`) none.
    #[test]
    fn macro_ops_switch() {
        let (on, congruent) = runs(true, 3000);
        assert!(on > 100, "{on} runs");
        assert_eq!(congruent, on);
        assert_eq!(runs(false, 3000).0, 0);
    }
}

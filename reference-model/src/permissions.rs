//! The reference's own permission table: what a device may do with a frame, per p2m type
//! (and, for shared EPT, per access), written from Xen 4.6 facts independently of `p2m-core`.
//!
//! Three columns; which one applies is decided by [`column_for`]:
//!
//! | type               | separate (`p2m_get_iommu_flags`) | EPT shared (`ept_p2m_type_to_flags`, before access) | NPT shared (IR/IW from `p2m_add_iommu_flags`) |
//! |--------------------|-----|-----|-----|
//! | ram_rw             | rw  | rw  | rw  |
//! | invalid            | --  | --  | --  |
//! | ram_logdirty       | rw  | r-  | rw  |
//! | ram_ro             | r-  | r-  | r-  |
//! | mmio_dm            | --  | --  | --  |
//! | mmio_direct        | --  | rw  | --  |
//! | populate_on_demand | --  | --  | --  |
//! | grant_map_rw       | rw  | rw  | rw  |
//! | grant_map_ro       | r-  | r-  | r-  |
//! | ram_paging_out     | --  | --  | --  |
//! | ram_paged          | --  | --  | --  |
//! | ram_paging_in      | --  | --  | --  |
//! | ram_shared         | --  | r-  | --  |
//! | ram_broken         | --  | --  | --  |
//! | map_foreign        | rw  | rw  | rw  |
//! | mmio_write_dm      | --  | r-  | --  |
//!
//! Sources (Xen 4.6):
//! - *separate*: `xen/include/asm-x86/p2m.h`, `p2m_get_iommu_flags`: readable+writable for
//!   ram_rw, grant_map_rw, ram_logdirty, map_foreign; readable for ram_ro, grant_map_ro;
//!   0 for every other type (the `default` arm).
//! - *EPT shared*: `xen/arch/x86/mm/p2m-ept.c`, `ept_p2m_type_to_flags`: first a switch on the
//!   type sets the leaf's r/w bits (invalid, mmio_dm, pod and the three paging types, and the
//!   `default` arm — so ram_broken — clear r/w/x; ram_rw sets r/w; mmio_direct sets r and sets w
//!   unless the frame is in `mmio_ro_ranges` (not modelled: always w); ram_logdirty sets r and
//!   sets w only with PML on a 4 KiB entry (PML not modelled: never w); ram_ro and ram_shared
//!   set r only; grant_map_rw and map_foreign set r/w; grant_map_ro and mmio_write_dm set r
//!   only). Then a switch on the access clears bits (see [`ept_access_mask`]). VT-d sharing
//!   the EPT reads the same r (bit 0) and w (bit 1) bits.
//! - *NPT shared*: `xen/arch/x86/mm/p2m-pt.c`, `p2m_pt_set_entry` writes every non-empty leaf
//!   through `p2m_add_iommu_flags(&entry_content, 0, p2m_get_iommu_flags(p2mt))`, which puts the
//!   IOMMU IR/IW bits from the *separate* policy into the PTE; `p2m_type_to_flags` never
//!   depends on the access, so the access is ignored. Every type the policy grants something
//!   also gets `_PAGE_PRESENT` from `P2M_BASE_FLAGS` there, so the AMD IOMMU honours the bits.
//!   The column therefore equals the separate one, but is written out on its own.

use p2m_core::{Config, IommuPerm, Mode, P2mAccess, P2mType};

/// A revision of the IOMMU permission policy (`p2m_get_iommu_flags` and friends).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum IommuPolicy {
    /// Xen 4.6: `p2m_get_iommu_flags(type)` depends on the type only.
    #[default]
    Xen46,
    /// Xen master (c447b7308b): `p2m_get_iommu_flags(type, access, mfn)` — `mmio_direct`
    /// is mapped with its access's permission, minus write for a frame in
    /// `mmio_ro_ranges`; shared tables exist only for VT-d with EPT.
    Master,
}

/// Which column of the table a configuration uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Column {
    /// Separate IOMMU tables, filled from `p2m_get_iommu_flags`.
    Separate,
    /// VT-d walks the EPT itself (`iommu_hap_pt_share` with EPT).
    EptShared,
    /// AMD-Vi walks the NPT p2m itself (`iommu_hap_pt_share` with NPT).
    NptShared,
}

/// The column for `config` under the 4.6 policy (see [`column_for_policy`]).
pub fn column_for(config: &Config) -> Column {
    column_for_policy(config, IommuPolicy::Xen46)
}

/// The column for `config`: shared when the device walks the p2m — 4.6:
/// `iommu_use_hap_pt(d)` (never for shadow); master: `hd->hap_pt_share` (VT-d with EPT,
/// page sizes compatible), so never NPT.
pub fn column_for_policy(config: &Config, policy: IommuPolicy) -> Column {
    let shared = match policy {
        IommuPolicy::Xen46 => config.iommu_use_hap_pt(),
        IommuPolicy::Master => config.master_hap_pt_share(),
    };
    if !shared {
        return Column::Separate;
    }
    match config.mode {
        Mode::Ept => Column::EptShared,
        Mode::Npt => Column::NptShared,
        // `iommu_use_hap_pt` is false for shadow; kept total for safety.
        Mode::Shadow => Column::Separate,
    }
}

/// Master `p2m_access_to_iommu_flags` (`asm/p2m.h:975-1001`): rw, rwx → RW; r, rx,
/// rx2rw (and r_pw, not modelled) → R; w, wx → W; n, x, n2rwx → nothing.
pub fn master_access_to_iommu_flags(a: P2mAccess) -> IommuPerm {
    match a {
        P2mAccess::Rw | P2mAccess::Rwx => IommuPerm::RW,
        P2mAccess::R | P2mAccess::Rx | P2mAccess::Rx2rw => IommuPerm::R,
        P2mAccess::W | P2mAccess::Wx => IommuPerm {
            read: false,
            write: true,
        },
        P2mAccess::N | P2mAccess::X | P2mAccess::N2rwx => IommuPerm::NONE,
    }
}

/// Separate-table column of the master policy: `p2m_get_iommu_flags(t, a, mfn)`
/// (`asm/p2m.h:1007-1036`); `ro_frame`: the page's frame is in `mmio_ro_ranges`.
pub fn master_separate_perm(t: P2mType, a: P2mAccess, ro_frame: bool) -> IommuPerm {
    match t {
        P2mType::RamRw | P2mType::GrantMapRw | P2mType::RamLogdirty | P2mType::MapForeign => {
            IommuPerm::RW
        }
        P2mType::RamRo | P2mType::GrantMapRo => IommuPerm::R,
        P2mType::MmioDirect => {
            let f = master_access_to_iommu_flags(a);
            IommuPerm {
                write: f.write && !ro_frame,
                ..f
            }
        }
        _ => IommuPerm::NONE,
    }
}

/// r/w bits the type switch of master `ept_p2m_type_to_flags` (`p2m-ept.c:69-209`) gives
/// a leaf, before the access restriction: `ioreq_server` (number 15) is r, and w only while
/// no ioreq server claims write accesses — a page only has that type once a server has
/// claimed it, and writes are the only accesses a server can claim
/// (`XEN_DMOP_IOREQ_MEM_ACCESS_WRITE`), so r; `mmio_direct` loses w for a frame in
/// `mmio_ro_ranges`; `ram_logdirty` is r (PML off); otherwise as 4.6.
pub fn master_ept_type_bits(t: P2mType, ro_frame: bool) -> IommuPerm {
    match t {
        P2mType::MmioWriteDm => IommuPerm::R,
        P2mType::MmioDirect => IommuPerm {
            read: true,
            write: !ro_frame,
        },
        other => ept_type_bits(other),
    }
}

/// Separate-table column: the revision's `p2m_get_iommu_flags` (`asm-x86/p2m.h`).
pub fn separate_perm(policy: IommuPolicy, t: P2mType) -> IommuPerm {
    match policy {
        IommuPolicy::Master => master_separate_perm(t, P2mAccess::Rwx, false),
        IommuPolicy::Xen46 => match t {
            P2mType::RamRw | P2mType::GrantMapRw | P2mType::RamLogdirty | P2mType::MapForeign => {
                IommuPerm::RW
            }
            P2mType::RamRo | P2mType::GrantMapRo => IommuPerm::R,
            _ => IommuPerm::NONE,
        },
    }
}

/// r/w bits the type switch of `ept_p2m_type_to_flags` (`p2m-ept.c`) gives a leaf, before
/// the access restriction; no PML, no `mmio_ro_ranges`.
pub fn ept_type_bits(t: P2mType) -> IommuPerm {
    match t {
        P2mType::Invalid
        | P2mType::MmioDm
        | P2mType::PopulateOnDemand
        | P2mType::RamPagingOut
        | P2mType::RamPaged
        | P2mType::RamPagingIn
        | P2mType::RamBroken => IommuPerm::NONE,
        P2mType::RamRw | P2mType::MmioDirect | P2mType::GrantMapRw | P2mType::MapForeign => {
            IommuPerm::RW
        }
        P2mType::RamLogdirty
        | P2mType::RamRo
        | P2mType::RamShared
        | P2mType::GrantMapRo
        | P2mType::MmioWriteDm => IommuPerm::R,
    }
}

/// The r/w bits the access switch of `ept_p2m_type_to_flags` (`p2m-ept.c`) leaves standing.
pub fn ept_access_mask(a: P2mAccess) -> IommuPerm {
    let (read, write) = match a {
        P2mAccess::N | P2mAccess::N2rwx | P2mAccess::X => (false, false),
        P2mAccess::R | P2mAccess::Rx | P2mAccess::Rx2rw => (true, false),
        P2mAccess::W | P2mAccess::Wx => (false, true),
        P2mAccess::Rw | P2mAccess::Rwx => (true, true),
    };
    IommuPerm { read, write }
}

/// EPT-shared column: the leaf's r/w bits for `(t, a)` as VT-d reads them.
pub fn ept_shared_perm(t: P2mType, a: P2mAccess) -> IommuPerm {
    ept_type_bits(t).and(ept_access_mask(a))
}

/// NPT-shared column: the IR/IW bits `p2m_add_iommu_flags` writes (`p2m-pt.c`); access ignored.
/// Master never shares with AMD; its arm is the separate policy, for totality.
pub fn npt_shared_perm(policy: IommuPolicy, t: P2mType) -> IommuPerm {
    match policy {
        IommuPolicy::Master => master_separate_perm(t, P2mAccess::Rwx, false),
        IommuPolicy::Xen46 => match t {
            P2mType::RamRw | P2mType::GrantMapRw | P2mType::RamLogdirty | P2mType::MapForeign => {
                IommuPerm::RW
            }
            P2mType::RamRo | P2mType::GrantMapRo => IommuPerm::R,
            _ => IommuPerm::NONE,
        },
    }
}

/// What a device may do through a present (non-empty) entry of type `t` with access `a`
/// (4.6 policy; see [`device_perm_at`] for the frame-dependent master policy).
pub fn device_perm(column: Column, policy: IommuPolicy, t: P2mType, a: P2mAccess) -> IommuPerm {
    device_perm_at(column, policy, t, a, false)
}

/// What a device may do through a present (non-empty) entry of type `t` with access `a`
/// whose frame is (`ro_frame`) or is not in `mmio_ro_ranges` (only master looks).
pub fn device_perm_at(
    column: Column,
    policy: IommuPolicy,
    t: P2mType,
    a: P2mAccess,
    ro_frame: bool,
) -> IommuPerm {
    match (policy, column) {
        (IommuPolicy::Xen46, Column::Separate) => separate_perm(policy, t),
        (IommuPolicy::Xen46, Column::EptShared) => ept_shared_perm(t, a),
        (IommuPolicy::Xen46, Column::NptShared) => npt_shared_perm(policy, t),
        (IommuPolicy::Master, Column::EptShared) => {
            master_ept_type_bits(t, ro_frame).and(ept_access_mask(a))
        }
        (IommuPolicy::Master, _) => master_separate_perm(t, a, ro_frame),
    }
}

/// True when the permission of `t` can depend on the frame (`mmio_ro_ranges`).
pub fn depends_on_frame(policy: IommuPolicy, t: P2mType) -> bool {
    policy == IommuPolicy::Master && t == P2mType::MmioDirect
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2m_core::Vendor;

    /// The table in the module docs, row by row: (type, separate, EPT type bits, NPT shared).
    const TABLE: &[(P2mType, &str, &str, &str)] = &[
        (P2mType::RamRw, "rw", "rw", "rw"),
        (P2mType::Invalid, "--", "--", "--"),
        (P2mType::RamLogdirty, "rw", "r-", "rw"),
        (P2mType::RamRo, "r-", "r-", "r-"),
        (P2mType::MmioDm, "--", "--", "--"),
        (P2mType::MmioDirect, "--", "rw", "--"),
        (P2mType::PopulateOnDemand, "--", "--", "--"),
        (P2mType::GrantMapRw, "rw", "rw", "rw"),
        (P2mType::GrantMapRo, "r-", "r-", "r-"),
        (P2mType::RamPagingOut, "--", "--", "--"),
        (P2mType::RamPaged, "--", "--", "--"),
        (P2mType::RamPagingIn, "--", "--", "--"),
        (P2mType::RamShared, "--", "r-", "--"),
        (P2mType::RamBroken, "--", "--", "--"),
        (P2mType::MapForeign, "rw", "rw", "rw"),
        (P2mType::MmioWriteDm, "--", "r-", "--"),
    ];

    #[test]
    fn table_covers_every_type_in_order() {
        let types: Vec<P2mType> = TABLE.iter().map(|r| r.0).collect();
        assert_eq!(types, P2mType::ALL);
    }

    #[test]
    fn columns_match_table_for_every_type_and_access() {
        let p = IommuPolicy::Xen46;
        for &(t, sep, ept, npt) in TABLE {
            assert_eq!(separate_perm(p, t).to_string(), sep, "{t}");
            assert_eq!(ept_type_bits(t).to_string(), ept, "{t}");
            assert_eq!(npt_shared_perm(p, t).to_string(), npt, "{t}");
            // NPT shared equals the separate policy in 4.6.
            assert_eq!(npt_shared_perm(p, t), separate_perm(p, t));
            for &a in P2mAccess::ALL {
                assert_eq!(
                    device_perm(Column::Separate, p, t, a),
                    separate_perm(p, t),
                    "separate ignores access"
                );
                assert_eq!(
                    device_perm(Column::NptShared, p, t, a),
                    npt_shared_perm(p, t),
                    "p2m-pt ignores access"
                );
                let e = device_perm(Column::EptShared, p, t, a);
                assert!(e.is_subset_of(ept_type_bits(t)), "{t} {a}");
                assert!(e.is_subset_of(ept_access_mask(a)), "{t} {a}");
            }
        }
    }

    #[test]
    fn representative_ept_shared_cases() {
        assert_eq!(ept_shared_perm(P2mType::RamRw, P2mAccess::R), IommuPerm::R);
        assert_eq!(
            ept_shared_perm(P2mType::RamRw, P2mAccess::Rwx),
            IommuPerm::RW
        );
        assert_eq!(
            ept_shared_perm(P2mType::RamRw, P2mAccess::Rx2rw),
            IommuPerm::R
        );
        assert_eq!(
            ept_shared_perm(P2mType::RamRw, P2mAccess::N2rwx),
            IommuPerm::NONE
        );
        assert_eq!(
            ept_shared_perm(P2mType::RamRw, P2mAccess::X),
            IommuPerm::NONE
        );
        let w_only = IommuPerm {
            read: false,
            write: true,
        };
        assert_eq!(ept_shared_perm(P2mType::RamRw, P2mAccess::W), w_only);
        assert_eq!(ept_shared_perm(P2mType::RamRw, P2mAccess::Wx), w_only);
        assert_eq!(
            ept_shared_perm(P2mType::RamRo, P2mAccess::W),
            IommuPerm::NONE
        );
        assert_eq!(
            ept_shared_perm(P2mType::MmioDirect, P2mAccess::Rwx),
            IommuPerm::RW
        );
        assert_eq!(
            ept_shared_perm(P2mType::RamLogdirty, P2mAccess::Rwx),
            IommuPerm::R
        );
        assert_eq!(
            ept_shared_perm(P2mType::RamShared, P2mAccess::Rw),
            IommuPerm::R
        );
        assert_eq!(
            separate_perm(IommuPolicy::Xen46, P2mType::MmioDirect),
            IommuPerm::NONE
        );
    }

    #[test]
    fn column_choice() {
        let c = |mode, vendor, share| Config::new(mode, vendor, share);
        assert_eq!(
            column_for(&c(Mode::Ept, Vendor::Vtd, true)),
            Column::EptShared
        );
        assert_eq!(
            column_for(&c(Mode::Ept, Vendor::Vtd, false)),
            Column::Separate
        );
        assert_eq!(
            column_for(&c(Mode::Npt, Vendor::Amd, true)),
            Column::NptShared
        );
        assert_eq!(
            column_for(&c(Mode::Npt, Vendor::Amd, false)),
            Column::Separate
        );
        for v in [Vendor::Vtd, Vendor::Amd] {
            assert_eq!(column_for(&c(Mode::Shadow, v, true)), Column::Separate);
        }
    }
}

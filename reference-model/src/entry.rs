//! Argument checks of `set_entry` and the rule deciding whether Xen writes a real entry or an
//! empty one, per mode. Read from Xen 4.6 `ept_set_entry`, `atomic_write_ept_entry`
//! (`p2m-ept.c`) and `p2m_pt_set_entry` (`p2m-pt.c`).

use crate::permissions::IommuPolicy;
use p2m_core::{Mfn, Mode, P2mAccess, P2mError, P2mType, GFN_BITS, INVALID_MFN, PAGE_ORDERS};

/// [`validate`] for the line of `policy`. Xen master (`ept_set_entry` at c447b7308b):
/// order not 0/9/18 → `BadOrder`; `fn_mask` = gfn alone for `INVALID_MFN`, else gfn | mfn,
/// misaligned → `Misaligned` (p2m-pt checks nothing; no caller passes a misaligned pair, and
/// the model refuses it the same way); gfn beyond 36 bits → `GfnOutOfRange`. Foreign
/// entries are accepted at 4 KiB by both p2m flavours on master.
pub fn validate_for(
    policy: IommuPolicy,
    mode: Mode,
    gfn: u64,
    mfn: Mfn,
    order: u32,
    p2mt: P2mType,
    access: P2mAccess,
) -> Result<(), P2mError> {
    match policy {
        IommuPolicy::Xen46 => validate(mode, gfn, mfn, order, p2mt, access),
        IommuPolicy::Master => {
            if !PAGE_ORDERS.contains(&order) {
                return Err(P2mError::BadOrder);
            }
            let bits = if mfn == INVALID_MFN { gfn } else { gfn | mfn.0 };
            if bits & ((1u64 << order) - 1) != 0 {
                return Err(P2mError::Misaligned);
            }
            if gfn >> GFN_BITS != 0 {
                return Err(P2mError::GfnOutOfRange);
            }
            Ok(())
        }
    }
}

/// [`writes_real_entry`] for the line of `policy`. Xen master writes a typed entry, at
/// every order and in both p2m flavours, when `mfn_valid(mfn) ||
/// p2m_allows_invalid_mfn(t)`, whose types are PoD and `mmio_direct` (`asm/p2m.h:156`;
/// the paging types too only with `CONFIG_MEM_PAGING`, off by default).
pub fn writes_real_entry_for(
    policy: IommuPolicy,
    mode: Mode,
    mfn: Mfn,
    order: u32,
    p2mt: P2mType,
) -> bool {
    match policy {
        IommuPolicy::Xen46 => writes_real_entry(mode, mfn, order, p2mt),
        IommuPolicy::Master => {
            p2mt != P2mType::Invalid
                && (mfn != INVALID_MFN && mfn.is_valid()
                    || matches!(p2mt, P2mType::PopulateOnDemand | P2mType::MmioDirect))
        }
    }
}

/// Checks `set_entry` arguments in this order: order, alignment, gfn width, foreign rules.
///
/// - order not 0/9/18 → `BadOrder` (`ept_set_entry` rejects `order % 9`; the p2m layer only
///   ever passes the three page orders);
/// - `(gfn | mfn) & ((1 << order) - 1)` → `Misaligned` (as `ept_set_entry` computes it, so
///   `INVALID_MFN` is misaligned for order 9 and 18);
/// - `gfn >> 36` non-zero → `GfnOutOfRange` (4-level EPT: `gfn >> ((wl + 1) * 9)`);
/// - NPT/shadow and `map_foreign` → `ForeignOnP2mPt` (`p2m_pt_set_entry`);
/// - EPT and `map_foreign`: order > 0 (`ept_set_entry` asserts 4 KiB), a frame that is not
///   `mfn_valid`, or an access that leaves r, w and x all clear (`n`, `n2rwx`, `x`: the entry
///   is not present and `atomic_write_ept_entry` returns `-EINVAL`) → `ForeignRejected`.
pub fn validate(
    mode: Mode,
    gfn: u64,
    mfn: Mfn,
    order: u32,
    p2mt: P2mType,
    access: P2mAccess,
) -> Result<(), P2mError> {
    if !PAGE_ORDERS.contains(&order) {
        return Err(P2mError::BadOrder);
    }
    let mask = (1u64 << order) - 1;
    // EPT checks `(gfn | mfn) & mask`, so INVALID_MFN (all ones) is misaligned for a
    // superpage; p2m-pt has no such check and takes INVALID_MFN at any order (the
    // seed's empty 2 MiB entry), so only a real frame must be aligned there.
    let mfn_bits = match mode {
        Mode::Ept => mfn.0,
        Mode::Npt | Mode::Shadow if mfn == INVALID_MFN => 0,
        Mode::Npt | Mode::Shadow => mfn.0,
    };
    if (gfn | mfn_bits) & mask != 0 {
        return Err(P2mError::Misaligned);
    }
    if gfn >> GFN_BITS != 0 {
        return Err(P2mError::GfnOutOfRange);
    }
    if p2mt == P2mType::MapForeign {
        match mode {
            Mode::Npt | Mode::Shadow => return Err(P2mError::ForeignOnP2mPt),
            Mode::Ept => {
                let not_present = matches!(access, P2mAccess::N | P2mAccess::N2rwx | P2mAccess::X);
                if order != 0 || !mfn.is_valid() || not_present {
                    return Err(P2mError::ForeignRejected);
                }
            }
        }
    }
    Ok(())
}

/// True when Xen writes a real (typed) entry for these arguments; false when it writes an
/// empty entry, which reads back as `(INVALID_MFN, invalid)`.
///
/// - EPT (`ept_set_entry`): `mfn_valid || mmio_direct || ram_paged || ram_paging_in`;
/// - p2m-pt order 0: `mfn_valid || mmio_direct || p2m_is_paging` (paging_out, paged, paging_in);
/// - p2m-pt order 9: `mfn_valid || populate_on_demand`;
/// - p2m-pt order 18: `mfn_valid`.
///
/// The reference also stores type `invalid` as empty whatever the frame: Xen's get_entry
/// reports no frame for it either way, and no column grants it anything.
pub fn writes_real_entry(mode: Mode, mfn: Mfn, order: u32, p2mt: P2mType) -> bool {
    if p2mt == P2mType::Invalid {
        return false;
    }
    let valid = mfn != INVALID_MFN && mfn.is_valid();
    match mode {
        Mode::Ept => {
            valid
                || matches!(
                    p2mt,
                    P2mType::MmioDirect | P2mType::RamPaged | P2mType::RamPagingIn
                )
        }
        Mode::Npt | Mode::Shadow => match order {
            0 => {
                valid
                    || matches!(
                        p2mt,
                        P2mType::MmioDirect
                            | P2mType::RamPagingOut
                            | P2mType::RamPaged
                            | P2mType::RamPagingIn
                    )
            }
            9 => valid || p2mt == P2mType::PopulateOnDemand,
            _ => valid,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RWX: P2mAccess = P2mAccess::Rwx;

    #[test]
    fn order_alignment_and_width() {
        let v = |gfn, mfn, order| validate(Mode::Ept, gfn, Mfn(mfn), order, P2mType::RamRw, RWX);
        assert_eq!(v(0, 0, 1), Err(P2mError::BadOrder));
        assert_eq!(v(0, 0, 27), Err(P2mError::BadOrder));
        assert_eq!(v(0x200, 0x200, 9), Ok(()));
        assert_eq!(v(0x201, 0x200, 9), Err(P2mError::Misaligned));
        assert_eq!(v(0x200, 0x201, 9), Err(P2mError::Misaligned));
        assert_eq!(v(0x200, 0x200, 18), Err(P2mError::Misaligned));
        assert_eq!(v(1 << 36, 0, 0), Err(P2mError::GfnOutOfRange));
        assert_eq!(v((1 << 36) - (1 << 18), 0, 18), Ok(()));
        // INVALID_MFN is all ones: misaligned for an EPT superpage, fine for 4 KiB
        // and for p2m-pt at any order.
        for mode in Mode::ALL {
            for t in [P2mType::Invalid, P2mType::RamRw, P2mType::PopulateOnDemand] {
                let want = if *mode == Mode::Ept {
                    Err(P2mError::Misaligned)
                } else {
                    Ok(())
                };
                assert_eq!(validate(*mode, 0, INVALID_MFN, 9, t, RWX), want);
                assert_eq!(validate(*mode, 0, INVALID_MFN, 18, t, RWX), want);
                assert_eq!(validate(*mode, 0, INVALID_MFN, 0, t, RWX), Ok(()));
            }
        }
    }

    #[test]
    fn foreign_rules() {
        let f = P2mType::MapForeign;
        for mode in [Mode::Npt, Mode::Shadow] {
            assert_eq!(
                validate(mode, 0, Mfn(5), 0, f, RWX),
                Err(P2mError::ForeignOnP2mPt)
            );
        }
        assert_eq!(validate(Mode::Ept, 0, Mfn(5), 0, f, RWX), Ok(()));
        assert_eq!(
            validate(Mode::Ept, 0, Mfn(0), 9, f, RWX),
            Err(P2mError::ForeignRejected)
        );
        assert_eq!(
            validate(Mode::Ept, 0, INVALID_MFN, 0, f, RWX),
            Err(P2mError::ForeignRejected)
        );
        assert_eq!(
            validate(Mode::Ept, 0, Mfn(p2m_core::MAX_PAGE), 0, f, RWX),
            Err(P2mError::ForeignRejected)
        );
        for a in [P2mAccess::N, P2mAccess::N2rwx, P2mAccess::X] {
            assert_eq!(
                validate(Mode::Ept, 0, Mfn(5), 0, f, a),
                Err(P2mError::ForeignRejected)
            );
        }
        for a in [P2mAccess::R, P2mAccess::W, P2mAccess::Wx, P2mAccess::Rx2rw] {
            assert_eq!(validate(Mode::Ept, 0, Mfn(5), 0, f, a), Ok(()));
        }
        // Order errors win over the foreign ones.
        assert_eq!(
            validate(Mode::Npt, 1, Mfn(0), 9, f, RWX),
            Err(P2mError::Misaligned)
        );
    }

    #[test]
    fn empty_entry_rules() {
        let mmio = Mfn(p2m_core::MAX_PAGE); // not mfn_valid, aligned to every order
        let ram = Mfn(0);
        use P2mType::*;
        // A valid frame always gives a real entry (except type invalid).
        for mode in Mode::ALL {
            for order in PAGE_ORDERS {
                for t in P2mType::ALL {
                    assert_eq!(writes_real_entry(*mode, ram, order, *t), *t != Invalid);
                }
            }
        }
        // EPT.
        for t in [MmioDirect, RamPaged, RamPagingIn] {
            assert!(writes_real_entry(Mode::Ept, mmio, 0, t));
            assert!(writes_real_entry(Mode::Ept, mmio, 18, t));
            assert!(writes_real_entry(Mode::Ept, INVALID_MFN, 0, t));
        }
        for t in [RamRw, RamPagingOut, PopulateOnDemand, MmioDm, GrantMapRw] {
            assert!(!writes_real_entry(Mode::Ept, mmio, 0, t));
            assert!(!writes_real_entry(Mode::Ept, INVALID_MFN, 0, t));
        }
        // p2m-pt.
        for mode in [Mode::Npt, Mode::Shadow] {
            for t in [MmioDirect, RamPagingOut, RamPaged, RamPagingIn] {
                assert!(writes_real_entry(mode, mmio, 0, t));
                assert!(!writes_real_entry(mode, mmio, 9, t));
                assert!(!writes_real_entry(mode, mmio, 18, t));
            }
            assert!(!writes_real_entry(mode, mmio, 0, PopulateOnDemand));
            assert!(writes_real_entry(mode, mmio, 9, PopulateOnDemand));
            assert!(!writes_real_entry(mode, mmio, 18, PopulateOnDemand));
            assert!(!writes_real_entry(mode, mmio, 0, RamRw));
        }
    }
}

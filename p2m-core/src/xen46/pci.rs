//! `XEN_DOMCTL_assign_device` of 4.6 (`drivers/passthrough/pci.c:1330-1383`) with
//! `iommu_construct` (`drivers/passthrough/iommu.c:192-216`).

use crate::physmap::{BatchOutcome, PhysmapError};
use crate::types::{P2mAccess, Vendor};
use crate::xen46::domain::{Cx, P2m};
use crate::xen46::p2m::{clear_identity_p2m_entry, set_identity_p2m_entry};
use crate::xen46::x86_iommu::arch_iommu_populate_page_table;

/// Models `assign_device(d, ...)`: the model's machine has one device, owned by the
/// hardware domain, no RMRRs, and none of mem-sharing, paging or global log-dirty (the
/// `-EXDEV` checks, `pci.c:1340-1345`), so it goes straight to `iommu_construct`; from then
/// on the device walks the domain's IOMMU view.
pub fn assign_device(p2m: &mut P2m, cx: &mut Cx) -> BatchOutcome {
    iommu_construct(p2m, cx);
    cx.iommu.caches.set_attached(true);
    BatchOutcome {
        done: 0,
        rc: Ok(()),
    }
}

/// Models `iommu_construct(d)`: nothing when `need_iommu(d) > 0` (a domain created with
/// its device); else, unless the IOMMU walks the p2m (`iommu_use_hap_pt(d)`: no
/// population at all), `arch_iommu_populate_page_table`; then `need_iommu(d) = 1`.
pub fn iommu_construct(p2m: &mut P2m, cx: &mut Cx) {
    if cx.iommu.need_iommu {
        return;
    }
    if !cx.cfg.iommu_use_hap_pt() {
        arch_iommu_populate_page_table(p2m, cx);
    }
    cx.iommu.need_iommu = true;
}

/// `rmrr_identity_mapping(d, map, rmrr, flag)` of 4.6 (`vtd/iommu.c:1814-1870`) for the
/// RMRR frames `[base, base + nr)`: VT-d maps RMRRs with `p2m_access_rw` whatever
/// the range says. A range already mapped: another reference, or on removal one fewer
/// and, at the last, `clear_identity_p2m_entry` on every page (any failure: `-ENXIO`);
/// removing an unknown range: `-ENOENT`. A new range is mapped page by page, stopping at
/// the first error without undoing, and listed only when every page is mapped (no
/// overlap check). AMD's IVMD ranges never reach the p2m in 4.6
/// (`amd_iommu_reserve_domain_unity_map` writes the IOMMU tables directly): the model
/// refuses the op there (`-EOPNOTSUPP`).
pub fn rmrr_identity_mapping(
    p2m: &mut P2m,
    cx: &mut Cx,
    base: u64,
    nr: u64,
    add: bool,
) -> BatchOutcome {
    let out = |done: u64, rc: Result<(), PhysmapError>| BatchOutcome { done, rc };
    if cx.iommu.vendor != Vendor::Vtd {
        return out(0, Err(PhysmapError::OpNotSupp));
    }
    let end = base.saturating_add(nr);
    let maps = &mut cx.iommu.mapped_rmrrs;
    if let Some(k) = maps.iter().position(|&(b, e, _)| b == base && e == end) {
        if add {
            maps[k].2 += 1;
            return out(0, Ok(()));
        }
        maps[k].2 -= 1;
        if maps[k].2 > 0 {
            return out(0, Ok(()));
        }
        maps.remove(k);
        let mut rc = Ok(());
        for pfn in base..end {
            if clear_identity_p2m_entry(p2m, cx, pfn).is_err() {
                rc = Err(PhysmapError::NxIo);
            }
        }
        return out(nr, rc);
    }
    if !add {
        return out(0, Err(PhysmapError::NoEnt));
    }
    for pfn in base..end {
        if let Err(e) = set_identity_p2m_entry(p2m, cx, pfn, P2mAccess::Rw) {
            return out(pfn - base, Err(e));
        }
    }
    cx.iommu.mapped_rmrrs.push((base, end, 1));
    out(nr, Ok(()))
}

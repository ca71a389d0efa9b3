//! `XEN_DOMCTL_assign_device` of 4.6 (`drivers/passthrough/pci.c:1330-1383`) with
//! `iommu_construct` (`drivers/passthrough/iommu.c:192-216`).

use crate::physmap::BatchOutcome;
use crate::xen46::domain::{Cx, P2m};
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

//! `drivers/passthrough/x86/iommu.c` of 4.6: building the IOMMU tables of a running
//! domain when its first device arrives.

use crate::physmap::domain_page;
use crate::types::{GfnRange, IommuPerm, P2mType, GFN_BITS, INVALID_MFN};
use crate::xen46::domain::{Cx, P2m};
use crate::xen46::policy::p2m_get_iommu_flags;

/// Models `arch_iommu_populate_page_table(d)` (`x86/iommu.c:42-112`): `need_iommu(d)` goes
/// to -1 first (from here every `set_entry` syncs the IOMMU), then every page of the
/// domain that has a gfn (`mfn_to_gmfn`) is mapped **read/write**, whatever its p2m type,
/// under
/// `iommu_dont_flush_iotlb` (VT-d skips its per-page flushes; AMD flushes each page
/// anyway), and the IOTLB is flushed once at the end (`iommu_iotlb_flush_all`).
///
/// The model walks the p2m in gfn order instead of `d->page_list` in allocation order:
/// the same pages (a page of the domain mapped at its gfn: RAM, `ram_ro`, log-dirty,
/// `mmio_write_dm`, paging-out; not shared, grant or foreign pages, not MMIO), only the
/// frame numbers of the tables allocated on the way may differ from Xen's. Grant and
/// foreign mappings are not the domain's pages: 4.6 leaves them out.
///
/// With `iommu_populate_uses_p2m_type` (a proposed fix) every entry of the p2m is mapped
/// with its type's permission (`p2m_get_iommu_flags`), grant and foreign ones included:
/// what `set_entry` would have mapped had the device been there from the start.
pub fn arch_iommu_populate_page_table(p2m: &P2m, cx: &mut Cx) {
    cx.iommu.need_iommu = true;
    let dont_flush = std::mem::replace(&mut cx.iommu.dont_flush, true);
    let all = GfnRange {
        start: 0,
        end: 1 << GFN_BITS,
    };
    let from_p2m = cx.sw.iommu_populate_uses_p2m_type;
    for e in p2m.cpu_extents(all) {
        let perm = if from_p2m {
            if e.mfn == INVALID_MFN {
                continue;
            }
            p2m_get_iommu_flags(e.p2mt)
        } else if e.p2mt == P2mType::RamShared
            || !domain_page(cx.mem, cx.log, e.range.start, e.mfn, e.p2mt)
        {
            continue;
        } else {
            IommuPerm::RW
        };
        if !perm.is_none() {
            cx.iommu_map_or_unmap(e.range.start, e.range.len(), e.mfn.0, perm);
        }
    }
    cx.iommu.dont_flush = dont_flush;
    cx.iommu.iommu_iotlb_flush_all();
}

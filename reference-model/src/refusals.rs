//! Types Xen 4.6 refuses for a domain that uses an IOMMU (`need_iommu(d)`), and whether they
//! can still arise there. A generator should not produce a refused type for such a domain; a
//! type that is only partly refused is an allowed, documented class (see [`still_arises_with_iommu`]).
//!
//! Findings (Xen 4.6):
//! - `ram_logdirty`: `paging_log_dirty_enable` (`xen/arch/x86/mm/paging.c`) returns `-EINVAL`
//!   when `need_iommu(d) && log_global`; the reverse order is closed by `assign_device`
//!   (`xen/drivers/passthrough/pci.c`), which returns `-EXDEV` for a domain whose host p2m has
//!   `global_logdirty`. Only *global* log-dirty is refused: `paging_log_dirty_enable(d, 0)`
//!   (partial tracking, e.g. VRAM dirty tracking) is allowed, so `ram_logdirty` ranges can
//!   still exist with an IOMMU. For those, the device permission is the column's: rw with
//!   separate tables (DMA writes escape dirty logging — Xen's known reason for the refusal),
//!   r with shared EPT, rw with shared NPT. This is reference semantics, not a divergence.
//! - `ram_shared`: `mem_sharing_domctl` (`xen/arch/x86/mm/mem_sharing.c`,
//!   `XEN_DOMCTL_MEM_SHARING_CONTROL`) returns `-EXDEV` when enabling sharing with
//!   `need_iommu(d)`; every sharing memop checks `mem_sharing_enabled` first
//!   (`mem_sharing_memop`); `assign_device` returns `-EXDEV` for a domain with sharing enabled.
//!   So `ram_shared` never arises with an IOMMU (sharing also needs HAP: `-ENODEV` for shadow).
//! - `ram_paging_out`, `ram_paged`, `ram_paging_in`: enabling the paging ring in
//!   `vm_event_domctl` (`xen/common/vm_event.c`, `XEN_DOMCTL_VM_EVENT_OP_PAGING` /
//!   `XEN_VM_EVENT_ENABLE`; `mem_event_domctl` in `mem_event.c` before 4.6) returns `-EMLINK`
//!   when `need_iommu(d)` ("no paging if iommu is used"); `p2m_mem_paging_nominate`
//!   (`xen/arch/x86/mm/p2m.c`) is the only producer of `ram_paging_out`, and it is reachable
//!   only through the ring; `assign_device` returns `-EXDEV` when the paging ring exists.
//!   These two files are not in the extracted 4.6 tree; the checks were read in public copies
//!   of the same functions.
//! - Not refused: ram_rw, invalid, ram_ro, mmio_dm, mmio_direct, populate_on_demand (the 4.6
//!   hypervisor does not refuse PoD with an IOMMU; the toolstack does), grant types,
//!   ram_broken, map_foreign (EPT only), mmio_write_dm.

use p2m_core::P2mType;

/// The Xen 4.6 check that refuses `t` for a domain with an IOMMU, or `None` when there is none.
pub fn refused_with_iommu(t: P2mType) -> Option<&'static str> {
    match t {
        P2mType::RamLogdirty => Some(
            "paging_log_dirty_enable (arch/x86/mm/paging.c): -EINVAL for global log-dirty \
             when need_iommu(d); assign_device (drivers/passthrough/pci.c): -EXDEV when \
             global_logdirty. Partial (non-global) log-dirty is still allowed.",
        ),
        P2mType::RamShared => Some(
            "mem_sharing_domctl (arch/x86/mm/mem_sharing.c): -EXDEV enabling sharing when \
             need_iommu(d); assign_device (drivers/passthrough/pci.c): -EXDEV when \
             mem_sharing_enabled.",
        ),
        P2mType::RamPagingOut | P2mType::RamPaged | P2mType::RamPagingIn => Some(
            "vm_event_domctl (common/vm_event.c), paging XEN_VM_EVENT_ENABLE: -EMLINK when \
             need_iommu(d); assign_device (drivers/passthrough/pci.c): -EXDEV when the paging \
             ring exists.",
        ),
        _ => None,
    }
}

/// True when `t` can still be produced for a domain with an IOMMU (not refused, or refused
/// only in part, like `ram_logdirty` outside global log-dirty mode).
pub fn still_arises_with_iommu(t: P2mType) -> bool {
    match t {
        P2mType::RamLogdirty => true,
        _ => refused_with_iommu(t).is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_types() {
        let refused: Vec<P2mType> = P2mType::ALL
            .iter()
            .copied()
            .filter(|&t| refused_with_iommu(t).is_some())
            .collect();
        assert_eq!(
            refused,
            vec![
                P2mType::RamLogdirty,
                P2mType::RamPagingOut,
                P2mType::RamPaged,
                P2mType::RamPagingIn,
                P2mType::RamShared,
            ]
        );
        assert!(refused_with_iommu(P2mType::RamShared)
            .unwrap()
            .contains("mem_sharing_domctl"));
        assert!(refused_with_iommu(P2mType::RamLogdirty)
            .unwrap()
            .contains("paging_log_dirty_enable"));
    }

    #[test]
    fn what_still_arises() {
        assert!(still_arises_with_iommu(P2mType::RamLogdirty));
        assert!(still_arises_with_iommu(P2mType::RamRw));
        assert!(still_arises_with_iommu(P2mType::PopulateOnDemand));
        assert!(!still_arises_with_iommu(P2mType::RamShared));
        assert!(!still_arises_with_iommu(P2mType::RamPaged));
    }
}

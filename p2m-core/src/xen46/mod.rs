//! The Xen 4.6 line (2015): the p2m `set_entry` paths and the IOMMU as of the review
//! thread of "x86/p2m: tighten conditions of IOMMU mapping updates", with the revisions
//! of that series (`xen-4.6-pre` … `committed`, `fixed`).
//!
//! Files follow Xen's: [`p2m_ept`] is `xen/arch/x86/mm/p2m-ept.c`, [`p2m_pt`] is
//! `p2m-pt.c`, [`iommu`] holds the flush entry points of `drivers/passthrough/` and
//! [`iommu_tables`] the separate VT-d (`vtd/iommu.c`) and AMD-Vi (`amd/iommu_map.c`)
//! tables; [`policy`] is `p2m_get_iommu_flags` (`asm-x86/p2m.h`); [`memory`] is the
//! `XENMAPSPACE_gmfn_range` batch (`common/memory.c`, `arch/x86/mm.c`) with
//! `populate_physmap` and `decrease_reservation`; [`p2m`] is the generic layer of
//! `arch/x86/mm/p2m.c` the callers reach (`p2m_set_entry`, typed and MMIO entries,
//! `XEN_DOMCTL_memory_mapping`, `p2m_set_mem_access`, `p2m_change_type_range`), [`hvm`]
//! is `HVMOP_set_mem_type` and a vCPU's own access (`arch/x86/hvm/hvm.c`), [`hap`] is
//! `HVMOP_track_dirty_vram` / `hap_track_dirty_vram` (`arch/x86/mm/hap/hap.c`), [`pci`] is `assign_device` (`drivers/passthrough/pci.c`, with
//! `iommu_construct`) and [`x86_iommu`] `arch_iommu_populate_page_table`
//! (`drivers/passthrough/x86/iommu.c`).

pub mod domain;
pub mod hap;
pub mod hvm;
pub mod iommu;
pub mod iommu_tables;
pub mod memory;
pub mod p2m;
pub mod p2m_ept;
pub mod p2m_pt;
pub mod pci;
pub mod policy;
pub mod revision;
pub mod snapshot;
pub mod x86_iommu;

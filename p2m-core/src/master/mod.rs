//! The Xen master line: the p2m ↔ IOMMU code as Xen runs it today, pinned at commit
//! `c447b7308b` (2026-08-18). `../shared/spec/MASTER.md` is the reading this model
//! follows; file and line references in doc comments are at that commit.
//!
//! Files follow Xen's: [`p2m`] is `xen/arch/x86/mm/p2m.c` (`p2m_set_entry`, and
//! `p2m_get_iommu_flags` of `asm/p2m.h`), [`p2m_ept`] is `p2m-ept.c`, [`p2m_pt`] is
//! `p2m-pt.c`, [`iommu`] is `drivers/passthrough/iommu.c` (the generic glue),
//! [`x86_iommu`] is `drivers/passthrough/x86/iommu.c` (table allocation and the deferred
//! free queue), [`vtd_iommu`] is `drivers/passthrough/vtd/iommu.c`, [`amd_iommu_map`] is
//! `drivers/passthrough/amd/iommu_map.c` (with `amd_iommu_flush_iotlb_pages`),
//! [`pt_contig_markers`] is `asm/pt-contig-markers.h`, [`memory`] is
//! `xen/common/memory.c` (the `XENMAPSPACE_gmfn_range` batch, `guest_remove_page`) and
//! [`p2m_physmap`] the physmap half of `p2m.c` the batch calls; the other callers are
//! [`p2m_typed`] (the typed-entry half of `p2m.c`: `p2m_change_type_one`, the MMIO
//! entries and `XEN_DOMCTL_memory_mapping`'s loops), [`dm`] (`hvm/dm.c`,
//! `XEN_DMOP_set_mem_type`, `XEN_DMOP_track_dirty_vram`), [`hap`] (`mm/hap/hap.c`:
//! `hap_track_dirty_vram`), [`hvm`] (a vCPU's own access: `hvm_hap_nested_page_fault`)
//! and [`mem_access`] (`mm/mem_access.c`).

pub mod amd_iommu_map;
pub mod dm;
pub mod domain;
pub mod hap;
pub mod hvm;
pub mod iommu;
pub mod mem_access;
pub mod memory;
pub mod p2m;
pub mod p2m_ept;
pub mod p2m_physmap;
pub mod p2m_pt;
pub mod p2m_typed;
pub mod pt_contig_markers;
pub mod revision;
pub mod vtd_iommu;
pub mod x86_iommu;
#[cfg(test)]
mod xen_c_check;

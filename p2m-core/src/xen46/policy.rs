//! Xen's IOMMU permission policy for p2m types, as `p2m-core` sees it.

use crate::types::{IommuPerm, P2mType};

/// Models Xen 4.6 `p2m_get_iommu_flags()` (`xen/include/asm-x86/p2m.h`): read/write
/// for `ram_rw`, `grant_map_rw`, `ram_logdirty`, `map_foreign`; read for `ram_ro`,
/// `grant_map_ro`; nothing for any other type.
pub fn p2m_get_iommu_flags(t: P2mType) -> IommuPerm {
    use P2mType::*;
    match t {
        RamRw | GrantMapRw | RamLogdirty | MapForeign => IommuPerm::RW,
        RamRo | GrantMapRo => IommuPerm::R,
        _ => IommuPerm::NONE,
    }
}

/// `p2m_get_iommu_flags(p2m_flags_to_type(flags))` for a raw type number, where a
/// number that is no type (e.g. 127 from flags `~0`) gets nothing.
pub fn iommu_flags_of_raw_type(raw: u32) -> IommuPerm {
    u8::try_from(raw)
        .ok()
        .and_then(P2mType::from_raw)
        .map(p2m_get_iommu_flags)
        .unwrap_or(IommuPerm::NONE)
}

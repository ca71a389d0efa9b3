//! Naive flat reference for Xen's x86 p2m and the IOMMU view it implies.
//!
//! [`RefModel`] keeps a map of extents `gfn range → (mfn, type, access)` and nothing else:
//! no tables, no caches, no frees. Its device view of a gfn is exactly what the current entry
//! permits, as if every change were flushed at once. Every operation is extent-based, so a
//! 1 GiB mapping costs O(log n), never 262,144 steps.
//!
//! Semantics, read from Xen 4.6 (`xen/arch/x86/mm/p2m-ept.c`, `p2m-pt.c`,
//! `xen/include/asm-x86/p2m.h`), and written independently of `p2m-core`:
//! - argument checks and the empty-entry rule of `set_entry`: [`entry`];
//! - the permission table (separate / EPT-shared / NPT-shared columns): [`permissions`];
//! - types Xen refuses for a domain with an IOMMU: [`refusals`]. A generator should not
//!   produce `ram_shared` or the paging types for such a domain; `ram_logdirty` is refused only
//!   in global log-dirty mode and can still arise, with the column's permission.
//!
//! Conventions the harness relies on:
//! - unmapped and empty gfns read back as `(INVALID_MFN, invalid, rwx)`; a typed entry that is
//!   not present (PoD, paging types) keeps its type and frame but grants devices nothing;
//! - the reference reports the stored frame for every non-empty entry (Xen's own `get_entry`
//!   hides the frame of some types; the harness compares like with like);
//! - a device view granting nothing is reported as `(INVALID_MFN, none)`.

pub mod callers;
pub mod entry;
pub mod logdirty;
pub mod model;
pub mod permissions;
pub mod physmap;
pub mod refusals;

pub use model::{Extent, RefModel, RefView};
pub use permissions::{column_for, Column, IommuPolicy};
pub use refusals::{refused_with_iommu, still_arises_with_iommu};

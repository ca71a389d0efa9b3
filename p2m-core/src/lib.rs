//! Executable model of Xen's x86 p2m `set_entry` paths and the IOMMU they keep in sync.
//!
//! [`Domain`] ties a configuration ([`Config`]) and a revision ([`Revision`]) to a
//! host p2m ([`ept::Ept`] or [`p2m_pt::P2mPt`]), machine memory
//! ([`machine::MachineMemory`]) and an IOMMU ([`iommu::Iommu`]) with conservative
//! caches. See `README.md` in this crate for the fidelity table.

pub mod domain;
pub mod ept;
pub mod iommu;
pub mod machine;
pub mod p2m_pt;
pub mod policy;
pub mod revision;
pub mod snapshot;
pub mod table;
pub mod types;

pub use domain::{DeviceView, Domain, P2mEntry, P2mStats, ViewSource};
pub use revision::{PtIommuConditions, Revision, Switches, REVISIONS};
pub use types::*;

//! Vocabulary shared by the model and (as plain data) by the reference: frame numbers,
//! orders, p2m types and accesses, IOMMU permissions and the domain configuration.
//!
//! Only *names and numbering* live here; every policy (which type grants what) is
//! written separately in `p2m-core` and in `reference-model`.

use std::fmt;

/// Guest frame number (`gfn` in Xen).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gfn(pub u64);

/// Machine frame number (`mfn_t`); one space for guest memory and page-table pages.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mfn(pub u64);

/// Xen's `INVALID_MFN` (`~0UL`).
pub const INVALID_MFN: Mfn = Mfn(u64::MAX);

/// Models `max_page`: frames below it are `mfn_valid()`; above it is MMIO space.
pub const MAX_PAGE: u64 = 1 << 32;

/// Models `mmio_ro_ranges`: MMIO frames (above [`MAX_PAGE`], so not `mfn_valid`) that
/// must never be mapped writable — by the CPU (`ept_p2m_type_to_flags`,
/// `p2m_type_to_flags`) or, on the master line, by the IOMMU (`p2m_get_iommu_flags`).
/// The 4.6 line does not model it.
pub const MMIO_RO_FRAMES: std::ops::Range<u64> = MAX_PAGE + 0x100..MAX_PAGE + 0x200;

/// Models `rangeset_contains_singleton(mmio_ro_ranges, mfn)`.
pub fn in_mmio_ro_ranges(mfn: Mfn) -> bool {
    MMIO_RO_FRAMES.contains(&mfn.0)
}

/// Width of the gfn space of a 4-level table (48-bit guest physical addresses).
pub const GFN_BITS: u32 = 36;

/// Mask of the 40-bit frame fields of EPT and x86 PTEs (`PADDR_MASK >> PAGE_SHIFT`).
pub const PTE_MFN_MASK: u64 = (1 << 40) - 1;

impl Mfn {
    /// Models `mfn_valid()`: a RAM frame the frame table knows about.
    pub fn is_valid(self) -> bool {
        self.0 < MAX_PAGE
    }
    /// The frame `i` pages above this one (wrapping like Xen's `mfn + i`).
    pub fn plus(self, i: u64) -> Mfn {
        Mfn(self.0.wrapping_add(i))
    }
}

impl Gfn {
    /// The frame `i` pages above this one.
    pub fn plus(self, i: u64) -> Gfn {
        Gfn(self.0.wrapping_add(i))
    }
}

impl fmt::Debug for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Display for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Debug for Mfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
impl fmt::Display for Mfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == INVALID_MFN {
            write!(f, "INVALID_MFN")
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

/// A half-open range of guest frames `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GfnRange {
    /// First frame.
    pub start: u64,
    /// One past the last frame.
    pub end: u64,
}

impl GfnRange {
    /// The `2^order` frames starting at `gfn`.
    pub fn of_order(gfn: u64, order: u32) -> Self {
        GfnRange {
            start: gfn,
            end: gfn + (1u64 << order),
        }
    }
    /// Number of frames.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// True when the range holds no frame.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// The common part of two ranges, if any.
    pub fn intersect(&self, o: &GfnRange) -> Option<GfnRange> {
        let r = GfnRange {
            start: self.start.max(o.start),
            end: self.end.min(o.end),
        };
        (!r.is_empty()).then_some(r)
    }
    /// True when `gfn` lies in the range.
    pub fn contains(&self, gfn: u64) -> bool {
        self.start <= gfn && gfn < self.end
    }
}

impl fmt::Display for GfnRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len() == 1 {
            write!(f, "{:#x}", self.start)
        } else {
            write!(f, "{:#x}..{:#x}", self.start, self.end)
        }
    }
}

/// `PAGE_ORDER_4K`, `PAGE_ORDER_2M`, `PAGE_ORDER_1G`: the orders `set_entry` accepts.
pub const PAGE_ORDERS: [u32; 3] = [0, 9, 18];

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr => $s:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $v = $n),* }
        impl $name {
            /// Every value, in Xen's numbering order.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// The value with Xen's number `n`, if there is one.
            pub fn from_raw(n: u8) -> Option<Self> {
                match n { $($n => Some($name::$v),)* _ => None }
            }
            /// Xen's name without the prefix (`ram_rw`, `rx2rw`, ...).
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
            /// Parses the name printed by [`Self::name`].
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$v),)* _ => None }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
    };
}

named_enum! {
    /// Xen 4.6 `p2m_type_t`, numbered as in `xen/include/asm-x86/p2m.h`.
    P2mType {
        /// `p2m_ram_rw`: normal read/write guest RAM.
        RamRw = 0 => "ram_rw",
        /// `p2m_invalid`: nothing mapped here.
        Invalid = 1 => "invalid",
        /// `p2m_ram_logdirty`: RAM under log-dirty tracking.
        RamLogdirty = 2 => "ram_logdirty",
        /// `p2m_ram_ro`: read-only RAM.
        RamRo = 3 => "ram_ro",
        /// `p2m_mmio_dm`: MMIO emulated by the device model.
        MmioDm = 4 => "mmio_dm",
        /// `p2m_mmio_direct`: MMIO passed through to the guest.
        MmioDirect = 5 => "mmio_direct",
        /// `p2m_populate_on_demand`: PoD placeholder.
        PopulateOnDemand = 6 => "populate_on_demand",
        /// `p2m_grant_map_rw`: read/write grant mapping.
        GrantMapRw = 7 => "grant_map_rw",
        /// `p2m_grant_map_ro`: read-only grant mapping.
        GrantMapRo = 8 => "grant_map_ro",
        /// `p2m_ram_paging_out`: memory being paged out.
        RamPagingOut = 9 => "ram_paging_out",
        /// `p2m_ram_paged`: memory paged out.
        RamPaged = 10 => "ram_paged",
        /// `p2m_ram_paging_in`: memory being paged in.
        RamPagingIn = 11 => "ram_paging_in",
        /// `p2m_ram_shared`: shared (copy-on-write) RAM.
        RamShared = 12 => "ram_shared",
        /// `p2m_ram_broken`: broken page.
        RamBroken = 13 => "ram_broken",
        /// `p2m_map_foreign`: another domain's page.
        MapForeign = 14 => "map_foreign",
        /// `p2m_mmio_write_dm`: read-only, writes go to the device model.
        MmioWriteDm = 15 => "mmio_write_dm",
    }
}

named_enum! {
    /// Xen `p2m_access_t`.
    P2mAccess {
        /// `p2m_access_n`: no access.
        N = 0 => "n",
        /// `p2m_access_r`.
        R = 1 => "r",
        /// `p2m_access_w`.
        W = 2 => "w",
        /// `p2m_access_rw`.
        Rw = 3 => "rw",
        /// `p2m_access_x`.
        X = 4 => "x",
        /// `p2m_access_rx`.
        Rx = 5 => "rx",
        /// `p2m_access_wx`.
        Wx = 6 => "wx",
        /// `p2m_access_rwx`: the default access.
        Rwx = 7 => "rwx",
        /// `p2m_access_rx2rw`: rx, becoming rw on a write fault.
        Rx2rw = 8 => "rx2rw",
        /// `p2m_access_n2rwx`: n, becoming rwx on any fault.
        N2rwx = 9 => "n2rwx",
    }
}

/// Xen's `IOMMUF_readable` / `IOMMUF_writable`: what a device may do with a frame.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IommuPerm {
    /// `IOMMUF_readable`.
    pub read: bool,
    /// `IOMMUF_writable`.
    pub write: bool,
}

impl IommuPerm {
    /// No access.
    pub const NONE: IommuPerm = IommuPerm {
        read: false,
        write: false,
    };
    /// Read only.
    pub const R: IommuPerm = IommuPerm {
        read: true,
        write: false,
    };
    /// Read and write.
    pub const RW: IommuPerm = IommuPerm {
        read: true,
        write: true,
    };
    /// True when the device gets nothing.
    pub fn is_none(self) -> bool {
        !self.read && !self.write
    }
    /// True when every right of `self` is also in `other`.
    pub fn is_subset_of(self, other: IommuPerm) -> bool {
        (!self.read || other.read) && (!self.write || other.write)
    }
    /// Rights in both.
    pub fn and(self, o: IommuPerm) -> IommuPerm {
        IommuPerm {
            read: self.read && o.read,
            write: self.write && o.write,
        }
    }
    /// Xen's flag word (`IOMMUF_readable = 1`, `IOMMUF_writable = 2`).
    pub fn bits(self) -> u32 {
        self.read as u32 | (self.write as u32) << 1
    }
    /// From Xen's flag word.
    pub fn from_bits(b: u32) -> IommuPerm {
        IommuPerm {
            read: b & 1 != 0,
            write: b & 2 != 0,
        }
    }
}

impl fmt::Debug for IommuPerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
impl fmt::Display for IommuPerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.read, self.write) {
            (false, false) => f.write_str("--"),
            (true, false) => f.write_str("r-"),
            (false, true) => f.write_str("-w"),
            (true, true) => f.write_str("rw"),
        }
    }
}

named_enum! {
    /// Which p2m implementation the domain uses.
    Mode {
        /// HAP on Intel: `p2m-ept.c`.
        Ept = 0 => "ept",
        /// HAP on AMD: `p2m-pt.c` with nested paging.
        Npt = 1 => "npt",
        /// Shadow paging: `p2m-pt.c`, IOMMU tables never shared.
        Shadow = 2 => "shadow",
    }
}

named_enum! {
    /// IOMMU vendor.
    Vendor {
        /// Intel VT-d (`drivers/passthrough/vtd`).
        Vtd = 0 => "vtd",
        /// AMD-Vi (`drivers/passthrough/amd`).
        Amd = 1 => "amd",
    }
}

/// The IOMMU page sizes Xen may use (`hd->platform_ops->page_sizes`): 4 KiB always;
/// 2 MiB and 1 GiB when the IOMMU supports them (VT-d `cap_sps_*`; AMD always) and
/// `iommu=no-superpages` is not given. The 4.6 line ignores it (its IOMMU code maps
/// 4 KiB pages only).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub enum PageSizes {
    /// 4 KiB only (`iommu=no-superpages`, or a VT-d unit without superpages).
    Only4k,
    /// 4 KiB and 2 MiB (a VT-d unit with `cap_sps_2mb` but not `cap_sps_1gb`).
    Up2m,
    /// 4 KiB, 2 MiB and 1 GiB (the default on AMD and on most VT-d units).
    #[default]
    Up1g,
}

impl PageSizes {
    /// Every value.
    pub const ALL: &'static [PageSizes] = &[PageSizes::Only4k, PageSizes::Up2m, PageSizes::Up1g];
    /// True when a mapping of `order` (0, 9, 18) may be used.
    pub fn has_order(self, order: u32) -> bool {
        match order {
            0 => true,
            9 => self >= PageSizes::Up2m,
            18 => self == PageSizes::Up1g,
            _ => false,
        }
    }
    /// The bitmask of page shifts, as `page_sizes` holds it (bit 12, 21, 30).
    pub fn mask(self) -> u64 {
        match self {
            PageSizes::Only4k => 1 << 12,
            PageSizes::Up2m => (1 << 12) | (1 << 21),
            PageSizes::Up1g => (1 << 12) | (1 << 21) | (1 << 30),
        }
    }
    /// Name used in config lines.
    pub fn name(self) -> &'static str {
        match self {
            PageSizes::Only4k => "4k",
            PageSizes::Up2m => "2m",
            PageSizes::Up1g => "1g",
        }
    }
    /// Parses [`Self::name`].
    pub fn from_name(s: &str) -> Option<PageSizes> {
        PageSizes::ALL.iter().copied().find(|p| p.name() == s)
    }
}

/// Hardware behaviours the Xen source does not settle, each a named switch, and
/// conservative by default (the reading under which a device can reach the most). Every
/// report prints the values it relied on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HwSemantics {
    /// An IOTLB entry for a superpage survives an invalidation that covers only part of
    /// it. Intel documents that to invalidate a 2 MiB mapping software must give an
    /// address mask of at least 9 (IVA_REG, Address Mask field; VT-d spec 6.5.1.2); the
    /// AMD spec does not say. Conservative: `true`.
    pub superpage_survives_partial_inval: bool,
    /// An AMD `INVALIDATE_IOMMU_PAGES` with PDE=0 leaves page-directory cache entries (the
    /// AMD IOMMU spec's reading of the PDE bit). Conservative: `true`.
    pub amd_pde0_keeps_pdc: bool,
    /// VT-d Caching Mode (`cap_caching_mode`): the unit may cache non-present entries, so
    /// Xen also flushes non-present → present changes. Conservative: `false` (fewer flushes).
    pub vtd_caching_mode: bool,
    /// VT-d `cap_max_amask_val`: a page-selective invalidation of a larger order falls
    /// back to a domain-selective one. Conservative: 18 (no fallback for any order Xen
    /// issues, so no extra flushing).
    pub vtd_max_amask: u8,
}

impl HwSemantics {
    /// The default: every open question answered the way a device reaches the most.
    pub const CONSERVATIVE: HwSemantics = HwSemantics {
        superpage_survives_partial_inval: true,
        amd_pde0_keeps_pdc: true,
        vtd_caching_mode: false,
        vtd_max_amask: 18,
    };
    /// The reading under which a cached entry is dropped by any invalidation that hits it
    /// (what the 4.6 line's cache model assumed before these switches existed).
    pub const DROP_ON_HIT: HwSemantics = HwSemantics {
        superpage_survives_partial_inval: false,
        ..HwSemantics::CONSERVATIVE
    };
    /// Every open question answered the way a device reaches the least: any
    /// invalidation that hits a cached entry drops it, and AMD's PDE=0 invalidations drop
    /// page-directory cache entries too. A finding that vanishes here depends on the
    /// hardware reading (the report says which).
    pub const OPTIMISTIC: HwSemantics = HwSemantics {
        superpage_survives_partial_inval: false,
        amd_pde0_keeps_pdc: false,
        ..HwSemantics::CONSERVATIVE
    };
    /// Named presets, for `hw=NAME` in config lines and `P2M_HW`.
    pub const PRESETS: &'static [(&'static str, HwSemantics)] = &[
        ("conservative", HwSemantics::CONSERVATIVE),
        ("drop-on-hit", HwSemantics::DROP_ON_HIT),
        ("optimistic", HwSemantics::OPTIMISTIC),
    ];
    /// The preset `name`, if any.
    pub fn preset(name: &str) -> Option<HwSemantics> {
        HwSemantics::PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, h)| *h)
    }
    /// The preset name of this value, if it is one.
    pub fn preset_name(&self) -> Option<&'static str> {
        HwSemantics::PRESETS
            .iter()
            .find(|(_, h)| h == self)
            .map(|(n, _)| *n)
    }
}

impl Default for HwSemantics {
    fn default() -> Self {
        HwSemantics::CONSERVATIVE
    }
}

impl fmt::Display for HwSemantics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "superpage-survives-partial-inval={} amd-pde0-keeps-pdc={} vtd-caching-mode={} vtd-max-amask={}",
            yn(self.superpage_survives_partial_inval),
            yn(self.amd_pde0_keeps_pdc),
            yn(self.vtd_caching_mode),
            self.vtd_max_amask
        )
    }
}

/// A domain's configuration: p2m flavour, IOMMU vendor, the global sharing flag, the
/// IOMMU page sizes and the hardware semantics assumed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Config {
    /// p2m implementation.
    pub mode: Mode,
    /// IOMMU vendor (EPT implies VT-d, NPT implies AMD-Vi; shadow takes either).
    pub vendor: Vendor,
    /// The global `iommu_hap_pt_share` command-line flag.
    pub iommu_hap_pt_share: bool,
    /// IOMMU page sizes (`page_sizes`); the 4.6 line ignores it.
    pub page_sizes: PageSizes,
    /// Hardware semantics assumed for the IOMMU's caches and invalidations.
    pub hw: HwSemantics,
    /// The device is hot-plugged (`xl pci-attach`) after the guest booted: on 4.6 the domain
    /// runs with `need_iommu(d) == 0` until `assign_device` → `iommu_construct` builds the
    /// IOMMU tables from its pages (`arch_iommu_populate_page_table`). On master a domain
    /// that may get a device must be created with `XEN_DOMCTL_CDF_iommu` and its tables
    /// mirror every p2m write from the start (f89f555827 removed late construction), so
    /// there the flag only means no device is assigned before `assign_device`.
    pub pci_hotplug: bool,
}

impl Config {
    /// A configuration with all page sizes and the conservative hardware semantics.
    pub const fn new(mode: Mode, vendor: Vendor, iommu_hap_pt_share: bool) -> Config {
        Config {
            mode,
            vendor,
            iommu_hap_pt_share,
            page_sizes: PageSizes::Up1g,
            hw: HwSemantics::CONSERVATIVE,
            pci_hotplug: false,
        }
    }
    /// The configuration with the vendor forced to the one the mode requires.
    pub fn normalized(mut self) -> Config {
        match self.mode {
            Mode::Ept => self.vendor = Vendor::Vtd,
            Mode::Npt => self.vendor = Vendor::Amd,
            Mode::Shadow => {}
        }
        self
    }
    /// Models `iommu_use_hap_pt(d)` of Xen 4.6: `hap_enabled(d) && iommu_hap_pt_share`.
    pub fn iommu_use_hap_pt(&self) -> bool {
        self.mode != Mode::Shadow && self.iommu_hap_pt_share
    }

    /// Models `hd->hap_pt_share` of Xen master (`drivers/passthrough/iommu.c:196`
    /// `iommu_domain_init`): HAP and the share flag, on VT-d only (AMD clears
    /// `iommu_hap_pt_share`, `amd/iommu_init.c:1469-1474`), so EPT only, and only when every
    /// page size the EPT may use is one VT-d supports (`vtd_ept_page_compatible`,
    /// `vtd/iommu.c:2302-2318`; HAP here has 2 MiB and 1 GiB pages).
    pub fn master_hap_pt_share(&self) -> bool {
        self.mode == Mode::Ept
            && self.vendor == Vendor::Vtd
            && self.iommu_hap_pt_share
            && self.page_sizes == PageSizes::Up1g
    }
}

/// `mode=.. vendor=.. share=..`, then `superpages=..` when not all page sizes, and
/// `hw=<preset>` (or every value) when not conservative.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mode={} vendor={} share={}",
            self.mode,
            self.vendor,
            if self.iommu_hap_pt_share { "on" } else { "off" }
        )?;
        if self.page_sizes != PageSizes::Up1g {
            write!(f, " superpages={}", self.page_sizes.name())?;
        }
        if self.hw != HwSemantics::CONSERVATIVE {
            match self.hw.preset_name() {
                Some(n) => write!(f, " hw={n}")?,
                None => write!(f, " hw=[{}]", self.hw)?,
            }
        }
        if self.pci_hotplug {
            f.write_str(" pci=hotplug")?;
        }
        Ok(())
    }
}

/// Errors `set_entry` returns instead of changing anything (Xen's `-EINVAL`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum P2mError {
    /// gfn or mfn not aligned to the order.
    Misaligned,
    /// Order other than 0, 9 or 18.
    BadOrder,
    /// gfn beyond the guest physical address width.
    GfnOutOfRange,
    /// `p2m_pt_set_entry` refuses foreign types ("Unimplemented foreign p2m type").
    ForeignOnP2mPt,
    /// A foreign EPT entry the model refuses: above 4 KiB (`ept_set_entry` asserts 4 KiB),
    /// not present (`atomic_write_ept_entry` returns `-EINVAL`), or — a simplification, no
    /// caller does it (`set_foreign_p2m_entry` passes a real page) — without a valid
    /// frame, where 4.6 skips building the entry (`p2m-ept.c:783`), writes an empty
    /// non-foreign entry that `atomic_write_ept_entry` accepts, and maps `gfn → ~0` RW in
    /// separate IOMMU tables.
    ForeignRejected,
    /// Master: the op reaches a `BUG_ON` in Xen, crashing the host; the model refuses it
    /// and leaves the domain unchanged. The text names the assertion (see
    /// `master::p2m::BUG_SPECIAL_TYPE_ABOVE_4K`, `master::p2m::BUG_PRESENT_INVALID_MFN`).
    XenBug(&'static str),
    /// Allocating a p2m table on the walk failed (`ept_next_level` → `-ENOENT`): nothing
    /// was written at the target level.
    TableNoEnt,
    /// Allocating a p2m table for a superpage split or a missing level failed
    /// (`-ENOMEM`): nothing was written at the target level.
    TableNoMem,
    /// Master: the IOMMU step of `set_entry` failed with `-ENOMEM`; the p2m entry was
    /// written (and any replaced subtree freed) all the same.
    IommuNoMem,
    /// Master: the IOMMU step of `set_entry` failed with `-EFAULT`; the p2m entry was
    /// written (and any replaced subtree freed) all the same.
    IommuFault,
    /// Master: an IOMMU flush was asked for `INVALID_DFN` (`-EINVAL`).
    IommuInval,
}

impl fmt::Display for P2mError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            P2mError::XenBug(what) => return write!(f, "BUG_ON ({what})"),
            P2mError::Misaligned => "-EINVAL (gfn/mfn not aligned to order)",
            P2mError::BadOrder => "-EINVAL (order not 0, 9 or 18)",
            P2mError::GfnOutOfRange => "-EINVAL (gfn beyond address width)",
            P2mError::ForeignOnP2mPt => "-EINVAL (foreign type on p2m-pt)",
            P2mError::ForeignRejected => "-EINVAL (foreign entry rejected)",
            P2mError::TableNoEnt => "-ENOENT (p2m table allocation failed)",
            P2mError::TableNoMem => "-ENOMEM (p2m table allocation failed)",
            P2mError::IommuNoMem => "-ENOMEM (IOMMU step failed; p2m entry written)",
            P2mError::IommuFault => "-EFAULT (IOMMU step failed; p2m entry written)",
            P2mError::IommuInval => "-EINVAL (IOMMU flush of INVALID_DFN)",
        };
        f.write_str(s)
    }
}

impl std::error::Error for P2mError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_numbering_matches_xen() {
        assert_eq!(P2mType::RamRw as u8, 0);
        assert_eq!(P2mType::Invalid as u8, 1);
        assert_eq!(P2mType::MmioWriteDm as u8, 15);
        assert_eq!(P2mType::ALL.len(), 16);
        assert_eq!(P2mType::from_raw(127), None);
        for t in P2mType::ALL {
            assert_eq!(P2mType::from_name(t.name()), Some(*t));
        }
    }

    #[test]
    fn ranges() {
        let a = GfnRange::of_order(0x200, 9);
        assert_eq!(a.len(), 512);
        assert!(a.intersect(&GfnRange::of_order(0x400, 0)).is_none());
        assert_eq!(
            a.intersect(&GfnRange::of_order(0, 18)),
            Some(GfnRange::of_order(0x200, 9))
        );
    }
}

/*
 * xen-shim/prelude.h: hand-written for the p2m-core test `master::xen_c_check`.
 *
 * Not Xen code. It declares, in user space, the few types, macros and hooks that the
 * pieces of Xen's C which the test extracts from $XEN_SRC at run time refer to, so that
 * those pieces compile unchanged. Hooks that stand for hardware or for commands record
 * what they were asked to do (see driver.c, which defines them and prints the records).
 *
 * Layout of the generated translation unit: this file, then the pieces read from
 * $XEN_SRC (macros, enums, functions, and pt-contig-markers.h by #include), then a
 * generated table of enumerator names, then driver.c.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- integer types ---- */
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef uint64_t paddr_t;
/* glibc has a daddr_t of its own */
#define daddr_t shim_daddr_t
typedef uint64_t daddr_t;
typedef uint16_t domid_t;

/* ---- annotations that mean nothing here ---- */
#define cf_check
#define __must_check
#define __read_mostly
#define always_inline inline
#define attr_const
#define likely(x) (x)
#define unlikely(x) (x)

/* ---- diagnostics ---- */
/* ASSERT behaves as in a release build (the code goes on), but every failure is counted
 * and reported with the input that caused it. */
static unsigned int shim_asserts;
#define ASSERT(p) ((p) ? (void)0 : (void)shim_asserts++)
#define ASSERT_UNREACHABLE() ((void)shim_asserts++)
#define BUG() (fprintf(stderr, "shim: BUG() at generated line %d\n", __LINE__), exit(3))
#define printk(...) ((void)0)
#define dprintk(...) ((void)0)
#define XENLOG_ERR ""
#define XENLOG_WARNING ""
#define VTDPREFIX ""

/* ---- bit operations (x86 semantics: 1-based index of the lowest set bit, 0 for 0) ---- */
#define ffs(x) ((unsigned int)__builtin_ffs(x))
#define ffsl(x) ((unsigned int)__builtin_ffsl(x))
static inline int test_bit(unsigned int nr, const volatile void *addr)
{
    const volatile unsigned long *p = addr;

    return (p[nr / (8 * sizeof(long))] >> (nr % (8 * sizeof(long)))) & 1;
}

/* ---- type-safe frame numbers, in the boxed (debug build) form ---- */
typedef struct { uint64_t dfn; } dfn_t;
static inline dfn_t _dfn(uint64_t n) { return (dfn_t){ n }; }
static inline uint64_t dfn_x(dfn_t n) { return n.dfn; }
typedef struct { unsigned long mfn; } mfn_t;
static inline mfn_t _mfn(unsigned long n) { return (mfn_t){ n }; }
static inline unsigned long mfn_x(mfn_t n) { return n.mfn; }

/* ---- locks and lists: one CPU, nothing to do ---- */
typedef int spinlock_t;
#define spin_lock(l) ((void)(l))
#define spin_unlock(l) ((void)(l))
#define spin_lock_irqsave(l, f) ((void)(l), (void)((f) = 0))
#define spin_unlock_irqrestore(l, f) ((void)(l), (void)(f))
struct page_list_head { int unused; };
#define page_list_add(pg, list) ((void)(pg), (void)(list))

/* ---- memory: one page-table frame, handed out by the allocator stub ---- */
struct page_info { uint64_t shim_frame[512]; };
static struct page_info shim_page;
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#define alloc_domheap_page(d, memflags) ((void)(d), (void)(memflags), &shim_page)
#define __map_domain_page(pg) ((void *)(pg)->shim_frame)
#define unmap_domain_page(p) ((void)(p))
#define clear_page(p) memset((p), 0, PAGE_SIZE)
#define iommu_sync_cache(p, len) ((void)(p), (void)(len))

/* ---- domains and their IOMMU state: only the fields the pieces touch ---- */
struct iommu_ops { unsigned long page_sizes; };

struct domain_iommu {
    const struct iommu_ops *platform_ops;
    struct {
        struct { unsigned long iommu_bitmap[1]; } vtd;
        struct { struct page_list_head list; spinlock_t lock; } pgtables;
    } arch;
};

struct domain {
    domid_t domain_id;
    bool is_dying;
    struct domain_iommu iommu;
};
#define dom_iommu(d) (&(d)->iommu)

/* ---- VT-d: one remapping unit ---- */
struct vtd_iommu {
    u64 cap, ecap;
    unsigned int index;
    void *reg;
    u64 qinval_maddr;
    bool flush_dev_iotlb;
    spinlock_t register_lock;
    struct {
        int (*iotlb)(struct vtd_iommu *iommu, u16 did, u64 addr,
                     unsigned int size_order, u64 type,
                     bool flush_non_present_entry);
    } flush;
};
struct acpi_drhd_unit { struct vtd_iommu *iommu; };
static struct vtd_iommu shim_vtd;
static struct acpi_drhd_unit shim_drhd = { &shim_vtd };
#define for_each_drhd_unit(drhd) \
    for ( (drhd) = &shim_drhd; (drhd); (drhd) = NULL )

static int get_iommu_did(domid_t domid, const struct vtd_iommu *iommu, bool warn);
static void iommu_flush_write_buffer(struct vtd_iommu *iommu);
static void vtd_ops_preamble_quirk(struct vtd_iommu *iommu);
static void vtd_ops_postamble_quirk(struct vtd_iommu *iommu);
static void dmar_writeq(void *reg, unsigned int offset, u64 val);
static u64 dmar_readq(void *reg, unsigned int offset);
/* The register poll completes at once: read the register back once. */
#define IOMMU_FLUSH_WAIT(what, iommu, offset, op, cond, sts) \
    do { (sts) = op((iommu)->reg, (offset)); } while ( 0 )
static int queue_invalidate_iotlb_sync(struct vtd_iommu *iommu, u8 granu,
                                       u8 dr, u8 dw, u16 did, u8 am, u8 ih,
                                       u64 addr);
static int dev_invalidate_iotlb(struct vtd_iommu *iommu, u16 did, u64 addr,
                                unsigned int size_order, u64 type);

/* ---- AMD-Vi invalidation commands ---- */
static void amd_iommu_flush_pages(struct domain *d, unsigned long dfn,
                                  unsigned int order);
static void amd_iommu_flush_all_pages(struct domain *d);

/* ---- mmio_ro_ranges: one range, set by the driver ---- */
struct rangeset;
static struct rangeset *mmio_ro_ranges;
static bool rangeset_contains_singleton(struct rangeset *r, unsigned long s);

/* ---- enumerator name tables (generated after the enums) ---- */
struct shim_named { const char *name; long value; };

/*
 * xen-shim/driver.c: hand-written for the p2m-core test `master::xen_c_check`.
 *
 * Not Xen code. Appended after the pieces extracted from $XEN_SRC: defines the hooks
 * declared in prelude.h (recording what the extracted code asks for) and a main() that
 * reads inputs from stdin, calls the extracted functions and prints one line per input:
 *
 *   <records, comma-separated>|<failed ASSERTs>
 *
 * `argv[1]` picks the piece: contig, order, amd, vtd, flags. The Rust test writes the
 * inputs and recomputes every line with the model. SHIM_CONTIG_MASK (set by the test to
 * the AMD or the VT-d marker mask) is the CONTIG_MASK the contig piece was built with.
 */

/* ---- recording ---- */
static char shim_log[4096];
static size_t shim_log_len;

static void shim_record(const char *fmt, ...)
{
    va_list ap;
    int n;

    if ( shim_log_len && shim_log_len + 1 < sizeof(shim_log) )
        shim_log[shim_log_len++] = ',';
    va_start(ap, fmt);
    n = vsnprintf(shim_log + shim_log_len, sizeof(shim_log) - shim_log_len, fmt, ap);
    va_end(ap);
    if ( n > 0 )
        shim_log_len += (size_t)n;
    if ( shim_log_len >= sizeof(shim_log) )
        shim_log_len = sizeof(shim_log) - 1;
}

static void shim_reset(void)
{
    shim_log_len = 0;
    shim_log[0] = '\0';
    shim_asserts = 0;
}

static void shim_emit(void)
{
    printf("%.*s|%u\n", (int)shim_log_len, shim_log, shim_asserts);
}

/* ---- VT-d hooks ---- */
static int get_iommu_did(domid_t domid, const struct vtd_iommu *iommu, bool warn)
{
    (void)domid;
    (void)iommu;
    (void)warn;
    return 1;
}

static void iommu_flush_write_buffer(struct vtd_iommu *iommu)
{
    (void)iommu;
    shim_record("WBF");
}

static void vtd_ops_preamble_quirk(struct vtd_iommu *iommu) { (void)iommu; }
static void vtd_ops_postamble_quirk(struct vtd_iommu *iommu) { (void)iommu; }

/* Register-based invalidation: the IVA register (address | AM | IH), then the IOTLB
 * command register; the command is recorded when the latter is written. */
static u64 shim_iva, shim_iotlb_cmd;
static bool shim_iva_written;

static void dmar_writeq(void *reg, unsigned int offset, u64 val)
{
    unsigned int tlb = ecap_iotlb_offset(shim_vtd.ecap);
    u64 granu = val & (DMA_TLB_GLOBAL_FLUSH | DMA_TLB_DSI_FLUSH | DMA_TLB_PSI_FLUSH);

    (void)reg;
    if ( offset == tlb )
    {
        shim_iva = val;
        shim_iva_written = true;
        return;
    }
    if ( offset != tlb + 8 )
    {
        shim_record("REG:%u", offset);
        return;
    }
    shim_iotlb_cmd = val;
    if ( !(val & DMA_TLB_IVT) )
        shim_record("NOIVT");
    if ( granu == DMA_TLB_PSI_FLUSH )
    {
        if ( shim_iva_written )
            shim_record("PSI:%llu:%u:%u", (unsigned long long)(shim_iva & ~0xfffULL),
                        (unsigned int)(shim_iva & 0x3f), (unsigned int)((shim_iva >> 6) & 1));
        else
            shim_record("PSI-NOIVA");
    }
    else if ( granu == DMA_TLB_DSI_FLUSH )
        shim_record("DSI");
    else if ( granu == DMA_TLB_GLOBAL_FLUSH )
        shim_record("GLOBAL");
    else
        shim_record("IOTLB?%llu", (unsigned long long)val);
    shim_iva_written = false;
}

static u64 dmar_readq(void *reg, unsigned int offset)
{
    (void)reg;
    if ( offset == ecap_iotlb_offset(shim_vtd.ecap) + 8 )
        return shim_iotlb_cmd & ~DMA_TLB_IVT;
    return 0;
}

/* Queued invalidation: one IOTLB descriptor. */
static int queue_invalidate_iotlb_sync(struct vtd_iommu *iommu, u8 granu,
                                       u8 dr, u8 dw, u16 did, u8 am, u8 ih,
                                       u64 addr)
{
    (void)iommu;
    (void)dr;
    (void)dw;
    (void)did;
    if ( granu == (u8)(DMA_TLB_PSI_FLUSH >> DMA_TLB_FLUSH_GRANU_OFFSET) )
        shim_record("PSI:%llu:%u:%u", (unsigned long long)addr, am, ih);
    else if ( granu == (u8)(DMA_TLB_DSI_FLUSH >> DMA_TLB_FLUSH_GRANU_OFFSET) )
        shim_record("DSI");
    else if ( granu == (u8)(DMA_TLB_GLOBAL_FLUSH >> DMA_TLB_FLUSH_GRANU_OFFSET) )
        shim_record("GLOBAL");
    else
        shim_record("QI?%u", granu);
    return 0;
}

static int dev_invalidate_iotlb(struct vtd_iommu *iommu, u16 did, u64 addr,
                                unsigned int size_order, u64 type)
{
    (void)iommu;
    (void)did;
    (void)addr;
    (void)size_order;
    (void)type;
    shim_record("DEV");
    return 0;
}

/* ---- AMD-Vi hooks ---- */
static void amd_iommu_flush_pages(struct domain *d, unsigned long dfn,
                                  unsigned int order)
{
    (void)d;
    shim_record("PAGES:%lu:%u", dfn, order);
}

static void amd_iommu_flush_all_pages(struct domain *d)
{
    (void)d;
    shim_record("ALL");
}

/* ---- mmio_ro_ranges ---- */
static unsigned long shim_ro_start, shim_ro_end;

static bool rangeset_contains_singleton(struct rangeset *r, unsigned long s)
{
    (void)r;
    return s >= shim_ro_start && s < shim_ro_end;
}

/* ---- input ---- */
static unsigned long long rd(void)
{
    unsigned long long v;

    if ( scanf("%llu", &v) != 1 )
    {
        fprintf(stderr, "shim: malformed input\n");
        exit(2);
    }
    return v;
}

static unsigned long long *rd_list(size_t *n)
{
    unsigned long long *p;
    size_t i;

    *n = (size_t)rd();
    p = calloc(*n ? *n : 1, sizeof(*p));
    if ( !p )
        exit(2);
    for ( i = 0; i < *n; i++ )
        p[i] = rd();
    return p;
}

static unsigned int shim_flush_flags(unsigned int m)
{
    return (m & 1 ? IOMMU_FLUSHF_added : 0) | (m & 2 ? IOMMU_FLUSHF_modified : 0) |
           (m & 4 ? IOMMU_FLUSHF_all : 0);
}

/* ---- mapping_order: sizes × dfn × mfn × nr ---- */
static void run_order(void)
{
    size_t ns, nd, nm, nn, a, b, c, e;
    unsigned long long *sizes = rd_list(&ns), *dfns = rd_list(&nd);
    unsigned long long *mfns = rd_list(&nm), *nrs = rd_list(&nn);
    struct iommu_ops ops = { 0 };
    struct domain_iommu hd = { 0 };

    hd.platform_ops = &ops;
    for ( a = 0; a < ns; a++ )
        for ( b = 0; b < nd; b++ )
            for ( c = 0; c < nm; c++ )
                for ( e = 0; e < nn; e++ )
                {
                    shim_reset();
                    ops.page_sizes = sizes[a];
                    shim_record("%u", mapping_order(&hd, _dfn(dfns[b]), _mfn(mfns[c]),
                                                    nrs[e]));
                    shim_emit();
                }
}

/* ---- amd_iommu_flush_iotlb_pages: flags × dfn × count ---- */
static void run_amd(void)
{
    size_t nd, nc, b, c;
    unsigned long long *dfns = rd_list(&nd), *counts = rd_list(&nc);
    unsigned int m;
    struct domain d = { 0 };

    for ( m = 0; m < 8; m++ )
        for ( b = 0; b < nd; b++ )
            for ( c = 0; c < nc; c++ )
            {
                int rc;

                shim_reset();
                rc = amd_iommu_flush_iotlb_pages(&d, _dfn(dfns[b]), counts[c],
                                                 shim_flush_flags(m));
                if ( rc )
                    shim_record("RC:%d", rc);
                shim_emit();
            }
}

/* ---- VT-d iommu_flush_iotlb: hook × (caching mode, max AM) × flags × dfn × count ---- */
static void run_vtd(void)
{
    size_t nh, nd, nc, h, b, c;
    unsigned long long *hw = rd_list(&nh), *dfns = rd_list(&nd), *counts = rd_list(&nc);
    unsigned int hook, m;
    struct domain d = { 0 };
    static unsigned char regs[0x1000];

    d.domain_id = 1;
    d.iommu.arch.vtd.iommu_bitmap[0] = 1;
    shim_vtd.index = 0;
    shim_vtd.reg = regs;
    shim_vtd.qinval_maddr = 0x1000;
    shim_vtd.flush_dev_iotlb = false;
    /* IOTLB registers at 0x10 * 16. */
    shim_vtd.ecap = 0x10ULL << 8;
    if ( ecap_iotlb_offset(shim_vtd.ecap) != 0x100 )
    {
        fprintf(stderr, "shim: ecap encoding disagrees with ecap_iotlb_offset\n");
        exit(2);
    }
    for ( hook = 0; hook < 2; hook++ )
    {
        shim_vtd.flush.iotlb = hook ? vtd_flush_iotlb_reg : flush_iotlb_qi;
        /* hw: pairs (caching mode, max address mask) */
        for ( h = 0; h + 1 < nh; h += 2 )
        {
            u64 cm = hw[h] & 1, amask = hw[h + 1] & 0x3f;

            /* Page-selective invalidation supported (bit 39), CM (bit 7), MAMV (48-53),
             * read and write draining (55, 54). */
            shim_vtd.cap = (1ULL << 39) | (cm << 7) | (amask << 48) | (3ULL << 54);
            if ( cap_caching_mode(shim_vtd.cap) != cm ||
                 cap_max_amask_val(shim_vtd.cap) != amask ||
                 !cap_pgsel_inv(shim_vtd.cap) )
            {
                fprintf(stderr, "shim: cap encoding disagrees with the cap_* macros\n");
                exit(2);
            }
            for ( m = 0; m < 8; m++ )
                for ( b = 0; b < nd; b++ )
                    for ( c = 0; c < nc; c++ )
                    {
                        int rc;

                        shim_reset();
                        shim_iva_written = false;
                        rc = iommu_flush_iotlb(&d, _dfn(dfns[b]), counts[c],
                                               shim_flush_flags(m));
                        if ( rc )
                            shim_record("RC:%d", rc);
                        shim_emit();
                    }
        }
    }
}

/* ---- p2m_get_iommu_flags: type × access × mfn ---- */
static void run_flags(void)
{
    size_t nm, c;
    unsigned long long *mfns;
    const struct shim_named *t, *a;

    shim_ro_start = rd();
    shim_ro_end = rd();
    mfns = rd_list(&nm);
    for ( t = shim_p2m_types; t->name; t++ )
        for ( a = shim_p2m_accesses; a->name; a++ )
            for ( c = 0; c < nm; c++ )
            {
                unsigned int f;

                shim_reset();
                f = p2m_get_iommu_flags((p2m_type_t)t->value, (p2m_access_t)a->value,
                                        _mfn(mfns[c]));
                shim_record("%s %s %llu %c%c", t->name, a->name, mfns[c],
                            f & IOMMUF_readable ? 'r' : '-',
                            f & IOMMUF_writable ? 'w' : '-');
                if ( f & ~(IOMMUF_readable | IOMMUF_writable) )
                    shim_record("EXTRA:%u", f & ~(IOMMUF_readable | IOMMUF_writable));
                shim_emit();
            }
}

/* ---- pt_update_contig_markers ---- */
static uint64_t shim_base[512], shim_pt[512];
static unsigned int shim_level;

static unsigned int shim_marker(unsigned int i)
{
    return (unsigned int)MASK_EXTR(shim_pt[i], SHIM_CONTIG_MASK);
}

static unsigned long long shim_markers_hash(void)
{
    unsigned long long h = 0xcbf29ce484222325ULL;
    unsigned int i;

    for ( i = 0; i < 512; i++ )
    {
        h ^= shim_marker(i);
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void shim_print_markers(unsigned int n)
{
    unsigned int i;

    for ( i = 0; i < n; i++ )
        putchar("0123456789abcdef"[shim_marker(i) & 0xf]);
}

static enum PTE_kind shim_kind(unsigned long long k)
{
    return k == 0 ? PTE_kind_null : k == 1 ? PTE_kind_leaf : PTE_kind_table;
}

/* Writes a whole entry (marker bits clear) and calls the function, as Xen's callers do. */
static bool shim_update(unsigned long long idx, unsigned long long kind, unsigned long long val)
{
    if ( idx >= 512 || (val & SHIM_CONTIG_MASK) )
    {
        fprintf(stderr, "shim: bad step %llu %llu %llu\n", idx, kind, val);
        exit(2);
    }
    shim_pt[idx] = val;
    return pt_update_contig_markers(shim_pt, (unsigned int)idx, shim_level, shim_kind(kind));
}

/*
 * Commands (whitespace-separated numbers; the first of each is a letter code):
 *   84 ('T') level prefill v0..v511: base table = iommu_alloc_pgtable(hd, prefill ?
 *      SHIM_CONTIG_MASK : 0), then each entry's non-marker bits set to v_i.
 *      Prints "T <512 markers>|asserts".
 *   69 ('E') n (idx kind val)*n maxlen: every sequence of 1..=maxlen steps over the n
 *      symbols (first step most significant), each from the base table. Prints per
 *      sequence "<return of each step> <markers 0..15> <FNV-1a of all 512>|asserts".
 *   82 ('R') n (idx kind val)*n: one sequence from the base table. Prints per step
 *      "<return> <FNV-1a>|asserts", then "F <512 markers>|0".
 */
static void run_contig(void)
{
    for ( ;; )
    {
        unsigned long long cmd;

        if ( scanf("%llu", &cmd) != 1 )
            return;
        if ( cmd == 'T' )
        {
            struct domain_iommu hd = { 0 };
            struct page_info *pg;
            unsigned int i;

            shim_level = (unsigned int)rd();
            shim_reset();
            pg = iommu_alloc_pgtable(&hd, rd() ? SHIM_CONTIG_MASK : 0);
            memcpy(shim_base, pg->shim_frame, sizeof(shim_base));
            for ( i = 0; i < 512; i++ )
            {
                unsigned long long v = rd();

                if ( v & SHIM_CONTIG_MASK )
                {
                    fprintf(stderr, "shim: background entry %u has marker bits\n", i);
                    exit(2);
                }
                shim_base[i] |= v;
            }
            memcpy(shim_pt, shim_base, sizeof(shim_pt));
            fputs("T ", stdout);
            shim_print_markers(512);
            printf("|%u\n", shim_asserts);
        }
        else if ( cmd == 'E' )
        {
            size_t n = (size_t)rd(), len, maxlen, j;
            unsigned long long *sym = calloc(3 * (n ? n : 1), sizeof(*sym));

            if ( !sym )
                exit(2);
            for ( j = 0; j < 3 * n; j++ )
                sym[j] = rd();
            maxlen = (size_t)rd();
            for ( len = 1; len <= maxlen; len++ )
            {
                unsigned long long total = 1, s;

                for ( j = 0; j < len; j++ )
                    total *= n;
                for ( s = 0; s < total; s++ )
                {
                    unsigned long long div = total;
                    char rets[16];

                    shim_reset();
                    memcpy(shim_pt, shim_base, sizeof(shim_pt));
                    for ( j = 0; j < len; j++ )
                    {
                        const unsigned long long *st;

                        div /= n;
                        st = &sym[3 * ((s / div) % n)];
                        rets[j] = shim_update(st[0], st[1], st[2]) ? '1' : '0';
                    }
                    rets[len] = '\0';
                    printf("%s ", rets);
                    shim_print_markers(16);
                    printf(" %016llx|%u\n", shim_markers_hash(), shim_asserts);
                }
            }
            free(sym);
        }
        else if ( cmd == 'R' )
        {
            size_t n = (size_t)rd(), j;

            memcpy(shim_pt, shim_base, sizeof(shim_pt));
            for ( j = 0; j < n; j++ )
            {
                unsigned long long idx = rd(), kind = rd(), val = rd();
                bool r;

                shim_reset();
                r = shim_update(idx, kind, val);
                printf("%d %016llx|%u\n", r, shim_markers_hash(), shim_asserts);
            }
            fputs("F ", stdout);
            shim_print_markers(512);
            printf("|0\n");
        }
        else
        {
            fprintf(stderr, "shim: unknown contig command %llu\n", cmd);
            exit(2);
        }
    }
}

int main(int argc, char **argv)
{
    if ( argc != 2 )
        return 2;
    if ( !strcmp(argv[1], "contig") )
        run_contig();
    else if ( !strcmp(argv[1], "order") )
        run_order();
    else if ( !strcmp(argv[1], "amd") )
        run_amd();
    else if ( !strcmp(argv[1], "vtd") )
        run_vtd();
    else if ( !strcmp(argv[1], "flags") )
        run_flags();
    else
        return 2;
    return fflush(stdout) ? 1 : 0;
}

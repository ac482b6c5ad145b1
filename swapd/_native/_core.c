/* swapd._native._core: the compiled implementation of swapd's hot paths.
 *
 * Design.  The pure-Python modules are the specification; every function here does exactly
 * what a named Python function does, over the same bytes (swapd/impl.py maps them, and
 * tests/test_native_differential.py drives both through the same seeded operation sequences
 * and compares the results byte for byte).  Work that touches no Python object -- lz4
 * compression and decompression, same-filled detection, copies between the client's pages and
 * the pool -- runs with the GIL released, so that the reclaimer compressing on one CPU does not
 * stop the pager serving faults on the other.  Python objects (the buffers passed in) are
 * pinned with PyObject_GetBuffer before the GIL is released and released after it is taken
 * back, so no Python object is touched while the GIL is not held.
 *
 * Compression is liblz4's block format made the way python-lz4's
 * lz4.block.compress(store_size=False) makes it (lz4_block below): with the same liblz4
 * version the bytes are identical (tests/test_native.py checks that on a corpus), so objects
 * stored by one implementation load with the other.
 *
 * Invariants: a function that returns a count stops at the first page it cannot handle and
 * leaves that page and every later one untouched.
 * Lock order: no lock is taken here; callers hold the layer's locks as the Python code does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <lz4.h>
#include <stdint.h>
#include <string.h>

#define SWAPD_PAGE_SIZE 4096
#define ABI_VERSION 2

/* A page is same-filled when all of its 64-bit words are equal (drivers/block/zram/zram_drv.c:
 * page_same_filled); the value is that word.  Returns 1 and stores it, else 0. */
static int page_same_filled(const unsigned char *p, uint64_t *value)
{
    uint64_t first, last, w;
    memcpy(&first, p, 8);
    memcpy(&last, p + SWAPD_PAGE_SIZE - 8, 8);
    if (first != last)
        return 0;
    for (size_t off = 8; off < SWAPD_PAGE_SIZE - 8; off += 8) {
        memcpy(&w, p + off, 8);
        if (w != first)
            return 0;
    }
    *value = first;
    return 1;
}

/* python-lz4's lz4.block.compress(store_size=False): a fresh stream state and
 * LZ4_compress_fast_continue with acceleration 1 (its "default" mode).  That is not
 * LZ4_compress_default, which takes a 16-bit hash table for inputs below 64 KiB and so finds
 * other matches; the continue call is what keeps the bytes identical.  Returns the length, 0
 * when the block does not fit in cap bytes. */
static int lz4_block(const char *src, int n, char *dst, int cap)
{
    LZ4_stream_t st;
    LZ4_initStream(&st, sizeof(st));
    return LZ4_compress_fast_continue(&st, src, dst, n, cap, 1);
}

static void fill_page(unsigned char *dst, uint64_t value)
{
    for (size_t off = 0; off < SWAPD_PAGE_SIZE; off += 8)
        memcpy(dst + off, &value, 8);
}

/* Get a contiguous buffer; writable when asked.  Returns 0 or -1 with an exception set. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: need a %scontiguous bytes-like object", what,
                     writable ? "writable " : "");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(compress_pages_doc,
"compress_pages(src, n, dst, lengths, values, same_filled) -> None\n\n"
"For each of the n pages of src: when same_filled and the page is same-filled, lengths[j] = -1\n"
"and values[j] = the fill word; else the lz4 block of the page goes to dst[j*4096:] and\n"
"lengths[j] = its length, or 0 when it would not be smaller than a page.  lengths: int32\n"
"items, values: uint64 items (array('i'), array('Q')).  The GIL is released.  O(n pages).");

static PyObject *compress_pages(PyObject *self, PyObject *args)
{
    PyObject *srco, *dsto, *leno, *valo;
    Py_ssize_t n;
    int same;
    Py_buffer src, dst, len, val;
    if (!PyArg_ParseTuple(args, "OnOOOp", &srco, &n, &dsto, &leno, &valo, &same))
        return NULL;
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "compress_pages: n must be >= 0, got %zd", n);
    if (get_buffer(srco, &src, 0, "compress_pages: src") < 0)
        return NULL;
    if (get_buffer(dsto, &dst, 1, "compress_pages: dst") < 0)
        goto e1;
    if (get_buffer(leno, &len, 1, "compress_pages: lengths") < 0)
        goto e2;
    if (get_buffer(valo, &val, 1, "compress_pages: values") < 0)
        goto e3;
    if (src.len < n * SWAPD_PAGE_SIZE || dst.len < n * SWAPD_PAGE_SIZE
            || len.len < n * (Py_ssize_t)sizeof(int32_t)
            || val.len < n * (Py_ssize_t)sizeof(uint64_t)) {
        PyErr_Format(PyExc_ValueError, "compress_pages: a buffer is too small for %zd pages", n);
        goto e4;
    }
    {
        const unsigned char *s = src.buf;
        unsigned char *d = dst.buf;
        int32_t *lens = len.buf;
        uint64_t *vals = val.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t j = 0; j < n; j++) {
            const unsigned char *p = s + j * SWAPD_PAGE_SIZE;
            uint64_t v;
            if (same && page_same_filled(p, &v)) {
                lens[j] = -1;
                vals[j] = v;
                continue;
            }
            vals[j] = 0;
            lens[j] = lz4_block((const char *)p, SWAPD_PAGE_SIZE, (char *)d + j * SWAPD_PAGE_SIZE,
                                SWAPD_PAGE_SIZE - 1);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&val);
    PyBuffer_Release(&len);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
e4: PyBuffer_Release(&val);
e3: PyBuffer_Release(&len);
e2: PyBuffer_Release(&dst);
e1: PyBuffer_Release(&src);
    return NULL;
}

/* One page to decode: raw or lz4 bytes (pinned), or a fill value. */
struct piece {
    Py_buffer view;
    int has_view;
    uint64_t value;
};

PyDoc_STRVAR(decode_pages_doc,
"decode_pages(items, dst, offset=0) -> int\n\n"
"Write the pages that items describe into dst, page j at dst[offset + j*4096:].  An item is an\n"
"int (a same-filled page's word), a bytes-like object of exactly 4096 bytes (a raw page) or a\n"
"shorter one (an lz4 block that must decode to exactly 4096 bytes).  Returns the pages written:\n"
"it stops before the first block that does not decode, and writes nothing of it.  The GIL is\n"
"released for the copies and the decompression.  O(pages).");

static PyObject *decode_pages(PyObject *self, PyObject *args)
{
    PyObject *items, *dsto, *seq;
    Py_ssize_t offset = 0, n, done = 0;
    Py_buffer dst;
    struct piece *pc;
    if (!PyArg_ParseTuple(args, "OO|n", &items, &dsto, &offset))
        return NULL;
    seq = PySequence_Fast(items, "decode_pages: items must be a sequence");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    if (get_buffer(dsto, &dst, 1, "decode_pages: dst") < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    if (offset < 0 || dst.len < offset + n * SWAPD_PAGE_SIZE) {
        PyErr_Format(PyExc_ValueError, "decode_pages: dst holds no %zd pages at offset %zd",
                     n, offset);
        PyBuffer_Release(&dst);
        Py_DECREF(seq);
        return NULL;
    }
    pc = PyMem_Calloc(n ? n : 1, sizeof(*pc));
    if (pc == NULL) {
        PyBuffer_Release(&dst);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    Py_ssize_t got = 0;
    for (; got < n; got++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, got);
        if (PyLong_Check(it)) {
            pc[got].value = PyLong_AsUnsignedLongLongMask(it);
            if (PyErr_Occurred())
                goto fail;
        } else {
            if (get_buffer(it, &pc[got].view, 0, "decode_pages: item") < 0)
                goto fail;
            pc[got].has_view = 1;
            if (pc[got].view.len > SWAPD_PAGE_SIZE || pc[got].view.len <= 0) {
                PyErr_Format(PyExc_ValueError, "decode_pages: item %zd has %zd bytes", got,
                             pc[got].view.len);
                got++;
                goto fail;
            }
        }
    }
    {
        unsigned char *d = (unsigned char *)dst.buf + offset;
        Py_BEGIN_ALLOW_THREADS
        for (; done < n; done++) {
            unsigned char *p = d + done * SWAPD_PAGE_SIZE;
            struct piece *q = &pc[done];
            if (!q->has_view) {
                fill_page(p, q->value);
            } else if (q->view.len == SWAPD_PAGE_SIZE) {
                memcpy(p, q->view.buf, SWAPD_PAGE_SIZE);
            } else {
                /* decode into a scratch page first: a bad block must leave dst untouched */
                char tmp[SWAPD_PAGE_SIZE];
                int r = LZ4_decompress_safe(q->view.buf, tmp, (int)q->view.len,
                                            SWAPD_PAGE_SIZE);
                if (r != SWAPD_PAGE_SIZE)
                    break;
                memcpy(p, tmp, SWAPD_PAGE_SIZE);
            }
        }
        Py_END_ALLOW_THREADS
    }
    for (Py_ssize_t j = 0; j < n; j++)
        if (pc[j].has_view)
            PyBuffer_Release(&pc[j].view);
    PyMem_Free(pc);
    PyBuffer_Release(&dst);
    Py_DECREF(seq);
    return PyLong_FromSsize_t(done);
fail:
    for (Py_ssize_t j = 0; j < got; j++)
        if (pc[j].has_view)
            PyBuffer_Release(&pc[j].view);
    PyMem_Free(pc);
    PyBuffer_Release(&dst);
    Py_DECREF(seq);
    return NULL;
}

PyDoc_STRVAR(lz4_compress_doc,
"lz4_compress(page) -> bytes\n\n"
"The lz4 block of one buffer (lz4.block.compress(page, store_size=False)); GIL released.");

static PyObject *lz4_compress(PyObject *self, PyObject *arg)
{
    Py_buffer src;
    PyObject *out;
    int bound, r;
    if (get_buffer(arg, &src, 0, "lz4_compress") < 0)
        return NULL;
    if (src.len > LZ4_MAX_INPUT_SIZE) {
        PyBuffer_Release(&src);
        return PyErr_Format(PyExc_ValueError, "lz4_compress: %zd bytes is too large", src.len);
    }
    bound = LZ4_compressBound((int)src.len);
    out = PyBytes_FromStringAndSize(NULL, bound);
    if (out == NULL) {
        PyBuffer_Release(&src);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    r = lz4_block(src.buf, (int)src.len, PyBytes_AS_STRING(out), bound);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    if (r <= 0 && src.len > 0) {
        Py_DECREF(out);
        return PyErr_Format(PyExc_ValueError, "lz4_compress: compression failed");
    }
    if (_PyBytes_Resize(&out, r) < 0)
        return NULL;
    return out;
}


/* ---------------------------------------------------------------------------------------------
 * Mutex: a lock that C code takes without the GIL and Python code takes like threading.Lock.
 *
 * The compiled zsmalloc (ZsFast below) takes a size class's lock with the GIL released, so the
 * pool's Python code must take the very same lock: in the compiled implementation
 * backends/zsmalloc.py builds its class, pool and meta locks as Mutex objects.  acquire() tries
 * first and, only when the lock is held, releases the GIL and blocks in pthread_mutex_lock.
 * Each Mutex counts its acquisitions, the contended ones and the nanoseconds spent waiting
 * (for `swapd bench locks`); the counters change only while the lock is held.
 * ------------------------------------------------------------------------------------------- */
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <zlib.h>

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    int locked;
    unsigned long long acquires, contended, wait_ns;
} MutexObject;

static inline unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Take m without the GIL (the caller has released it, or never held it). */
static inline void mutex_lock_nogil(MutexObject *m)
{
    if (pthread_mutex_trylock(&m->mu) != 0) {
        unsigned long long t0 = now_ns();
        pthread_mutex_lock(&m->mu);
        m->contended++;
        m->wait_ns += now_ns() - t0;
    }
    m->acquires++;
    m->locked = 1;
}

static inline void mutex_unlock(MutexObject *m)
{
    m->locked = 0;
    pthread_mutex_unlock(&m->mu);
}

static int Mutex_init(MutexObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "", kwlist))
        return -1;
    pthread_mutex_init(&self->mu, NULL);
    self->locked = 0;
    self->acquires = self->contended = self->wait_ns = 0;
    return 0;
}

static void Mutex_dealloc(MutexObject *self)
{
    pthread_mutex_destroy(&self->mu);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Mutex_acquire(MutexObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|pd", kwlist, &blocking, &timeout))
        return NULL;
    if (pthread_mutex_trylock(&self->mu) == 0) {
        self->acquires++;
        self->locked = 1;
        Py_RETURN_TRUE;
    }
    if (!blocking)
        Py_RETURN_FALSE;
    int r;
    unsigned long long t0 = now_ns();
    Py_BEGIN_ALLOW_THREADS
    if (timeout < 0) {
        r = pthread_mutex_lock(&self->mu);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long long ns = ts.tv_nsec + (long long)(timeout * 1e9);
        ts.tv_sec += ns / 1000000000ll;
        ts.tv_nsec = ns % 1000000000ll;
        r = pthread_mutex_timedlock(&self->mu, &ts);
    }
    Py_END_ALLOW_THREADS
    if (r != 0)
        Py_RETURN_FALSE;
    self->contended++;
    self->wait_ns += now_ns() - t0;
    self->acquires++;
    self->locked = 1;
    Py_RETURN_TRUE;
}

static PyObject *Mutex_release(MutexObject *self, PyObject *unused)
{
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    mutex_unlock(self);
    Py_RETURN_NONE;
}

static PyObject *Mutex_locked(MutexObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->locked);
}

static PyObject *Mutex_exit(MutexObject *self, PyObject *args)
{
    return Mutex_release(self, NULL);
}

static PyObject *Mutex_stats(MutexObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:K,s:K,s:K}", "acquires", self->acquires, "contended",
                         self->contended, "wait_ns", self->wait_ns);
}

static PyMethodDef Mutex_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Mutex_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool: take the lock (the GIL is released while "
     "waiting)."},
    {"release", (PyCFunction)Mutex_release, METH_NOARGS, "release() -> None"},
    {"locked", (PyCFunction)Mutex_locked, METH_NOARGS, "locked() -> bool"},
    {"__enter__", (PyCFunction)(void (*)(void))Mutex_acquire, METH_VARARGS | METH_KEYWORDS,
     "Take the lock."},
    {"__exit__", (PyCFunction)Mutex_exit, METH_VARARGS, "Release the lock."},
    {"stats", (PyCFunction)Mutex_stats, METH_NOARGS,
     "stats() -> {acquires, contended, wait_ns}: counts since creation."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MutexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "swapd._native._core.Mutex",
    .tp_basicsize = sizeof(MutexObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A pthread mutex usable from Python like threading.Lock and from C without the GIL.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mutex_init,
    .tp_dealloc = (destructor)Mutex_dealloc,
    .tp_methods = Mutex_methods,
};

/* ---------------------------------------------------------------------------------------------
 * ZsFast: zsmalloc's malloc, free, read and write over the pool's state region
 * (backends/zsmalloc.py, docs/state-format.md "zsmalloc"), bit for bit what the Python methods
 * do.  A call takes the fast path when it needs no page from the arena and no growth of the
 * region's file: a zspage of the class has a free slot (malloc), the zspage does not empty
 * (free), the handle record comes from the free chain or from records the file already
 * covers.  Anything else -- a huge object's page, a new zspage, an emptied zspage, growth, and
 * every bad handle -- returns "slow" before changing anything, and the caller runs the Python
 * method, which does the rest and raises the named errors.  Record layout (u32/u64 words):
 *   classes[256] x 24 u64: size, ppz, opz, huge, rep, nonempty, zspages, objects, bytes, heads[12]
 *   fullness[256] x 12 u64;  handles[] x 3 u32: loc, info, crc;  zspages[] x 4 u32: first,
 *   prev, next, inuse | freeobj << 16;  pages[pfn] u32: next page of the zspage.
 * Lock order: class Mutex -> meta Mutex (the free chain of handle records).
 * ------------------------------------------------------------------------------------------- */
#define C_WORDS 24
#define C_NONEMPTY 5
#define C_ZSPAGES 6
#define C_OBJECTS 7
#define C_BYTES 8
#define C_HEADS 9
#define F_WORDS 12
#define H_WORDS 3
#define SIZE_MASK 0x1FFFu
#define SLOT_SHIFT 13
#define SLOT_MASK 0x7FFu
#define GEN_SHIFT 24
#define HUGE_SLOT SLOT_MASK
#define Z_PREV 1
#define Z_NEXT 2
#define IDX_SHIFT 8
#define IDX_MASK ((1ull << 28) - 1)
#define HGEN_SHIFT 36
#define HANDLE_LIMIT (1ull << 44)
#define PARTIAL_MASK 0x7FEull /* groups 1..10 */
#define NGROUPS 12

struct zs_class {
    int present, size, ppz, opz, huge, hdr;
    MutexObject *lock;
};

typedef struct {
    PyObject_HEAD
    Py_buffer vC, vF, vH, vZ, vP, vS, vA;
    int have_views;
    uint64_t *C, *F, *S;
    uint32_t *H, *Z, *P;
    unsigned char *A;
    Py_ssize_t hcap;    /* records the handles array can hold */
    Py_ssize_t hlimit;  /* records the region's file covers (refreshed by fstat) */
    int s_hfree, s_hcount;
    int state_fd;
    long long h_offset; /* byte offset of the handles array in the region's file */
    unsigned char class_for[SWAPD_PAGE_SIZE + 1];
    struct zs_class cls[256];
    MutexObject *meta;
    PyObject *locks;    /* the Mutex objects, kept alive */
    PyObject *py_malloc, *py_free, *py_read, *py_write;
} ZsFastObject;

static inline int fullness_group(int inuse, int opz)
{
    if (inuse == 0)
        return 0;
    if (inuse == opz)
        return 11;
    return (100 * inuse / opz) / 10 + 1;
}

static inline void zs_list(ZsFastObject *f, int ci, uint32_t z, int g)
{
    uint64_t *c = f->C + (size_t)ci * C_WORDS;
    uint32_t head = (uint32_t)c[C_HEADS + g];
    uint32_t *zr = f->Z + ((size_t)z << 2);
    zr[Z_PREV] = 0;
    zr[Z_NEXT] = head;
    if (head)
        f->Z[((size_t)head << 2) + Z_PREV] = z;
    c[C_HEADS + g] = z;
    c[C_NONEMPTY] |= 1ull << g;
    f->F[(size_t)ci * F_WORDS + g] += 1;
}

static inline void zs_unlist(ZsFastObject *f, int ci, uint32_t z, int g)
{
    uint64_t *c = f->C + (size_t)ci * C_WORDS;
    uint32_t *zr = f->Z + ((size_t)z << 2);
    uint32_t p = zr[Z_PREV], n = zr[Z_NEXT];
    if (p) {
        f->Z[((size_t)p << 2) + Z_NEXT] = n;
    } else {
        c[C_HEADS + g] = n;
        if (!n)
            c[C_NONEMPTY] &= ~(1ull << g);
    }
    if (n)
        f->Z[((size_t)n << 2) + Z_PREV] = p;
    zr[Z_PREV] = zr[Z_NEXT] = 0;
    f->F[(size_t)ci * F_WORDS + g] -= 1;
}

/* Arena address of slot ``slot`` (its start, before the header) of zspage z. */
static inline size_t zs_slot_addr(ZsFastObject *f, struct zs_class *k, uint32_t z, unsigned slot,
                                  uint32_t *pfn_out)
{
    size_t off = (size_t)slot * (size_t)k->size;
    size_t pno = off >> 12;
    uint32_t pfn = f->Z[(size_t)z << 2];
    while (pno--)
        pfn = f->P[pfn];
    *pfn_out = pfn;
    return ((size_t)pfn << 12) + (off & 4095);
}

/* Take a free handle record (the meta lock is taken here); 0 when only the slow path can. */
static uint32_t zs_take_record(ZsFastObject *f)
{
    uint32_t hi;
    mutex_lock_nogil(f->meta);
    hi = (uint32_t)f->S[f->s_hfree];
    if (hi) {
        f->S[f->s_hfree] = f->H[(size_t)hi * H_WORDS];
    } else {
        uint64_t cnt = f->S[f->s_hcount];
        if ((Py_ssize_t)cnt >= f->hcap) {
            hi = 0;
        } else {
            if ((Py_ssize_t)cnt >= f->hlimit) {
                struct stat st;
                if (fstat(f->state_fd, &st) == 0 && st.st_size > f->h_offset)
                    f->hlimit = (Py_ssize_t)((st.st_size - f->h_offset) / (H_WORDS * 4));
                if (f->hlimit > f->hcap)
                    f->hlimit = f->hcap;
            }
            if ((Py_ssize_t)cnt < f->hlimit) {
                hi = (uint32_t)cnt;
                f->S[f->s_hcount] = cnt + 1;
            }
        }
    }
    mutex_unlock(f->meta);
    return hi;
}

static inline void zs_put_record(ZsFastObject *f, uint32_t hi)
{
    mutex_lock_nogil(f->meta);
    f->H[(size_t)hi * H_WORDS] = (uint32_t)f->S[f->s_hfree];
    f->S[f->s_hfree] = hi;
    mutex_unlock(f->meta);
}

/* malloc of ``size`` bytes (1..4096) with the class lock held; 0 = slow path. */
static uint64_t zs_malloc_locked(ZsFastObject *f, int ci, int size)
{
    struct zs_class *k = &f->cls[ci];
    uint64_t *c = f->C + (size_t)ci * C_WORDS;
    if (k->huge)
        return 0;
    uint64_t mask = c[C_NONEMPTY] & PARTIAL_MASK;
    if (!mask)
        return 0;
    uint32_t hi = zs_take_record(f);
    if (!hi)
        return 0;
    int g = 63 - __builtin_clzll(mask);
    uint32_t z = (uint32_t)c[C_HEADS + g];
    uint16_t *zh = (uint16_t *)(f->Z + ((size_t)z << 2));
    unsigned slot = zh[7];
    uint32_t pfn;
    size_t a = zs_slot_addr(f, k, z, slot, &pfn);
    uint32_t link;
    memcpy(&link, f->A + a, 4);
    zh[7] = (uint16_t)(link >> 1);
    int inuse = zh[6] + 1;
    zh[6] = (uint16_t)inuse;
    int ng = fullness_group(inuse, k->opz);
    if (ng != g) {
        zs_unlist(f, ci, z, g);
        zs_list(f, ci, z, ng);
    }
    uint32_t *h = f->H + (size_t)hi * H_WORDS;
    uint32_t gen = ((h[1] >> GEN_SHIFT) + 1) & 0xFF;
    h[0] = z;
    h[1] = (uint32_t)size | (slot << SLOT_SHIFT) | (gen << GEN_SHIFT);
    h[2] = 0;
    uint64_t handle = ((uint64_t)gen << HGEN_SHIFT) | ((uint64_t)hi << IDX_SHIFT) | (uint64_t)ci;
    if (k->hdr) {  /* the header before the counters, as backends/zsmalloc.py malloc */
        uint64_t tag = (handle << 1) | 1;
        memcpy(f->A + a, &tag, 8);
    }
    c[C_OBJECTS] += 1;
    c[C_BYTES] += (uint64_t)size;
    return handle;
}

/* The live record of ``handle`` (its class lock held), or NULL. */
static inline uint32_t *zs_record(ZsFastObject *f, uint64_t handle, int ci)
{
    uint64_t hi = (handle >> IDX_SHIFT) & IDX_MASK;
    if (hi == 0 || hi >= f->S[f->s_hcount] || (Py_ssize_t)hi >= f->hcap)
        return NULL;
    uint32_t *h = f->H + hi * H_WORDS;
    uint32_t info = h[1];
    if (!(info & SIZE_MASK) || (info >> GEN_SHIFT) != (handle >> HGEN_SHIFT))
        return NULL;
    if ((((info >> SLOT_SHIFT) & SLOT_MASK) == HUGE_SLOT) != (f->cls[ci].huge != 0))
        return NULL;
    return h;
}

/* The object's bytes as (up to) two parts. */
static inline int zs_parts(ZsFastObject *f, int ci, uint32_t *h, unsigned char **p1,
                           size_t *n1, unsigned char **p2)
{
    struct zs_class *k = &f->cls[ci];
    uint32_t info = h[1];
    size_t size = info & SIZE_MASK;
    unsigned slot = (info >> SLOT_SHIFT) & SLOT_MASK;
    if (slot == HUGE_SLOT) {
        *p1 = f->A + ((size_t)h[0] << 12);
        *n1 = size;
        *p2 = NULL;
        return (int)size;
    }
    uint32_t pfn;
    size_t start = zs_slot_addr(f, k, h[0], slot, &pfn);
    /* slots start 16-byte aligned, so a slot's 8-byte header never straddles pages and at
     * least 8 payload bytes follow it in the slot's first page */
    size_t room = 4096 - (start & 4095) - (size_t)k->hdr;
    *p1 = f->A + start + (size_t)k->hdr;
    if (size <= room) {
        *n1 = size;
        *p2 = NULL;
    } else {
        *n1 = room;
        *p2 = f->A + ((size_t)f->P[pfn] << 12);
    }
    return (int)size;
}

/* free with the class lock held: 1 done, 0 slow path (nothing changed). */
static int zs_free_locked(ZsFastObject *f, int ci, uint64_t handle)
{
    struct zs_class *k = &f->cls[ci];
    uint32_t *h = zs_record(f, handle, ci);
    if (h == NULL || k->huge)
        return 0;
    uint32_t info = h[1];
    uint32_t z = h[0];
    uint16_t *zh = (uint16_t *)(f->Z + ((size_t)z << 2));
    int inuse = zh[6] - 1;
    int g = fullness_group(inuse + 1, k->opz), ng = fullness_group(inuse, k->opz);
    if (ng == 0)
        return 0;  /* the zspage empties: its pages go back to the arena (Python) */
    uint64_t *c = f->C + (size_t)ci * C_WORDS;
    c[C_OBJECTS] -= 1;
    c[C_BYTES] -= info & SIZE_MASK;
    unsigned slot = (info >> SLOT_SHIFT) & SLOT_MASK;
    uint32_t pfn;
    size_t a = zs_slot_addr(f, k, z, slot, &pfn);
    uint32_t link = (uint32_t)zh[7] << 1;
    memcpy(f->A + a, &link, 4);
    zh[7] = (uint16_t)slot;
    zh[6] = (uint16_t)inuse;
    if (ng != g) {
        zs_unlist(f, ci, z, g);
        zs_list(f, ci, z, ng);
    }
    h[1] = info & ~(SIZE_MASK | (SLOT_MASK << SLOT_SHIFT));
    zs_put_record(f, (uint32_t)((handle >> IDX_SHIFT) & IDX_MASK));
    return 1;
}

static inline int zs_class_of(ZsFastObject *f, uint64_t handle)
{
    if (handle == 0 || handle >= HANDLE_LIMIT)
        return -1;
    int ci = (int)(handle & 0xFF);
    return f->cls[ci].present ? ci : -1;
}

static void ZsFast_dealloc(ZsFastObject *self)
{
    if (self->have_views) {
        PyBuffer_Release(&self->vC);
        PyBuffer_Release(&self->vF);
        PyBuffer_Release(&self->vH);
        PyBuffer_Release(&self->vZ);
        PyBuffer_Release(&self->vP);
        PyBuffer_Release(&self->vS);
        PyBuffer_Release(&self->vA);
    }
    Py_XDECREF(self->meta);
    Py_XDECREF(self->locks);
    Py_XDECREF(self->py_malloc);
    Py_XDECREF(self->py_free);
    Py_XDECREF(self->py_read);
    Py_XDECREF(self->py_write);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *ZsFast_release(ZsFastObject *self, PyObject *unused)
{
    if (self->have_views) {
        self->have_views = 0;
        PyBuffer_Release(&self->vC);
        PyBuffer_Release(&self->vF);
        PyBuffer_Release(&self->vH);
        PyBuffer_Release(&self->vZ);
        PyBuffer_Release(&self->vP);
        PyBuffer_Release(&self->vS);
        PyBuffer_Release(&self->vA);
    }
    Py_CLEAR(self->py_malloc);
    Py_CLEAR(self->py_free);
    Py_CLEAR(self->py_read);
    Py_CLEAR(self->py_write);
    Py_RETURN_NONE;
}

static int ZsFast_init(ZsFastObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"classes", "fullness", "handles", "zspages", "pages", "scalars",
                             "arena", "geometry", "class_for", "locks", "meta", "s_hfree",
                             "s_hcount", "hcap", "state_fd", "h_offset", "fallbacks", NULL};
    PyObject *oC, *oF, *oH, *oZ, *oP, *oS, *oA, *geom, *cfor, *locks, *meta, *fb;
    int s_hfree, s_hcount, fd;
    Py_ssize_t hcap;
    long long hoff;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOOOiiniLO", kwlist, &oC, &oF, &oH, &oZ,
                                     &oP, &oS, &oA, &geom, &cfor, &locks, &meta, &s_hfree,
                                     &s_hcount, &hcap, &fd, &hoff, &fb))
        return -1;
    if (self->have_views) {
        PyErr_SetString(PyExc_RuntimeError, "ZsFast: already initialized");
        return -1;
    }
    Py_buffer *vs[7] = {&self->vC, &self->vF, &self->vH, &self->vZ, &self->vP, &self->vS,
                        &self->vA};
    PyObject *os_[7] = {oC, oF, oH, oZ, oP, oS, oA};
    for (int i = 0; i < 7; i++) {
        if (get_buffer(os_[i], vs[i], 1, "ZsFast: state array") < 0) {
            while (i--)
                PyBuffer_Release(vs[i]);
            return -1;
        }
    }
    self->have_views = 1;
    self->C = self->vC.buf;
    self->F = self->vF.buf;
    self->H = self->vH.buf;
    self->Z = self->vZ.buf;
    self->P = self->vP.buf;
    self->S = self->vS.buf;
    self->A = self->vA.buf;
    self->hcap = hcap;
    self->hlimit = 0;
    self->s_hfree = s_hfree;
    self->s_hcount = s_hcount;
    self->state_fd = fd;
    self->h_offset = hoff;
    if (self->vH.len < hcap * H_WORDS * 4 || self->vC.len < 256 * C_WORDS * 8
            || self->vF.len < 256 * F_WORDS * 8) {
        PyErr_SetString(PyExc_ValueError, "ZsFast: a state array is smaller than its capacity");
        return -1;
    }
    Py_buffer cb;
    if (get_buffer(cfor, &cb, 0, "ZsFast: class_for") < 0)
        return -1;
    if (cb.len != SWAPD_PAGE_SIZE + 1) {
        PyBuffer_Release(&cb);
        PyErr_SetString(PyExc_ValueError, "ZsFast: class_for must have 4097 entries");
        return -1;
    }
    memcpy(self->class_for, cb.buf, SWAPD_PAGE_SIZE + 1);
    PyBuffer_Release(&cb);
    if (!PyList_Check(geom) || PyList_GET_SIZE(geom) != 256 || !PyList_Check(locks)
            || PyList_GET_SIZE(locks) != 256 || !PyObject_TypeCheck(meta, &MutexType)) {
        PyErr_SetString(PyExc_TypeError, "ZsFast: geometry and locks must be lists of 256, "
                        "meta a Mutex");
        return -1;
    }
    for (int i = 0; i < 256; i++) {
        PyObject *gi = PyList_GET_ITEM(geom, i), *li = PyList_GET_ITEM(locks, i);
        struct zs_class *k = &self->cls[i];
        memset(k, 0, sizeof(*k));
        if (gi == Py_None)
            continue;
        if (!PyArg_ParseTuple(gi, "iiiii", &k->size, &k->ppz, &k->opz, &k->huge, &k->hdr))
            return -1;
        if (!PyObject_TypeCheck(li, &MutexType)) {
            PyErr_SetString(PyExc_TypeError, "ZsFast: a class lock is not a Mutex");
            return -1;
        }
        k->lock = (MutexObject *)li;
        k->present = 1;
    }
    for (int s = 1; s <= SWAPD_PAGE_SIZE; s++)
        if (!self->cls[self->class_for[s]].present) {
            PyErr_Format(PyExc_ValueError, "ZsFast: size %d maps to no class", s);
            return -1;
        }
    if (!PyArg_ParseTuple(fb, "OOOO", &self->py_malloc, &self->py_free, &self->py_read,
                          &self->py_write))
        return -1;
    Py_INCREF(self->py_malloc);
    Py_INCREF(self->py_free);
    Py_INCREF(self->py_read);
    Py_INCREF(self->py_write);
    Py_INCREF(meta);
    self->meta = (MutexObject *)meta;
    Py_INCREF(locks);
    self->locks = locks;
    return 0;
}

#define ZS_READY(self) do { if (!(self)->have_views) { \
    PyErr_SetString(PyExc_ValueError, "ZsFast: released"); return NULL; } } while (0)

static PyObject *ZsFast_malloc(ZsFastObject *self, PyObject *arg)
{
    ZS_READY(self);
    if (PyLong_CheckExact(arg)) {
        long size = PyLong_AsLong(arg);
        if (size > 0 && size <= SWAPD_PAGE_SIZE) {
            int ci = self->class_for[size];
            MutexObject *m = self->cls[ci].lock;
            uint64_t h;
            if (pthread_mutex_trylock(&m->mu) == 0) {
                m->acquires++;
                m->locked = 1;
            } else {
                Py_BEGIN_ALLOW_THREADS
                mutex_lock_nogil(m);
                Py_END_ALLOW_THREADS
            }
            h = zs_malloc_locked(self, ci, (int)size);
            mutex_unlock(m);
            if (h)
                return PyLong_FromUnsignedLongLong(h);
        }
        PyErr_Clear();
    }
    return PyObject_CallOneArg(self->py_malloc, arg);
}

static inline MutexObject *lock_gil(MutexObject *m)
{
    if (pthread_mutex_trylock(&m->mu) == 0) {
        m->acquires++;
        m->locked = 1;
    } else {
        Py_BEGIN_ALLOW_THREADS
        mutex_lock_nogil(m);
        Py_END_ALLOW_THREADS
    }
    return m;
}

static PyObject *ZsFast_free(ZsFastObject *self, PyObject *arg)
{
    ZS_READY(self);
    if (PyLong_CheckExact(arg)) {
        uint64_t h = PyLong_AsUnsignedLongLong(arg);
        int ci = PyErr_Occurred() ? -1 : zs_class_of(self, h);
        PyErr_Clear();
        if (ci >= 0) {
            MutexObject *m = lock_gil(self->cls[ci].lock);
            int done = zs_free_locked(self, ci, h);
            mutex_unlock(m);
            if (done)
                Py_RETURN_NONE;
        }
    }
    return PyObject_CallOneArg(self->py_free, arg);
}

static PyObject *ZsFast_read(ZsFastObject *self, PyObject *arg)
{
    ZS_READY(self);
    if (PyLong_CheckExact(arg)) {
        uint64_t h = PyLong_AsUnsignedLongLong(arg);
        int ci = PyErr_Occurred() ? -1 : zs_class_of(self, h);
        PyErr_Clear();
        if (ci >= 0) {
            char tmp[SWAPD_PAGE_SIZE];
            int n = -1;
            MutexObject *m = lock_gil(self->cls[ci].lock);
            uint32_t *rec = zs_record(self, h, ci);
            if (rec != NULL) {
                unsigned char *p1, *p2;
                size_t n1;
                n = zs_parts(self, ci, rec, &p1, &n1, &p2);
                memcpy(tmp, p1, n1);
                if (p2)
                    memcpy(tmp + n1, p2, (size_t)n - n1);
            }
            mutex_unlock(m);
            if (n >= 0)
                return PyBytes_FromStringAndSize(tmp, n);
        }
    }
    return PyObject_CallOneArg(self->py_read, arg);
}

static PyObject *ZsFast_write(ZsFastObject *self, PyObject *args)
{
    PyObject *ho, *data;
    ZS_READY(self);
    if (!PyArg_ParseTuple(args, "OO", &ho, &data))
        return NULL;
    if (PyLong_CheckExact(ho) && PyObject_CheckBuffer(data)) {
        uint64_t h = PyLong_AsUnsignedLongLong(ho);
        int ci = PyErr_Occurred() ? -1 : zs_class_of(self, h);
        PyErr_Clear();
        Py_buffer v;
        if (ci >= 0 && PyObject_GetBuffer(data, &v, PyBUF_C_CONTIGUOUS) == 0) {
            int done = 0;
            MutexObject *m = lock_gil(self->cls[ci].lock);
            uint32_t *rec = zs_record(self, h, ci);
            if (rec != NULL && (rec[1] & SIZE_MASK) == (uint32_t)v.len) {
                unsigned char *p1, *p2;
                size_t n1;
                int n = zs_parts(self, ci, rec, &p1, &n1, &p2);
                memcpy(p1, v.buf, n1);
                if (p2)
                    memcpy(p2, (char *)v.buf + n1, (size_t)n - n1);
                rec[2] = (uint32_t)crc32(0L, v.buf, (uInt)v.len);
                done = 1;
            }
            mutex_unlock(m);
            PyBuffer_Release(&v);
            if (done)
                Py_RETURN_NONE;
        }
        PyErr_Clear();
    }
    return PyObject_CallFunctionObjArgs(self->py_write, ho, data, NULL);
}

PyDoc_STRVAR(store_objects_doc,
"store_objects(src, lens, handles, start=0) -> int\n\n"
"For j = start, start+1, ...: when lens[j] > 0, malloc(lens[j]) and write the bytes at\n"
"src[j*4096:] into the object (its CRC-32 recorded), handles[j] = the handle; lens[j] <= 0\n"
"needs no object (handles[j] = 0).  Stops before the first object the fast path cannot\n"
"allocate (a huge object, a new zspage, growth) and returns its index (len(lens) when all are\n"
"done): the caller allocates that one with the pool's malloc, in order, and calls again.\n"
"lens: int32 items, handles: uint64 items.  The GIL is released; class locks are taken.");

static PyObject *ZsFast_store_objects(ZsFastObject *self, PyObject *args)
{
    PyObject *so, *lo, *ho;
    Py_ssize_t start = 0, n, j;
    Py_buffer src, len, hv;
    ZS_READY(self);
    if (!PyArg_ParseTuple(args, "OOO|n", &so, &lo, &ho, &start))
        return NULL;
    if (get_buffer(so, &src, 0, "store_objects: src") < 0)
        return NULL;
    if (get_buffer(lo, &len, 0, "store_objects: lens") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (get_buffer(ho, &hv, 1, "store_objects: handles") < 0) {
        PyBuffer_Release(&len);
        PyBuffer_Release(&src);
        return NULL;
    }
    n = len.len / (Py_ssize_t)sizeof(int32_t);
    if (start < 0 || hv.len < n * 8 || src.len < n * SWAPD_PAGE_SIZE) {
        PyBuffer_Release(&hv);
        PyBuffer_Release(&len);
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "store_objects: buffers do not match lens");
        return NULL;
    }
    {
        const int32_t *lens = len.buf;
        uint64_t *hs = hv.buf;
        const unsigned char *s = src.buf;
        Py_BEGIN_ALLOW_THREADS
        for (j = start; j < n; j++) {
            int size = lens[j];
            if (size <= 0) {
                hs[j] = 0;
                continue;
            }
            if (size > SWAPD_PAGE_SIZE)
                break;
            int ci = self->class_for[size];
            MutexObject *m = self->cls[ci].lock;
            mutex_lock_nogil(m);
            uint64_t h = zs_malloc_locked(self, ci, size);
            if (h) {
                uint32_t *rec = zs_record(self, h, ci);
                unsigned char *p1, *p2;
                size_t n1;
                const unsigned char *d = s + j * SWAPD_PAGE_SIZE;
                zs_parts(self, ci, rec, &p1, &n1, &p2);
                memcpy(p1, d, n1);
                if (p2)
                    memcpy(p2, d + n1, (size_t)size - n1);
                rec[2] = (uint32_t)crc32(0L, d, (uInt)size);
            }
            mutex_unlock(m);
            if (!h)
                break;
            hs[j] = h;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&hv);
    PyBuffer_Release(&len);
    PyBuffer_Release(&src);
    return PyLong_FromSsize_t(j);
}

PyDoc_STRVAR(decode_objects_doc,
"decode_objects(handles, values, dst, offset=0) -> int\n\n"
"Page j of dst (at offset + j*4096) becomes: when handles[j] is 0, the fill of values[j]; else\n"
"the object's bytes decompressed (lz4), or copied when the object is 4096 bytes.  Returns the\n"
"pages written: stops before the first handle that is not live or object that does not\n"
"decode.  Nothing is freed.  handles, values: uint64 items.  The GIL is released.");

static PyObject *ZsFast_decode_objects(ZsFastObject *self, PyObject *args)
{
    PyObject *ho, *vo, *dso;
    Py_ssize_t offset = 0, n, j;
    Py_buffer hv, vv, dst;
    ZS_READY(self);
    if (!PyArg_ParseTuple(args, "OOO|n", &ho, &vo, &dso, &offset))
        return NULL;
    if (get_buffer(ho, &hv, 0, "decode_objects: handles") < 0)
        return NULL;
    if (get_buffer(vo, &vv, 0, "decode_objects: values") < 0) {
        PyBuffer_Release(&hv);
        return NULL;
    }
    if (get_buffer(dso, &dst, 1, "decode_objects: dst") < 0) {
        PyBuffer_Release(&vv);
        PyBuffer_Release(&hv);
        return NULL;
    }
    n = hv.len / 8;
    if (vv.len < n * 8 || offset < 0 || dst.len < offset + n * SWAPD_PAGE_SIZE) {
        PyBuffer_Release(&dst);
        PyBuffer_Release(&vv);
        PyBuffer_Release(&hv);
        PyErr_SetString(PyExc_ValueError, "decode_objects: buffers do not match handles");
        return NULL;
    }
    {
        const uint64_t *hs = hv.buf, *vals = vv.buf;
        unsigned char *d = (unsigned char *)dst.buf + offset;
        Py_BEGIN_ALLOW_THREADS
        for (j = 0; j < n; j++) {
            unsigned char *page = d + j * SWAPD_PAGE_SIZE;
            uint64_t h = hs[j];
            if (!h) {
                fill_page(page, vals[j]);
                continue;
            }
            int ci = zs_class_of(self, h);
            if (ci < 0)
                break;
            char tmp[SWAPD_PAGE_SIZE];
            int size = -1;
            MutexObject *m = self->cls[ci].lock;
            mutex_lock_nogil(m);
            uint32_t *rec = zs_record(self, h, ci);
            if (rec != NULL) {
                unsigned char *p1, *p2;
                size_t n1;
                size = zs_parts(self, ci, rec, &p1, &n1, &p2);
                memcpy(tmp, p1, n1);
                if (p2)
                    memcpy(tmp + n1, p2, (size_t)size - n1);
            }
            mutex_unlock(m);
            if (size < 0)
                break;
            if (size == SWAPD_PAGE_SIZE) {
                memcpy(page, tmp, SWAPD_PAGE_SIZE);
            } else {
                char out[SWAPD_PAGE_SIZE];
                if (LZ4_decompress_safe(tmp, out, size, SWAPD_PAGE_SIZE) != SWAPD_PAGE_SIZE)
                    break;
                memcpy(page, out, SWAPD_PAGE_SIZE);
            }
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&vv);
    PyBuffer_Release(&hv);
    return PyLong_FromSsize_t(j);
}

PyDoc_STRVAR(free_objects_doc,
"free_objects(handles, start=0) -> int\n\n"
"free() each nonzero handles[j], j = start, ...; returns the index of the first one the fast\n"
"path cannot free (its zspage would empty, a huge object, a handle not live), len when all\n"
"are freed: the caller frees that one with the pool's free and calls again.  The GIL is\n"
"released.");

static PyObject *ZsFast_free_objects(ZsFastObject *self, PyObject *args)
{
    PyObject *ho;
    Py_ssize_t start = 0, n, j;
    Py_buffer hv;
    ZS_READY(self);
    if (!PyArg_ParseTuple(args, "O|n", &ho, &start))
        return NULL;
    if (get_buffer(ho, &hv, 0, "free_objects: handles") < 0)
        return NULL;
    n = hv.len / 8;
    if (start < 0)
        start = n;
    {
        const uint64_t *hs = hv.buf;
        Py_BEGIN_ALLOW_THREADS
        for (j = start; j < n; j++) {
            uint64_t h = hs[j];
            if (!h)
                continue;
            int ci = zs_class_of(self, h);
            if (ci < 0)
                break;
            MutexObject *m = self->cls[ci].lock;
            mutex_lock_nogil(m);
            int done = zs_free_locked(self, ci, h);
            mutex_unlock(m);
            if (!done)
                break;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&hv);
    return PyLong_FromSsize_t(j);
}

static PyMethodDef ZsFast_methods[] = {
    {"malloc", (PyCFunction)ZsFast_malloc, METH_O, "malloc(size) -> handle (ZsPool.malloc)."},
    {"free", (PyCFunction)ZsFast_free, METH_O, "free(handle) -> None (ZsPool.free)."},
    {"read", (PyCFunction)ZsFast_read, METH_O, "read(handle) -> bytes (ZsPool.read)."},
    {"write", (PyCFunction)ZsFast_write, METH_VARARGS,
     "write(handle, data) -> None (ZsPool.write, with the object's CRC-32)."},
    {"store_objects", (PyCFunction)ZsFast_store_objects, METH_VARARGS, store_objects_doc},
    {"decode_objects", (PyCFunction)ZsFast_decode_objects, METH_VARARGS, decode_objects_doc},
    {"free_objects", (PyCFunction)ZsFast_free_objects, METH_VARARGS, free_objects_doc},
    {"release", (PyCFunction)ZsFast_release, METH_NOARGS,
     "release() -> None: drop the views of the state (before the pool closes)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ZsFastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "swapd._native._core.ZsFast",
    .tp_basicsize = sizeof(ZsFastObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "zsmalloc's fast paths over a pool's state region (see swapd/_native/zsmalloc.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ZsFast_init,
    .tp_dealloc = (destructor)ZsFast_dealloc,
    .tp_methods = ZsFast_methods,
};


/* ---------------------------------------------------------------------------------------------
 * Swap-table runs (swapd/layer/table.py: one u64 word per page, u32 prev/next LRU links).
 * The layer's batch operations write or clear the words of a run and link or unlink its entries
 * in one call, exactly as the Python loops of swapd/layer/core.py do, and return the sums the
 * layer adds to its client's counters.  Called with the layer lock held.
 * ------------------------------------------------------------------------------------------- */
#define W_TAG_MASK 0x7ull
#define W_TAG_SAME 1ull
#define W_TAG_TIER0 2ull
#define W_SIDE (1ull << 6)
#define W_WB (1ull << 4)
#define W_CLEAN (1ull << 5)
#define W_LEN_SHIFT 7
#define W_LEN_MASK 0x1FFFull
#define W_KEY_SHIFT 20
#define W_NIL 0u  /* global number 0 is reserved: a link of 0 is "on no list" */

static int table_views(PyObject *wo, PyObject *no, PyObject *po, Py_buffer *w, Py_buffer *n,
                       Py_buffer *p)
{
    if (get_buffer(wo, w, 1, "swap table words") < 0)
        return -1;
    if (get_buffer(no, n, 1, "swap table next") < 0) {
        PyBuffer_Release(w);
        return -1;
    }
    if (get_buffer(po, p, 1, "swap table prev") < 0) {
        PyBuffer_Release(n);
        PyBuffer_Release(w);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(link_run_doc,
"link_run(words, next, prev, sentinel, g0, lens, objs, handles, values, ref, start, stop)\n"
"    -> (objects, same, compr_bytes, incompressible, rejected)\n\n"
"For i in start..stop-1, entry g0+i: objs[i] > 0 -> the word of a compressed-tier object of\n"
"that length with key handles[i] (| ref), linked at the head of list ``sentinel``; objs[i] == 0\n"
"and lens[i] < 0 -> the same-filled word of values[i] (it must fit the word); else a refused\n"
"page (the word stays 0).  Returns the counts the layer adds to its client.");

static PyObject *link_run(PyObject *self, PyObject *args)
{
    PyObject *wo, *no, *po, *lo, *oo, *ho, *vo;
    unsigned long long sentinel, g0, ref;
    Py_ssize_t start, stop;
    Py_buffer w, nx, pv, lv, ov, hv, vv;
    if (!PyArg_ParseTuple(args, "OOOKKOOOOKnn", &wo, &no, &po, &sentinel, &g0, &lo, &oo, &ho,
                          &vo, &ref, &start, &stop))
        return NULL;
    if (table_views(wo, no, po, &w, &nx, &pv) < 0)
        return NULL;
    long long objects = 0, same = 0, bytes = 0, incompressible = 0, rejected = 0;
    int ok = get_buffer(lo, &lv, 0, "link_run: lens") == 0;
    if (ok && get_buffer(oo, &ov, 0, "link_run: objs") < 0) {
        PyBuffer_Release(&lv);
        ok = 0;
    }
    if (ok && get_buffer(ho, &hv, 0, "link_run: handles") < 0) {
        PyBuffer_Release(&ov);
        PyBuffer_Release(&lv);
        ok = 0;
    }
    if (ok && get_buffer(vo, &vv, 0, "link_run: values") < 0) {
        PyBuffer_Release(&hv);
        PyBuffer_Release(&ov);
        PyBuffer_Release(&lv);
        ok = 0;
    }
    if (!ok)
        goto out;
    Py_ssize_t nw = w.len / 8, nl = nx.len / 4;
    if (start < 0 || stop < start || lv.len < stop * 4 || ov.len < stop * 4 || hv.len < stop * 8
            || vv.len < stop * 8 || (Py_ssize_t)(g0 + stop) > nw || (Py_ssize_t)(g0 + stop) > nl
            || (Py_ssize_t)sentinel >= nl || pv.len / 4 != nl) {
        PyErr_SetString(PyExc_ValueError, "link_run: the run does not fit the buffers");
        ok = 0;
    } else {
        uint64_t *words = w.buf;
        uint32_t *next = nx.buf, *prev = pv.buf;
        const int32_t *lens = lv.buf, *objs = ov.buf;
        const uint64_t *hs = hv.buf, *vals = vv.buf;
        uint32_t s = (uint32_t)sentinel;
        for (Py_ssize_t i = start; i < stop; i++) {
            uint32_t g = (uint32_t)(g0 + (uint64_t)i);
            int32_t len = objs[i];
            if (len > 0) {
                words[g] = W_TAG_TIER0 | ((uint64_t)len << W_LEN_SHIFT)
                           | (hs[i] << W_KEY_SHIFT) | ref;
                uint32_t head = next[s];
                next[g] = head;
                prev[g] = s;
                prev[head] = g;
                next[s] = g;
                objects++;
                bytes += len;
                if (len == SWAPD_PAGE_SIZE)
                    incompressible++;
            } else if (lens[i] < 0) {
                uint64_t v = vals[i] & ((1ull << 57) - 1);
                words[g] = W_TAG_SAME | (v << 7);
                same++;
            } else {
                rejected++;
            }
        }
    }
    PyBuffer_Release(&vv);
    PyBuffer_Release(&hv);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&lv);
out:
    PyBuffer_Release(&pv);
    PyBuffer_Release(&nx);
    PyBuffer_Release(&w);
    if (!ok)
        return NULL;
    return Py_BuildValue("(LLLLL)", objects, same, bytes, incompressible, rejected);
}

PyDoc_STRVAR(gather_run_doc,
"gather_run(words, g0, n, handles, values) -> int\n\n"
"For entries g0, g0+1, ...: a compressed-tier word (tag 2, no SIDE/WB/CLEAN) puts its key in\n"
"handles[i] (values[i] = 0); a same-filled word without SIDE/CLEAN puts 0 in handles[i] and its\n"
"64-bit value in values[i].  Stops at the first other word; returns how many it took.");

static PyObject *gather_run(PyObject *self, PyObject *args)
{
    PyObject *wo, *ho, *vo;
    unsigned long long g0;
    Py_ssize_t n, i = 0;
    Py_buffer w, hv, vv;
    if (!PyArg_ParseTuple(args, "OKnOO", &wo, &g0, &n, &ho, &vo))
        return NULL;
    if (get_buffer(wo, &w, 0, "gather_run: words") < 0)
        return NULL;
    if (get_buffer(ho, &hv, 1, "gather_run: handles") < 0) {
        PyBuffer_Release(&w);
        return NULL;
    }
    if (get_buffer(vo, &vv, 1, "gather_run: values") < 0) {
        PyBuffer_Release(&hv);
        PyBuffer_Release(&w);
        return NULL;
    }
    if (n < 0 || (Py_ssize_t)(g0 + n) > w.len / 8 || hv.len < n * 8 || vv.len < n * 8) {
        PyErr_SetString(PyExc_ValueError, "gather_run: the run does not fit the buffers");
        i = -1;
    } else {
        const uint64_t *words = (const uint64_t *)w.buf + g0;
        uint64_t *hs = hv.buf, *vals = vv.buf;
        for (; i < n; i++) {
            uint64_t wd = words[i], tag = wd & W_TAG_MASK;
            if (tag == W_TAG_TIER0 && !(wd & (W_SIDE | W_WB | W_CLEAN))) {
                hs[i] = wd >> W_KEY_SHIFT;
                vals[i] = 0;
            } else if (tag == W_TAG_SAME && !(wd & (W_SIDE | W_CLEAN))) {
                int64_t v = (int64_t)(wd >> 7);
                if (v >> 56)
                    v -= (int64_t)1 << 57;  /* the 57-bit two's-complement value */
                hs[i] = 0;
                vals[i] = (uint64_t)v;
            } else {
                break;
            }
        }
    }
    PyBuffer_Release(&vv);
    PyBuffer_Release(&hv);
    PyBuffer_Release(&w);
    if (i < 0)
        return NULL;
    return PyLong_FromSsize_t(i);
}

PyDoc_STRVAR(unlink_run_doc,
"unlink_run(words, next, prev, g0, k) -> (objects, same, compr_bytes, incompressible)\n\n"
"Entries g0..g0+k-1 (each a word gather_run took) leave their lists and their words become 0.\n"
"Returns the counts the layer takes off its client.");

static PyObject *unlink_run(PyObject *self, PyObject *args)
{
    PyObject *wo, *no, *po;
    unsigned long long g0;
    Py_ssize_t k;
    Py_buffer w, nx, pv;
    long long objects = 0, same = 0, bytes = 0, incompressible = 0;
    if (!PyArg_ParseTuple(args, "OOOKn", &wo, &no, &po, &g0, &k))
        return NULL;
    if (table_views(wo, no, po, &w, &nx, &pv) < 0)
        return NULL;
    int ok = 1;
    if (k < 0 || (Py_ssize_t)(g0 + k) > w.len / 8 || (Py_ssize_t)(g0 + k) > nx.len / 4
            || pv.len != nx.len) {
        PyErr_SetString(PyExc_ValueError, "unlink_run: the run does not fit the buffers");
        ok = 0;
    } else {
        uint64_t *words = w.buf;
        uint32_t *next = nx.buf, *prev = pv.buf;
        for (Py_ssize_t i = 0; i < k; i++) {
            uint32_t g = (uint32_t)(g0 + (uint64_t)i);
            uint64_t wd = words[g];
            if ((wd & W_TAG_MASK) == W_TAG_SAME) {
                same++;
            } else {
                uint64_t len = (wd >> W_LEN_SHIFT) & W_LEN_MASK;
                uint32_t p = prev[g], nn = next[g];
                next[p] = nn;
                prev[nn] = p;
                prev[g] = next[g] = W_NIL;
                objects++;
                bytes += (long long)len;
                if (len == SWAPD_PAGE_SIZE)
                    incompressible++;
            }
            words[g] = 0;
        }
    }
    PyBuffer_Release(&pv);
    PyBuffer_Release(&nx);
    PyBuffer_Release(&w);
    if (!ok)
        return NULL;
    return Py_BuildValue("(LLLL)", objects, same, bytes, incompressible);
}

static PyMethodDef core_methods[] = {
    {"link_run", link_run, METH_VARARGS, link_run_doc},
    {"gather_run", gather_run, METH_VARARGS, gather_run_doc},
    {"unlink_run", unlink_run, METH_VARARGS, unlink_run_doc},
    {"compress_pages", compress_pages, METH_VARARGS, compress_pages_doc},
    {"decode_pages", decode_pages, METH_VARARGS, decode_pages_doc},
    {"lz4_compress", lz4_compress, METH_O, lz4_compress_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "swapd._native._core",
    "The compiled implementation of swapd's hot paths (see swapd/impl.py).", -1, core_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL)
        return NULL;
    if (PyType_Ready(&MutexType) < 0 || PyType_Ready(&ZsFastType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&MutexType);
    Py_INCREF(&ZsFastType);
    if (PyModule_AddObject(m, "Mutex", (PyObject *)&MutexType) < 0
            || PyModule_AddObject(m, "ZsFast", (PyObject *)&ZsFastType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ABI_VERSION", ABI_VERSION) < 0
            || PyModule_AddIntConstant(m, "PAGE_SIZE", SWAPD_PAGE_SIZE) < 0
            || PyModule_AddStringConstant(m, "LZ4_VERSION", LZ4_versionString()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

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
#define ABI_VERSION 1

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

static PyMethodDef core_methods[] = {
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
    if (PyModule_AddIntConstant(m, "ABI_VERSION", ABI_VERSION) < 0
            || PyModule_AddIntConstant(m, "PAGE_SIZE", SWAPD_PAGE_SIZE) < 0
            || PyModule_AddStringConstant(m, "LZ4_VERSION", LZ4_versionString()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

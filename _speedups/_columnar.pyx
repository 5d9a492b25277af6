# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled frame checks and device table for TickBatch (iotcommute.payload._columnar).

The pure twin is `_parse_py` in iotcommute/payload/columnar.py; both return
(device table, layout, offset of the rows, number of rows) or raise the same DecodeError
(message and position), which is also the one payload.decode_batch raises for the frame.
Nothing per tick is allocated: the rows are only read to check device indexes, bool bytes and
the int64 range of positions. The last device table and field table are kept with their bytes;
a frame that repeats them byte for byte (a stream's batches usually do) reuses the parsed
tuple and layout without decoding a name. Tables that differ (a firehose's batches name
changing subsets of a device population) still find their ids in an intern table keyed by the
ids' bytes, so an id seen before costs a hash and a compare, not a decode and an allocation.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from cpython.mem cimport PyMem_Calloc
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.string cimport memcmp, memcpy

import os

from iotcommute.exceptions import DecodeError

cdef extern from *:
    """
    static inline uint16_t icc_ld16(const unsigned char *p) {
        return (uint16_t)((uint16_t)p[0] | ((uint16_t)p[1] << 8));
    }
    static inline uint32_t icc_ld32(const unsigned char *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    static inline uint64_t icc_ld64(const unsigned char *p) {
        return (uint64_t)icc_ld32(p) | ((uint64_t)icc_ld32(p + 4) << 32);
    }
    """
    uint16_t icc_ld16(const unsigned char* p) nogil
    uint32_t icc_ld32(const unsigned char* p) nogil
    uint64_t icc_ld64(const unsigned char* p) nogil

cdef enum:
    C_HEADER = 14
    C_MAX_TICKS = 100000
    C_MAX_DEVICES = 4096
    C_MAX_FIELDS = 255
    ROW_PREFIX = 18

cdef uint8_t[6] TYPE_SIZE
TYPE_SIZE[:] = [0, 8, 8, 4, 1, 4]

# The last tables seen, with the bytes they were parsed from. Replaced, never mutated.
cdef bytes _dev_raw = None
cdef uint32_t _dev_n = 0
cdef tuple _dev_ids = None
cdef bytes _fld_raw = None
cdef uint32_t _fld_n = 0
cdef object _fld_layout = None
cdef object _fld_factory = None
cdef bytes _fld_codes = None


cdef extern from "Python.h":
    void Py_INCREF_raw "Py_INCREF"(PyObject* o)
    void Py_DECREF_raw "Py_DECREF"(PyObject* o)

cdef extern from *:
    """
    /* An id's first 16 bytes as two zero-padded words, and a seeded 64-bit hash of all of
       it (only an index: equality is checked on the bytes). `avail` is how many bytes may
       be read from p (at least len). Word loads, not a byte loop: ids are short and every
       id of a new table is hashed. */
    static inline void icc_words(const unsigned char *p, Py_ssize_t len, Py_ssize_t avail,
                                 uint64_t *w0, uint64_t *w1) {
        uint64_t a = 0, b = 0;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (avail >= 16) {
            memcpy(&a, p, 8);
            memcpy(&b, p + 8, 8);
            if (len < 8) { a &= (((uint64_t)1) << (8 * len)) - 1; b = 0; }
            else if (len == 8) { b = 0; }
            else if (len < 16) { b &= (((uint64_t)1) << (8 * (len - 8))) - 1; }
            *w0 = a; *w1 = b;
            return;
        }
    #endif
        {
            unsigned char tmp[16] = {0};
            memcpy(tmp, p, len < 16 ? (size_t)len : 16);
            memcpy(&a, tmp, 8);
            memcpy(&b, tmp + 8, 8);
        }
        *w0 = a; *w1 = b;
    }
    static inline uint64_t icc_mix(uint64_t h) {
        h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
        h ^= h >> 33;
        return h;
    }
    /* A seeded hash of the id: its first 16 bytes folded by one 64x64->128 multiply of the
       two seeded words (high half xor low half), the rest of a longer id mixed in after.
       Two secret seeds keep either factor from being steered to zero. Without a 128-bit
       type each word goes through the murmur finaliser instead. */
    static inline uint64_t icc_hash(const unsigned char *p, Py_ssize_t len, uint64_t w0,
                                    uint64_t w1, uint64_t seed, uint64_t seed2) {
        uint64_t h;
        Py_ssize_t i;
    #if defined(__SIZEOF_INT128__)
        __uint128_t m = (__uint128_t)(w0 ^ seed) * (__uint128_t)(w1 ^ seed2 ^ (uint64_t)len);
        h = (uint64_t)m ^ (uint64_t)(m >> 64);
    #else
        h = icc_mix(w0 ^ seed) ^ icc_mix(w1 + seed2 + (uint64_t)len);
    #endif
        if (len <= 16) return h;
        for (i = 16; i < len; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
        return icc_mix(h);
    }
    """
    void icc_words(const unsigned char* p, Py_ssize_t n, Py_ssize_t avail,
                   uint64_t* w0, uint64_t* w1) nogil
    uint64_t icc_hash(const unsigned char* p, Py_ssize_t n, uint64_t w0, uint64_t w1,
                      uint64_t seed, uint64_t seed2) nogil


cdef enum:
    ID_SLOTS = 16384  # power of two, > 2 * (ID_FILL + C_MAX_DEVICES): load stays below 1/2
    ID_FILL = 4096    # emptied before a table when it holds more


# The intern table: device ids by their UTF-8 bytes. `stamp` is the number of the table that
# last named the id, which finds a repeated id within one table. An id's first 16 bytes are
# kept in the slot (w0, w1), so a short id is compared without leaving the table; longer ids
# also compare the rest against `b`. Used only by one parse at a time (`_ids_busy`): a parse
# that starts while another is inside the table (a finalizer or another thread getting the
# GIL during an allocation) takes the plain path instead.
#
# The run over a table's known ids is one C loop (icc_ids_run: no Python API but a refcount
# and a tuple store per id); it hands back to _read_ids at a new id or a fault, which raise,
# allocate and insert as Python code may.
cdef extern from *:
    """
    typedef struct {
        uint64_t h, w0, w1;
        PyObject *s;      /* owned str, NULL when empty */
        PyObject *b;      /* owned bytes: the id's UTF-8, for the compare past 16 bytes */
        uint32_t size, stamp;
    } icc_slot;
    enum { ICC_DONE = 0, ICC_TRUNCATED = 1, ICC_EMPTY = 2, ICC_REPEAT = 3, ICC_NEW = 4 };
    /* Ids *ip.. of the table whose id *ip starts (its length byte) at *at: each one found is
       stamped and stored in out. Stops at the end (ICC_DONE), at a fault (its code), or at an
       id not in the table (ICC_NEW: its empty slot, hash and words in k, h, w0, w1). On
       return *ip and *at name the id stopped at. */
    static int icc_ids_run(const unsigned char *p, Py_ssize_t n, Py_ssize_t *at,
                           Py_ssize_t *ip, Py_ssize_t n_dev, icc_slot *ids, Py_ssize_t mask,
                           uint32_t epoch, uint64_t seed, uint64_t seed2, PyObject *out,
                           Py_ssize_t *k_out, uint64_t *h_out, uint64_t *w0_out,
                           uint64_t *w1_out) {
        Py_ssize_t off = *at, i = *ip, ln, k;
        uint64_t h, w0, w1;
        icc_slot *slot;
        int why = ICC_DONE;
        for (; i < n_dev; i++) {
            if (off >= n) { why = ICC_TRUNCATED; break; }
            ln = p[off];
            if (ln == 0) { why = ICC_EMPTY; break; }
            if (off + 1 + ln > n) { why = ICC_TRUNCATED; break; }
            icc_words(p + off + 1, ln, n - off - 1, &w0, &w1);
            h = icc_hash(p + off + 1, ln, w0, w1, seed, seed2);
            k = (Py_ssize_t)(h & (uint64_t)mask);
            for (;;) {
                slot = &ids[k];
                if (slot->s == NULL) {
                    *k_out = k; *h_out = h; *w0_out = w0; *w1_out = w1;
                    why = ICC_NEW;
                    break;
                }
                if (slot->h == h && slot->size == (uint32_t)ln && slot->w0 == w0 &&
                    slot->w1 == w1 && (ln <= 16 || memcmp(PyBytes_AS_STRING(slot->b) + 16,
                                                          p + off + 1 + 16,
                                                          (size_t)(ln - 16)) == 0))
                    break;
                k = (k + 1) & mask;
            }
            if (why == ICC_NEW) break;
            if (slot->stamp == epoch) { why = ICC_REPEAT; break; }
            slot->stamp = epoch;
            Py_INCREF(slot->s);
            PyTuple_SET_ITEM(out, i, slot->s);
            off += 1 + ln;
        }
        *at = off;
        *ip = i;
        return why;
    }
    """
    ctypedef struct _IdSlot "icc_slot":
        uint64_t h
        uint64_t w0
        uint64_t w1
        PyObject* s
        PyObject* b
        uint32_t size
        uint32_t stamp
    enum:
        ICC_DONE
        ICC_TRUNCATED
        ICC_EMPTY
        ICC_REPEAT
        ICC_NEW
    int icc_ids_run(const unsigned char* p, Py_ssize_t n, Py_ssize_t* at, Py_ssize_t* ip,
                    Py_ssize_t n_dev, _IdSlot* ids, Py_ssize_t mask, uint32_t epoch,
                    uint64_t seed, uint64_t seed2, object out, Py_ssize_t* k_out,
                    uint64_t* h_out, uint64_t* w0_out, uint64_t* w1_out)

cdef _IdSlot* _ids = <_IdSlot*>PyMem_Calloc(ID_SLOTS, sizeof(_IdSlot))
if _ids == NULL:
    raise MemoryError()
cdef Py_ssize_t _ids_count = 0
cdef uint32_t _ids_epoch = 0
cdef bint _ids_busy = False
cdef uint64_t _ids_seed = int.from_bytes(os.urandom(8), "little")
cdef uint64_t _ids_seed2 = int.from_bytes(os.urandom(8), "little")


cdef void _ids_clear():
    global _ids_count
    cdef Py_ssize_t i
    for i in range(ID_SLOTS):
        if _ids[i].s != NULL:
            Py_DECREF_raw(_ids[i].s)
            Py_DECREF_raw(_ids[i].b)
        _ids[i].s = NULL
        _ids[i].b = NULL
        _ids[i].stamp = 0
    _ids_count = 0


cdef tuple _read_ids(const unsigned char* p, Py_ssize_t* at, Py_ssize_t n, uint32_t n_dev):
    """The device table through the intern table: the same checks, order and messages as
    _read_name plus the repeat check, ids shared with earlier tables. Advances at[0]."""
    global _ids_count, _ids_epoch
    cdef Py_ssize_t i = 0, ln, k
    cdef uint64_t h, w0, w1
    cdef _IdSlot* slot
    cdef tuple out = PyTuple_New(n_dev)  # items NULL until set: tupledealloc skips them
    cdef object s
    cdef int why
    if _ids_count + n_dev > ID_FILL:
        _ids_clear()
    _ids_epoch += 1
    if _ids_epoch == 0:  # wrapped: old stamps could look current
        _ids_clear()
        _ids_epoch = 1
    while True:
        why = icc_ids_run(p, n, at, &i, n_dev, _ids, ID_SLOTS - 1, _ids_epoch, _ids_seed,
                          _ids_seed2, out, &k, &h, &w0, &w1)
        if why == ICC_DONE:
            return out
        if why == ICC_TRUNCATED:
            raise DecodeError("tick batch truncated in the device table")
        if why == ICC_EMPTY:
            raise DecodeError(f"device {i} has an empty name")
        if why == ICC_REPEAT:
            raise DecodeError(f"device {i} repeats an earlier device id")
        # ICC_NEW: decode and insert it (allocations: Python may run here)
        ln = p[at[0]]
        try:
            s = PyUnicode_DecodeUTF8(<const char*>p + at[0] + 1, ln, "strict")
        except UnicodeDecodeError:
            raise DecodeError(f"device {i} is not valid UTF-8") from None
        raw = PyBytes_FromStringAndSize(<const char*>p + at[0] + 1, ln)
        slot = &_ids[k]
        Py_INCREF_raw(<PyObject*>s)
        Py_INCREF_raw(<PyObject*>raw)
        slot.s = <PyObject*>s
        slot.b = <PyObject*>raw
        slot.w0 = w0
        slot.w1 = w1
        slot.size = <uint32_t>ln
        slot.h = h
        slot.stamp = _ids_epoch
        _ids_count += 1
        Py_INCREF_raw(<PyObject*>s)
        PyTuple_SET_ITEM(out, i, s)
        at[0] += 1 + ln
        i += 1


cdef inline Py_ssize_t _read_name(const unsigned char* p, Py_ssize_t off, Py_ssize_t n,
                                  str what, Py_ssize_t i, list out) except -1:
    """Append one length-prefixed UTF-8 name to `out`; return the offset after it."""
    cdef Py_ssize_t ln
    if off >= n:
        raise DecodeError(f"tick batch truncated in the {what} table")
    ln = p[off]
    off += 1
    if ln == 0:
        raise DecodeError(f"{what} {i} has an empty name")
    if off + ln > n:
        raise DecodeError(f"tick batch truncated in the {what} table")
    try:
        s = PyUnicode_DecodeUTF8(<const char*>p + off, ln, "strict")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} {i} is not valid UTF-8") from None
    out.append(s)
    return off + ln


cdef inline bint _repeats(const unsigned char* p, Py_ssize_t off, Py_ssize_t n, bytes raw):
    cdef Py_ssize_t ln
    if raw is None:
        return False
    ln = PyBytes_GET_SIZE(raw)
    return off + ln <= n and memcmp(p + off, PyBytes_AS_STRING(raw), ln) == 0


cdef inline tuple _parsed(tuple devices, object layout, const unsigned char* p, Py_ssize_t off,
                          Py_ssize_t n_ticks, Py_ssize_t row_size):
    if n_ticks == 0:
        return (devices, layout, off, 0, None, None)
    return (devices, layout, off, n_ticks, icc_ld64(p + off + 2),
            icc_ld64(p + off + (n_ticks - 1) * row_size + 2))


def parse_columns(bytes buf not None, make_layout):
    """Checks 1-9 of docs/protocol-binary.md and the int64 position check; returns
    (device table, make_layout(type codes, field names), offset of the rows, rows, first
    position, last position); the positions are None when there are no rows."""
    global _dev_raw, _dev_n, _dev_ids, _fld_raw, _fld_n, _fld_layout, _fld_factory, _fld_codes
    global _ids_busy
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t off, start, i, j, row_size, n_bool = 0
    cdef uint32_t n_dev, n_fld, n_ticks
    cdef uint8_t code
    cdef Py_ssize_t[C_MAX_FIELDS] bool_off
    cdef Py_ssize_t[C_MAX_FIELDS] bool_idx
    if n < C_HEADER:
        raise DecodeError(f"tick batch truncated: {n} bytes, the header needs {C_HEADER}")
    if memcmp(p, b"\xc1TKB", 4) != 0:
        raise DecodeError("not a tick batch (bad magic)")
    if p[4] != 1:
        raise DecodeError(f"unsupported tick batch version {p[4]}")
    if p[5] != 0:
        raise DecodeError(f"reserved tick batch flags set: 0x{p[5]:02x}")
    n_dev = icc_ld16(p + 6)
    n_fld = icc_ld16(p + 8)
    n_ticks = icc_ld32(p + 10)
    if n_dev > C_MAX_DEVICES:
        raise DecodeError(f"tick batch declares {n_dev} devices, the limit is {C_MAX_DEVICES}")
    if n_fld > C_MAX_FIELDS:
        raise DecodeError(f"tick batch declares {n_fld} fields, the limit is {C_MAX_FIELDS}")
    if n_ticks > C_MAX_TICKS:
        raise DecodeError(f"tick batch declares {n_ticks} ticks, the limit is {C_MAX_TICKS}")

    # device table
    off = C_HEADER
    cdef tuple devices
    cdef list ids
    cdef set seen
    if n_dev == _dev_n and _repeats(p, off, n, _dev_raw):
        devices = _dev_ids
        off += PyBytes_GET_SIZE(_dev_raw)
    else:
        if not _ids_busy:
            _ids_busy = True
            try:
                devices = _read_ids(p, &off, n, n_dev)
            finally:
                _ids_busy = False
        else:
            ids = []
            seen = set()
            for i in range(n_dev):
                off = _read_name(p, off, n, "device", i, ids)
                s = ids[i]
                if s in seen:
                    raise DecodeError(f"device {i} repeats an earlier device id")
                seen.add(s)
            devices = tuple(ids)
        _dev_raw = PyBytes_FromStringAndSize(<const char*>p + C_HEADER, off - C_HEADER)
        _dev_n = n_dev
        _dev_ids = devices

    # field table
    cdef list names
    cdef bytearray codes
    start = off
    if n_fld == _fld_n and make_layout is _fld_factory and _repeats(p, off, n, _fld_raw):
        layout = _fld_layout
        off += PyBytes_GET_SIZE(_fld_raw)
        codes_b = _fld_codes
    else:
        names = []
        codes = bytearray()
        for j in range(n_fld):
            if off >= n:
                raise DecodeError("tick batch truncated in the field table")
            code = p[off]
            if code < 1 or code > 5:
                raise DecodeError(f"field {j} has unknown type code {code}")
            off = _read_name(p, off + 1, n, "field", j, names)
            if names[j] in names[:j]:
                raise DecodeError(f"field {j} repeats an earlier field name")
            codes.append(code)
        codes_b = bytes(codes)
        layout = None
    row_size = ROW_PREFIX
    for j in range(n_fld):
        code = (<const unsigned char*>PyBytes_AS_STRING(codes_b))[j]
        if code == 4:
            bool_off[n_bool] = row_size
            bool_idx[n_bool] = j
            n_bool += 1
        row_size += TYPE_SIZE[code]
    cdef Py_ssize_t expected = <Py_ssize_t>n_ticks * row_size
    if n - off != expected:
        raise DecodeError(
            f"tick batch rows need {expected} bytes for {n_ticks} ticks, {n - off} present"
        )
    if layout is None:
        layout = make_layout(codes_b, tuple(names))
        _fld_raw = PyBytes_FromStringAndSize(<const char*>p + start, off - start)
        _fld_n = n_fld
        _fld_layout = layout
        _fld_factory = make_layout
        _fld_codes = codes_b

    # rows: device index, then each bool byte; positions from 2**63 after all of them.
    # Branch-free passes first (the highest index and the OR of the positions' top bytes,
    # then per bool field the OR of its bytes); only a frame that fails them is walked again
    # for its first fault.
    cdef const unsigned char* r = p + off
    cdef Py_ssize_t big = -1
    cdef uint16_t idx
    cdef uint8_t b
    cdef uint16_t top = 0
    cdef uint8_t bools = 0, high = 0
    for i in range(n_ticks):
        idx = icc_ld16(r)
        top = idx if idx > top else top
        high |= r[9]
        r += row_size
    for j in range(n_bool):
        r = p + off + bool_off[j]
        for i in range(n_ticks):
            bools |= r[0]
            r += row_size
    if (n_ticks == 0 or top < n_dev) and bools <= 1 and not (high & 0x80):
        return _parsed(devices, layout, p, off, n_ticks, row_size)
    r = p + off
    for i in range(n_ticks):
        idx = icc_ld16(r)
        if idx >= n_dev:
            pos = icc_ld64(r + 2)
            raise DecodeError(
                f"tick at position {pos} refers to device {idx}, the table has {n_dev}",
                position=pos,
            )
        for j in range(n_bool):
            b = r[bool_off[j]]
            if b > 1:
                pos = icc_ld64(r + 2)
                raise DecodeError(
                    f"tick at position {pos}: bool field {bool_idx[j]} holds {b}", position=pos
                )
        if big < 0 and (r[9] & 0x80):
            big = i
        r += row_size
    if big >= 0:
        pos = icc_ld64(p + off + big * row_size + 2)
        raise DecodeError(
            f"tick at position {pos}: positions from 2**63 do not fit the int64 position column",
            position=pos,
        )
    return _parsed(devices, layout, p, off, n_ticks, row_size)


cdef object _out(object alloc, Py_ssize_t size, unsigned char** ptr):
    """A writable output of `size` bytes: alloc(size) (any writable buffer, e.g. an Arrow
    buffer from its memory pool, which reuses memory from roll to roll instead of faulting
    fresh pages in), or an uninitialised bytearray."""
    cdef Py_buffer view
    if alloc is None:
        out = PyByteArray_FromStringAndSize(NULL, size)
        ptr[0] = <unsigned char*>PyByteArray_AS_STRING(out)
        return out
    out = alloc(size)
    PyObject_GetBuffer(out, &view, PyBUF_WRITABLE)
    try:
        if view.len < size:
            raise ValueError("alloc returned a buffer smaller than asked for")
        ptr[0] = <unsigned char*>view.buf  # the object owns the memory; it outlives the view
    finally:
        PyBuffer_Release(&view)
    return out


def gather_rows(list batches, bytes codes not None, alloc=None):
    """The rows of consecutive TickBatches of one field table as columns, in one pass over
    the wire rows (a sink's roll: one copy, no strided pass per column). Returns
    (devices, device codes, columns): `devices` the distinct ids in order of first use,
    `device codes` int32 little-endian indexes into it, and one little-endian bytearray per
    column after the device: position, ts, then each field (bytearrays, or what `alloc(size)`
    returns). The twin is columnar._gather_py."""
    cdef Py_ssize_t n_fld = PyBytes_GET_SIZE(codes), nb = len(batches), total = 0
    cdef Py_ssize_t i, k, r, n, off, row_size, at = 0, nd = 0, n_cols = n_fld + 2
    cdef Py_ssize_t[C_MAX_FIELDS + 2] width
    cdef Py_ssize_t[C_MAX_FIELDS + 2] src
    cdef unsigned char* dst[C_MAX_FIELDS + 2]
    cdef uint32_t[C_MAX_DEVICES] lut
    cdef const unsigned char* kinds = <const unsigned char*>PyBytes_AS_STRING(codes)
    if n_fld > C_MAX_FIELDS:
        raise ValueError("too many fields")
    width[0] = 8
    src[0] = 2
    width[1] = 8
    src[1] = 10
    row_size = ROW_PREFIX
    for k in range(n_fld):
        if kinds[k] < 1 or kinds[k] > 5:
            raise ValueError("unknown field type code")
        width[k + 2] = TYPE_SIZE[kinds[k]]
        src[k + 2] = row_size
        row_size += TYPE_SIZE[kinds[k]]
    for i in range(nb):
        b = batches[i]
        if b._layout.codes != codes:
            raise ValueError("gather_rows needs batches of one field table")
        total += <Py_ssize_t>b._n
    # uninitialised: every byte is written below
    cdef unsigned char* cw
    out_codes = _out(alloc, total * 4, &cw)
    cdef list cols = []
    for k in range(n_cols):
        cols.append(_out(alloc, total * width[k], &dst[k]))
    cdef list uniq = []
    cdef dict index = {}
    cdef object last = None
    cdef tuple devs
    cdef bytes buf
    cdef const unsigned char* row
    cdef uint32_t code
    cdef uint16_t idx
    for i in range(nb):
        b = batches[i]
        buf = b._buf
        off = b._off
        n = b._n
        if off < 0 or n < 0 or off + n * row_size > PyBytes_GET_SIZE(buf):
            raise ValueError("a TickBatch's rows lie outside its buffer")
        devs = b._devices
        if devs is not last:
            nd = len(devs)
            if nd > C_MAX_DEVICES:
                raise ValueError("too many devices")
            for k in range(nd):
                d = devs[k]
                v = index.get(d)
                if v is None:
                    v = len(uniq)
                    index[d] = v
                    uniq.append(d)
                lut[k] = <uint32_t>v
            last = devs
        row = <const unsigned char*>PyBytes_AS_STRING(buf) + off
        for r in range(n):
            idx = icc_ld16(row)
            if idx >= nd:
                raise ValueError("a TickBatch row names a device outside its table")
            code = lut[idx]
            cw[0] = <unsigned char>code
            cw[1] = <unsigned char>(code >> 8)
            cw[2] = <unsigned char>(code >> 16)
            cw[3] = <unsigned char>(code >> 24)
            cw += 4
            for k in range(n_cols):
                if width[k] == 8:
                    memcpy(dst[k] + at * 8, row + src[k], 8)
                elif width[k] == 4:
                    memcpy(dst[k] + at * 4, row + src[k], 4)
                else:
                    dst[k][at] = row[src[k]]
            at += 1
            row += row_size
    return uniq, out_codes, cols

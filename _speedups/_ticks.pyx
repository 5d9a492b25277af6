# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled tick-batch codec (iotcommute.payload._ticks); the pure twin is iotcommute/payload/_ticks_py.py.

The format is docs/protocol-binary.md. Every check runs in the same order and raises the
same message as the twin (tests/payload/test_ticks_differential.py compares them).

Decode (100-tick batches, Python 3.11, this 2-core box), decode + free: 5-field ticks ~5 M
ticks/s; the benchmark's 11-field ticks from 100 devices per batch 4.3 M/s, up from 2.3 M/s.
Dict construction is the floor, so the wins are doing fewer dict operations and allocations:
- each row starts from PyDict_Copy of the previous row *of the same device* (the first row
  from a template with its keys laid out) and stores only the values whose bytes changed, so a
  repeated reading is the earlier row's immutable object; the copies are distinct dicts;
- a store into such a fresh copy writes the entry's value slot directly (no lookup): the keys
  object's layout is private, so it is mirrored for CPython 3.11-3.14, proven at import
  (_direct_stores_work), and re-checked per dict and per key; anywhere else every store goes
  through _PyDict_SetItem_KnownHash / PyDict_SetItem with the interned keys' cached hashes;
- device ids are interned across batches, keyed by their bytes (no decoding, hashing or
  allocation for an id seen before), and the field table and the device table of the last
  batch are reused when the next batch repeats their bytes.
GC behaviour is CPython's own: tick dicts are tracked (they hold a dict), data dicts holding
only numbers stay untracked, exactly as PyDict_SetItem would leave them (tests compare with
the twin). Tick dicts are never untracked: that could leak cycles a user makes through them.

Encode: ~7 M ticks/s, up from ~1.5 M/s: exact dict/int/float/bool inputs take C fast paths
(the Mapping ABC isinstance check dominated), the row heads go into a C array and the values
into one flat list instead of a tuple and a list per tick. Other Mappings and subclasses take
the generic path, so results and errors are the twin's.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.list cimport PyList_New
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.unicode cimport (
    PyUnicode_DATA,
    PyUnicode_DecodeUTF8,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_READ,
)
from libc.math cimport isfinite, isinf
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

import math
import os
from collections.abc import Mapping

from iotcommute.exceptions import DecodeError, InputError
from iotcommute.payload._ticks_py import loads_json as _json_twin

cdef extern from *:
    """
    /* Portable little-endian loads/stores; compilers turn these into single moves on LE. */
    static inline uint16_t ict_ld16(const unsigned char *p) {
        return (uint16_t)((uint16_t)p[0] | ((uint16_t)p[1] << 8));
    }
    static inline uint32_t ict_ld32(const unsigned char *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    static inline uint64_t ict_ld64(const unsigned char *p) {
        return (uint64_t)ict_ld32(p) | ((uint64_t)ict_ld32(p + 4) << 32);
    }
    static inline double ict_ldf64(const unsigned char *p) {
        uint64_t u = ict_ld64(p); double d; memcpy(&d, &u, 8); return d;
    }
    static inline double ict_ldf32(const unsigned char *p) {
        uint32_t u = ict_ld32(p); float f; memcpy(&f, &u, 4); return (double)f;
    }
    static inline void ict_st16(unsigned char *p, uint16_t v) {
        p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    }
    static inline void ict_st32(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
        p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
    }
    static inline void ict_st64(unsigned char *p, uint64_t v) {
        ict_st32(p, (uint32_t)v); ict_st32(p + 4, (uint32_t)(v >> 32));
    }
    static inline void ict_stf64(unsigned char *p, double d) {
        uint64_t u; memcpy(&u, &d, 8); ict_st64(p, u);
    }
    static inline void ict_stf32(unsigned char *p, float f) {
        uint32_t u; memcpy(&u, &f, 4); ict_st32(p, u);
    }
    /* d[k] = v for an exact dict d and an exact str k whose hash h is already known,
       consuming the reference to v; v == NULL means its constructor failed.
       _PyDict_SetItem_KnownHash (CPython's own C API, Include/cpython/dictobject.h) skips
       re-reading the hash; where it is gone, PyDict_SetItem does the same job. */
    static inline int ict_set_steal(PyObject *d, PyObject *k, PyObject *v, Py_hash_t h) {
        int rc;
        if (v == NULL) return -1;
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000 && !defined(PYPY_VERSION)
        rc = _PyDict_SetItem_KnownHash(d, k, v, h);
    #else
        (void)h;
        rc = PyDict_SetItem(d, k, v);
    #endif
        Py_DECREF(v);
        return rc;
    }
    static inline PyObject *ict_newref(PyObject *o) { Py_INCREF(o); return o; }
    /* For a raw C call that returned NULL with an exception set: -1 makes Cython raise it. */
    static inline int ict_raise_pending(void) { return -1; }
    """
    uint16_t ict_ld16(const unsigned char *p) nogil
    uint32_t ict_ld32(const unsigned char *p) nogil
    uint64_t ict_ld64(const unsigned char *p) nogil
    double ict_ldf64(const unsigned char *p) nogil
    double ict_ldf32(const unsigned char *p) nogil
    void ict_st16(unsigned char *p, uint16_t v) nogil
    void ict_st32(unsigned char *p, uint32_t v) nogil
    void ict_st64(unsigned char *p, uint64_t v) nogil
    void ict_stf64(unsigned char *p, double d) nogil
    void ict_stf32(unsigned char *p, float f) nogil
    int ict_set_steal(PyObject* d, PyObject* k, PyObject* v, Py_hash_t h) except -1
    PyObject* ict_newref(PyObject* o)
    int ict_raise_pending() except -1

cdef extern from "Python.h":
    # Raw signatures: the row loop manages references itself (no Cython temporaries).
    PyObject* PyDict_Copy_raw "PyDict_Copy"(PyObject* d) except NULL
    # No `except NULL`: a NULL result goes straight into ict_set_steal, which reports it.
    PyObject* PyFloat_FromDouble_raw "PyFloat_FromDouble"(double v)
    PyObject* PyLong_FromLongLong_raw "PyLong_FromLongLong"(long long v)
    PyObject* PyLong_FromUnsignedLongLong_raw "PyLong_FromUnsignedLongLong"(unsigned long long v)
    void PyList_SET_ITEM_raw "PyList_SET_ITEM"(object l, Py_ssize_t i, PyObject* o)
    PyObject* Py_True_raw "Py_True"
    PyObject* Py_False_raw "Py_False"
    void Py_INCREF_raw "Py_INCREF"(PyObject* o)
    PyObject* PyDict_GetItemWithError_raw "PyDict_GetItemWithError"(object d, object k)
    double PyFloat_AS_DOUBLE_raw "PyFloat_AS_DOUBLE"(PyObject* o)
    bint PyFloat_CheckExact_raw "PyFloat_CheckExact"(PyObject* o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    PyObject* PyErr_Occurred()
    PyObject* PyList_GET_ITEM_raw "PyList_GET_ITEM"(object l, Py_ssize_t i)
    void Py_XDECREF_raw "Py_XDECREF"(PyObject* o)

MAGIC = b"\xc1TKB"
VERSION = 1
HEADER_SIZE = 14
MAX_TICKS = 100_000
MAX_DEVICES = 4096
MAX_FIELDS = 255
FIELD_TYPES = {"f64": 1, "i64": 2, "i32": 3, "bool": 4, "f32": 5}

cdef enum:
    C_HEADER = 14
    C_MAX_TICKS = 100000
    C_MAX_DEVICES = 4096
    C_MAX_FIELDS = 255
    ROW_PREFIX = 18  # u16 device index + u64 position + f64 ts

cdef uint8_t[6] TYPE_SIZE
TYPE_SIZE[:] = [0, 8, 8, 4, 1, 4]
_TYPE_NAME = {1: "f64", 2: "i64", 3: "i32", 4: "bool", 5: "f32"}

# Shared key objects: interned once, hashed once, reused by every tick dict.
cdef str K_TYPE = "type"
cdef str K_DEVICE = "device"
cdef str K_POSITION = "position"
cdef str K_TS = "ts"
cdef str K_DATA = "data"
cdef str V_TICK = "tick"


def is_batch(buf):
    """True if `buf` starts with the tick-batch magic (any version)."""
    return bytes(buf[:4]) == MAGIC


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


cdef extern from *:
    """
    /* Direct value stores into a fresh dict copy. PyDictObject's fields are public
       (Include/cpython/dictobject.h); the keys object is private, so its layout (unchanged
       from 3.11 to 3.14 in GIL builds) is mirrored here, used only where those versions
       built us, and proven at import by _direct_stores_work() before it is ever relied on.
       Each use re-checks the dict's shape and each entry's key, so a dict that is not the
       expected clean str-keyed combined table takes the PyDict_SetItem path instead. */
    #if !defined(PYPY_VERSION) && !defined(Py_GIL_DISABLED) && \
        PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030F0000
    typedef struct {
        Py_ssize_t refcnt;
        uint8_t log2_size;
        uint8_t log2_index_bytes;
        uint8_t kind;            /* DICT_KEYS_UNICODE == 1 */
        uint32_t version;
        Py_ssize_t usable;
        Py_ssize_t nentries;
        char indices[];
    } ict_keys;
    typedef struct { PyObject *key; PyObject *value; } ict_entry;
    static inline ict_entry *ict_entries(PyObject *d, Py_ssize_t n) {
        PyDictObject *o = (PyDictObject *)d;
        ict_keys *k = (ict_keys *)o->ma_keys;
        /* A combined table owns its keys object alone (refcnt 1): a store can never reach
           another dict. The size checks keep a misread layout from computing a wild
           address. */
        if (n <= 0 || o->ma_values != NULL || o->ma_used != n || k->refcnt != 1 ||
                k->kind != 1 || k->nentries != n || k->log2_size < 3 || k->log2_size > 30 ||
                k->log2_index_bytes < k->log2_size || k->log2_index_bytes > k->log2_size + 3 ||
                k->usable < 0 || k->usable + n > ((Py_ssize_t)1 << k->log2_size))
            return NULL;
        return (ict_entry *)(k->indices + ((size_t)1 << k->log2_index_bytes));
    }
    #define ICT_DIRECT_BUILT 1
    #else
    typedef struct { PyObject *key; PyObject *value; } ict_entry;
    static inline ict_entry *ict_entries(PyObject *d, Py_ssize_t n) {
        (void)d; (void)n; return NULL;
    }
    #define ICT_DIRECT_BUILT 0
    #endif
    /* Replace the value of entry e (key k, hash h) of dict d, consuming v: straight into the
       entry when e is that key's live entry, else through the dict API. */
    static inline int ict_put(PyObject *d, ict_entry *e, PyObject *k, PyObject *v, Py_hash_t h) {
        PyObject *old;
        if (v == NULL) return -1;
        if (e != NULL && e->key == k) {
            old = e->value;
            e->value = v;
            Py_XDECREF(old);
            return 0;
        }
        return ict_set_steal(d, k, v, h);
    }
    /* The device cache's hash: 8 bytes per step, seeded per process (a peer cannot aim ids
       at one probe chain without knowing the seed), and mixed so the low bits (the slot)
       depend on every byte. Only a cache index: equality is always checked on the bytes. */
    static inline uint64_t ict_hash_bytes(const unsigned char *p, Py_ssize_t n, uint64_t seed) {
        uint64_t h = seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL), w;
        while (n >= 8) {
            memcpy(&w, p, 8);
            h = (h ^ w) * 0xff51afd7ed558ccdULL;
            h ^= h >> 32;
            p += 8;
            n -= 8;
        }
        w = 0;
        while (n > 0) { n--; w = (w << 8) | p[n]; }
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
        return h;
    }
    /* Equal bytes, for the short ids of the device table (memcmp's call costs more). */
    static inline int ict_same_bytes(const char *a, const unsigned char *b, Py_ssize_t n) {
        Py_ssize_t i;
        if (n > 32) return memcmp(a, b, (size_t)n) == 0;
        for (i = 0; i < n; i++) if ((unsigned char)a[i] != b[i]) return 0;
        return 1;
    }
    """
    ctypedef struct ict_entry:
        PyObject* key
        PyObject* value
    ict_entry* ict_entries(PyObject* d, Py_ssize_t n)
    int ict_put(PyObject* d, ict_entry* e, PyObject* k, PyObject* v, Py_hash_t h) except -1
    uint64_t ict_hash_bytes(const unsigned char* p, Py_ssize_t n, uint64_t seed) nogil
    int ict_same_bytes(const char* a, const unsigned char* b, Py_ssize_t n) nogil
    int ICT_DIRECT_BUILT

cdef extern from "Python.h":
    bint PyObject_GC_IsTracked_raw "PyObject_GC_IsTracked"(PyObject* o)
    void PyObject_GC_Track_raw "PyObject_GC_Track"(PyObject* o)
    const char* PyUnicode_AsUTF8AndSize_raw "PyUnicode_AsUTF8AndSize"(
        PyObject* s, Py_ssize_t* size) except NULL
    void Py_DECREF_raw "Py_DECREF"(PyObject* o)
    PyObject* PyTuple_New_raw "PyTuple_New"(Py_ssize_t n) except NULL
    void PyTuple_SET_ITEM_raw "PyTuple_SET_ITEM"(PyObject* t, Py_ssize_t i, PyObject* o)
    PyObject* PyTuple_GET_ITEM_raw "PyTuple_GET_ITEM"(object t, Py_ssize_t i)
    PyObject* PyTuple_GET_ITEM_ptr "PyTuple_GET_ITEM"(PyObject* t, Py_ssize_t i)


cdef struct _Prev:
    const unsigned char* row  # NULL until the device has a row
    PyObject* tick
    PyObject* data


cdef enum:
    TABLE_CACHE_MAX = 8192   # table bytes worth remembering between batches
    DEV_CACHE_SLOTS = 16384  # power of two, > 2 * (DEV_CACHE_FILL + C_MAX_DEVICES)
    DEV_CACHE_FILL = 4096    # the cache is emptied before a batch when it holds more


# Device ids, interned across batches: a firehose's batches carry changing subsets of a
# device population, so their tables rarely repeat byte for byte, but the ids do. Keyed by
# the id's UTF-8 bytes (no decoding, hashing or allocation on a hit). `stamp` is the number
# of the table that last named the id, which finds a repeated id in one batch. Only the
# device-table pass touches this, and it allocates no GC object, so no other decode (a
# finalizer run by a collection) can interleave with it.
cdef struct _DevSlot:
    uint64_t h
    PyObject* s             # owned str; NULL marks an empty slot
    const char* utf8        # s's own UTF-8 (cached in s), valid while s lives
    Py_ssize_t size
    uint32_t stamp

cdef _DevSlot* _dev_cache = <_DevSlot*>PyMem_Calloc(DEV_CACHE_SLOTS, sizeof(_DevSlot))
if _dev_cache == NULL:
    raise MemoryError()
cdef Py_ssize_t _dev_count = 0
cdef uint32_t _dev_epoch = 0
cdef uint64_t _dev_seed = int.from_bytes(os.urandom(8), "little")


cdef void _dev_cache_clear():
    global _dev_count
    cdef Py_ssize_t i
    for i in range(DEV_CACHE_SLOTS):
        if _dev_cache[i].s != NULL:
            Py_DECREF_raw(_dev_cache[i].s)
        _dev_cache[i].s = NULL
        _dev_cache[i].stamp = 0
    _dev_count = 0


cdef class _Fields:
    """One batch's parsed field table, reused while the next batches repeat its bytes."""
    cdef bytes raw            # the table bytes these were parsed from
    cdef uint32_t n_fld
    cdef Py_ssize_t size      # len(raw)
    cdef Py_ssize_t row_size
    cdef tuple names          # in field order; decode_batch_rows returns it as is
    cdef dict data_tpl        # {name: None, ...} in field order, for the first row's copy
    cdef uint8_t[C_MAX_FIELDS] codes
    cdef Py_hash_t[C_MAX_FIELDS] name_hash


cdef class _Devices:
    """One batch's device ids, reused while the next batches repeat the table's bytes."""
    cdef bytes raw
    cdef uint32_t n_dev
    cdef Py_ssize_t size
    cdef tuple ids


# The last tables seen. Only ever replaced (never mutated), so a decode holding its own
# reference is unaffected by another decode.
cdef _Fields _last_fields = None
cdef _Devices _last_devices = None
cdef dict _TICK_TPL = {K_TYPE: V_TICK, K_DEVICE: None, K_POSITION: None, K_TS: None, K_DATA: None}
cdef Py_hash_t H_DEVICE = hash(K_DEVICE)
cdef Py_hash_t H_POSITION = hash(K_POSITION)
cdef Py_hash_t H_TS = hash(K_TS)
cdef Py_hash_t H_DATA = hash(K_DATA)


def _direct_stores_work():
    """Prove the mirrored dict layout on this interpreter: copies of key templates of
    several sizes expose their entries in key order, and a direct store reads back through
    the dict API exactly as PyDict_SetItem would have left it."""
    cdef Py_ssize_t n, j
    cdef ict_entry* e
    if not ICT_DIRECT_BUILT:
        return False
    for n in (1, 2, 5, 6, 11, 22, 43, 255):
        names = [f"f{j}_{n}" for j in range(n)]
        tpl = dict.fromkeys(names)
        for _ in range(2):  # a copy, then a copy of that copy (as rows chain)
            c = tpl.copy()
            e = ict_entries(<PyObject*>c, n)
            if e == NULL:
                return False
            for j in range(n):
                nm = names[j]
                if e[j].key != <PyObject*>nm or e[j].value != <PyObject*>None:
                    return False
            vals = [float(j) + 0.5 for j in range(n)]
            for j in range(n):
                nm = names[j]
                v = vals[j]
                ict_put(<PyObject*>c, e + j, <PyObject*>nm, ict_newref(<PyObject*>v), 0)
            if (len(c) != n or list(c) != names or list(c.values()) != vals
                    or any(c[names[j]] is not vals[j] for j in range(n))
                    or any(tpl[k] is not None for k in names)):
                return False
            tpl = dict.fromkeys(names)
    return True


cdef bint _DIRECT = _direct_stores_work()
DIRECT_STORES = _DIRECT  # for tests and the benchmark notes


def _use_direct_stores(on):
    """Measurement switch (benchmarks/direct_stores.py): every store through the dict API
    when off; on only where the layout proved itself."""
    global _DIRECT, DIRECT_STORES
    _DIRECT = bool(on) and _direct_stores_work()
    DIRECT_STORES = _DIRECT


def decode_batch(buf):
    """Decode one v1 tick batch into tick dicts (the same dicts as JSON ticks)."""
    return _decode_buffer(buf, False)


def decode_batch_rows(buf):
    """Decode one v1 tick batch leanly: (field names, rows); see iotcommute.payload._ticks_py."""
    return _decode_buffer(buf, True)


cdef object _decode_buffer(object buf, bint rows):
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if rows:
            return _decode_rows(<const unsigned char*>view.buf, view.len)
        return _decode(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef int _bad_device(uint16_t idx, uint32_t n_dev, uint64_t pos) except -1:
    """Check 9a failed: the row's device index is past the table."""
    raise DecodeError(
        f"tick at position {pos} refers to device {idx}, the table has {n_dev}", position=pos
    )


cdef inline bint _same_value(const unsigned char* q, Py_ssize_t d, uint8_t size) noexcept:
    """Whether the value at q has the same bytes as the one d bytes away (0: no such row)."""
    if d == 0:
        return False
    if size == 8:
        return ict_ld64(q) == ict_ld64(q + d)
    if size == 4:
        return ict_ld32(q) == ict_ld32(q + d)
    return q[0] == q[d]


cdef inline PyObject* _new_value(uint8_t code, const unsigned char* q, uint64_t pos,
                                 Py_ssize_t j) except NULL:
    """A new reference to the value of type `code` at q (check 9b for a bool)."""
    cdef PyObject* v
    cdef uint8_t b
    if code == 1:
        v = PyFloat_FromDouble_raw(ict_ldf64(q))
    elif code == 2:
        v = PyLong_FromLongLong_raw(<int64_t>ict_ld64(q))
    elif code == 3:
        v = PyLong_FromLongLong_raw(<int32_t>ict_ld32(q))
    elif code == 5:
        v = PyFloat_FromDouble_raw(ict_ldf32(q))
    else:
        b = q[0]
        if b > 1:
            raise DecodeError(f"tick at position {pos}: bool field {j} holds {b}", position=pos)
        v = ict_newref(Py_True_raw if b else Py_False_raw)
    if v == NULL:
        ict_raise_pending()
    return v


cdef PyObject* _intern_device(const unsigned char* p, Py_ssize_t ln, Py_ssize_t i) except NULL:
    """The cached str for device id bytes p[:ln] (borrowed), decoding it on a miss; raises the
    table's DecodeError for invalid UTF-8 or an id already named in this table."""
    global _dev_count
    cdef uint64_t h = ict_hash_bytes(p, ln, _dev_seed)
    cdef Py_ssize_t k = <Py_ssize_t>(h & (DEV_CACHE_SLOTS - 1))
    cdef _DevSlot* s
    cdef Py_ssize_t size
    while True:
        s = &_dev_cache[k]
        if s.s == NULL:
            break
        if s.h == h and s.size == ln and ict_same_bytes(s.utf8, p, ln):
            if s.stamp == _dev_epoch:
                raise DecodeError(f"device {i} repeats an earlier device id")
            s.stamp = _dev_epoch
            return s.s
        k = (k + 1) & (DEV_CACHE_SLOTS - 1)
    try:
        obj = PyUnicode_DecodeUTF8(<const char*>p, ln, "strict")
    except UnicodeDecodeError:
        raise DecodeError(f"device {i} is not valid UTF-8") from None
    s.utf8 = PyUnicode_AsUTF8AndSize_raw(<PyObject*>obj, &size)
    s.h = h
    s.size = size
    s.stamp = _dev_epoch
    s.s = ict_newref(<PyObject*>obj)
    _dev_count += 1
    return s.s


cdef _Devices _parse_devices(const unsigned char* p, Py_ssize_t n, uint32_t n_dev):
    """Check 6 of the spec: the device table, entry by entry."""
    global _dev_epoch
    cdef Py_ssize_t off = C_HEADER, i, ln
    cdef _Devices t = _Devices.__new__(_Devices)
    if _dev_count > DEV_CACHE_FILL:
        _dev_cache_clear()
    _dev_epoch += 1
    if _dev_epoch == 0:  # wrapped: no old stamp may look like this table's
        for i in range(DEV_CACHE_SLOTS):
            _dev_cache[i].stamp = 0
        _dev_epoch = 1
    # Owned references: the tuple's allocation below can run a collection, and a finalizer
    # could decode another batch that empties the cache.
    cdef PyObject** ids = <PyObject**>PyMem_Malloc(n_dev * sizeof(PyObject*) + 1)
    if ids == NULL:
        raise MemoryError()
    cdef Py_ssize_t owned = 0
    cdef PyObject* tup = NULL
    try:
        for i in range(n_dev):
            if off >= n:
                raise DecodeError("tick batch truncated in the device table")
            ln = p[off]
            off += 1
            if ln == 0:
                raise DecodeError(f"device {i} has an empty name")
            if off + ln > n:
                raise DecodeError("tick batch truncated in the device table")
            ids[i] = ict_newref(_intern_device(p + off, ln, i))
            owned += 1
            off += ln
        tup = PyTuple_New_raw(n_dev)
        for i in range(n_dev):
            PyTuple_SET_ITEM_raw(tup, i, ids[i])  # steals
        owned = 0
    finally:
        for i in range(owned):
            Py_DECREF_raw(ids[i])
        PyMem_Free(ids)
    t.ids = <tuple>tup
    Py_DECREF_raw(tup)
    t.n_dev = n_dev
    t.size = off - C_HEADER
    t.raw = PyBytes_FromStringAndSize(<const char*>p + C_HEADER, t.size)
    return t


cdef _Fields _parse_fields(const unsigned char* p, Py_ssize_t n, Py_ssize_t off,
                           uint32_t n_fld):
    """Check 7 of the spec: the field table (starting at `off`), entry by entry."""
    cdef _Fields t = _Fields.__new__(_Fields)
    cdef Py_ssize_t start = off, j
    cdef uint8_t code
    t.n_fld = n_fld
    cdef list names = []
    cdef set seen = set()
    t.row_size = ROW_PREFIX
    for j in range(n_fld):
        if off >= n:
            raise DecodeError("tick batch truncated in the field table")
        code = p[off]
        if code < 1 or code > 5:
            raise DecodeError(f"field {j} has unknown type code {code}")
        off = _read_name(p, off + 1, n, "field", j, names)
        if names[j] in seen:
            raise DecodeError(f"field {j} repeats an earlier field name")
        seen.add(names[j])
        t.codes[j] = code
        t.name_hash[j] = hash(names[j])
        t.row_size += TYPE_SIZE[code]
    t.size = off - start
    t.raw = PyBytes_FromStringAndSize(<const char*>p + start, t.size)
    t.names = tuple(names)
    # A copy of a dict whose keys are already laid out clones its key table in one memcpy,
    # and each store then replaces a value instead of inserting a key.
    t.data_tpl = dict.fromkeys(t.names)
    return t


cdef tuple _prepare(const unsigned char* p, Py_ssize_t n):
    """Checks 1-8 of the spec: (devices, fields, offset of the rows, n_ticks)."""
    global _last_fields, _last_devices
    cdef uint32_t hdr_version, hdr_flags, n_dev, n_fld, n_ticks
    cdef Py_ssize_t off, expected
    if n < C_HEADER:
        raise DecodeError(f"tick batch truncated: {n} bytes, the header needs {HEADER_SIZE}")
    if p[0] != 0xC1 or p[1] != 0x54 or p[2] != 0x4B or p[3] != 0x42:
        raise DecodeError("not a tick batch (bad magic)")
    hdr_version = p[4]
    if hdr_version != 1:
        raise DecodeError(f"unsupported tick batch version {hdr_version}")
    hdr_flags = p[5]
    if hdr_flags != 0:
        raise DecodeError(f"reserved tick batch flags set: 0x{hdr_flags:02x}")
    n_dev = ict_ld16(p + 6)
    n_fld = ict_ld16(p + 8)
    n_ticks = ict_ld32(p + 10)
    if n_dev > C_MAX_DEVICES:
        raise DecodeError(f"tick batch declares {n_dev} devices, the limit is {MAX_DEVICES}")
    if n_fld > C_MAX_FIELDS:
        raise DecodeError(f"tick batch declares {n_fld} fields, the limit is {MAX_FIELDS}")
    if n_ticks > C_MAX_TICKS:
        raise DecodeError(f"tick batch declares {n_ticks} ticks, the limit is {MAX_TICKS}")

    # The same count and table bytes parse to the same table (or the same error, but a
    # cached table parsed without one), so a byte-identical table skips its check.
    cdef _Devices dt = _last_devices
    if (dt is None or dt.n_dev != n_dev or n - C_HEADER < dt.size
            or memcmp(p + C_HEADER, PyBytes_AS_STRING(dt.raw), dt.size) != 0):
        dt = _parse_devices(p, n, n_dev)
        if dt.size <= TABLE_CACHE_MAX:
            _last_devices = dt
    off = C_HEADER + dt.size
    cdef _Fields ft = _last_fields
    if (ft is None or ft.n_fld != n_fld or n - off < ft.size
            or memcmp(p + off, PyBytes_AS_STRING(ft.raw), ft.size) != 0):
        ft = _parse_fields(p, n, off, n_fld)
        if ft.size <= TABLE_CACHE_MAX:
            _last_fields = ft
    off += ft.size

    expected = <Py_ssize_t>n_ticks * ft.row_size
    if n - off != expected:
        raise DecodeError(
            f"tick batch rows need {expected} bytes for {n_ticks} ticks, {n - off} present"
        )
    return dt, ft, off, n_ticks


cdef list _decode(const unsigned char* p, Py_ssize_t n):
    cdef Py_ssize_t off, i, j, row_size
    cdef uint32_t n_dev, n_fld, n_ticks
    cdef uint8_t code, size
    cdef _Devices dt
    cdef _Fields ft
    dt, ft, off, n_ticks = _prepare(p, n)
    n_dev = dt.n_dev
    n_fld = ft.n_fld
    row_size = ft.row_size
    cdef tuple devices = dt.ids
    cdef tuple names = ft.names
    cdef const uint8_t* codes = ft.codes
    cdef const Py_hash_t* name_hash = ft.name_hash
    cdef list out = PyList_New(n_ticks)
    if n_ticks == 0:
        return out
    # The previous row of the same device, with owned references to its dicts; one slot for
    # all devices when they cannot repeat much (fewer rows than devices).
    cdef Py_ssize_t n_slots = n_dev if n_dev < n_ticks else 1
    cdef _Prev* prev = <_Prev*>PyMem_Calloc(n_slots, sizeof(_Prev))
    if prev == NULL:
        raise MemoryError()
    cdef _Prev* s
    cdef const unsigned char* r = p + off
    cdef const unsigned char* q
    cdef uint16_t idx
    cdef uint64_t pos
    cdef PyObject* tick
    cdef PyObject* data
    cdef ict_entry* te
    cdef ict_entry* de
    cdef Py_ssize_t d
    cdef bint direct = _DIRECT
    cdef PyObject* tick_tpl = <PyObject*>_TICK_TPL
    try:
        for i in range(n_ticks):
            idx = ict_ld16(r)
            pos = ict_ld64(r + 2)
            if idx >= n_dev:
                _bad_device(idx, n_dev, pos)
            s = prev + (idx if n_slots > 1 else 0)
            # Ownership first: the list owns the tick and the tick owns `data` before any
            # value is made, so an error anywhere below leaks nothing.
            # A device's rows repeat much of its previous row (steady readings): start from
            # copies of that row's dicts and store only what changed, so a repeated value is
            # the previous row's (immutable) object.
            tick = PyDict_Copy_raw(tick_tpl if s.row == NULL else s.tick)
            PyList_SET_ITEM_raw(out, i, tick)
            te = ict_entries(tick, 5) if direct else NULL
            if s.row == NULL:
                ict_put(tick, te + 1 if te != NULL else NULL, <PyObject*>K_DEVICE,
                        ict_newref(PyTuple_GET_ITEM_raw(devices, idx)), H_DEVICE)
                ict_put(tick, te + 2 if te != NULL else NULL, <PyObject*>K_POSITION,
                        PyLong_FromUnsignedLongLong_raw(pos), H_POSITION)
                ict_put(tick, te + 3 if te != NULL else NULL, <PyObject*>K_TS,
                        PyFloat_FromDouble_raw(ict_ldf64(r + 10)), H_TS)
                data = PyDict_Copy_raw(<PyObject*>ft.data_tpl)
                d = 0
            else:
                if ict_ld16(s.row) != idx:
                    ict_put(tick, te + 1 if te != NULL else NULL, <PyObject*>K_DEVICE,
                            ict_newref(PyTuple_GET_ITEM_raw(devices, idx)), H_DEVICE)
                if ict_ld64(s.row + 2) != pos:
                    ict_put(tick, te + 2 if te != NULL else NULL, <PyObject*>K_POSITION,
                            PyLong_FromUnsignedLongLong_raw(pos), H_POSITION)
                if ict_ld64(s.row + 10) != ict_ld64(r + 10):
                    ict_put(tick, te + 3 if te != NULL else NULL, <PyObject*>K_TS,
                            PyFloat_FromDouble_raw(ict_ldf64(r + 10)), H_TS)
                data = PyDict_Copy_raw(s.data)
                d = s.row - r  # from a value to the same value in that row
            if te != NULL and te[4].key == <PyObject*>K_DATA and s.row == NULL:
                # What PyDict_SetItem does for a dict value: track the holder. Only the
                # template's copy can be untracked: a copy of a tracked dict is tracked.
                if not PyObject_GC_IsTracked_raw(tick):
                    PyObject_GC_Track_raw(tick)
            ict_put(tick, te + 4 if te != NULL else NULL, <PyObject*>K_DATA, data, H_DATA)
            Py_INCREF_raw(tick)
            Py_XDECREF_raw(s.tick)
            s.tick = tick
            Py_INCREF_raw(data)
            Py_XDECREF_raw(s.data)
            s.data = data
            s.row = r
            de = ict_entries(data, n_fld) if direct else NULL
            q = r + ROW_PREFIX
            for j in range(n_fld):
                code = codes[j]
                size = TYPE_SIZE[code]
                if not _same_value(q, d, size):
                    ict_put(data, de + j if de != NULL else NULL, PyTuple_GET_ITEM_raw(names, j),
                            _new_value(code, q, pos, j), name_hash[j])
                q += size
            r += row_size
    finally:
        for i in range(n_slots):
            Py_XDECREF_raw(prev[i].tick)
            Py_XDECREF_raw(prev[i].data)
        PyMem_Free(prev)
    return out


cdef tuple _decode_rows(const unsigned char* p, Py_ssize_t n):
    """One tuple per row, (device, position, ts, *values). A value whose bytes equal the
    previous row's is that row's (immutable) object, as in _decode."""
    cdef Py_ssize_t off, i, j, row_size, width
    cdef uint32_t n_dev, n_fld, n_ticks
    cdef uint8_t code, size
    cdef _Devices dt
    cdef _Fields ft
    dt, ft, off, n_ticks = _prepare(p, n)
    n_dev = dt.n_dev
    n_fld = ft.n_fld
    row_size = ft.row_size
    width = 3 + n_fld
    cdef tuple devices = dt.ids
    cdef const uint8_t* codes = ft.codes
    cdef list out = PyList_New(n_ticks)
    cdef const unsigned char* r = p + off
    cdef const unsigned char* q
    cdef PyObject* row
    cdef PyObject* prow = NULL  # the previous row's tuple (owned by `out`)
    cdef PyObject* v
    cdef Py_ssize_t d = 0       # from a value to the same value in the previous row
    cdef uint16_t idx
    cdef uint64_t pos
    for i in range(n_ticks):
        idx = ict_ld16(r)
        pos = ict_ld64(r + 2)
        if idx >= n_dev:
            _bad_device(idx, n_dev, pos)
        # The list owns the row before any value is made; unset slots are NULL, which a
        # tuple's traversal and deallocation skip, so an error below leaks nothing.
        row = PyTuple_New_raw(width)
        PyList_SET_ITEM_raw(out, i, row)
        PyTuple_SET_ITEM_raw(row, 0, ict_newref(PyTuple_GET_ITEM_raw(devices, idx)))
        v = PyLong_FromUnsignedLongLong_raw(pos)
        if v == NULL:
            ict_raise_pending()
        PyTuple_SET_ITEM_raw(row, 1, v)
        if d != 0 and ict_ld64(r + 10) == ict_ld64(r + 10 + d):
            v = ict_newref(PyTuple_GET_ITEM_ptr(prow, 2))
        else:
            v = PyFloat_FromDouble_raw(ict_ldf64(r + 10))
            if v == NULL:
                ict_raise_pending()
        PyTuple_SET_ITEM_raw(row, 2, v)
        q = r + ROW_PREFIX
        for j in range(n_fld):
            code = codes[j]
            size = TYPE_SIZE[code]
            if _same_value(q, d, size):
                v = ict_newref(PyTuple_GET_ITEM_ptr(prow, 3 + j))
            else:
                v = _new_value(code, q, pos, j)
            PyTuple_SET_ITEM_raw(row, 3 + j, v)
            q += size
        prow = row
        d = -row_size
        r += row_size
    return (ft.names, out)


_U64_MAX = 2**64 - 1
_I64_MIN_O = -(2**63)
_I64_MAX_O = 2**63 - 1


cdef bytes _utf8_name(object value, str what):
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty str")
    try:
        raw = (<str>value).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not encodable as UTF-8") from None
    if len(raw) > 255:
        raise InputError(f"{what} is longer than 255 UTF-8 bytes")
    return raw


cdef struct _RowHead:
    uint64_t pos
    double ts
    uint16_t idx


cdef inline object _get(object m, str key, object default, bint exact):
    """m.get(key, default); for an exact dict straight from the C API, which is the same."""
    cdef PyObject* v
    if exact:
        v = PyDict_GetItemWithError_raw(m, key)
        if v == NULL:
            if PyErr_Occurred():
                ict_raise_pending()
            return default
        return <object>v
    return m.get(key, default)


def encode_batch(ticks, types=None):
    """Encode ticks sharing one data shape as a v1 batch (see iotcommute.payload._ticks_py)."""
    cdef list seq = list(ticks)
    cdef Py_ssize_t i, j, k, nf = 0, size, n_seq = len(seq)
    cdef int kind
    if n_seq > C_MAX_TICKS:
        raise InputError(f"a tick batch holds at most {MAX_TICKS} ticks, got {n_seq}")
    cdef dict dev_index = {}
    cdef list dev_raw = []
    cdef list names = []
    # per field: 0 unknown, 1 bool seen, 2 only ints, 3 some floats
    cdef int[C_MAX_FIELDS] kinds
    # Row heads as C values and every data value in one flat list (row-major): no tuple or
    # list per tick. Exact dict/int/float/bool take C fast paths with the same results as
    # the generic checks; anything else (Mappings, subclasses) takes the generic ones.
    cdef _RowHead* heads = <_RowHead*>PyMem_Malloc(n_seq * sizeof(_RowHead) + 1)
    if heads == NULL:
        raise MemoryError()
    cdef list allvals = []
    cdef bint exact, exact_data
    cdef PyObject* vp
    cdef long long lv
    cdef int overflow
    cdef double dts
    try:
        for i in range(n_seq):
            tick = seq[i]
            exact = type(tick) is dict
            if not exact and not isinstance(tick, Mapping):
                raise InputError(f"tick {i} is not a mapping")
            device = _get(tick, "device", None, exact)
            idx = dev_index.get(device) if isinstance(device, str) else None
            if idx is None:
                raw = _utf8_name(device, f"device of tick {i}")
                if len(dev_raw) >= C_MAX_DEVICES:
                    raise InputError(f"a tick batch holds at most {MAX_DEVICES} devices")
                idx = dev_index[device] = len(dev_raw)
                dev_raw.append(raw)
            heads[i].idx = <uint16_t><Py_ssize_t>idx
            pos = _get(tick, "position", 0, exact)
            if type(pos) is int:
                try:
                    heads[i].pos = <uint64_t>pos  # OverflowError below 0 or at 2**64
                except OverflowError:
                    raise InputError(
                        f"position of tick {i} must be an int in [0, 2**64)"
                    ) from None
            else:
                if (isinstance(pos, bool) or not isinstance(pos, int)
                        or not 0 <= pos <= _U64_MAX):
                    raise InputError(f"position of tick {i} must be an int in [0, 2**64)")
                heads[i].pos = <uint64_t>pos
            ts = _get(tick, "ts", None, exact)
            if type(ts) is float:
                dts = PyFloat_AS_DOUBLE_raw(<PyObject*>ts)
            else:
                if isinstance(ts, bool) or not isinstance(ts, (int, float)):
                    raise InputError(f"ts of tick {i} must be a number")
                try:
                    ts = float(ts)
                except OverflowError:
                    raise InputError(f"ts of tick {i} is out of range") from None
                dts = <double>ts
            if not isfinite(dts):
                raise InputError(f"ts of tick {i} is not finite")
            heads[i].ts = dts
            data = _get(tick, "data", None, exact)
            exact_data = type(data) is dict
            if not exact_data and not isinstance(data, Mapping):
                raise InputError(f"data of tick {i} must be a mapping")
            if i == 0:
                if len(data) > C_MAX_FIELDS:
                    raise InputError(f"a tick batch holds at most {MAX_FIELDS} fields")
                for name in data:
                    if len(names) >= C_MAX_FIELDS:  # kinds[] is fixed-size; len() may lie
                        raise InputError(f"a tick batch holds at most {MAX_FIELDS} fields")
                    _utf8_name(name, "field name")
                    kinds[len(names)] = 0
                    names.append(name)
                nf = len(names)
            elif len(data) != nf:
                raise InputError(f"tick {i} has other data fields than tick 0; split the batch")
            for j in range(nf):
                name = <object>PyList_GET_ITEM_raw(names, j)
                if exact_data:
                    vp = PyDict_GetItemWithError_raw(data, name)
                    if vp == NULL:
                        if PyErr_Occurred():
                            ict_raise_pending()
                        raise InputError(
                            f"tick {i} has other data fields than tick 0; split the batch"
                        )
                    v = <object>vp
                else:
                    try:
                        v = data[name]
                    except KeyError:
                        raise InputError(
                            f"tick {i} has other data fields than tick 0; split the batch"
                        ) from None
                if v is True or v is False:
                    if kinds[j] > 1:
                        raise InputError(f"field {name!r} mixes bool and numbers")
                    kinds[j] = 1
                elif type(v) is float:
                    if kinds[j] == 1:
                        raise InputError(f"field {name!r} mixes bool and numbers")
                    if not isfinite(PyFloat_AS_DOUBLE_raw(<PyObject*>v)):
                        raise InputError(f"field {name!r} of tick {i} is not finite")
                    kinds[j] = 3
                elif type(v) is int:
                    if kinds[j] == 1:
                        raise InputError(f"field {name!r} mixes bool and numbers")
                    lv = PyLong_AsLongLongAndOverflow(v, &overflow)
                    if overflow != 0:
                        raise InputError(f"field {name!r} of tick {i} is out of the i64 range")
                    if kinds[j] == 0:
                        kinds[j] = 2
                elif isinstance(v, int):
                    if kinds[j] == 1:
                        raise InputError(f"field {name!r} mixes bool and numbers")
                    if not _I64_MIN_O <= v <= _I64_MAX_O:
                        raise InputError(f"field {name!r} of tick {i} is out of the i64 range")
                    if kinds[j] == 0:
                        kinds[j] = 2
                elif isinstance(v, float):
                    if kinds[j] == 1:
                        raise InputError(f"field {name!r} mixes bool and numbers")
                    if not isfinite(<double>v):
                        raise InputError(f"field {name!r} of tick {i} is not finite")
                    kinds[j] = 3
                else:
                    raise InputError(f"field {name!r} of tick {i} is not a number or bool")
                allvals.append(v)
        return _pack(heads, allvals, n_seq, names, kinds, dev_raw, types)
    finally:
        PyMem_Free(heads)


cdef bytes _pack(const _RowHead* heads, list allvals, Py_ssize_t n_seq, list names,
                 const int* kinds, list dev_raw, types):
    """Second pass: choose the field codes, then write the batch."""
    cdef Py_ssize_t i, j, k, nf = len(names), size
    cdef uint8_t[C_MAX_FIELDS] codes
    size = ROW_PREFIX
    for j in range(nf):
        name = names[j]
        if types is not None and name in types:
            fc = FIELD_TYPES.get(types[name], 0)
            if fc == 0:
                raise InputError(f"unknown field type {types[name]!r} for field {name!r}")
            if (fc == 4) != (kinds[j] == 1) and kinds[j] != 0:
                raise InputError(f"field {name!r} cannot be encoded as {types[name]}")
            if fc in (2, 3) and kinds[j] == 3:
                raise InputError(f"field {name!r} holds floats, it cannot be {types[name]}")
        else:
            fc = 4 if kinds[j] == 1 else 2 if kinds[j] == 2 else 1
        codes[j] = fc
        size += TYPE_SIZE[codes[j]]

    cdef Py_ssize_t row_size = size
    cdef Py_ssize_t total = C_HEADER + row_size * n_seq
    cdef list name_raw = [(<str>nm).encode("utf-8") for nm in names]
    for raw in dev_raw:
        total += 1 + len(<bytes>raw)
    for raw in name_raw:
        total += 2 + len(<bytes>raw)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* w = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(w, b"\xc1TKB", 4)
    w[4] = 1
    w[5] = 0
    ict_st16(w + 6, <uint16_t>len(dev_raw))
    ict_st16(w + 8, <uint16_t>nf)
    ict_st32(w + 10, <uint32_t>n_seq)
    w += C_HEADER
    cdef Py_ssize_t ln
    for raw in dev_raw:
        ln = len(<bytes>raw)
        w[0] = <unsigned char>ln
        memcpy(w + 1, PyBytes_AS_STRING(raw), ln)
        w += 1 + ln
    for j in range(nf):
        raw = name_raw[j]
        ln = len(<bytes>raw)
        w[0] = codes[j]
        w[1] = <unsigned char>ln
        memcpy(w + 2, PyBytes_AS_STRING(raw), ln)
        w += 2 + ln
    cdef double d
    cdef float f
    cdef int64_t iv
    cdef PyObject* vp
    cdef uint8_t code
    k = 0
    for i in range(n_seq):
        ict_st16(w, heads[i].idx)
        ict_st64(w + 2, heads[i].pos)
        ict_stf64(w + 10, heads[i].ts)
        w += ROW_PREFIX
        for j in range(nf):
            vp = PyList_GET_ITEM_raw(allvals, k)
            k += 1
            code = codes[j]
            if code == 1:
                if PyFloat_CheckExact_raw(vp):
                    d = PyFloat_AS_DOUBLE_raw(vp)
                else:
                    d = <double><object>vp
                ict_stf64(w, d)
                w += 8
            elif code == 2:
                ict_st64(w, <uint64_t><int64_t><object>vp)
                w += 8
            elif code == 3:
                iv = <int64_t><object>vp
                if iv < -2147483648 or iv > 2147483647:
                    raise InputError(f"field {names[j]!r} of tick {i} is out of the i32 range")
                ict_st32(w, <uint32_t><int32_t>iv)
                w += 4
            elif code == 4:
                w[0] = 1 if vp == Py_True_raw else 1 if <object>vp else 0
                w += 1
            else:
                if PyFloat_CheckExact_raw(vp):
                    d = PyFloat_AS_DOUBLE_raw(vp)
                else:
                    d = <double><object>vp
                f = <float>d
                if isinf(f):
                    raise InputError(f"field {names[j]!r} of tick {i} is out of the f32 range")
                ict_stf32(w, f)
                w += 4
    return out


cdef const char* _TICK_ENVELOPE = b'{"type":"tick"'  # its first 9 bytes: any message's


def text_kind(str text not None):
    """What a text message is by its envelope prefix alone (the twin's docstring says
    which): one call and a few character compares, no argument parsing per message."""
    return text_kind_c(text)


cdef int text_kind_c(str text) noexcept:
    """text_kind for a ``str`` that is not None; _deliver cimports it (a Python-level call
    was ~280 instructions of a 256-byte text message's ~2,000 through the public APIs)."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text), i
    cdef unsigned int kind = PyUnicode_KIND(text)
    cdef void* data = PyUnicode_DATA(text)
    if n < 9:
        return 0
    for i in range(9):
        if PyUnicode_READ(kind, data, i) != <Py_UCS4>_TICK_ENVELOPE[i]:
            return 0
    if n < 14:
        return 2
    for i in range(9, 14):
        if PyUnicode_READ(kind, data, i) != <Py_UCS4>_TICK_ENVELOPE[i]:
            return 2
    return 1


# --------------------------------------------------------------------------- JSON ticks
# loads_json: orjson.loads's result for every input (the twin's loads_json), read here for
# the common shape of a tick message. The subset: an ASCII `str`; objects, arrays,
# true/false/null; strings without escapes; integers of up to 18 digits; decimals whose
# significant digits fit in 53 bits with a decimal exponent within +-22 (Clinger's fast
# path: one IEEE multiplication or division of two exact doubles, so correctly rounded, as
# orjson's). Anything else (bytes, non-ASCII text, escapes, longer numbers, deep nesting,
# malformed input) goes to the twin whole: its errors are the twin's own.
# Why (callgrind, a 256-byte tick): orjson took ~10.3 k instructions, ~11 k of the ~15 k a
# tick cost through AsyncWebSocket. Most of that is building the dicts; here an object's
# items are gathered first, and a run of objects with the same keys (every tick, and its
# data) starts from a copy of a key template with the values stored directly, as the batch
# decoder does; keys and short strings come from a cache keyed by their bytes.

cdef extern from *:
    """
    #include <float.h>
    #include <string.h>
    /* Clinger's fast path needs doubles evaluated as doubles (not x87 extended). */
    #if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    #define ICJ_FAST_FLOATS 1
    #else
    #define ICJ_FAST_FLOATS 0
    #endif
    /* A dict made at its final size; the private constructor exists in 3.8-3.13 and is
       what Cython uses for dict displays. */
    #if PY_VERSION_HEX < 0x030E0000 && !defined(PYPY_VERSION)
    #define ICJ_NewPresized(n) _PyDict_NewPresized(n)
    #else
    #define ICJ_NewPresized(n) PyDict_New()
    #endif
    #define ICJ_MUL 0x100000001B3ULL
    #define ICJ_ONES 0x0101010101010101ULL
    #define ICJ_HIGH 0x8080808080808080ULL
    static const double icj_pow10[23] = {
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
        1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

    /* The index of the closing quote of the string whose first character is s[i], or -1
       when it holds an escape or a control character or has no end. *hash gets a hash of
       its characters. ASCII input (every byte below 0x80), so a byte is "interesting"
       when it is below 0x20 or equals '"' or '\\'; eight are tested at once where the
       compiler gives us count-trailing-zeros on a little-endian machine. */
    static inline Py_ssize_t icj_string_end(const unsigned char *s, Py_ssize_t i,
                                            Py_ssize_t n, uint64_t *hash) {
        uint64_t h = 0xCBF29CE484222325ULL, t = 0;
        int shift = 0;
    #if PY_LITTLE_ENDIAN && (defined(__GNUC__) || defined(__clang__))
        while (i + 8 <= n) {
            uint64_t w, q, b, m;
            memcpy(&w, s + i, 8);
            q = w ^ (ICJ_ONES * 0x22);
            b = w ^ (ICJ_ONES * 0x5C);
            m = ((w - ICJ_ONES * 0x20) | (q - ICJ_ONES) | (b - ICJ_ONES)) & ICJ_HIGH;
            if (m) {
                int k = __builtin_ctzll(m) >> 3;  /* the first flagged byte is exact */
                i += k;
                if (s[i] != 0x22) return -1;
                if (k) h = (h ^ (w & ((1ULL << (8 * k)) - 1))) * ICJ_MUL;
                *hash = h;
                return i;
            }
            h = (h ^ w) * ICJ_MUL;
            i += 8;
        }
    #endif
        for (; i < n; i++) {  /* the same hash, a byte at a time */
            unsigned char c = s[i];
            if (c == 0x22) {
                if (shift) h = (h ^ t) * ICJ_MUL;
                *hash = h;
                return i;
            }
            if (c == 0x5C || c < 0x20) return -1;
            t |= (uint64_t)c << shift;
            shift += 8;
            if (shift == 64) { h = (h ^ t) * ICJ_MUL; t = 0; shift = 0; }
        }
        return -1;
    }

    /* The JSON number at s[i]: 1 an integer of up to 18 digits (*iv), 2 a decimal taken by
       Clinger's fast path (*dv), 0 anything else (the twin reads it); *end is the index
       after it. JSON's grammar: -?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)? */
    static inline int icj_number(const unsigned char *s, Py_ssize_t i, Py_ssize_t n,
                                 Py_ssize_t *end, long long *iv, double *dv) {
        int neg = 0, digits = 0, frac = 0, e = 0, eneg = 0, edigits = 0, is_float = 0, p;
        uint64_t w = 0;
        double d;
        if (s[i] == '-') { neg = 1; if (++i >= n) return 0; }
        if (s[i] == '0') {
            if (++i < n && s[i] >= '0' && s[i] <= '9') return 0;
        } else if (s[i] >= '1' && s[i] <= '9') {
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                if (digits == 19) return 0;
                w = w * 10 + (uint64_t)(s[i] - '0');
                digits++; i++;
            }
        } else {
            return 0;
        }
        if (i < n && s[i] == '.') {
            is_float = 1;
            if (++i >= n || s[i] < '0' || s[i] > '9') return 0;
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                if (digits == 19) return 0;
                w = w * 10 + (uint64_t)(s[i] - '0');
                if (w) digits++;  /* leading zeros are not significant */
                frac++; i++;
            }
        }
        if (i < n && (s[i] == 'e' || s[i] == 'E')) {
            is_float = 1;
            i++;
            if (i < n && (s[i] == '+' || s[i] == '-')) { eneg = s[i] == '-'; i++; }
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                if (edigits == 4) return 0;
                e = e * 10 + (s[i] - '0');
                edigits++; i++;
            }
            if (!edigits) return 0;
        }
        *end = i;
        if (!is_float) {
            if (digits > 18) return 0;
            *iv = neg ? -(long long)w : (long long)w;
            return 1;
        }
        if (!ICJ_FAST_FLOATS) return 0;
        if (w == 0) { *dv = neg ? -0.0 : 0.0; return 2; }
        p = (eneg ? -e : e) - frac;
        if (w > 9007199254740992ULL || p < -22 || p > 22) return 0;
        d = (double)w;  /* exact: w <= 2**53 */
        d = p < 0 ? d / icj_pow10[-p] : d * icj_pow10[p];  /* one correctly rounded op */
        *dv = neg ? -d : d;
        return 2;
    }
    """
    Py_ssize_t icj_string_end(const unsigned char *s, Py_ssize_t i, Py_ssize_t n,
                              uint64_t *hash) nogil
    int icj_number(const unsigned char *s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t *end,
                   long long *iv, double *dv) nogil
    object ICJ_NewPresized(Py_ssize_t n)
    PyObject* ICJ_NewPresized_raw "ICJ_NewPresized"(Py_ssize_t n) except NULL


DEF J_MAX_ITEMS = 64         # wider objects go to the twin
DEF J_MAX_DEPTH = 32         # deeper documents go to the twin (no deep C recursion)
DEF J_STR_SLOTS = 1024       # the string cache: a power of two
DEF J_STR_MAX = 32           # strings up to this many characters are cached
DEF J_SHAPE_SLOTS = 64       # the key-template cache: a power of two

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    object PyLong_FromLongLong(long long v)
    object PyFloat_FromDouble(double v)
    int PyDict_SetItem(object d, object k, object v) except -1

cdef struct _Reader:
    const unsigned char *s
    Py_ssize_t i
    Py_ssize_t n
    bint out                 # the input left the subset: the twin decides

# One str per slot, replaced on a miss (str is immutable: a cached one is as good as new).
# The list owns them; _str_slots mirrors it for the C-level compare.
cdef list _str_cache = [None] * J_STR_SLOTS
cdef PyObject *_str_slots[J_STR_SLOTS]

# Key templates (dict.fromkeys of an object's keys, owned), found by the keys' identities.
cdef struct _Shape:
    Py_ssize_t n
    uint64_t sig
    PyObject *tpl
cdef _Shape _shapes[J_SHAPE_SLOTS]
# Per depth, the slot of the template the last object there used (-1: none yet).
cdef Py_ssize_t _predict[J_MAX_DEPTH + 1]
for _depth in range(J_MAX_DEPTH + 1):
    _predict[_depth] = -1


cdef inline void _j_ws(_Reader *r) noexcept nogil:
    cdef unsigned char c
    while r.i < r.n:
        c = r.s[r.i]
        if c == 32 or c == 10 or c == 13 or c == 9:
            r.i += 1
        else:
            return


cdef inline bint _j_after_item(_Reader *r, unsigned char close) noexcept nogil:
    """After an item of an object or array: True at its closing bracket `close`; False
    after a comma (whitespace skipped on both sides), or with r.out set on anything else.
    r.i ends past what was read."""
    cdef unsigned char c
    _j_ws(r)
    if r.i >= r.n:
        r.out = True
        return False
    c = r.s[r.i]
    r.i += 1
    if c == close:
        return True
    if c != 44:  # ','
        r.out = True
        return False
    _j_ws(r)
    return False


cdef object _j_string(_Reader *r):
    """The string starting after its opening quote; r.i ends after the closing quote."""
    cdef Py_ssize_t start = r.i
    cdef uint64_t h = 0
    cdef Py_ssize_t end = icj_string_end(r.s, start, r.n, &h)
    cdef Py_ssize_t length = end - start
    cdef Py_ssize_t slot
    cdef PyObject *hit
    cdef object out
    if end < 0:
        r.out = True
        return None
    r.i = end + 1
    if length <= J_STR_MAX:
        h ^= h >> 29
        slot = <Py_ssize_t>((h ^ <uint64_t>length) & (J_STR_SLOTS - 1))
        hit = _str_slots[slot]
        if (hit != NULL and PyUnicode_GET_LENGTH(<object>hit) == length
                and memcmp(PyUnicode_DATA(<object>hit), r.s + start, length) == 0):
            return <object>hit
        out = PyUnicode_New(length, 127)
        memcpy(PyUnicode_DATA(out), r.s + start, length)
        _str_cache[slot] = out
        _str_slots[slot] = <PyObject *>out
        return out
    out = PyUnicode_New(length, 127)
    memcpy(PyUnicode_DATA(out), r.s + start, length)
    return out


cdef object _j_fill(PyObject *tpl, PyObject **keys, PyObject **vals, Py_ssize_t n,
                    bint containers):
    """A copy of template tpl with vals stored into its entries (taking the references,
    set to NULL as taken), or None when its keys are not keys[:n]."""
    cdef Py_ssize_t j
    cdef object keep = <object>tpl  # a collection the copy triggers could run a parse
    cdef PyObject *d = PyDict_Copy_raw(tpl)
    cdef object out = <object>d
    Py_DECREF_raw(d)  # `out` holds it
    cdef ict_entry *e = ict_entries(d, n)
    cdef PyObject *old
    if e == NULL:
        return None
    for j in range(n):
        if e[j].key != keys[j]:
            return None
    if containers and not PyObject_GC_IsTracked_raw(d):
        PyObject_GC_Track_raw(d)  # what PyDict_SetItem does for a container value
    for j in range(n):  # every entry is its key's live entry (checked above): store
        old = e[j].value
        e[j].value = vals[j]
        vals[j] = NULL
        Py_XDECREF_raw(old)  # the template's None
    return out


cdef object _j_dict(PyObject **keys, PyObject **vals, Py_ssize_t n, bint containers,
                    int depth):
    """The dict of n items, taking the references in vals (set to NULL as taken); the
    template of its keys becomes the prediction for the next object at this depth."""
    cdef uint64_t sig = <uint64_t>n * 0x9E3779B97F4A7C15ULL
    cdef Py_ssize_t j
    cdef Py_ssize_t slot
    cdef _Shape *shape
    cdef object out
    for j in range(n):
        sig = (sig ^ <uint64_t><size_t>keys[j]) * 0xff51afd7ed558ccdULL
    sig ^= sig >> 32
    slot = <Py_ssize_t>(sig & (J_SHAPE_SLOTS - 1))
    shape = &_shapes[slot]
    if _DIRECT and shape.tpl != NULL and shape.n == n and shape.sig == sig:
        out = _j_fill(shape.tpl, keys, vals, n, containers)
        if out is not None:
            _predict[depth] = slot
            return out
    out = ICJ_NewPresized(n)
    for j in range(n):
        PyDict_SetItem(out, <object>keys[j], <object>vals[j])
    if _DIRECT and n and len(out) == n:  # distinct keys: remember them as a template
        tpl = dict.fromkeys([<object>keys[j] for j in range(n)])
        Py_INCREF_raw(<PyObject *>tpl)
        Py_XDECREF_raw(shape.tpl)
        shape.tpl = <PyObject *>tpl
        shape.n = n
        shape.sig = sig
        _predict[depth] = slot
    return out


cdef object _j_object(_Reader *r, int depth):
    """The object after its opening brace: its items gathered first, then one dict.

    Objects at one depth mostly repeat the keys of the previous one (every tick; its
    data). So the keys are first compared, byte for byte, with those of the template
    that depth used last: on a full match the dict is that template's copy, and no key
    was scanned, hashed or looked up. The first difference falls back to reading keys."""
    cdef PyObject *keys[J_MAX_ITEMS]
    cdef PyObject *vals[J_MAX_ITEMS]
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t j
    cdef bint containers = False
    cdef object key
    cdef object item
    cdef object out
    cdef PyObject *ptpl = NULL  # the predicted template, owned while in use
    cdef ict_entry *pe = NULL
    cdef Py_ssize_t pn = 0
    cdef Py_ssize_t klen
    cdef PyObject *pk
    cdef Py_ssize_t slot = _predict[depth]
    _j_ws(r)
    if r.i < r.n and r.s[r.i] == 125:  # '}'
        r.i += 1
        return {}
    if _DIRECT and slot >= 0 and _shapes[slot].tpl != NULL:
        ptpl = _shapes[slot].tpl
        Py_INCREF_raw(ptpl)  # a nested object may replace the slot's template
        pn = _shapes[slot].n
        pe = ict_entries(ptpl, pn)
    try:
        while True:
            if r.i >= r.n or r.s[r.i] != 34 or count == J_MAX_ITEMS:
                r.out = True
                return None
            r.i += 1
            key = None
            if pe != NULL:
                if count < pn:
                    pk = pe[count].key
                    klen = PyUnicode_GET_LENGTH(<object>pk)
                    if (r.i + klen < r.n and r.s[r.i + klen] == 34
                            and memcmp(r.s + r.i, PyUnicode_DATA(<object>pk), klen) == 0):
                        key = <object>pk  # its bytes, then its closing quote
                        r.i += klen + 1
                if key is None:
                    pe = NULL
            if key is None:
                key = _j_string(r)
                if r.out:
                    return None
            _j_ws(r)
            if r.i >= r.n or r.s[r.i] != 58:  # ':'
                r.out = True
                return None
            r.i += 1
            _j_ws(r)
            item = _j_value(r, depth + 1)
            if r.out:
                return None
            if type(item) is dict or type(item) is list:
                containers = True
            keys[count] = ict_newref(<PyObject *>key)
            vals[count] = ict_newref(<PyObject *>item)
            count += 1
            if _j_after_item(r, 125):  # '}'
                if pe != NULL and count == pn:
                    out = _j_fill(ptpl, keys, vals, count, containers)
                    if out is not None:
                        return out
                return _j_dict(keys, vals, count, containers, depth)
            if r.out:
                return None
    finally:
        for j in range(count):
            Py_DECREF_raw(keys[j])
            Py_XDECREF_raw(vals[j])
        Py_XDECREF_raw(ptpl)


cdef object _j_value(_Reader *r, int depth):
    """One value at r.i; None with r.out set when the input leaves the subset."""
    cdef unsigned char c
    cdef object out
    cdef object item
    cdef int kind
    cdef long long iv = 0
    cdef double dv = 0
    if r.i >= r.n:
        r.out = True
        return None
    c = r.s[r.i]
    if c == 34:  # '"'
        r.i += 1
        return _j_string(r)
    if c == 45 or 48 <= c <= 57:
        kind = icj_number(r.s, r.i, r.n, &r.i, &iv, &dv)
        if kind == 1:
            return PyLong_FromLongLong(iv)
        if kind == 2:
            return PyFloat_FromDouble(dv)
        r.out = True
        return None
    if c == 123 or c == 91:
        if depth >= J_MAX_DEPTH:
            r.out = True
            return None
        r.i += 1
        if c == 123:
            return _j_object(r, depth)
        out = []
        _j_ws(r)
        if r.i < r.n and r.s[r.i] == 93:  # ']'
            r.i += 1
            return out
        while True:
            item = _j_value(r, depth + 1)
            if r.out:
                return None
            out.append(item)
            if _j_after_item(r, 93):  # ']'
                return out
            if r.out:
                return None
    if c == 116 and r.n - r.i >= 4 and memcmp(r.s + r.i, b"true", 4) == 0:
        r.i += 4
        return True
    if c == 102 and r.n - r.i >= 5 and memcmp(r.s + r.i, b"false", 5) == 0:
        r.i += 5
        return False
    if c == 110 and r.n - r.i >= 4 and memcmp(r.s + r.i, b"null", 4) == 0:
        r.i += 4
        return None
    r.out = True
    return None


def loads_json(doc):
    """Parse one JSON document: the twin's result (and errors) for every input."""
    cdef _Reader r
    cdef object out
    if type(doc) is not str or not PyUnicode_IS_COMPACT_ASCII(doc):
        return _json_twin(doc)
    r.s = <const unsigned char *>PyUnicode_DATA(doc)
    r.n = PyUnicode_GET_LENGTH(doc)
    r.i = 0
    r.out = False
    _j_ws(&r)
    out = _j_value(&r, 0)
    if not r.out:
        _j_ws(&r)
        if r.i == r.n:
            return out
    return _json_twin(doc)

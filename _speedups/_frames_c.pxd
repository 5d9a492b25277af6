# Types for iotcommute/protocol/_frames_py.py when compiled as iotcommute.protocol._frames_c (one source,
# the aiohttp reader_c pattern). Keep in sync with the attributes/methods of FrameReader.
import cython

cdef int OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
cdef Py_ssize_t DEFAULT_MAX_SIZE, DEFAULT_MAX_FRAGMENTS
cdef bytes _DEFLATE_TAIL
cdef object _Utf8Decoder
cdef Py_ssize_t _PREALLOC_MAX, _READ_SIZE, _READ_SIZE_BIG, _BIG_MESSAGE, _DIRECT_MIN, _ACC_KEEP
cdef bint _COMPILED

# Compiled-only helpers, used under `if _COMPILED:` in the .py (the fallback never runs them).
cdef extern from *:
    """
    static PyObject *iotc_new_bytes(Py_ssize_t n) {
        return PyBytes_FromStringAndSize(NULL, n);
    }
    static void iotc_copy_into(PyObject *dst, Py_ssize_t off, const unsigned char *src,
                               Py_ssize_t n) {
        memcpy(PyBytes_AS_STRING(dst) + off, src, (size_t)n);
    }
    /* A writable view of n bytes at off in a bytes object the reader alone holds (its read
       buffer, or a payload not handed out yet), for the next socket read only. */
    static PyObject *iotc_writable_view(PyObject *b, Py_ssize_t off, Py_ssize_t n) {
        return PyMemoryView_FromMemory(PyBytes_AS_STRING(b) + off, n, PyBUF_WRITE);
    }
    /* The fragment buffer: a bytearray whose size is its capacity (grown, doubling). */
    static int iotc_acc_reserve(PyObject *acc, Py_ssize_t need) {
        Py_ssize_t cap = PyByteArray_GET_SIZE(acc);
        if (cap >= need) return 0;
        cap = cap * 2 > need ? cap * 2 : need;
        if (cap < 4096) cap = 4096;
        return PyByteArray_Resize(acc, cap);
    }
    static void iotc_acc_copy(PyObject *acc, Py_ssize_t off, const unsigned char *src,
                              Py_ssize_t n) {
        memcpy(PyByteArray_AS_STRING(acc) + off, src, (size_t)n);
    }
    static PyObject *iotc_acc_bytes(PyObject *acc, Py_ssize_t n) {
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(acc), n);
    }
    /* The buffer holds only bytes already checked below 0x80 (each text fragment is checked
       as it arrives): the str is made by one copy, without a second check. */
    static PyObject *iotc_acc_ascii(PyObject *acc, Py_ssize_t n) {
        PyObject *s = PyUnicode_New(n, 127);
        if (s != NULL)
            memcpy(PyUnicode_1BYTE_DATA(s), PyByteArray_AS_STRING(acc), (size_t)n);
        return s;
    }
    /* The 64-bit big-endian length of a frame header (RFC 6455 5.2), read in place. */
    static Py_ssize_t iotc_be63(const unsigned char *p) {
        uint64_t v = 0;
        int i;
        for (i = 0; i < 8; i++) v = (v << 8) | p[i];
        return (Py_ssize_t)v;  /* the caller rejected a set top bit: fits */
    }
    /* All bytes below 0x80, eight at a time. */
    static int iotc_ascii_run(const unsigned char *p, Py_ssize_t n) {
        uint64_t w, acc = 0;
        while (n >= 8) { memcpy(&w, p, 8); acc |= w; p += 8; n -= 8; }
        while (n > 0) { acc |= *p++; n--; }
        return (acc & 0x8080808080808080ULL) == 0;
    }
    /* A whole text frame's str: ASCII (the common JSON case) by one vectorised check and one
       copy, other text through CPython's UTF-8 decoder (which raises UnicodeDecodeError). */
    static PyObject *iotc_text(const unsigned char *p, Py_ssize_t n) {
        PyObject *s;
        if (!iotc_ascii_run(p, n))
            return PyUnicode_DecodeUTF8((const char *)p, n, NULL);
        s = PyUnicode_New(n, 127);
        if (s != NULL)
            memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
        return s;
    }
    """
    bytes _new_bytes "iotc_new_bytes"(Py_ssize_t n)
    void _copy_into "iotc_copy_into"(object dst, Py_ssize_t off, const unsigned char *src,
                                     Py_ssize_t n)
    object _writable_view "iotc_writable_view"(object b, Py_ssize_t off, Py_ssize_t n)
    int _acc_reserve "iotc_acc_reserve"(object acc, Py_ssize_t need) except -1
    void _acc_copy "iotc_acc_copy"(object acc, Py_ssize_t off, const unsigned char *src,
                                   Py_ssize_t n)
    object _acc_bytes "iotc_acc_bytes"(object acc, Py_ssize_t n)
    object _acc_ascii "iotc_acc_ascii"(object acc, Py_ssize_t n)
    bint _ascii_run "iotc_ascii_run"(const unsigned char *p, Py_ssize_t n)
    object _text "iotc_text"(const unsigned char *p, Py_ssize_t n)
    Py_ssize_t _be63 "iotc_be63"(const unsigned char *p)
cdef object CloseReceived, Ping, Pong
cdef object InvalidUTF8Error, MessageTooBigError, ProtocolError

cpdef bint close_code_valid(int code)

@cython.locals(q="const unsigned char *")
cdef bint _is_ascii(bytes buf, Py_ssize_t a, Py_ssize_t b) except -1

cdef class FrameReader:
    cdef public list events
    cdef public list pongs
    cdef public object error
    cdef public bint closed
    cdef public int close_code
    cdef public str close_reason
    cdef public Py_ssize_t max_size
    cdef public Py_ssize_t max_fragments
    cdef public bint deflate
    cdef public int window_bits
    cdef public bint no_context_takeover
    cdef bytes _tail
    cdef int _pb0
    cdef Py_ssize_t _plen
    cdef object _pbuf
    cdef Py_ssize_t _pfill
    cdef int _pmode
    cdef int _frag_op
    cdef list _frag_parts
    cdef bytearray _acc
    cdef Py_ssize_t _acc_len
    cdef bint _frag_ascii
    cdef Py_ssize_t _frag_size
    cdef Py_ssize_t _frag_wire
    cdef Py_ssize_t _frag_count
    cdef bint _frag_compressed
    cdef object _decoder
    cdef object _inflater
    cdef object _pdec
    cdef bint _pascii
    cdef object _rbuf
    cdef object _rview
    cdef bint _rdirect
    cdef Py_ssize_t _rsize

    cpdef object get_buffer(self, Py_ssize_t sizehint=*)

    @cython.locals(k=Py_ssize_t)
    cpdef void buffer_updated(self, Py_ssize_t nbytes) except *

    @cython.locals(buf=bytes)
    cpdef void feed_data(self, object data) except *

    @cython.locals(pos=Py_ssize_t, k=Py_ssize_t, m=Py_ssize_t, hdr=bytes, b1=int)
    cdef void _feed(self, bytes buf, Py_ssize_t n) except *

    @cython.locals(p="const unsigned char *", avail=Py_ssize_t,
                   start=Py_ssize_t, end=Py_ssize_t, length=Py_ssize_t, b0="unsigned char",
                   b1="unsigned char", events=list, max_size=Py_ssize_t, frag=int,
                   limit=Py_ssize_t)
    cdef Py_ssize_t _parse(self, bytes buf, Py_ssize_t pos, Py_ssize_t n) except -1

    @cython.locals(opcode=int)
    cdef void _begin(self, int b0, Py_ssize_t length, bytes buf, Py_ssize_t start,
                     Py_ssize_t n) except *

    @cython.locals(k=Py_ssize_t, q="const unsigned char *", part=bytes, grow=bytearray)
    cdef bint _fill(self, bytes buf, Py_ssize_t a, Py_ssize_t b) except -1

    @cython.locals(b0=int)
    cdef bint _complete(self) except -1

    @cython.locals(opcode=int, fin=int, count=Py_ssize_t)
    cdef bint _check_header(self, int b0, int b1) except -1

    @cython.locals(opcode=int, fin=bint, parts=list)
    cdef bint _frame(self, int b0, bytes buf, Py_ssize_t a, Py_ssize_t b) except -1

    @cython.locals(parts=list)
    cdef bint _add_part(self, bytes data, bint fin) except -1

    @cython.locals(n=Py_ssize_t, q="const unsigned char *")
    cdef void _acc_add(self, bytes buf, Py_ssize_t a, Py_ssize_t b) except *

    cdef object _acc_take(self, bint text)

    @cython.locals(room=Py_ssize_t)
    cdef object _inflate(self, bytes payload, bint fin)

    @cython.locals(n=Py_ssize_t, code=int)
    cdef bint _control(self, int opcode, bytes payload) except -1

    cdef bint _fail(self, object exc) except -1

# Types for iotcommute/_frames_py.py when compiled as iotcommute._frames_c (one source,
# the aiohttp reader_c pattern). Keep in sync with the attributes/methods of FrameReader.
import cython

cdef int OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
cdef Py_ssize_t DEFAULT_MAX_SIZE, DEFAULT_MAX_FRAGMENTS
cdef bytes _DEFLATE_TAIL
cdef object _Utf8Decoder
cdef object CloseReceived, Ping, Pong
cdef object InvalidUTF8Error, MessageTooBigError, ProtocolError

cpdef bint close_code_valid(int code)

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
    cdef bytearray _tail
    cdef Py_ssize_t _need
    cdef int _frag_op
    cdef list _frag_parts
    cdef Py_ssize_t _frag_size
    cdef Py_ssize_t _frag_wire
    cdef Py_ssize_t _frag_count
    cdef bint _frag_compressed
    cdef object _decoder
    cdef object _inflater
    cdef object _pdec

    cpdef void feed_data(self, object data)

    @cython.locals(p="const unsigned char *", n=Py_ssize_t, pos=Py_ssize_t, avail=Py_ssize_t,
                   start=Py_ssize_t, end=Py_ssize_t, length=Py_ssize_t, b0="unsigned char",
                   b1="unsigned char", opcode=int, events=list, max_size=Py_ssize_t)
    cdef Py_ssize_t _parse(self, bytes buf) except -1

    cdef bint _start_partial_utf8(self, int opcode, bytes part) except -1

    @cython.locals(opcode=int, fin=int, count=Py_ssize_t)
    cdef bint _check_header(self, int b0, int b1) except -1

    @cython.locals(opcode=int, fin=bint)
    cdef bint _frame(self, int b0, bytes payload) except -1

    @cython.locals(room=Py_ssize_t)
    cdef object _inflate(self, bytes payload, bint fin)

    @cython.locals(n=Py_ssize_t, code=int)
    cdef bint _control(self, int opcode, bytes payload) except -1

    cdef bint _fail(self, object exc) except -1

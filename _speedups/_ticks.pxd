# C-level entry points of iotcommute.payload._ticks for the other compiled modules (cimport):
# a call through Cython's exported function table, not a Python call.

cdef int text_kind_c(str text) noexcept

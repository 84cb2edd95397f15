# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The blocked map-reduce driver of the CPU engines, OpenMP-parallel (one source for all engines).

A reduction call is cut into work items: (batch, block of ``bi`` rows, chunk of j) for dense
reductions, the items of the block table for block-sparse ones (``pk_call.items``).  The items
run in a ``prange`` loop (OpenMP, dynamic schedule, no GIL), each thread with its own scratch
memory and state records.  When there are fewer items than 4 x threads (few rows, large N), or
fewer than 16 x threads and not a multiple of the threads, j is also cut into chunks of whole
tiles; each chunk leaves a partial state per row, merged afterwards in j order with the
reduction's combine rule (ties still go to the smallest j).

An *engine* (``pk_engine.h``) only reduces rows into states: the generic engine (one per op
program, ``_generic*.pyx``) and each specialised kernel (a module rendered and compiled at run
time, ``kernel_module.py``).  While a call runs on the generic engine, a kernel offered to its
:class:`Switch` (its build finished) takes over the remaining work items.

Between work items, the calling thread (OpenMP's thread 0) looks for pending signals every
:data:`SIGNAL_INTERVAL` seconds (taking the GIL briefly, only when called from the main
thread): on Ctrl-C the other threads stop at their next item and the call raises
KeyboardInterrupt.  In a process forked after this module was loaded, every call runs on one
thread (GNU OpenMP's thread pool deadlocks in a forked child; a one-thread team does not use it).
"""

from cpython.pycapsule cimport (PyCapsule_Destructor, PyCapsule_GetContext, PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New,
                                PyCapsule_SetContext)
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import threading

cdef extern from "pk_engine.h" nogil:
    const pk_engine *pk_switch_get(const pk_switch *s)
    void pk_switch_set(pk_switch *s, const pk_engine *e)
    void pk_switch_took(pk_switch *s)
    int pk_atomic_get(const int *p)
    void pk_atomic_set(int *p, int v)
    double pk_now()
    char *pk_alloc64(int64_t nbytes)

cdef extern from "Python.h":
    int pk_check_signals "PyErr_CheckSignals"() nogil  # (no `except`: the exception is kept by hand)
    void pk_err_fetch "PyErr_Fetch"(PyObject **t, PyObject **v, PyObject **tb)
    void pk_err_restore "PyErr_Restore"(PyObject *t, PyObject *v, PyObject *tb)

cdef extern from *:
    """
    #include <pthread.h>
    #ifdef _OPENMP
    #include <omp.h>
    #define PK_OPENMP 1
    #define pk_omp_in_parallel() omp_in_parallel()
    #else
    #define PK_OPENMP 0
    #define pk_omp_in_parallel() 0
    #endif
    static int pk_forked_child = 0;
    static void pk_mark_forked_child(void) { pk_forked_child = 1; }
    static int pk_register_fork_handler(void) { return pthread_atfork(NULL, NULL, pk_mark_forked_child); }
    """
    int PK_OPENMP
    int pk_forked_child
    int pk_register_fork_handler()
    int pk_omp_in_parallel() nogil

#: seconds between two looks for pending signals (Ctrl-C) during a call
SIGNAL_INTERVAL = 0.03
cdef enum:
    _MIN_PAIRS = 65536
#: calls with fewer pairs (i, j) than this run on one thread
MIN_PAIRS_PER_CALL = _MIN_PAIRS

cdef double _interval = SIGNAL_INTERVAL
cdef unsigned long _main_ident = threading.main_thread().ident
pk_register_fork_handler()

ctypedef struct drive_t:
    const pk_engine *e
    const pk_call *c
    pk_switch *sw
    int64_t bi, nbi, nch, chunk, nitems
    char *partial
    int ranges
    int cancel       # set by thread 0 on a pending signal, or by a thread out of memory
    int failed       # a thread could not allocate its memory
    int check        # look for signals (called from the main thread)
    double next_check
    PyObject *et
    PyObject *ev
    PyObject *etb

ctypedef struct thread_t:
    const pk_engine *cur
    char *scratch
    char *states


cdef thread_t *_thread_new(drive_t *d) noexcept nogil:
    cdef thread_t *t = <thread_t *>malloc(sizeof(thread_t))
    if t == NULL:
        return NULL
    t.cur = NULL
    t.scratch = NULL
    t.states = NULL
    if _thread_use(t, d.e):
        free(t)
        return NULL
    return t


cdef int _thread_use(thread_t *t, const pk_engine *e) noexcept nogil:
    """Memory for engine e (0), or -1 (t unchanged)."""
    cdef int64_t rows = e.bi if e.bi > e.bir else e.bir
    cdef char *scratch = pk_alloc64(e.scratch_bytes)
    cdef char *states = pk_alloc64(rows * e.state_bytes)
    if scratch == NULL or states == NULL:
        free(scratch)
        free(states)
        return -1
    free(t.scratch)
    free(t.states)
    t.scratch = scratch
    t.states = states
    t.cur = e
    return 0


cdef void _thread_free(thread_t *t) noexcept nogil:
    if t != NULL:
        free(t.scratch)
        free(t.states)
        free(t)


cdef void _check_signals(drive_t *d) noexcept nogil:
    cdef double now = pk_now()
    if now < d.next_check:
        return
    d.next_check = now + _interval
    with gil:
        if pk_check_signals() != 0:
            pk_err_fetch(&d.et, &d.ev, &d.etb)
            pk_atomic_set(&d.cancel, 1)


cdef bint _skip(drive_t *d, thread_t *t) noexcept nogil:
    """True when this item must not run (cancelled call, or no memory for this thread)."""
    if t == NULL:
        d.failed = 1
        pk_atomic_set(&d.cancel, 1)
        return True
    if d.check and threadid() == 0:
        _check_signals(d)
    return pk_atomic_get(&d.cancel) != 0


cdef void _item(drive_t *d, int64_t item, thread_t *t) noexcept nogil:
    cdef const pk_call *c = d.c
    cdef const pk_engine *e
    cdef const pk_engine *ne
    cdef int64_t b, i0, i1, r0, r1, r, ch = 0, niv = 1, step, blk, sb
    cdef int64_t ivbuf[2]
    cdef const int64_t *iv = ivbuf
    cdef const int64_t *it
    if _skip(d, t):
        return
    if d.sw != NULL:  # a kernel finished compiling: take it up (its own scratch and states)
        ne = pk_switch_get(d.sw)
        if ne != NULL and ne != t.cur:
            _thread_use(t, ne)  # (keeps the current engine when out of memory)
        if ne != NULL and ne == t.cur:
            pk_switch_took(d.sw)
    e = t.cur
    if d.ranges:
        it = c.items + 4 * item
        b = it[0]
        i0 = it[1]
        i1 = it[2]
        blk = it[3]
        iv = c.ivals + 2 * c.ivoff[blk]
        niv = c.ivoff[blk + 1] - c.ivoff[blk]
        step = e.bir
    else:
        ch = item % d.nch
        r = item // d.nch
        b = r // d.nbi
        i0 = (r % d.nbi) * d.bi
        i1 = i0 + d.bi if i0 + d.bi < c.nx else c.nx
        ivbuf[0] = ch * d.chunk
        ivbuf[1] = ivbuf[0] + d.chunk if ivbuf[0] + d.chunk < c.ny else c.ny
        step = e.bi
    sb = e.state_bytes
    r0 = i0
    while r0 < i1:
        r1 = r0 + step if r0 + step < i1 else i1
        e.init(e.self, t.states, r1 - r0)
        e.process(e.self, c, b, r0, r1, iv, niv, t.states, t.scratch)
        if d.nch == 1:
            e.finalize(e.self, c, t.states, b * c.nx + r0, r1 - r0)
        else:
            for r in range(r0, r1):
                memcpy(d.partial + ((b * c.nx + r) * d.nch + ch) * sb, t.states + (r - r0) * sb, sb)
        r0 = r1


cdef void _merge(drive_t *d, int64_t item, thread_t *t) noexcept nogil:
    """Rows of block item: combine their j chunks in j order, write the outputs."""
    cdef const pk_call *c = d.c
    cdef const pk_engine *e = d.e
    cdef int64_t b, i0, i1, i, ch, sb = e.state_bytes
    cdef char *rec
    if _skip(d, t):
        return
    b = item // d.nbi
    i0 = (item % d.nbi) * d.bi
    i1 = i0 + d.bi if i0 + d.bi < c.nx else c.nx
    for i in range(i0, i1):
        rec = d.partial + (b * c.nx + i) * d.nch * sb
        for ch in range(1, d.nch):
            e.combine(e.self, rec, rec + ch * sb, t.scratch)
        e.finalize(e.self, c, rec, b * c.nx + i, 1)


cdef void _run_items(drive_t *d, int nthreads, int64_t count, bint merge) noexcept nogil:
    cdef thread_t *t
    cdef Py_ssize_t item
    with parallel(num_threads=nthreads):
        t = _thread_new(d)
        for item in prange(<Py_ssize_t>count, schedule="dynamic"):
            if merge:
                _merge(d, item, t)
            else:
                _item(d, item, t)
        _thread_free(t)


cdef int _drive(const pk_engine *e, const pk_call *c, pk_switch *sw, bint check, PyObject **exc) noexcept nogil:
    """0: done; 1: out of memory; 2: interrupted (exc[0:3]: the exception, to restore with the GIL)."""
    cdef drive_t d
    cdef int64_t items, want, most, tj, k
    cdef int n = <int>c.nthreads
    memset(&d, 0, sizeof(d))
    d.e = e
    d.c = c
    d.sw = sw
    d.check = check
    d.nch = 1
    d.chunk = c.ny if c.ny > 0 else 1
    if <double>c.nbatch * <double>c.nx * <double>c.ny < _MIN_PAIRS or n < 1:
        n = 1
    if pk_forked_child or pk_omp_in_parallel():
        n = 1
    if c.items != NULL:
        d.ranges = 1
        d.bi = e.bir
        d.nitems = c.nitems
    else:
        d.bi = e.bi
        d.nbi = (c.nx + e.bi - 1) // e.bi
        items = c.nbatch * d.nbi
        tj = e.tj
        if n > 1 and (items < 4 * n or (items < 16 * n and items % n != 0)):
            # few items: at least 4 a thread, and a multiple of the threads while the last round
            # counts (with 11 items on 2 threads, one thread idles 9% of the time); not more:
            # each chunk starts its selections (K-min lists) anew
            want = (4 * n + items - 1) // items
            k = 0
            while (items * want) % n != 0 and k < n:
                want += 1
                k += 1
            most = c.ny // (2 * tj)
            d.nch = want if want < most else most
            if d.nch < 1:
                d.nch = 1
            d.chunk = ((c.ny + d.nch - 1) // d.nch + tj - 1) // tj * tj  # whole tiles
            d.nch = (c.ny + d.chunk - 1) // d.chunk
        if d.nch > 1:
            d.sw = NULL  # partial states are in this engine's layout: no switch
            d.partial = pk_alloc64(c.nbatch * c.nx * d.nch * e.state_bytes)
            if d.partial == NULL:
                return 1
        d.nitems = items * d.nch
    if d.nitems <= 0:
        return 0
    if n > d.nitems:
        n = <int>d.nitems
    d.next_check = pk_now() + _interval
    _run_items(&d, n, d.nitems, False)
    if d.nch > 1 and not pk_atomic_get(&d.cancel):
        items = c.nbatch * d.nbi  # the merge: one item per block of rows
        _run_items(&d, n if n < items else <int>items, items, True)
    free(d.partial)
    if d.et != NULL or d.ev != NULL:
        exc[0] = d.et
        exc[1] = d.ev
        exc[2] = d.etb
        return 2
    if d.failed:
        return 1
    return 0


cdef class Switch:
    """Lets a call running on the generic engine take up a specialised kernel between work items.

    ``offer(capsule)`` (from any thread) hands over the engine of a kernel module of the same
    spec; the call's threads switch at their next work item (calls whose j is split into
    chunks keep their engine: partial states have the engine's layout).
    """

    def __cinit__(self):
        self.sw.next = NULL
        self.sw.taken = 0
        self.keep = None

    def offer(self, capsule):
        cdef const pk_engine *e = _engine_of(capsule)
        self.keep = capsule
        pk_switch_set(&self.sw, e)

    @property
    def offered(self) -> bool:
        return pk_switch_get(&self.sw) != NULL

    @property
    def taken(self) -> int:
        """Work items that ran on the offered engine."""
        return self.sw.taken


cdef const pk_engine *_engine_of(capsule) except NULL:
    if not PyCapsule_IsValid(capsule, b"polykeops.pk_engine"):
        raise TypeError(f"not a polykeops CPU engine: {capsule!r}")
    return <const pk_engine *>PyCapsule_GetPointer(capsule, b"polykeops.pk_engine")


cdef int run_engine(const pk_engine *e, object p, Switch switch) except -1:
    """Run engine e on the prepared call p (call.PreparedCall); raises MemoryError or the
    exception of a signal handler (KeyboardInterrupt)."""
    cdef pk_call c
    cdef const void *abuf[32]
    cdef void *obuf[8]
    cdef const void **args = abuf
    cdef void **outs = obuf
    cdef const int64_t[:, ::1] boff = p.boff
    cdef const int64_t[:, ::1] items
    cdef const int64_t[::1] ivoff
    cdef const int64_t[:, ::1] ivals
    cdef tuple aptr = p.arg_ptrs
    cdef tuple optr = p.out_ptrs
    cdef Py_ssize_t na = len(aptr), no = len(optr), k
    cdef pk_switch *sw = NULL
    cdef bint check = PyThread_get_thread_ident() == _main_ident
    cdef int err
    cdef PyObject *exc[3]
    memset(&c, 0, sizeof(c))
    if na > 32:
        args = <const void **>malloc(sizeof(void *) * na)
    if no > 8:
        outs = <void **>malloc(sizeof(void *) * no)
    if args == NULL or outs == NULL:
        raise MemoryError("polykeops CPU engine: out of memory")
    try:
        for k in range(na):
            args[k] = <const void *><size_t>aptr[k]
        for k in range(no):
            outs[k] = <void *><size_t>optr[k]
        c.nx = p.nx
        c.ny = p.ny
        c.nbatch = boff.shape[0]
        c.nthreads = p.nthreads
        c.args = args
        c.outs = outs
        c.boff = &boff[0, 0] if boff.shape[1] > 0 else NULL
        if p.items is not None:
            items = p.items
            ivoff = p.ivoff
            ivals = p.ivals
            c.nitems = items.shape[0]
            c.items = &items[0, 0] if items.shape[0] > 0 else <const int64_t *>args  # (never read)
            c.ivoff = &ivoff[0]
            c.ivals = &ivals[0, 0] if ivals.shape[0] > 0 else NULL
        if switch is not None:
            sw = &switch.sw
        with nogil:
            err = _drive(e, &c, sw, check, exc)
    finally:
        if args != abuf:
            free(args)
        if outs != obuf:
            free(outs)
    if err == 2:
        pk_err_restore(exc[0], exc[1], exc[2])  # the signal handler's exception (KeyboardInterrupt)
        return -1
    if err == 1:
        raise MemoryError("polykeops CPU engine: out of memory for its work buffers")
    return 0


cdef extern from "dlfcn.h" nogil:
    void *dlopen(const char *filename, int flag)
    void *dlsym(void *handle, const char *symbol)
    int dlclose(void *handle)
    char *dlerror()
    int RTLD_NOW
    int RTLD_LOCAL


ctypedef const pk_engine *(*pk_engine_getter)()
#: loaded kernel libraries not yet unloaded (diagnostics and tests)
cdef Py_ssize_t _libraries_loaded = 0


cdef void _unload_library(object capsule) noexcept:
    global _libraries_loaded
    cdef void *handle = PyCapsule_GetContext(capsule)
    if handle != NULL:
        dlclose(handle)
        _libraries_loaded -= 1


def load_engine(path):
    """The engine of the kernel library at ``path`` as a capsule that owns the library.

    The library is mapped with ``dlopen`` (its Python module is never initialised: the engine is
    plain C, reached through the exported ``pk_kernel_engine_get``) and unmapped by ``dlclose``
    when the last reference to the capsule goes (the kernel table, a running call, a
    :class:`Switch`).  Raises OSError with the loader's message when the library is rejected.
    """
    global _libraries_loaded
    cdef bytes bpath = str(path).encode()
    cdef const char *cpath = bpath
    cdef void *handle
    cdef void *sym
    cdef const pk_engine *e
    with nogil:
        handle = dlopen(cpath, RTLD_NOW | RTLD_LOCAL)
    if handle == NULL:
        msg = dlerror()
        raise OSError(f"cannot load the kernel library {path}: "
                      f"{msg.decode(errors='replace') if msg != NULL else 'unknown loader error'}")
    sym = dlsym(handle, b"pk_kernel_engine_get")
    if sym == NULL:
        dlclose(handle)
        raise OSError(f"{path} is not a polykeops kernel library (no pk_kernel_engine_get)")
    e = (<pk_engine_getter>sym)()
    capsule = PyCapsule_New(<void *>e, b"polykeops.pk_engine", <PyCapsule_Destructor>_unload_library)
    PyCapsule_SetContext(capsule, handle)
    _libraries_loaded += 1
    return capsule


def libraries_loaded() -> int:
    """Kernel libraries mapped by :func:`load_engine` and not yet unmapped."""
    return _libraries_loaded


def run_kernel(capsule, prepared, Switch switch=None):
    """Run a specialised kernel (the capsule of its module's ``engine()``) on a prepared call."""
    run_engine(_engine_of(capsule), prepared, switch)


def engine_info(capsule) -> dict:
    """Sizes of an engine: rows per item (``bi``, ``bir``), columns per tile, bytes."""
    cdef const pk_engine *e = _engine_of(capsule)
    return dict(bi=e.bi, bir=e.bir, tj=e.tj, scratch_bytes=e.scratch_bytes, state_bytes=e.state_bytes)


def openmp() -> bool:
    """True when this driver was compiled with OpenMP (else it runs on the calling thread)."""
    return bool(PK_OPENMP)


def forked_child() -> bool:
    """True in a process forked after this module was loaded (its calls run on one thread)."""
    return bool(pk_forked_child)

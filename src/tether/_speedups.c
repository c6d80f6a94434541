/*
 * tether._speedups: the check-out and give-back fast paths in C.
 *
 * Optional. pool.py holds the reference implementation of every function here and uses it
 * when this module is missing or TETHER_NO_SPEEDUPS is set; the test suite runs against both.
 * Only the common case lives here, decided exactly as pool.py decides it: this thread's last
 * connection, idle, fresh, quiet socket; a clean give-back with nobody waiting. Everything
 * else calls back into the Python methods (_checkout, _usable, _checkin, _release_slow, ...).
 *
 * Why C: the fast paths' Python bytecode (5 frames, some 80 attribute operations) costs 3 us
 * alone, the same decisions in C 0.7-0.8 us. In context (a request of 60-150 us, the server's
 * work on the same core between two requests) both cost several times more: what counts
 * there is how many distinct code and data cache lines a check-out touches, cold, and much
 * of that is CPython's own (threading.local, the idle/in-use dicts, allocation). So the C
 * here also avoids what it can of that: C counters, the status reader called directly, small
 * ints read inline, the thread's last connection found in a table keyed by the thread state
 * (else read from threading.local's per-thread dict), entries left parked
 * in the dict they are filed in (no dict operations per request), the caller's frame read
 * without making a frame object of it, the last give-back's proxy handed out again when
 * nothing else can see it (no allocation, finalizer and deallocation per request), a cursor
 * class's driver execute kept while the class is unchanged, the state a request reads packed
 * into a few lines, and the code it runs too (rare branches out of line: see HOT_PATH).
 *
 * The objects are pool.py's: Pool, _Entry and PooledConnection keep their state in
 * __slots__, and bind() looks up each slot's offset once from its member descriptor (the
 * layout CPython itself uses to read a slot); the numbers among it (timestamps, flags,
 * process ids, status bits) are C values in the classes Pool and _Entry extend here
 * (PoolCore, EntryCore). The pool's lock is its threading.Lock, taken through the lock
 * type's own acquire/release.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#define STATUS_SESSION_STATE_CHANGED 0x4000

/* Code layout. Between two requests the fast paths' code is as cold as their data, and a
 * request pays for every distinct cache line it runs: so what a request runs should sit in
 * as few lines as possible. Rare branches (errors, slow paths) go out of line into COLD
 * functions, which the compiler puts in a section of their own; the functions a request
 * runs share one section (HOT_PATH), side by side, so that a short one does not take a line
 * to itself. (bench/cold.py counts the lines.) */
#if defined(__GNUC__)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define COLD __attribute__((cold, noinline))
#else
#define UNLIKELY(x) (x)
#define LIKELY(x) (x)
#define COLD
#endif
#if defined(__GNUC__) && defined(__ELF__)
#define HOT_PATH __attribute__((section(".text.tether_hot")))
#else
#define HOT_PATH
#endif

#ifndef TETHER_SOURCE_SHA256
#define TETHER_SOURCE_SHA256 "" /* built without setup.py */
#endif

#if PY_VERSION_HEX < 0x030B0000
#error "tether._speedups needs CPython 3.11 or later (PyFrame_GetLasti)"
#endif

/* Where a connection was acquired: the caller's code and instruction offset. CPython 3.11
 * keeps them in its interpreter frame; PyEval_GetFrame() would first build a frame object for
 * it (an allocation, and a copy when the caller returns), so on 3.11 they are read from the
 * interpreter frame directly, exactly as PyFrame_GetLasti() reads them. Other versions take
 * the public route. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(Py_GIL_DISABLED)
#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE
#define TETHER_PEEK_FRAME 1
#endif

/* ------------------------------------------------------------------ bound state */

/* What a request reads comes first and packed (slot offsets as 32-bit ints), in four cache
 * lines: between requests they are as cold as the rest, and each line is a miss. */
typedef int32_t Offset;
typedef struct {
    PyTypeObject *pool_type, *entry_type, *proxy_type, *lock_type;
    PyObject *idle, *in_use;             /* the entry states, compared by identity */
    PyObject *lock_release;
    PyTypeObject *deque_type; /* collections.deque: Pool._leaked and _waiters */
    double trusted;
    int lock_mirror; /* the lock's `locked` field can be read directly (LockMirror) */
    int tstate_ident; /* PyThreadState.thread_id is threading.get_ident() (checked at bind) */
    int bound;        /* bind() was called */
    volatile pid_t current_pid; /* see after_fork_in_child() */
    /* Pool slots */
    Offset p_counters, p_hold_times, p_leaked, p_local, p_lock, p_waiters, p_leak_timeout,
        p_timeout,
        p_by_thread;
    /* _Entry slots */
    Offset e_acquired, e_cursor_class, e_gen, e_fd, e_raw, e_spare, e_state, e_status;
    /* PooledConnection slots */
    Offset c_entry, c_gen, c_pool, c_raw;
    /* the rest: slow paths */
    PyObject *zero;
    PyObject *lock_acquire, *lock_locked; /* _thread.lock's methods */
    PyTypeObject *local_type, *local_dummy_type; /* threading.local and its per-thread holder */
    int local_mirror; /* a threading.local's per-thread dict can be found directly */
    /* interned names */
    PyObject *s_last, *s_usable, *s_checkout, *s_record_stack, *s_checkin,
        *s_release_slow, *s_on_proxy_collected, *s_abandon_checkout, *s_timeout, *s_acquire,
        *s_release, *s_tether_conn, *s_tether_gen, *s_tether_base, *s_tether_unbuffered,
        *s_tether_open, *s_tether_run, *s_tether_redo, *s_failed, *s_read_status, *s_execute;
    PyObject *cursor_py, *execute_py; /* the Python methods, for every other call shape */
    getattrofunc proxy_getattro_hook; /* PooledConnection's own tp_getattro (calls __getattr__) */
} State;

#if defined(__GNUC__)
static State S __attribute__((aligned(64)));
#else
static State S;
#endif

/* The numbers a request reads and writes, as C values in the objects themselves: _Entry's
 * timestamps, flags, process, status bits and streaming cursors (EntryCore), and the pool's
 * process, clean bits and settings (PoolCore). pool.py's _Entry and Pool extend these
 * classes (without the compiled module, classes with a slot for each). As slots, each
 * timestamp was a float object of its own and each large int too (a cache line apiece, cold
 * between requests), and every read a type check; here they share the object's first lines.
 * Python code reads and assigns them as before (float, bool, int). */
typedef struct {
    PyObject_HEAD
    double busy_since, checked_out_at, expires, last_active, returned_at;
    long long pid, last_status;
    Py_ssize_t unbuffered;
    unsigned long long owner; /* the owner's thread ident, or minus a negative one */
    char owner_kind;          /* OWNER_NONE (owner is None), OWNER_IDENT or OWNER_NEGATIVE */
    char broken, leak_reported, parked, session_dirty, tainted;
} EntryCore;
enum { OWNER_NONE, OWNER_IDENT, OWNER_NEGATIVE };
#define CORE(entry) ((EntryCore *)(entry))
static PyTypeObject EntryCoreType;

typedef struct {
    PyObject_HEAD
    double fresh_for;
    long long pid, release_mask, clean_bits;
    Py_ssize_t fast_checkouts, parked; /* added to under the pool's lock */
    char closed;
} PoolCore;
#define PCORE(pool) ((PoolCore *)(pool))
static PyTypeObject PoolCoreType;

/* Pool._by_thread: each thread's last connection of one pool, by the thread state's unique
 * id (never reused, unlike a thread ident), in a direct-mapped table. The check-out finds it
 * with one read of one cache line, where threading.local takes two dict look-ups (the
 * thread state's dict, then the thread's own) and the objects in between: about 25 of the
 * 100 lines the compiled check-out touches, cold. A cache, not the record: a thread missing
 * from it (never seen, or evicted by a thread whose id lands in the same place) is found
 * through Pool._local as before and put here, and whatever is found here is checked as
 * everything else the fast path hands out (idle, this thread's, this process's). */
#define THREAD_SLOTS 64 /* a power of two: threads with consecutive ids never collide */
typedef struct {
    uint64_t id; /* PyThreadState.id + 1: 0 is an empty place */
    PyObject *entry;
} ThreadSlot;

typedef struct {
    PyObject_HEAD
    ThreadSlot slots[THREAD_SLOTS];
} ThreadCache;

static PyTypeObject ThreadCacheType;

/* The last `maxlen` durations (Pool._hold_times, _wait_times): a ring of C doubles. The
 * compiled give-back adds to it directly, without a method call, a float object and the
 * deque's block bookkeeping per request; Python code appends and iterates as with a
 * deque(maxlen=...). */
typedef struct {
    PyObject_HEAD
    Py_ssize_t maxlen, count, next; /* count <= maxlen; next: where the next value goes */
    double *values;
} Samples;

static PyTypeObject SamplesType;

HOT_PATH static void
samples_add(Samples *s, double v)
{
    s->values[s->next] = v;
    if (++s->next == s->maxlen) {
        s->next = 0;
    }
    if (s->count < s->maxlen) {
        s->count++;
    }
}

/* mariadb_get_info(mysql, MARIADB_CONNECTION_SERVER_STATUS, &out) for mysqlclient: the status
 * bits the client library kept from the server's last reply, read without a round trip. */
typedef char (*get_info_fn)(void *, int, void *);

/* What both status readers begin with: the object they read from, kept alive with them (the
 * only reference they hold that can be part of a cycle). One pair of garbage collector
 * functions serves both. */
typedef struct {
    PyObject_HEAD
    PyObject *owner;
} OwnerRef;

typedef struct {
    PyObject_HEAD
    PyObject *owner; /* the driver connection that owns the handle */
    get_info_fn fn;
    void *handle;
    int key;
    vectorcallfunc vectorcall;
} StatusReader;

static PyTypeObject StatusReaderType;

/* getattr(owner, name) for PyMySQL, which keeps the last reply's status bits in an attribute
 * of its connection (server_status): the fast paths make the look-up directly, where a
 * partial of getattr went through the partial, the getattr builtin and its argument
 * handling, twice per request. */
typedef struct {
    PyObject_HEAD
    PyObject *owner;
    PyObject *name;
    vectorcallfunc vectorcall;
} AttributeReader;

_Static_assert(offsetof(StatusReader, owner) == offsetof(OwnerRef, owner) &&
                   offsetof(AttributeReader, owner) == offsetof(OwnerRef, owner),
               "both readers begin as an OwnerRef");

static PyTypeObject AttributeReaderType;

/* The bits a StatusReader reads: what calling it returns, and what the fast paths read
 * without the call. */
static unsigned int
reader_bits(StatusReader *r)
{
    unsigned int out = 0;
    r->fn(r->handle, r->key, &out);
    return out;
}

/* S.current_pid: this process's id, kept by a pthread_atfork child handler: it runs in the
 * child of every fork(), also of those made from C without Python's at-fork hooks (uWSGI's
 * workers), so comparing with it catches an inherited connection as surely as getpid(),
 * without the system call on every check-out. */
static void
after_fork_in_child(void)
{
    S.current_pid = getpid();
}

/* Built for size (-Os, setup.py): between two requests the fast paths' code is as cold as
 * their data, and a request pays for every distinct line it runs. The smallest helpers, a
 * few instructions each, are forced inline all the same: a call per field read costs more
 * than their copies. */
#if defined(__GNUC__)
#define HOT_INLINE static inline __attribute__((always_inline))
#else
#define HOT_INLINE static inline
#endif


#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* get_slot()'s error, out of line: never taken on the fast paths. */
COLD static void
slot_missing(PyObject *obj, const char *name)
{
    PyErr_Format(PyExc_AttributeError, "'%s' object has no attribute '%s'",
                 Py_TYPE(obj)->tp_name, name);
}

/* A slot's value (borrowed), or NULL with AttributeError set when it was never assigned. */
HOT_INLINE PyObject *
get_slot(PyObject *obj, Py_ssize_t off, const char *name)
{
    PyObject *v = SLOT(obj, off);
    if (UNLIKELY(v == NULL)) {
        slot_missing(obj, name);
    }
    return v;
}
#define GET(obj, field) get_slot((obj), S.field, #field + 2)

/* Stores a new reference to v in a slot. */
HOT_PATH static void
set_slot(PyObject *obj, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(obj, off);
    Py_INCREF(v);
    SLOT(obj, off) = v;
    Py_XDECREF(old);
}

/* Stores v (a new reference, consumed) in a slot; -1 if v is NULL (an error is set). */
HOT_PATH static int
set_slot_new(PyObject *obj, Py_ssize_t off, PyObject *v)
{
    if (v == NULL) {
        return -1;
    }
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = v;
    Py_XDECREF(old);
    return 0;
}

/* time.monotonic(): the same clock. */
HOT_INLINE double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The outcome of a call made for its effect: -1 if it failed (its error set), else 0 with
 * its result let go. */
HOT_INLINE int
drop_result(PyObject *r)
{
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

HOT_PATH static int
call_lock(PyObject *method, PyObject *lock)
{
    PyObject *r;
    if (Py_IS_TYPE(lock, S.lock_type)) {
        PyObject *args[1] = {lock};
        r = PyObject_Vectorcall(method, args, 1, NULL);
    }
    else {
        /* Anything else with acquire() and release() (tests instrument the lock). */
        r = PyObject_CallMethodNoArgs(
            lock, method == S.lock_acquire ? S.s_acquire : S.s_release);
    }
    return drop_result(r);
}

#if PY_VERSION_HEX < 0x030D0000
/* _thread.lock's object in CPython 3.11 and 3.12 (Modules/_threadmodule.c): its locked()
 * returns the `locked` field, which acquire() sets and release() clears under the GIL. Read
 * here directly instead of through a method call; bind() first checks the layout on a lock
 * of its own (S.lock_mirror), and without that check passing locked() is called. */
typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock_lock;
    PyObject *in_weakreflist;
    char locked;
} LockMirror;
#define TETHER_LOCK_MIRROR 1

/* threading.local's objects in the same versions: the local holds the key of this thread's
 * holder in the thread state's dict, and the holder the thread's own attribute dict. The
 * check-out reads `local.last` from there: two dict look-ups by identity, where the attribute
 * protocol (local_getattro) also finds the module state, compares the name with "__dict__"
 * and looks the name up on the type, all of it code and data a request otherwise never
 * touches. bind() first checks the layout on a local of its own (S.local_mirror). */
typedef struct {
    PyObject_HEAD
    PyObject *key;
    PyObject *args;
    PyObject *kw;
    PyObject *weakreflist;
    PyObject *dummies;
    PyObject *wr_callback;
} LocalMirror;

typedef struct {
    PyObject_HEAD
    PyObject *localdict;
    PyObject *weakreflist;
} LocalDummyMirror;
#define TETHER_LOCAL_MIRROR 1
#endif

#ifdef TETHER_LOCAL_MIRROR
/* This thread's attribute dict of a threading.local (borrowed), or NULL: not there yet (the
 * thread's first use makes it through the attribute protocol), or an error set. */
static PyObject *
local_dict(PyObject *local)
{
    PyObject *tdict = PyThreadState_GetDict(), *key = ((LocalMirror *)local)->key;
    if (tdict == NULL || key == NULL) {
        return NULL;
    }
    PyObject *dummy = PyDict_GetItemWithError(tdict, key);
    if (dummy == NULL || !Py_IS_TYPE(dummy, S.local_dummy_type)) {
        return NULL;
    }
    PyObject *ldict = ((LocalDummyMirror *)dummy)->localdict;
    return ldict != NULL && PyDict_CheckExact(ldict) ? ldict : NULL;
}
#endif

/* getattr(local, "last") as a new reference; NULL with AttributeError set when unset. */
static PyObject *
local_last(PyObject *local)
{
#ifdef TETHER_LOCAL_MIRROR
    if (S.local_mirror && Py_IS_TYPE(local, S.local_type)) {
        PyObject *ldict = local_dict(local);
        if (ldict != NULL) {
            PyObject *v = PyDict_GetItemWithError(ldict, S.s_last);
            if (v != NULL) {
                return Py_NewRef(v);
            }
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
#endif
    return PyObject_GetAttr(local, S.s_last);
}

/* The pool's lock for a short section that runs entirely in this module: no Python code, no
 * allocation of objects the garbage collector tracks, nothing that lets go of the GIL. While
 * the lock is free no thread is inside a section of its own, and none can start one before
 * this thread lets go of the GIL at the end of ours: the GIL alone keeps the section atomic
 * and the lock's acquire/release round (which parses arguments each time) is skipped. Sets
 * *taken when the lock had to be acquired; -1 on error. */
HOT_PATH static int
enter_section(PyObject *lock, int *taken)
{
    *taken = 0;
#ifndef Py_GIL_DISABLED
    if (Py_IS_TYPE(lock, S.lock_type)) {
#ifdef TETHER_LOCK_MIRROR
        if (S.lock_mirror) {
            if (!((LockMirror *)lock)->locked) {
                return 0;
            }
            goto acquire;
        }
#endif
        PyObject *args[1] = {lock};
        PyObject *held = PyObject_Vectorcall(S.lock_locked, args, 1, NULL);
        if (held == NULL) {
            return -1;
        }
        Py_DECREF(held);
        if (held == Py_False) {
            return 0;
        }
    }
#endif
#ifdef TETHER_LOCK_MIRROR
acquire:
#endif
    if (call_lock(S.lock_acquire, lock) < 0) {
        return -1;
    }
    *taken = 1;
    return 0;
}

/* Releases the lock whether or not an error is pending, keeping the pending one. */
static int
release_keeping_error(PyObject *lock)
{
    if (!PyErr_Occurred()) {
        return call_lock(S.lock_release, lock);
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int r = call_lock(S.lock_release, lock);
    if (r < 0) {
        PyErr_Clear();
    }
    PyErr_Restore(type, value, tb);
    return -1;
}

/* An exact int of at most two digits (|v| < 2**60: pids, thread idents, status bits and
 * masks, counts), read inline from CPython 3.11's representation: the call into the runtime
 * (PyLong_AsLong and kin, each a separate stretch of code, cold between requests) costs
 * more cache lines than the object's own. 1 with *out set; 0 for anything else, which the
 * caller reads through the API. */
HOT_INLINE int
small_int(PyObject *v, long long *out)
{
#if PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
    if (PyLong_CheckExact(v)) {
        const digit *d = ((PyLongObject *)v)->ob_digit;
        switch (Py_SIZE(v)) {
        case 0:
            *out = 0;
            return 1;
        case 1:
            *out = (long long)d[0];
            return 1;
        case -1:
            *out = -(long long)d[0];
            return 1;
        case 2:
            *out = ((long long)d[1] << PyLong_SHIFT) | (long long)d[0];
            return 1;
        case -2:
            *out = -(((long long)d[1] << PyLong_SHIFT) | (long long)d[0]);
            return 1;
        }
    }
#endif
    return 0;
}

/* An int's value as a long long: inline when small_int() can, else PyLong_AsLongLong. */
HOT_INLINE int
as_ll(PyObject *v, long long *out)
{
    if (small_int(v, out)) {
        return 0;
    }
    *out = PyLong_AsLongLong(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

HOT_PATH static int
truthy(PyObject *obj, Py_ssize_t off, const char *name)
{
    PyObject *v = get_slot(obj, off, name);
    if (v == NULL) {
        return -1;
    }
    if (v == Py_False || v == Py_None) {
        return 0;
    }
    if (v == Py_True) {
        return 1;
    }
    long long n;
    if (small_int(v, &n)) {
        return n != 0;
    }
    if (Py_IS_TYPE(v, S.deque_type)) {
        return Py_SIZE(v) != 0; /* a deque keeps its length where every var-object does */
    }
    return PyObject_IsTrue(v);
}
/* A flag's truth. Most are False on every request: that case inline, without a call (some
 * 90 fewer instructions per request); anything else (counts, deques, unset) in truthy(). */
#define TRUTHY(obj, field)                                                                     \
    (SLOT((obj), S.field) == Py_False ? 0 : truthy((obj), S.field, #field + 2))

HOT_INLINE int
same_int(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

/* A fast path's change of the entry's state between idle and in use, the entry left in the
 * dict it is filed in: parked if it was filed by its state, filed if it was parked
 * (Pool._toggle_parked_locked). Runs no Python code. */
HOT_PATH static void
toggle_parked(PyObject *pool, PyObject *entry, PyObject *state)
{
    int was = CORE(entry)->parked;
    set_slot(entry, S.e_state, state);
    CORE(entry)->parked = !was;
    PCORE(pool)->parked += was ? -1 : 1;
}

/* The server status bits of the entry's last reply: its StatusReader read directly (no call
 * through the object protocol, no int object), or any other reader called. */
HOT_PATH static int
status_bits(PyObject *status, long long *out)
{
    if (Py_IS_TYPE(status, &StatusReaderType)) {
        *out = reader_bits((StatusReader *)status);
        return 0;
    }
    Py_INCREF(status); /* the call may run code that replaces the entry's reader */
    PyObject *bits;
    if (Py_IS_TYPE(status, &AttributeReaderType)) {
        AttributeReader *a = (AttributeReader *)status;
        bits = PyObject_GetAttr(a->owner, a->name);
    }
    else {
        bits = PyObject_CallNoArgs(status);
    }
    Py_DECREF(status);
    if (bits == NULL) {
        return -1;
    }
    int r = as_ll(bits, out);
    Py_DECREF(bits);
    return r;
}

COLD static int
not_bound(void)
{
    PyErr_SetString(PyExc_RuntimeError, "tether._speedups: bind() was not called");
    return -1;
}

HOT_INLINE int
check_bound(void)
{
    return LIKELY(S.bound) ? 0 : not_bound();
}

/* ThreadCache's key of a thread (its thread state's unique id, plus one) and its place. */
static inline uint64_t
thread_key(PyThreadState *tstate)
{
    return tstate->id + 1;
}

static inline ThreadSlot *
thread_slot(ThreadCache *c, PyThreadState *tstate)
{
    return &c->slots[thread_key(tstate) & (THREAD_SLOTS - 1)];
}

/* The thread's connection in its place (borrowed), or NULL: another thread's, or none. */
static inline PyObject *
thread_slot_entry(ThreadSlot *slot, PyThreadState *tstate)
{
    return slot->id == thread_key(tstate) ? slot->entry : NULL;
}

/* ------------------------------------------------------------------ check-out */

/* Whether an idle connection's socket is readable or in error: the server closed it, or sent
 * an error before closing (wait_timeout, KILL, shutdown); an idle socket has nothing else to
 * read. pool.py asks entry.poller (registered for the same fd and events); select.poll lets
 * go of the GIL around every call, and taking it back costs a hand-off, with many threads a
 * thread switch. A zero timeout never blocks, so here poll() runs holding the GIL.
 * 1 readable, 0 quiet, -1 an error set. */
static int
socket_readable(PyObject *entry)
{
    PyObject *fd = GET(entry, e_fd);
    if (fd == NULL) {
        return -1;
    }
    long n = PyLong_AsLong(fd);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (n < 0 || n > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "connection socket descriptor out of range: %ld", n);
        return -1;
    }
    struct pollfd p = {.fd = (int)n, .events = POLLIN | POLLPRI};
    int ready;
    do {
        ready = poll(&p, 1, 0);
    } while (ready < 0 && errno == EINTR);
    if (ready < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* POLLERR, POLLHUP and POLLNVAL are reported whether asked for or not. */
    return ready > 0 && p.revents != 0;
}

/* Takes `last` for this thread when it may be taken without the slow path: an entry, idle,
 * still owned by this thread, the pool open and not holding leaked connections, this process
 * the pool's. Marks it in use (parked) and counts the check-out; 1 taken, 0 not, -1 error. */
HOT_INLINE int /* two call sites: the cached case's copy runs straight through */
take_own(PyObject *self, PyObject *last, PyObject *timeout, unsigned long ident)
{
    if (last == Py_None || !PyObject_TypeCheck(last, S.entry_type) ||
        SLOT(last, S.e_state) != S.idle) {
        return 0;
    }
    if (timeout != Py_None) {
        int positive = PyObject_RichCompareBool(timeout, S.zero, Py_GT);
        if (positive <= 0) {
            return positive;
        }
    }
    if ((long long)S.current_pid != PCORE(self)->pid) {
        return 0;
    }
    PyObject *lock = GET(self, p_lock);
    if (lock == NULL) {
        return -1;
    }
    Py_INCREF(lock); /* the slot may be reassigned (after a fork) while we wait */
    int locked;
    if (enter_section(lock, &locked) < 0) {
        Py_DECREF(lock);
        return -1;
    }
    int take = 0;
    /* Owner checked in the section (under the lock, or the GIL alone: enter_section):
     * another thread may have taken this connection (at the bound) and given it back since
     * this thread last used it. */
    if (SLOT(last, S.e_state) == S.idle) {
        int mine = CORE(last)->owner_kind == OWNER_IDENT && CORE(last)->owner == ident;
        int bad = 0;
        if (mine) {
            bad = CORE(last)->tainted;
            if (bad == 0) {
                bad = PCORE(self)->closed;
            }
            if (bad == 0) {
                bad = TRUTHY(self, p_leaked);
            }
        }
        if (bad < 0) {
            if (locked) {
                release_keeping_error(lock);
            }
            Py_DECREF(lock);
            return -1;
        }
        if (mine && !bad) {
            toggle_parked(self, last, S.in_use);
            PCORE(self)->fast_checkouts++;
            take = 1;
        }
    }
    int released = locked ? call_lock(S.lock_release, lock) : 0;
    Py_DECREF(lock);
    return released < 0 ? -1 : take;
}

/* Pool._abandon_checkout(entry, exc) for a check-out that failed after taking `entry` (an
 * error set): closed and its slot freed, as pool.py does. The error stays; should the call
 * fail, its error takes over with the first as its context, as in an except block. */
COLD static void
abandon_checkout(PyObject *self, PyObject *entry)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value == NULL) {
        PyErr_Restore(type, value, tb);
        return;
    }
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyObject *r = PyObject_CallMethodObjArgs(self, S.s_abandon_checkout, entry, value, NULL);
    if (r == NULL) {
        _PyErr_ChainExceptions(type, value, tb);
        return;
    }
    Py_DECREF(r);
    PyErr_Restore(type, value, tb);
}

/* own_idle()'s look-up when the thread's place in Pool._by_thread does not give a
 * connection to take: the record, Pool._local, as pool.py reads it; what it gives is put in
 * the thread's place. `cached` (consumed): what the place held, or NULL. A new reference to
 * the entry taken, Py_None (take the slow path) or NULL (an error). Out of line: a thread
 * comes here once, then finds its connection in its place. */
COLD static PyObject *
own_idle_recorded(PyObject *self, PyObject *timeout, PyObject *cached, ThreadSlot *slot,
                  PyThreadState *tstate, unsigned long ident)
{
    PyObject *local = GET(self, p_local);
    PyObject *last = local ? local_last(local) : NULL;
    if (last == NULL) {
        Py_XDECREF(cached);
        if (local == NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int take = last != cached ? take_own(self, last, timeout, ident) : 0;
    Py_XDECREF(cached);
    if (take <= 0) {
        Py_DECREF(last);
        if (take < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (slot != NULL) {
        PyObject *old = slot->entry;
        slot->id = thread_key(tstate);
        slot->entry = Py_NewRef(last);
        Py_XDECREF(old); /* last: the old entry's deallocation may run code */
    }
    return last;
}

/* Pool._usable(last) for a connection the quick checks did not pass (expired, idle past the
 * ping window, a readable socket): it pings or replaces it. 1 usable, 0 not, -1 an error. */
COLD static int
usable_after_all(PyObject *self, PyObject *last)
{
    PyObject *ok = PyObject_CallMethodOneArg(self, S.s_usable, last);
    if (ok == NULL) {
        return -1;
    }
    int usable = PyObject_IsTrue(ok);
    Py_DECREF(ok);
    return usable;
}

/* The fast path of Pool.connection(): this thread's last connection if it is idle, still
 * owned by this thread, fresh and its socket quiet. Returns a new reference to the entry,
 * Py_None (take the slow path) or NULL (an error). Mirrors pool.py line by line, except
 * where it finds the thread's last connection: in Pool._by_thread first (ThreadCache), then
 * in Pool._local as pool.py does (own_idle_recorded). */
HOT_PATH static PyObject *
own_idle(PyObject *self, PyObject *timeout)
{
    PyThreadState *tstate = PyThreadState_GET();
    unsigned long ident = S.tstate_ident ? tstate->thread_id : PyThread_get_thread_ident();
    ThreadSlot *slot = NULL;
    PyObject *last = NULL, *cache = SLOT(self, S.p_by_thread);
    if (cache != NULL && Py_IS_TYPE(cache, &ThreadCacheType)) {
        slot = thread_slot((ThreadCache *)cache, tstate);
        last = Py_XNewRef(thread_slot_entry(slot, tstate));
    }
    int take = last != NULL ? take_own(self, last, timeout, ident) : 0;
    if (UNLIKELY(take < 0)) {
        Py_DECREF(last);
        return NULL;
    }
    if (UNLIKELY(!take)) {
        last = own_idle_recorded(self, timeout, last, slot, tstate, ident);
        if (last == NULL || last == Py_None) {
            return last;
        }
    }

    double now = monotonic();
    CORE(last)->checked_out_at = now;
    double idle_for = now - CORE(last)->last_active;
    int fine = now < CORE(last)->expires && idle_for < PCORE(self)->fresh_for &&
               CORE(last)->pid == PCORE(self)->pid;
    if (fine && idle_for >= S.trusted) {
        int readable = socket_readable(last);
        if (UNLIKELY(readable < 0)) {
            goto error;
        }
        fine = !readable;
    }
    if (UNLIKELY(!fine)) {
        /* Expired, idle past the ping window or with a readable socket: the full check
         * pings or replaces it; the slow path finds or opens another. */
        int usable = usable_after_all(self, last);
        if (usable < 0) {
            goto error;
        }
        if (!usable) {
            Py_DECREF(last);
            Py_RETURN_NONE;
        }
    }
    return last;

error:
    abandon_checkout(self, last);
    Py_DECREF(last);
    return NULL;
}

/* The proxy the entry's last clean give-back left (entry.spare), when nothing else can see
 * it: no reference but the entry's, no weak reference, never finalized. Handing it out again
 * is then the same as handing out a new one, less an allocation, a finalizer call and a
 * deallocation per request. A new reference (the entry's), or NULL (allocate one). */
HOT_PATH static PyObject *
take_spare(PyObject *entry)
{
#ifdef Py_GIL_DISABLED
    return NULL; /* a reference count of 1 proves nothing without the GIL */
#else
    PyObject *spare = SLOT(entry, S.e_spare);
    if (spare == NULL || !Py_IS_TYPE(spare, S.proxy_type) || Py_REFCNT(spare) != 1 ||
        PyObject_GC_IsFinalized(spare)) {
        return NULL;
    }
    Py_ssize_t weaklist = S.proxy_type->tp_weaklistoffset;
    if (weaklist <= 0 || *(PyObject **)((char *)spare + weaklist) != NULL) {
        return NULL;
    }
    SLOT(entry, S.e_spare) = Py_NewRef(Py_None);
    return spare;
#endif
}

/* connection()'s arguments when it was given any: the timeout (borrowed), or NULL with
 * TypeError set. */
COLD static PyObject *
connection_timeout_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError, "connection() takes at most 1 argument (%zd given)",
                     nargs + nkw);
        return NULL;
    }
    if (nkw == 1) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, 0);
        int is_timeout = PyUnicode_Check(name) ? PyUnicode_Compare(name, S.s_timeout) == 0 : 0;
        if (!is_timeout) {
            PyErr_Format(PyExc_TypeError,
                         "connection() got an unexpected keyword argument '%S'", name);
            return NULL;
        }
    }
    return args[0];
}

/* Pool._checkout(timeout or pool.timeout): the slow path's entry (a new reference), or NULL. */
COLD static PyObject *
checkout_slow(PyObject *self, PyObject *timeout)
{
    PyObject *wait = timeout;
    if (wait == Py_None && (wait = GET(self, p_timeout)) == NULL) {
        return NULL;
    }
    PyObject *entry = PyObject_CallMethodOneArg(self, S.s_checkout, wait);
    if (entry != NULL && !PyObject_TypeCheck(entry, S.entry_type)) {
        PyErr_SetString(PyExc_TypeError, "_checkout() did not return an entry");
        Py_CLEAR(entry);
    }
    return entry;
}

/* entry.acquired = (code, offset), and with a leak threshold the acquiring stack recorded
 * (Pool._record_stack), when the fast case in note_acquired() does not apply: the first
 * check-out from this place, or leak tracking on. 0, or -1 on error. */
COLD static int
note_acquired_slow(PyObject *self, PyObject *entry, PyObject *leak_timeout, PyObject *code,
                   int lasti)
{
    PyFrameObject *frame = NULL;
    if (leak_timeout != Py_None || code == NULL) { /* a frame object, or no peeking here */
        frame = PyEval_GetFrame();
        code = frame != NULL ? (PyObject *)PyFrame_GetCode(frame) : NULL; /* a new reference */
        lasti = frame != NULL ? PyFrame_GetLasti(frame) : -1;
    }
    else {
        Py_XINCREF(code);
    }
    int r = 0;
    if (code == NULL) {
        set_slot(entry, S.e_acquired, Py_None);
    }
    else {
        PyObject *offset = PyLong_FromLong(lasti);
        PyObject *acquired = offset ? PyTuple_Pack(2, code, offset) : NULL;
        Py_XDECREF(offset);
        Py_DECREF(code);
        r = set_slot_new(entry, S.e_acquired, acquired);
    }
    if (r == 0 && leak_timeout != Py_None) {
        r = drop_result(PyObject_CallMethodObjArgs(self, S.s_record_stack, entry,
                                                   frame ? (PyObject *)frame : Py_None, NULL));
    }
    return r;
}

/* Where the entry was acquired: the caller's code and instruction offset (connection() has
 * no frame of its own, so the current frame is the caller's). A loop checks out at the same
 * place every time: then the tuple already there stays. 0, or -1 on error. */
static inline int
note_acquired(PyObject *self, PyObject *entry)
{
    PyObject *leak_timeout = GET(self, p_leak_timeout);
    if (UNLIKELY(leak_timeout == NULL)) {
        return -1;
    }
    PyObject *code = NULL; /* borrowed: the caller's frame holds it */
    int lasti = -1;
#ifdef TETHER_PEEK_FRAME
    if (LIKELY(leak_timeout == Py_None)) {
        /* As PyEval_GetFrame() finds it, without making a frame object of it. */
        _PyInterpreterFrame *f = PyThreadState_GET()->cframe->current_frame;
        while (f != NULL && _PyFrame_IsIncomplete(f)) {
            f = f->previous;
        }
        if (LIKELY(f != NULL)) {
            code = (PyObject *)f->f_code;
            lasti = _PyInterpreterFrame_LASTI(f);
            lasti = lasti < 0 ? -1 : lasti * (int)sizeof(_Py_CODEUNIT);
            PyObject *old = SLOT(entry, S.e_acquired);
            long long was;
            if (LIKELY(old != NULL && PyTuple_CheckExact(old) && PyTuple_GET_SIZE(old) == 2 &&
                       PyTuple_GET_ITEM(old, 0) == code &&
                       small_int(PyTuple_GET_ITEM(old, 1), &was) && was == lasti)) {
                return 0;
            }
        }
    }
#endif
    return note_acquired_slow(self, entry, leak_timeout, code, lasti);
}

/* Pool.connection(self, timeout=None) */
HOT_PATH static PyObject *
pool_connection(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (UNLIKELY(check_bound() < 0)) {
        return NULL;
    }
    if (UNLIKELY(!PyObject_TypeCheck(self, S.pool_type))) {
        PyErr_SetString(PyExc_TypeError, "connection() needs a tether.Pool");
        return NULL;
    }
    PyObject *timeout = Py_None;
    if (UNLIKELY(nargs != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0))) {
        if ((timeout = connection_timeout_arg(args, nargs, kwnames)) == NULL) {
            return NULL;
        }
    }

    PyObject *entry = own_idle(self, timeout);
    if (UNLIKELY(entry == NULL)) {
        return NULL;
    }
    if (UNLIKELY(entry == Py_None)) {
        Py_DECREF(entry);
        if ((entry = checkout_slow(self, timeout)) == NULL) {
            return NULL;
        }
    }
    if (UNLIKELY(note_acquired(self, entry) < 0)) {
        goto error;
    }
    PyObject *proxy = take_spare(entry);
    if (UNLIKELY(proxy == NULL) && (proxy = S.proxy_type->tp_alloc(S.proxy_type, 0)) == NULL) {
        goto error;
    }
    PyObject *raw = GET(entry, e_raw), *gen = raw ? GET(entry, e_gen) : NULL;
    if (UNLIKELY(gen == NULL)) {
        Py_DECREF(proxy);
        goto error;
    }
    set_slot(proxy, S.c_pool, self);
    set_slot(proxy, S.c_entry, entry);
    set_slot(proxy, S.c_raw, raw);
    set_slot(proxy, S.c_gen, gen);
    Py_DECREF(entry);
    return proxy;

error:
    abandon_checkout(self, entry);
    Py_DECREF(entry);
    return NULL;
}

/* ------------------------------------------------------------------ give-back */

/* holds.append(v) for a hold-time record that is not a Samples (Python code replaced it). */
COLD static int
hold_append(PyObject *holds, double v)
{
    return drop_result(PyObject_CallMethod(holds, "append", "d", v));
}

/* Pool._release_slow(entry, now): a give-back that needs more than the status bits. */
COLD static PyObject *
release_slow(PyObject *pool, PyObject *entry, double now)
{
    PyObject *nowobj = PyFloat_FromDouble(now);
    if (nowobj == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_CallMethodObjArgs(pool, S.s_release_slow, entry, nowobj, NULL);
    Py_DECREF(nowobj);
    return r;
}

/* Pool._checkin(entry): a clean give-back that someone waits for, or of an expired
 * connection, or to a closed pool. */
COLD static PyObject *
checkin_slow(PyObject *pool, PyObject *entry)
{
    return PyObject_CallMethodOneArg(pool, S.s_checkin, entry);
}

/* Whether a checked-out entry needs the slow give-back whatever its status bits say: a
 * reported leak, a changed session, tainted, broken, a streaming cursor open, another
 * process's. 1 yes, 0 no; C values only, so no error and no Python code. */
HOT_PATH static int
entry_dirty(PyObject *pool, PyObject *entry)
{
    EntryCore *c = CORE(entry);
    return (c->leak_reported | c->session_dirty | c->tainted | c->broken) != 0 ||
           c->unbuffered != 0 || c->pid != PCORE(pool)->pid;
}

/* Pool._release(proxy, entry) for an entry already detached from its proxy. */
HOT_PATH static PyObject *
release(PyObject *pool, PyObject *entry)
{
    double now = monotonic(), checked_out_at = CORE(entry)->checked_out_at;
    PyObject *holds = GET(pool, p_hold_times);
    if (UNLIKELY(holds == NULL)) {
        return NULL;
    }
    if (LIKELY(Py_IS_TYPE(holds, &SamplesType))) {
        samples_add((Samples *)holds, now - checked_out_at);
    }
    else if (hold_append(holds, now - checked_out_at) < 0) {
        return NULL;
    }
    PyObject *status = GET(entry, e_status);
    if (UNLIKELY(status == NULL)) {
        return NULL;
    }
    if (UNLIKELY(status == Py_None || SLOT(entry, S.e_state) != S.in_use)) {
        return release_slow(pool, entry, now);
    }
    if (UNLIKELY(entry_dirty(pool, entry))) {
        return release_slow(pool, entry, now);
    }
    /* The common case, with no round trip: the status bits of the server's last reply, read
     * now, say the session is clean. */
    long long bits;
    if (UNLIKELY(status_bits(status, &bits) < 0)) {
        return NULL;
    }
    if (UNLIKELY((bits & PCORE(pool)->release_mask) != PCORE(pool)->clean_bits)) {
        return release_slow(pool, entry, now);
    }
    CORE(entry)->last_status = bits;
    CORE(entry)->returned_at = CORE(entry)->last_active = now;
    PyObject *lock = GET(pool, p_lock);
    if (UNLIKELY(lock == NULL)) {
        return NULL;
    }
    Py_INCREF(lock);
    int locked;
    if (UNLIKELY(enter_section(lock, &locked) < 0)) {
        Py_DECREF(lock);
        return NULL;
    }
    int waiters = TRUTHY(pool, p_waiters), closed = PCORE(pool)->closed;
    if (UNLIKELY(waiters < 0)) {
        if (locked) {
            release_keeping_error(lock);
        }
        Py_DECREF(lock);
        return NULL;
    }
    /* _checkin's common case, the entry left where it is filed. */
    int done = !waiters && !closed && now < CORE(entry)->expires;
    if (done) {
        toggle_parked(pool, entry, S.idle);
    }
    int released = locked ? call_lock(S.lock_release, lock) : 0;
    Py_DECREF(lock);
    if (UNLIKELY(released < 0)) {
        return NULL;
    }
    if (LIKELY(done)) {
        Py_RETURN_NONE;
    }
    return checkin_slow(pool, entry);
}

/* Pool._release(self, proxy, entry) */
static PyObject *
pool_release(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_bound() < 0) {
        return NULL;
    }
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "_release() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyObject_TypeCheck(self, S.pool_type) || !PyObject_TypeCheck(args[1], S.entry_type)) {
        PyErr_SetString(PyExc_TypeError, "_release() needs a tether.Pool and an entry");
        return NULL;
    }
    return release(self, args[1]);
}

/* PooledConnection.__enter__(self) */
HOT_PATH static PyObject *
proxy_enter(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 0) {
        PyErr_SetString(PyExc_TypeError, "__enter__() takes no arguments");
        return NULL;
    }
    return Py_NewRef(self);
}

/* pool._release(proxy, entry) through Python: a pool or entry of another class. */
COLD static PyObject *
release_python(PyObject *pool, PyObject *proxy, PyObject *entry)
{
    return PyObject_CallMethod(pool, "_release", "OO", proxy, entry);
}

/* PooledConnection.__exit__(self, exc_type, exc, tb) */
HOT_PATH static PyObject *
proxy_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (UNLIKELY(check_bound() < 0)) {
        return NULL;
    }
    if (UNLIKELY(nargs != 3)) {
        PyErr_Format(PyExc_TypeError, "__exit__() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (UNLIKELY(!PyObject_TypeCheck(self, S.proxy_type))) {
        PyErr_SetString(PyExc_TypeError, "__exit__() needs a PooledConnection");
        return NULL;
    }
    PyObject *entry = GET(self, c_entry);
    if (UNLIKELY(entry == NULL)) {
        return NULL;
    }
    if (UNLIKELY(entry == Py_None)) {
        Py_RETURN_NONE;
    }
    PyObject *pool = GET(self, c_pool);
    if (UNLIKELY(pool == NULL)) {
        return NULL;
    }
    Py_INCREF(entry);
    Py_INCREF(pool);
    set_slot(self, S.c_entry, Py_None);
    PyObject *r;
    if (LIKELY(PyObject_TypeCheck(pool, S.pool_type) && PyObject_TypeCheck(entry, S.entry_type))) {
        r = release(pool, entry);
        if (LIKELY(r != NULL && SLOT(entry, S.e_state) == S.idle &&
                   Py_IS_TYPE(self, S.proxy_type))) {
            /* Back in the idle set: keep this proxy for the entry's next check-out
             * (take_spare). It lets go of the pool, or the pool would hold itself through
             * its idle entry, and a pool dropped without close() would wait for the
             * cyclic garbage collector instead of going at once. */
            set_slot(entry, S.e_spare, self);
            set_slot(self, S.c_pool, Py_None);
        }
    }
    else {
        r = release_python(pool, self, entry);
    }
    Py_DECREF(entry);
    Py_DECREF(pool);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* PooledConnection's attribute look-up while the compiled paths are in use: what CPython's
 * own (slot_tp_getattr_hook) does for a class with __getattr__ and object's __getattribute__,
 * less its two look-ups of those names on the type on every access. `conn.cursor` costs one
 * look-up in the type attribute cache instead of three: fewer cache lines per request, and
 * fewer chances for two of a request's look-ups to evict each other from that cache. An
 * attribute the proxy does not have goes to CPython's own, which calls __getattr__. */
HOT_PATH static PyObject *
proxy_getattro(PyObject *self, PyObject *name)
{
    PyObject *r = _PyObject_GenericGetAttrWithDict(self, name, NULL, 1);
    if (r != NULL || PyErr_Occurred()) {
        return r;
    }
    return S.proxy_getattro_hook(self, name);
}

/* fast_getattr(on): proxy_getattro in place of PooledConnection's own look-up (on) or that
 * one back; returns whether proxy_getattro is in place. Only while the class is as bind()
 * saw it: its own look-up is CPython's __getattr__ hook and __getattribute__ is object's
 * (setting either on the class later puts CPython's back by itself). */
static PyObject *
fast_getattr(PyObject *module, PyObject *on)
{
    if (check_bound() < 0) {
        return NULL;
    }
    int want = PyObject_IsTrue(on);
    if (want < 0) {
        return NULL;
    }
    PyTypeObject *proxy = S.proxy_type;
    getattrofunc now = proxy->tp_getattro;
    if (S.proxy_getattro_hook == NULL || (now != proxy_getattro && now != S.proxy_getattro_hook)) {
        Py_RETURN_FALSE;
    }
    getattrofunc next = want ? proxy_getattro : S.proxy_getattro_hook;
    if (now != next) {
        proxy->tp_getattro = next;
        PyType_Modified(proxy);
    }
    return PyBool_FromLong(next == proxy_getattro);
}

/* PooledConnection.__del__(self): a proxy collected while checked out. */
static PyObject *
proxy_del(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_bound() < 0) {
        return NULL;
    }
    if (!PyObject_TypeCheck(self, S.proxy_type)) {
        PyErr_SetString(PyExc_TypeError, "__del__() needs a PooledConnection");
        return NULL;
    }
    PyObject *entry = SLOT(self, S.c_entry), *pool = SLOT(self, S.c_pool);
    if (entry == NULL || entry == Py_None || pool == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *r = PyObject_CallMethodOneArg(pool, S.s_on_proxy_collected, entry);
    if (r == NULL) {
        /* At interpreter shutdown the pool may be half torn down: nothing left to do. */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}


/* ------------------------------------------------------------------ cursors */

/* func(self, *args, **kwargs) for a METH_FASTCALL|METH_KEYWORDS call of a method. */
static PyObject *
call_python(PyObject *func, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8];
    PyObject **all = total + 1 <= 8 ? small : PyMem_Malloc((total + 1) * sizeof(PyObject *));
    if (all == NULL) {
        return PyErr_NoMemory();
    }
    all[0] = self;
    for (Py_ssize_t i = 0; i < total; i++) {
        all[i + 1] = args[i];
    }
    PyObject *r = PyObject_Vectorcall(func, all, nargs + 1, kwnames);
    if (all != small) {
        PyMem_Free(all);
    }
    return r;
}

/* The proxy's entry when it can be used as it is: checked out, not broken, its server
 * connection the one the caller knows (the proxy's generation, or `known`: a cursor's).
 * Borrowed; NULL otherwise, with *error set if an error is pending. Every case it refuses
 * goes to the Python method, which decides it. */
HOT_PATH static PyObject *
usable_entry(PyObject *proxy, PyObject *known, int *error)
{
    *error = 0;
    PyObject *entry = SLOT(proxy, S.c_entry);
    if (entry == NULL || entry == Py_None || !PyObject_TypeCheck(entry, S.entry_type)) {
        return NULL;
    }
    if (CORE(entry)->broken) {
        return NULL;
    }
    PyObject *raw = SLOT(entry, S.e_raw), *gen = SLOT(entry, S.e_gen);
    if (raw == NULL || raw == Py_None || gen == NULL) {
        return NULL;
    }
    PyObject *mine = known ? known : SLOT(proxy, S.c_gen);
    if (mine == NULL) {
        return NULL;
    }
    int same = same_int(mine, gen);
    if (same <= 0) {
        *error = same < 0;
        return NULL;
    }
    return entry;
}

/* Where a cursor class keeps _tether_conn and _tether_gen: the offsets of its slots
 * (cursor_class() makes them slots), or 0 for a class that keeps them some other way (a
 * user's subclass of tether.Cursor): then they go through the attribute protocol. */
typedef struct {
    Py_ssize_t conn, gen;
} CursorSlots;

/* The offset of a class's slot `name`, found through its member descriptor; 0 if the
 * attribute is anything else. -1 on error. */
static Py_ssize_t
object_slot(PyTypeObject *type, PyObject *name)
{
    PyObject *d = PyObject_GetAttr((PyObject *)type, name);
    if (d == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t off = 0;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDescrObject *m = (PyMemberDescrObject *)d;
        if (m->d_member->type == T_OBJECT_EX && !(m->d_member->flags & READONLY) &&
            PyType_IsSubtype(type, PyDescr_TYPE(m)) && m->d_member->offset > 0) {
            off = m->d_member->offset;
        }
    }
    Py_DECREF(d);
    return off;
}

/* cursor.<name> (one of the two): from its slot, or through the attribute protocol (which
 * also raises the AttributeError of an empty slot). A new reference, or NULL. */
HOT_PATH static PyObject *
cursor_get(PyObject *cursor, Py_ssize_t off, PyObject *name)
{
    if (off > 0) {
        PyObject *v = *(PyObject **)((char *)cursor + off);
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    return PyObject_GetAttr(cursor, name);
}

/* cursor.<name> = value (one of the two). */
HOT_PATH static int
cursor_set(PyObject *cursor, Py_ssize_t off, PyObject *name, PyObject *value)
{
    if (off > 0) {
        PyObject **p = (PyObject **)((char *)cursor + off);
        PyObject *old = *p;
        *p = Py_NewRef(value);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(cursor, name, value);
}

/* What a tether cursor class says that the fast paths need: its driver base class's
 * execute and whether it streams. Found through the type's attributes once and kept while
 * the type's version tag (which CPython changes whenever the class or a base is modified)
 * stays the same: four classes at most in use at once (a driver's default, dict and
 * streaming cursors), so a few slots do. */
typedef struct {
    PyTypeObject *type; /* strong references */
    PyObject *execute;
    unsigned int version;
    int unbuffered;
    CursorSlots slots;
} CursorClassInfo;

#define CURSOR_CLASSES 4
static CursorClassInfo cursor_classes[CURSOR_CLASSES];
static unsigned int cursor_classes_next;

/* The class's driver execute (a new reference, in *execute unless NULL), whether it
 * streams and where it keeps the two per-cursor attributes; -1 on error. */
HOT_PATH static int
cursor_class_info(PyTypeObject *type, PyObject **execute, int *unbuffered, CursorSlots *slots)
{
    if (PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
        for (int i = 0; i < CURSOR_CLASSES; i++) {
            CursorClassInfo *c = &cursor_classes[i];
            if (c->type == type && c->version == type->tp_version_tag) {
                if (execute != NULL) {
                    *execute = Py_NewRef(c->execute);
                }
                *unbuffered = c->unbuffered;
                *slots = c->slots;
                return 0;
            }
        }
    }
    PyObject *base = PyObject_GetAttr((PyObject *)type, S.s_tether_base);
    PyObject *func = base ? PyObject_GetAttr(base, S.s_execute) : NULL;
    Py_XDECREF(base);
    PyObject *flag = func ? PyObject_GetAttr((PyObject *)type, S.s_tether_unbuffered) : NULL;
    int streams = flag ? PyObject_IsTrue(flag) : -1;
    Py_XDECREF(flag);
    CursorSlots found = {0, 0};
    if (streams >= 0 && ((found.conn = object_slot(type, S.s_tether_conn)) < 0 ||
                         (found.gen = object_slot(type, S.s_tether_gen)) < 0)) {
        streams = -1;
    }
    if (streams < 0) {
        Py_XDECREF(func);
        return -1;
    }
    /* The lookups gave the type a valid tag if it can have one; without, it is looked up
     * again next time. A stale record of the same class is reused, else the oldest. */
    CursorClassInfo *c = NULL;
    for (int i = 0; i < CURSOR_CLASSES && c == NULL; i++) {
        if (cursor_classes[i].type == type) {
            c = &cursor_classes[i];
        }
    }
    if (c == NULL) {
        c = &cursor_classes[cursor_classes_next++ % CURSOR_CLASSES];
    }
    PyObject *old_type = (PyObject *)c->type, *old_execute = c->execute;
    int tagged = PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG);
    c->type = tagged ? (PyTypeObject *)Py_NewRef(type) : NULL;
    c->version = tagged ? type->tp_version_tag : 0;
    c->execute = Py_NewRef(func);
    c->unbuffered = streams;
    c->slots = found;
    /* Last: letting go of the old record may run code that calls back in here. */
    Py_XDECREF(old_type);
    Py_XDECREF(old_execute);
    if (execute != NULL) {
        *execute = func;
    }
    else {
        Py_DECREF(func);
    }
    *unbuffered = streams;
    *slots = found;
    return 0;
}

/* PooledConnection.cursor(self): the driver's default cursor class, extended by
 * tether.Cursor. Any argument (another class) goes to the Python method. */
HOT_PATH static PyObject *
proxy_cursor(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (check_bound() < 0) {
        return NULL;
    }
    int error;
    PyObject *entry = NULL;
    if (nargs == 0 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) &&
        PyObject_TypeCheck(self, S.proxy_type)) {
        entry = usable_entry(self, NULL, &error);
        if (error) {
            return NULL;
        }
    }
    if (entry == NULL) {
        return call_python(S.cursor_py, self, args, nargs, kwnames);
    }
    Py_INCREF(entry);
    PyObject *cls = GET(entry, e_cursor_class), *raw = cls ? GET(self, c_raw) : NULL;
    PyObject *cur = raw ? PyObject_CallOneArg(cls, raw) : NULL;
    if (cur == NULL) {
        Py_DECREF(entry);
        return NULL;
    }
    PyObject *gen = GET(entry, e_gen);
    int streaming = -1, streams;
    CursorSlots at;
    if (gen != NULL && cursor_class_info(Py_TYPE(cur), NULL, &streams, &at) == 0 &&
        cursor_set(cur, at.conn, S.s_tether_conn, self) == 0 &&
        cursor_set(cur, at.gen, S.s_tether_gen, gen) == 0) {
        streaming = streams;
    }
    if (streaming > 0) {
        /* A streaming cursor: counted open until closed. */
        if (PyObject_SetAttr(cur, S.s_tether_open, Py_True) < 0) {
            streaming = -1;
        }
        else {
            CORE(entry)->unbuffered++;
        }
    }
    Py_DECREF(entry);
    if (streaming < 0) {
        Py_DECREF(cur);
        return NULL;
    }
    return cur;
}

/* cursor_execute()'s failure: as `except Exception as exc:` in the Python method, the error
 * judged by _failed (a replay, or an error that says what happened), with exc as the
 * exception being handled. The result of _failed, or NULL. */
COLD static PyObject *
execute_failed(PyObject *self, PyObject *conn, PyObject *entry, PyObject *query,
               PyObject *params)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(exc, tb);
    }
    CORE(entry)->busy_since = 0.0;
    PyObject *last_status = PyLong_FromLongLong(CORE(entry)->last_status);
    PyObject *redo =
        last_status ? PyObject_CallMethod(self, "_tether_redo", "sOO", "execute", query, params)
                    : NULL;
    if (redo != NULL) {
        PyObject *old_type, *old_value, *old_tb;
        PyErr_GetExcInfo(&old_type, &old_value, &old_tb);
        Py_INCREF(type);
        Py_INCREF(exc);
        Py_XINCREF(tb);
        PyErr_SetExcInfo(type, exc, tb);
        PyObject *idempotent = Py_None;
        result = PyObject_CallMethod(conn, "_failed", "OOOOsOO", entry, exc, last_status, redo,
                                     "execute", query, idempotent);
        PyErr_SetExcInfo(old_type, old_value, old_tb);
        Py_DECREF(redo);
    }
    Py_XDECREF(last_status);
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
    return result;
}

/* conn._read_status(entry): the session's state changed (rare: the Python method notes it
 * and clears the driver's flag). 0, or -1 on error. */
COLD static int
read_status(PyObject *conn, PyObject *entry)
{
    return drop_result(PyObject_CallMethodOneArg(conn, S.s_read_status, entry));
}

/* tether.Cursor.execute(self, query, args=None): the statement through the driver's own
 * execute, a timestamp for the watchdog before it and the status bits after it. Keywords
 * (idempotent=, timeout=, ...) and every unusual case go to the Python method. */
HOT_PATH static PyObject *
cursor_execute(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (UNLIKELY(check_bound() < 0)) {
        return NULL;
    }
    if (UNLIKELY(nargs < 1 || nargs > 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0))) {
        return call_python(S.execute_py, self, args, nargs, kwnames);
    }
    PyObject *query = args[0], *params = nargs == 2 ? args[1] : Py_None;
    PyObject *func, *conn, *gen = NULL;
    int streams;
    CursorSlots at;
    if (UNLIKELY(cursor_class_info(Py_TYPE(self), &func, &streams, &at) < 0)) {
        return NULL;
    }
    conn = cursor_get(self, at.conn, S.s_tether_conn);
    if (UNLIKELY(conn == NULL || (gen = cursor_get(self, at.gen, S.s_tether_gen)) == NULL)) {
        Py_DECREF(func);
        Py_XDECREF(conn);
        return NULL;
    }
    int error = 0;
    PyObject *entry =
        PyObject_TypeCheck(conn, S.proxy_type) ? usable_entry(conn, gen, &error) : NULL;
    Py_DECREF(gen);
    if (UNLIKELY(entry == NULL)) {
        /* Returned, broken or replaced: the Python method (a replay, or a clear error). */
        Py_DECREF(func);
        Py_DECREF(conn);
        return error ? NULL : call_python(S.execute_py, self, args, nargs, kwnames);
    }
    Py_INCREF(entry);
    PyObject *result = NULL;
    CORE(entry)->busy_since = monotonic();
    PyObject *call_args[3] = {self, query, params};
    result = PyObject_Vectorcall(func, call_args, 3, NULL);
    if (UNLIKELY(result == NULL)) {
        result = execute_failed(self, conn, entry, query, params);
        goto done;
    }
    CORE(entry)->busy_since = 0.0;
    PyObject *status = GET(entry, e_status);
    if (UNLIKELY(status == NULL)) {
        Py_CLEAR(result);
        goto done;
    }
    if (LIKELY(status != Py_None)) {
        long long b;
        if (UNLIKELY(status_bits(status, &b) < 0)) {
            Py_CLEAR(result);
            goto done;
        }
        CORE(entry)->last_status = b;
        if (UNLIKELY(b & STATUS_SESSION_STATE_CHANGED) && read_status(conn, entry) < 0) {
            Py_CLEAR(result);
            goto done;
        }
    }
done:
    Py_XDECREF(func);
    Py_DECREF(entry);
    Py_DECREF(conn);
    return result;
}

static PyMethodDef cursor_def = {
    "cursor", (PyCFunction)(void (*)(void))proxy_cursor, METH_FASTCALL | METH_KEYWORDS,
    "cursor($self, /, *args, **kwargs)\n--\n\n"
    "A cursor of the driver's own class (or of the class given, as the driver takes it), "
    "extended by tether.Cursor (compiled fast path)."};
static PyMethodDef execute_def = {
    "execute", (PyCFunction)(void (*)(void))cursor_execute, METH_FASTCALL | METH_KEYWORDS,
    "execute($self, /, query, args=None, *, idempotent=None, timeout=None)\n--\n\n"
    "Execute query (compiled fast path of tether.Cursor.execute)."};

/* ------------------------------------------------------------------ status reader */

static PyObject *
reader_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a status reader takes no arguments");
        return NULL;
    }
    return PyLong_FromUnsignedLong(reader_bits((StatusReader *)self));
}

static PyObject *
reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *owner;
    unsigned long long fn, handle;
    int key;
    static char *kwlist[] = {"owner", "function", "handle", "key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKKi:StatusReader", kwlist, &owner, &fn,
                                     &handle, &key)) {
        return NULL;
    }
    if (fn == 0 || handle == 0) {
        PyErr_SetString(PyExc_ValueError, "StatusReader needs a function and a handle");
        return NULL;
    }
    StatusReader *r = (StatusReader *)type->tp_alloc(type, 0);
    if (r == NULL) {
        return NULL;
    }
    r->fn = (get_info_fn)(uintptr_t)fn;
    r->handle = (void *)(uintptr_t)handle;
    r->key = key;
    r->owner = Py_NewRef(owner);
    r->vectorcall = reader_vectorcall;
    return (PyObject *)r;
}

static int
owner_traverse(OwnerRef *r, visitproc visit, void *arg)
{
    Py_VISIT(r->owner);
    return 0;
}

static int
owner_clear(OwnerRef *r)
{
    Py_CLEAR(r->owner);
    return 0;
}

static void
reader_dealloc(StatusReader *r)
{
    PyObject_GC_UnTrack(r);
    owner_clear((OwnerRef *)r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyTypeObject StatusReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether._speedups.StatusReader",
    .tp_basicsize = sizeof(StatusReader),
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_vectorcall_offset = offsetof(StatusReader, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "StatusReader(owner, function, handle, key)() -> the server status bits",
    .tp_traverse = (traverseproc)owner_traverse,
    .tp_free = PyObject_GC_Del,
    .tp_clear = (inquiry)owner_clear,
    .tp_new = reader_new,
};

static PyObject *
attribute_reader_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a status reader takes no arguments");
        return NULL;
    }
    AttributeReader *a = (AttributeReader *)self;
    return PyObject_GetAttr(a->owner, a->name);
}

static PyObject *
attribute_reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *owner, *name;
    static char *kwlist[] = {"owner", "name", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OU:AttributeReader", kwlist, &owner, &name)) {
        return NULL;
    }
    AttributeReader *a = (AttributeReader *)type->tp_alloc(type, 0);
    if (a == NULL) {
        return NULL;
    }
    a->owner = Py_NewRef(owner);
    a->name = Py_NewRef(name);
    PyUnicode_InternInPlace(&a->name); /* looked up by identity first */
    a->vectorcall = attribute_reader_vectorcall;
    return (PyObject *)a;
}

static void
attribute_reader_dealloc(AttributeReader *a)
{
    PyObject_GC_UnTrack(a);
    owner_clear((OwnerRef *)a);
    Py_CLEAR(a->name);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyObject *
attribute_reader_repr(AttributeReader *a)
{
    return PyUnicode_FromFormat("<AttributeReader %R of %s at %p>", a->name,
                                a->owner ? Py_TYPE(a->owner)->tp_name : "nothing", a);
}

static PyTypeObject AttributeReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether._speedups.AttributeReader",
    .tp_basicsize = sizeof(AttributeReader),
    .tp_dealloc = (destructor)attribute_reader_dealloc,
    .tp_vectorcall_offset = offsetof(AttributeReader, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)attribute_reader_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "AttributeReader(owner, name)() -> getattr(owner, name)",
    .tp_traverse = (traverseproc)owner_traverse,
    .tp_free = PyObject_GC_Del,
    .tp_clear = (inquiry)owner_clear,
    .tp_new = attribute_reader_new,
};

#define CORE_DOUBLE(name, doc) {#name, T_DOUBLE, offsetof(EntryCore, name), 0, doc}
#define CORE_FLAG(name, doc) {#name, T_BOOL, offsetof(EntryCore, name), 0, doc}
static PyMemberDef entry_core_members[] = {
    CORE_DOUBLE(busy_since, "when the statement in flight was sent (0.0: none)"),
    CORE_DOUBLE(checked_out_at, "when it was last checked out"),
    CORE_DOUBLE(expires, "when its lifetime ends"),
    CORE_DOUBLE(last_active, "when the server last heard from the session"),
    CORE_DOUBLE(returned_at, "when it was last given back"),
    CORE_FLAG(broken, "lost its connection; replaced before the next statement"),
    CORE_FLAG(leak_reported, "reported as leaked"),
    CORE_FLAG(parked, "left in the dict opposite to its state"),
    CORE_FLAG(session_dirty, "the server flagged a session state change"),
    CORE_FLAG(tainted, "used in ways that leave unknown state"),
    {"pid", T_LONGLONG, offsetof(EntryCore, pid), 0, "the process that opened it"},
    {"last_status", T_LONGLONG, offsetof(EntryCore, last_status), 0,
     "the server status bits of the last reply read"},
    {"unbuffered", T_PYSSIZET, offsetof(EntryCore, unbuffered), 0, "open streaming cursors"},
    {NULL},
};

static PyMemberDef pool_core_members[] = {
    {"_fresh_for", T_DOUBLE, offsetof(PoolCore, fresh_for), 0,
     "a connection idle for less is handed out without a ping"},
    {"_pid", T_LONGLONG, offsetof(PoolCore, pid), 0, "the process the pool belongs to"},
    {"_release_mask", T_LONGLONG, offsetof(PoolCore, release_mask), 0,
     "the status bits a give-back looks at"},
    {"_clean_bits", T_LONGLONG, offsetof(PoolCore, clean_bits), 0,
     "their values for a clean session"},
    {"_closed", T_BOOL, offsetof(PoolCore, closed), 0, "close() was called"},
    {"_fast_checkouts", T_PYSSIZET, offsetof(PoolCore, fast_checkouts), 0,
     "check-outs the compiled paths counted (the rest are in the counters)"},
    {"_parked", T_PYSSIZET, offsetof(PoolCore, parked), 0, "how many entries are parked"},
    {NULL},
};

static PyTypeObject PoolCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether._speedups.PoolCore",
    .tp_basicsize = sizeof(PoolCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "PoolCore(): what a pool's check-out and give-back read, stored as C values; "
              "the base of tether.Pool",
    .tp_members = pool_core_members,
    .tp_new = PyType_GenericNew,
};

/* EntryCore.owner: the last borrower's thread ident, None, or a negative int (-1: reclaimed
 * from a thread that ended), as pool.py assigns it; kept as a C value. */
static PyObject *
entry_core_get_owner(EntryCore *c, void *closure)
{
    switch (c->owner_kind) {
    case OWNER_IDENT:
        return PyLong_FromUnsignedLongLong(c->owner);
    case OWNER_NEGATIVE:
        return PyLong_FromLongLong(-(long long)c->owner);
    default:
        Py_RETURN_NONE;
    }
}

static int
entry_core_set_owner(EntryCore *c, PyObject *v, void *closure)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "owner cannot be deleted (assign None)");
        return -1;
    }
    if (v == Py_None) {
        c->owner_kind = OWNER_NONE;
        c->owner = 0;
        return 0;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "owner must be a thread ident (int) or None, not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow == 0 && n < 0 && n != LLONG_MIN) {
        c->owner_kind = OWNER_NEGATIVE;
        c->owner = (unsigned long long)-n;
        return 0;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1; /* below LLONG_MIN + 1, or above the largest ident: OverflowError */
    }
    c->owner_kind = OWNER_IDENT;
    c->owner = u;
    return 0;
}

static PyGetSetDef entry_core_getset[] = {
    {"owner", (getter)entry_core_get_owner, (setter)entry_core_set_owner,
     "the thread ident of the last borrower (None: none yet; -1: reclaimed)", NULL},
    {NULL},
};

static PyTypeObject EntryCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether._speedups.EntryCore",
    .tp_basicsize = sizeof(EntryCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "EntryCore(): a pooled connection's timestamps (floats), flags (bools) and counts "
              "(ints), stored as C values; the base of the pool's entry class",
    .tp_members = entry_core_members,
    .tp_getset = entry_core_getset,
    .tp_new = PyType_GenericNew,
};

static int
thread_cache_traverse(ThreadCache *c, visitproc visit, void *arg)
{
    for (int i = 0; i < THREAD_SLOTS; i++) {
        Py_VISIT(c->slots[i].entry);
    }
    return 0;
}

static int
thread_cache_clear(ThreadCache *c)
{
    for (int i = 0; i < THREAD_SLOTS; i++) {
        c->slots[i].id = 0;
        Py_CLEAR(c->slots[i].entry);
    }
    return 0;
}

static void
thread_cache_dealloc(ThreadCache *c)
{
    PyObject_GC_UnTrack(c);
    thread_cache_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *
thread_cache_clear_method(ThreadCache *c, PyObject *unused)
{
    thread_cache_clear(c);
    Py_RETURN_NONE;
}

/* len(cache): the threads it holds a connection for. */
static Py_ssize_t
thread_cache_len(ThreadCache *c)
{
    Py_ssize_t n = 0;
    for (int i = 0; i < THREAD_SLOTS; i++) {
        n += c->slots[i].entry != NULL;
    }
    return n;
}

/* cache.get(): this thread's connection in it, or None (tests). */
static PyObject *
thread_cache_get(ThreadCache *c, PyObject *unused)
{
    PyThreadState *tstate = PyThreadState_GET();
    PyObject *entry = thread_slot_entry(thread_slot(c, tstate), tstate);
    return Py_NewRef(entry != NULL ? entry : Py_None);
}

static PyMethodDef thread_cache_methods[] = {
    {"clear", (PyCFunction)thread_cache_clear_method, METH_NOARGS, "forget every thread"},
    {"get", (PyCFunction)thread_cache_get, METH_NOARGS,
     "this thread's connection in the cache, or None"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods thread_cache_as_sequence = {
    .sq_length = (lenfunc)thread_cache_len,
};

static PyTypeObject ThreadCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether._speedups.ThreadCache",
    .tp_basicsize = sizeof(ThreadCache),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "ThreadCache(): each thread's last connection of a pool, for the compiled "
              "check-out",
    .tp_traverse = (traverseproc)thread_cache_traverse,
    .tp_clear = (inquiry)thread_cache_clear,
    .tp_dealloc = (destructor)thread_cache_dealloc,
    .tp_methods = thread_cache_methods,
    .tp_as_sequence = &thread_cache_as_sequence,
    .tp_new = PyType_GenericNew,
};

static PyObject *
samples_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"maxlen", NULL};
    Py_ssize_t maxlen;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:Samples", kwlist, &maxlen)) {
        return NULL;
    }
    if (maxlen < 1 || maxlen > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "Samples: maxlen must be a positive size, got %zd",
                     maxlen);
        return NULL;
    }
    Samples *s = (Samples *)type->tp_alloc(type, 0);
    if (s == NULL) {
        return NULL;
    }
    s->values = PyMem_New(double, maxlen);
    if (s->values == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    s->maxlen = maxlen;
    return (PyObject *)s;
}

static void
samples_dealloc(Samples *s)
{
    PyMem_Free(s->values);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
samples_append(Samples *s, PyObject *value)
{
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    samples_add(s, v);
    Py_RETURN_NONE;
}

static Py_ssize_t
samples_len(Samples *s)
{
    return s->count;
}

/* Oldest first, as a deque iterates: a snapshot, so appends meanwhile do not disturb it. */
static PyObject *
samples_iter(Samples *s)
{
    Py_ssize_t n = s->count;
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        return NULL;
    }
    Py_ssize_t first = n < s->maxlen ? 0 : s->next;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyFloat_FromDouble(s->values[(first + i) % s->maxlen]);
        if (v == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    PyObject *it = PyObject_GetIter(list);
    Py_DECREF(list);
    return it;
}

static PyObject *
samples_repr(Samples *s)
{
    return PyUnicode_FromFormat("<Samples %zd of %zd>", s->count, s->maxlen);
}

static PyMethodDef samples_methods[] = {
    {"append", (PyCFunction)samples_append, METH_O, "append(value): add one duration"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods samples_as_sequence = {
    .sq_length = (lenfunc)samples_len,
};

static PyTypeObject SamplesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether._speedups.Samples",
    .tp_basicsize = sizeof(Samples),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Samples(maxlen): the last maxlen durations; append(), len() and iteration "
              "(oldest first) as with a deque(maxlen=maxlen)",
    .tp_new = samples_new,
    .tp_dealloc = (destructor)samples_dealloc,
    .tp_repr = (reprfunc)samples_repr,
    .tp_iter = (getiterfunc)samples_iter,
    .tp_methods = samples_methods,
    .tp_as_sequence = &samples_as_sequence,
};

/* ------------------------------------------------------------------ bind */

static int
slot_offset(PyTypeObject *type, const char *name, Offset *out)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL) {
        return -1;
    }
    int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type);
    if (ok) {
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        ok = m->type == T_OBJECT_EX && !(m->flags & READONLY) && m->offset > 0 &&
             m->offset <= INT32_MAX;
        *out = ok ? (Offset)m->offset : 0;
    }
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a writable slot", type->tp_name, name);
        return -1;
    }
    return 0;
}

static PyMethodDef connection_def = {
    "connection", (PyCFunction)(void (*)(void))pool_connection, METH_FASTCALL | METH_KEYWORDS,
    "connection($self, /, timeout=None)\n--\n\n"
    "Check out a connection: use it as ``with pool.connection() as conn:`` (compiled fast "
    "path of Pool.connection)."};
static PyMethodDef release_def = {"_release", (PyCFunction)(void (*)(void))pool_release,
                                  METH_FASTCALL, NULL};
static PyMethodDef enter_def = {"__enter__", (PyCFunction)(void (*)(void))proxy_enter,
                                METH_FASTCALL, NULL};
static PyMethodDef exit_def = {"__exit__", (PyCFunction)(void (*)(void))proxy_exit,
                               METH_FASTCALL, NULL};
static PyMethodDef del_def = {"__del__", (PyCFunction)(void (*)(void))proxy_del, METH_FASTCALL,
                              NULL};

/* A method descriptor of `type`: it refuses any self that is not an instance of it, as the
 * Python method would fail on one (each function checks its other arguments itself). */
static PyObject *
method(PyMethodDef *def, PyTypeObject *type)
{
    return PyDescr_NewMethod(type, def);
}

/* threading.local's types, and whether LocalMirror matches them: checked on a local of our
 * own, through this thread's attribute dict found as local_dict() finds it. -1 on error. */
static int
bind_local_mirror(State *s)
{
    PyObject *threading = PyImport_ImportModule("_thread");
    PyObject *local_type = threading ? PyObject_GetAttrString(threading, "_local") : NULL;
    Py_XDECREF(threading);
    if (local_type == NULL) {
        return -1;
    }
    s->local_type = (PyTypeObject *)local_type;
    s->local_dummy_type = NULL;
    s->local_mirror = 0;
#ifdef TETHER_LOCAL_MIRROR
    PyObject *probe = PyObject_CallNoArgs(local_type);
    PyObject *value = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (probe == NULL || value == NULL || PyObject_SetAttrString(probe, "probe", value) < 0) {
        Py_XDECREF(probe);
        Py_XDECREF(value);
        return -1;
    }
    /* The key is read only once the object is known to be as large as LocalMirror. */
    PyObject *tdict = PyThreadState_GetDict(), *key = NULL, *dummy = NULL;
    if (PyType_Check(local_type) && Py_IS_TYPE(probe, (PyTypeObject *)local_type) &&
        ((PyTypeObject *)local_type)->tp_basicsize == sizeof(LocalMirror)) {
        key = ((LocalMirror *)probe)->key;
    }
    if (tdict != NULL && key != NULL && PyUnicode_Check(key)) {
        dummy = PyDict_GetItemWithError(tdict, key);
    }
    if (dummy != NULL && Py_TYPE(dummy)->tp_basicsize == sizeof(LocalDummyMirror)) {
        PyObject *ldict = ((LocalDummyMirror *)dummy)->localdict;
        if (ldict != NULL && PyDict_CheckExact(ldict) &&
            PyDict_GetItemString(ldict, "probe") == value) {
            s->local_dummy_type = (PyTypeObject *)Py_NewRef(Py_TYPE(dummy));
            s->local_mirror = 1;
        }
    }
    PyErr_Clear();
    Py_DECREF(probe);
    Py_DECREF(value);
#endif
    return 0;
}

static PyObject *
bind(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pool",    "entry",     "proxy",      "cursor", "idle",
                             "in_use",  "trusted",   "cursor_py",  "execute_py", NULL};
    PyTypeObject *pool, *entry, *proxy, *cursor_type;
    PyObject *idle, *in_use, *cursor_py, *execute_py;
    double trusted;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$O!O!O!O!OOdOO:bind", kwlist, &PyType_Type,
                                     &pool, &PyType_Type, &entry, &PyType_Type, &proxy,
                                     &PyType_Type, &cursor_type, &idle, &in_use, &trusted,
                                     &cursor_py, &execute_py)) {
        return NULL;
    }
    if (!PyType_IsSubtype(entry, &EntryCoreType) || !PyType_IsSubtype(pool, &PoolCoreType)) {
        PyErr_SetString(PyExc_TypeError, "bind(): entry must extend tether._speedups.EntryCore"
                                         " and pool tether._speedups.PoolCore");
        return NULL;
    }
    State s = {0};
    struct {
        PyTypeObject *type;
        const char *name;
        Offset *out;
    } slots[] = {
        {pool, "_by_thread", &s.p_by_thread},
        {pool, "_counters", &s.p_counters},
        {pool, "_hold_times", &s.p_hold_times},
        {pool, "_leaked", &s.p_leaked},
        {pool, "_local", &s.p_local},
        {pool, "_lock", &s.p_lock},
        {pool, "_waiters", &s.p_waiters},
        {pool, "leak_timeout", &s.p_leak_timeout},
        {pool, "timeout", &s.p_timeout},
        {entry, "acquired", &s.e_acquired},
        {entry, "cursor_class", &s.e_cursor_class},
        {entry, "gen", &s.e_gen},
        {entry, "fd", &s.e_fd},
        {entry, "raw", &s.e_raw},
        {entry, "spare", &s.e_spare},
        {entry, "state", &s.e_state},
        {entry, "status", &s.e_status},
        {proxy, "_entry", &s.c_entry},
        {proxy, "_gen", &s.c_gen},
        {proxy, "_pool", &s.c_pool},
        {proxy, "_raw", &s.c_raw},
    };
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        if (slot_offset(slots[i].type, slots[i].name, slots[i].out) < 0) {
            return NULL;
        }
    }

    PyObject *threading = PyImport_ImportModule("_thread");
    PyObject *lock_type = threading ? PyObject_GetAttrString(threading, "LockType") : NULL;
    PyObject *allocate_lock =
        lock_type ? PyObject_GetAttrString(threading, "allocate_lock") : NULL;
    Py_XDECREF(threading);
    if (allocate_lock == NULL) {
        Py_XDECREF(lock_type);
        return NULL;
    }
    s.lock_acquire = PyObject_GetAttrString(lock_type, "acquire");
    s.lock_release = PyObject_GetAttrString(lock_type, "release");
    s.lock_locked = PyObject_GetAttrString(lock_type, "locked");
    s.lock_type = (PyTypeObject *)lock_type;
    if (s.lock_acquire == NULL || s.lock_release == NULL || s.lock_locked == NULL) {
        Py_XDECREF(s.lock_acquire);
        Py_XDECREF(s.lock_release);
        Py_XDECREF(s.lock_locked);
        Py_DECREF(lock_type);
        Py_DECREF(allocate_lock);
        return NULL;
    }
#ifdef TETHER_LOCK_MIRROR
    {
        /* The field must follow acquire() and release() on a lock of our own. */
        PyObject *probe = PyObject_CallNoArgs(allocate_lock);
        PyObject *args[1] = {probe};
        int ok = probe != NULL && Py_IS_TYPE(probe, s.lock_type) &&
                 ((LockMirror *)probe)->locked == 0;
        PyObject *r = ok ? PyObject_Vectorcall(s.lock_acquire, args, 1, NULL) : NULL;
        int held = r != NULL;
        Py_XDECREF(r);
        ok = held && ((LockMirror *)probe)->locked == 1;
        if (held) {
            r = PyObject_Vectorcall(s.lock_release, args, 1, NULL);
            ok = ok && r != NULL && ((LockMirror *)probe)->locked == 0;
            Py_XDECREF(r);
        }
        Py_XDECREF(probe);
        PyErr_Clear();
        s.lock_mirror = ok;
    }
#endif
    Py_DECREF(allocate_lock);
    /* For the tests: whether the lock's state is read directly. */
    if (PyObject_SetAttrString(module, "lock_state_read", s.lock_mirror ? Py_True : Py_False) <
        0) {
        return NULL;
    }
    if (bind_local_mirror(&s) < 0 ||
        PyObject_SetAttrString(module, "local_state_read", s.local_mirror ? Py_True : Py_False) <
            0) {
        return NULL;
    }
    /* Threads started by threading set their thread state's thread_id to their ident
     * themselves (as does every thread state made on its own thread): read there, it is
     * one load from memory the interpreter keeps hot, not a call into the C library. */
    s.tstate_ident = PyThreadState_GET()->thread_id == PyThread_get_thread_ident();
    PyObject *collections = PyImport_ImportModule("collections");
    PyObject *deque = collections ? PyObject_GetAttrString(collections, "deque") : NULL;
    Py_XDECREF(collections);
    if (deque == NULL) {
        return NULL;
    }
    if (!PyType_Check(deque)) {
        Py_DECREF(deque);
        PyErr_SetString(PyExc_TypeError, "collections.deque is not a type");
        return NULL;
    }
    s.deque_type = (PyTypeObject *)deque;
    s.pool_type = (PyTypeObject *)Py_NewRef(pool);
    s.entry_type = (PyTypeObject *)Py_NewRef(entry);
    s.proxy_type = (PyTypeObject *)Py_NewRef(proxy);
    s.idle = Py_NewRef(idle);
    s.in_use = Py_NewRef(in_use);
    s.zero = PyLong_FromLong(0);
    s.trusted = trusted;
    s.s_last = PyUnicode_InternFromString("last");
    s.s_usable = PyUnicode_InternFromString("_usable");
    s.s_checkout = PyUnicode_InternFromString("_checkout");
    s.s_record_stack = PyUnicode_InternFromString("_record_stack");
    s.s_checkin = PyUnicode_InternFromString("_checkin");
    s.s_release_slow = PyUnicode_InternFromString("_release_slow");
    s.s_on_proxy_collected = PyUnicode_InternFromString("_on_proxy_collected");
    s.s_abandon_checkout = PyUnicode_InternFromString("_abandon_checkout");
    s.s_timeout = PyUnicode_InternFromString("timeout");
    s.s_acquire = PyUnicode_InternFromString("acquire");
    s.s_tether_conn = PyUnicode_InternFromString("_tether_conn");
    s.s_tether_gen = PyUnicode_InternFromString("_tether_gen");
    s.s_tether_base = PyUnicode_InternFromString("_tether_base");
    s.s_tether_unbuffered = PyUnicode_InternFromString("_tether_unbuffered");
    s.s_tether_open = PyUnicode_InternFromString("_tether_open");
    s.s_tether_run = PyUnicode_InternFromString("_tether_run");
    s.s_tether_redo = PyUnicode_InternFromString("_tether_redo");
    s.s_failed = PyUnicode_InternFromString("_failed");
    s.s_read_status = PyUnicode_InternFromString("_read_status");
    s.s_execute = PyUnicode_InternFromString("execute");
    s.cursor_py = Py_NewRef(cursor_py);
    s.execute_py = Py_NewRef(execute_py);
    s.s_release = PyUnicode_InternFromString("release");
    if (PyErr_Occurred()) {
        return NULL;
    }
    /* PooledConnection's own look-up, kept for fast_getattr(): the __getattr__ hook CPython
     * gives a class that defines __getattr__ and inherits object's __getattribute__. */
    s.proxy_getattro_hook = S.proxy_getattro_hook; /* bound before: already saved */
    if (s.proxy_getattro_hook == NULL) {
        PyObject *mine = PyObject_GetAttrString((PyObject *)proxy, "__getattribute__");
        PyObject *base = mine ? PyObject_GetAttrString((PyObject *)&PyBaseObject_Type,
                                                       "__getattribute__")
                              : NULL;
        PyObject *hook = base ? PyDict_GetItemString(((PyTypeObject *)proxy)->tp_dict,
                                                     "__getattr__")
                              : NULL;
        getattrofunc own = ((PyTypeObject *)proxy)->tp_getattro;
        if (hook != NULL && mine == base && own != PyObject_GenericGetAttr &&
            own != proxy_getattro) {
            s.proxy_getattro_hook = own;
        }
        Py_XDECREF(mine);
        Py_XDECREF(base);
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    /* Bound once per process (pool.py binds at import); the old state, if any, stays
     * referenced by nothing but is harmless to keep. */
    s.bound = 1;
    s.current_pid = S.current_pid;
    S = s;

    PyMethodDef *defs[] = {&connection_def, &release_def, &enter_def, &exit_def,
                           &del_def,        &cursor_def,  &execute_def};
    PyTypeObject *owners[] = {pool, pool, proxy, proxy, proxy, proxy, cursor_type};
    PyObject *result = PyDict_New();
    for (size_t i = 0; result != NULL && i < sizeof(defs) / sizeof(defs[0]); i++) {
        PyObject *m = method(defs[i], owners[i]);
        if (m == NULL || PyDict_SetItemString(result, defs[i]->ml_name, m) < 0) {
            Py_CLEAR(result);
        }
        Py_XDECREF(m);
    }
    return result;
}

static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_VARARGS | METH_KEYWORDS,
     "bind(*, pool, entry, proxy, cursor, idle, in_use, trusted, cursor_py, execute_py)"
     " -> the fast-path methods, by name"},
    {"fast_getattr", (PyCFunction)fast_getattr, METH_O,
     "fast_getattr(on) -> whether PooledConnection's compiled attribute look-up is in place"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tether._speedups",
    .m_doc = "Compiled fast paths for tether's check-out and give-back (optional).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&StatusReaderType) < 0 || PyType_Ready(&AttributeReaderType) < 0 ||
        PyType_Ready(&EntryCoreType) < 0 ||
        PyType_Ready(&PoolCoreType) < 0 ||
        PyType_Ready(&SamplesType) < 0 || PyType_Ready(&ThreadCacheType) < 0) {
        return NULL;
    }
    S.current_pid = getpid();
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "StatusReader", (PyObject *)&StatusReaderType) < 0 ||
        PyModule_AddObjectRef(m, "AttributeReader", (PyObject *)&AttributeReaderType) < 0 ||
        PyModule_AddObjectRef(m, "EntryCore", (PyObject *)&EntryCoreType) < 0 ||
        PyModule_AddObjectRef(m, "PoolCore", (PyObject *)&PoolCoreType) < 0 ||
        PyModule_AddObjectRef(m, "Samples", (PyObject *)&SamplesType) < 0 ||
        PyModule_AddObjectRef(m, "ThreadCache", (PyObject *)&ThreadCacheType) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE_SHA256", TETHER_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/*
 * A call's whole record in C: stage clock readings, outcome, what it carried, and the counting
 * of all of it into the worker's stats row (see call.py, stats.py, reference.py).
 *
 * Why native, and why all of it: Python run between the native stages of a request (decode,
 * gather, score, encode) runs with cold caches and costs 5-10x its tight-loop time. Measured in
 * the request path (benchmarks/telemetry_overhead.py): a Python record object with a clock read
 * kept per stage and only the final counting in C cost ~9-11 us per call, of which begin ~3 us,
 * seven laps ~2 us, CPU sampling ~2 us, end ~3 us. Here a call is one C object, not tracked by
 * the garbage collector, holding only C integers; a stage boundary is one METH_O call that reads
 * the monotonic clock (the clock `time.perf_counter_ns` reads) into a C array; `end` counts.
 *
 *   rec = Recorder(row, layout, cpu_index, outcomes, reasons, requests, degraded, cpu_sampled,
 *                  cpu_every, clock=None, cpu_clock=None)
 *     row        writable buffer of float64: the worker's stats row, held for rec's lifetime
 *     layout     buffer of int64 (stats.COUNT_LAYOUT): [n_stages, i_candidates, i_scored,
 *                i_unscored, then per stage (the last is the whole call): wall, bucket,
 *                n_bounds, bounds...]
 *     cpu_index  tuple of n_stages ints: the row index of each stage's CPU-time sum
 *     outcomes   tuple of (name, row index, exception type or None): the first is the outcome of
 *                end(None), the last the outcome of an exception no other entry matches; the
 *                ones between are tried in order with isinstance
 *     reasons    dict degraded reason -> row index; a reason not in it counts as "other"
 *     requests, degraded, cpu_sampled: row indices; cpu_every: sample CPU for one call in this
 *                many; clock, cpu_clock: callables returning ns instead of the C clocks (tests)
 *   call = rec.begin()         counts the request, reads the clock (and for a sampled call the
 *                              thread-CPU clock)
 *   call.lap(stage)            stage `stage` ended now (it began at the previous boundary)
 *   call.ranked(candidates, scored, degraded, model_version)
 *   call.end(exc)              counts everything, once; returns the outcome's name
 *   call.timeline()            (start, end or 0, marks...): for the spans of a traced call
 *
 * Every row index is checked against the row's length once, when the recorder is built; the
 * row's buffer is held from then on, so it cannot shrink under the request path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MAX_STAGES 16
#define MAX_BOUNDS 64
#define MAX_OUTCOMES 16
#define MAX_REASONS 32

typedef struct {
    PyObject_HEAD
    Py_buffer rowbuf;
    double *row;
    int stages; /* including the whole call, the last */
    int64_t wall[MAX_STAGES], bucket[MAX_STAGES], cpu[MAX_STAGES];
    int nb[MAX_STAGES];
    int64_t bounds[MAX_STAGES][MAX_BOUNDS];
    int64_t i_cand, i_scored, i_unscored, i_req, i_degraded, i_cpu_sampled;
    int outcomes;
    int64_t outcome_index[MAX_OUTCOMES];
    PyObject *outcome_types[MAX_OUTCOMES]; /* NULL for the first and the last */
    PyObject *outcome_names[MAX_OUTCOMES];
    PyObject *reason_slot; /* dict reason -> slot (int) */
    int reasons;           /* slots; the last is "other" */
    int64_t reason_index[MAX_REASONS];
    PyObject *clock, *cpu_clock; /* NULL: the C clocks */
    long long calls, cpu_every;
} Recorder;

typedef struct {
    PyObject_HEAD
    Recorder *rec;
    int64_t start, end;
    int64_t marks[MAX_STAGES];
    int64_t cpu0;
    int64_t cpu[MAX_STAGES];
    int64_t candidates, scored;
    char sampled, ended, ranked, degraded;
    uint16_t reason_counts[MAX_REASONS];
} Call;

static PyTypeObject CallType;

static int64_t read_clock(PyObject *clock, clockid_t id) {
    if (clock == NULL) {
        struct timespec ts;
        clock_gettime(id, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    PyObject *v = PyObject_CallNoArgs(clock);
    if (v == NULL) return -1;
    long long ns = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return ns;
}

static inline int64_t now_ns(Recorder *r) { return read_clock(r->clock, CLOCK_MONOTONIC); }
static inline int64_t cpu_ns(Recorder *r) {
    return read_clock(r->cpu_clock, CLOCK_THREAD_CPUTIME_ID);
}

/* Index of the first bound >= v (Prometheus buckets are "less than or equal"); n if none. */
static int bucket_of(const int64_t *bounds, int n, int64_t v) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (bounds[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* ---------------------------------------------------------------- Recorder construction */

static int bad(const char *msg) {
    PyErr_SetString(PyExc_ValueError, msg);
    return -1;
}

static int check_index(Py_ssize_t n, int64_t i) {
    return (i < 0 || i >= n) ? bad("Recorder: index outside the stats row") : 0;
}

static int index_from(PyObject *o, Py_ssize_t n, int64_t *out) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = v;
    return check_index(n, v);
}

static int read_layout(Recorder *r, const int64_t *lay, Py_ssize_t len, Py_ssize_t n) {
    if (len < 4 || lay[0] < 1 || lay[0] > MAX_STAGES) return bad("Recorder: layout too short");
    r->stages = (int)lay[0];
    r->i_cand = lay[1], r->i_scored = lay[2], r->i_unscored = lay[3];
    if (check_index(n, r->i_cand) || check_index(n, r->i_scored) || check_index(n, r->i_unscored))
        return -1;
    Py_ssize_t pos = 4;
    for (int s = 0; s < r->stages; s++) {
        if (pos + 3 > len) return bad("Recorder: layout truncated");
        int64_t nb = lay[pos + 2];
        if (nb < 0 || nb > len - pos - 3) return bad("Recorder: layout truncated");
        if (nb > MAX_BOUNDS) return bad("Recorder: too many bounds");
        r->wall[s] = lay[pos], r->bucket[s] = lay[pos + 1], r->nb[s] = (int)nb;
        /* every bucket index, the +Inf one included */
        if (check_index(n, r->wall[s]) || check_index(n, r->bucket[s]) ||
            check_index(n, r->bucket[s] + nb))
            return -1;
        memcpy(r->bounds[s], lay + pos + 3, (size_t)nb * sizeof(int64_t));
        pos += 3 + nb;
    }
    return 0;
}

static int read_outcomes(Recorder *r, PyObject *outcomes, Py_ssize_t n) {
    if (!PyTuple_Check(outcomes)) {
        PyErr_SetString(PyExc_TypeError, "Recorder: outcomes must be a tuple");
        return -1;
    }
    Py_ssize_t k = PyTuple_GET_SIZE(outcomes);
    if (k < 2 || k > MAX_OUTCOMES) return bad("Recorder: 2 to 16 outcomes expected");
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *entry = PyTuple_GET_ITEM(outcomes, i), *name, *index, *type;
        if (!PyArg_ParseTuple(entry, "UOO", &name, &index, &type)) return -1;
        if (index_from(index, n, &r->outcome_index[i]) < 0) return -1;
        int edge = (i == 0 || i == k - 1);
        if (edge != (type == Py_None)) return bad("Recorder: only the first and last have no type");
        if (!edge && !PyType_Check(type)) {
            PyErr_SetString(PyExc_TypeError, "Recorder: an outcome's type must be a class");
            return -1;
        }
        r->outcome_names[i] = Py_NewRef(name);
        r->outcome_types[i] = edge ? NULL : Py_NewRef(type);
        r->outcomes = (int)i + 1;
    }
    return 0;
}

static int add_slot(Recorder *r, PyObject *key, PyObject *value, Py_ssize_t n) {
    int slot = r->reasons;
    if (index_from(value, n, &r->reason_index[slot]) < 0) return -1;
    PyObject *s = PyLong_FromLong(slot);
    if (s == NULL) return -1;
    int err = PyDict_SetItem(r->reason_slot, key, s);
    Py_DECREF(s);
    if (err < 0) return -1;
    r->reasons = slot + 1;
    return 0;
}

/* reasons: dict name -> row index, "other" (named by `other`) among them. Each gets a slot;
 * "other" the last, where a reason the dict does not know is counted. */
static int read_reasons(Recorder *r, PyObject *reasons, PyObject *other, Py_ssize_t n) {
    if (!PyDict_Check(reasons)) {
        PyErr_SetString(PyExc_TypeError, "Recorder: reasons must be a dict");
        return -1;
    }
    Py_ssize_t k = PyDict_GET_SIZE(reasons);
    if (k < 1 || k > MAX_REASONS) return bad("Recorder: 1 to 32 reasons expected");
    PyObject *other_index = PyDict_GetItemWithError(reasons, other);
    if (other_index == NULL)
        return PyErr_Occurred() ? -1 : bad("Recorder: the reasons must include `other`");
    if ((r->reason_slot = PyDict_New()) == NULL) return -1;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(reasons, &pos, &key, &value)) {
        int is_other = PyObject_RichCompareBool(key, other, Py_EQ);
        if (is_other < 0) return -1;
        if (!is_other && add_slot(r, key, value, n) < 0) return -1;
    }
    return add_slot(r, other, other_index, n);
}

static void Recorder_dealloc(Recorder *r) {
    if (r->row != NULL) PyBuffer_Release(&r->rowbuf);
    for (int i = 0; i < r->outcomes; i++) {
        Py_XDECREF(r->outcome_types[i]);
        Py_XDECREF(r->outcome_names[i]);
    }
    Py_XDECREF(r->reason_slot);
    Py_XDECREF(r->clock);
    Py_XDECREF(r->cpu_clock);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *Recorder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"row",      "layout",      "cpu_index", "outcomes",  "reasons",
                             "other",    "requests",    "degraded",  "cpu_sampled",
                             "cpu_every", "clock",      "cpu_clock", NULL};
    Py_buffer rowbuf, laybuf;
    PyObject *cpu_index, *outcomes, *reasons, *other, *clock = Py_None, *cpu_clock = Py_None;
    long long requests, degraded, cpu_sampled, cpu_every;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*y*O!OOULLLL|OO", kwlist, &rowbuf, &laybuf,
                                     &PyTuple_Type, &cpu_index, &outcomes, &reasons, &other,
                                     &requests, &degraded, &cpu_sampled, &cpu_every, &clock,
                                     &cpu_clock))
        return NULL;
    Recorder *r = (Recorder *)type->tp_alloc(type, 0);
    if (r == NULL) goto fail;
    if (rowbuf.itemsize != 1 && rowbuf.itemsize != 8) goto badbuf;
    if (rowbuf.len % 8 != 0 || laybuf.len % 8 != 0) goto badbuf;
    Py_ssize_t n = rowbuf.len / 8;
    if (read_layout(r, (const int64_t *)laybuf.buf, laybuf.len / 8, n) < 0) goto fail;
    if (PyTuple_GET_SIZE(cpu_index) != r->stages) {
        bad("Recorder: one CPU index per stage expected");
        goto fail;
    }
    for (int s = 0; s < r->stages; s++)
        if (index_from(PyTuple_GET_ITEM(cpu_index, s), n, &r->cpu[s]) < 0) goto fail;
    if (read_outcomes(r, outcomes, n) < 0 || read_reasons(r, reasons, other, n) < 0) goto fail;
    r->i_req = requests, r->i_degraded = degraded, r->i_cpu_sampled = cpu_sampled;
    if (check_index(n, requests) || check_index(n, degraded) || check_index(n, cpu_sampled))
        goto fail;
    if (cpu_every < 1) {
        bad("Recorder: cpu_every must be >= 1");
        goto fail;
    }
    r->cpu_every = cpu_every;
    r->clock = clock == Py_None ? NULL : Py_NewRef(clock);
    r->cpu_clock = cpu_clock == Py_None ? NULL : Py_NewRef(cpu_clock);
    PyBuffer_Release(&laybuf);
    r->rowbuf = rowbuf; /* held until the recorder goes */
    r->row = (double *)rowbuf.buf;
    return (PyObject *)r;
badbuf:
    PyErr_SetString(PyExc_ValueError, "Recorder: row and layout must be 8-byte items");
fail:
    PyBuffer_Release(&rowbuf);
    PyBuffer_Release(&laybuf);
    Py_XDECREF(r);
    return NULL;
}

static PyObject *Recorder_begin(Recorder *r, PyObject *unused) {
    (void)unused;
    Call *c = PyObject_New(Call, &CallType);
    if (c == NULL) return NULL;
    c->rec = (Recorder *)Py_NewRef(r);
    memset(c->marks, 0, sizeof c->marks);
    c->end = c->cpu0 = 0;
    c->ended = c->ranked = c->degraded = 0;
    c->sampled = (++r->calls % r->cpu_every) == 0;
    r->row[r->i_req] += 1;
    if (c->sampled && (c->cpu0 = cpu_ns(r)) == -1 && PyErr_Occurred()) goto fail;
    if ((c->start = now_ns(r)) == -1 && PyErr_Occurred()) goto fail;
    return (PyObject *)c;
fail:
    Py_DECREF(c);
    return NULL;
}

static PyObject *Recorder_get_calls(Recorder *r, void *unused) {
    (void)unused;
    return PyLong_FromLongLong(r->calls);
}

static PyMethodDef Recorder_methods[] = {
    {"begin", (PyCFunction)Recorder_begin, METH_NOARGS, "Begin a call: count it, start its clock."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Recorder_getset[] = {
    {"calls", (getter)Recorder_get_calls, NULL, "Calls begun.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ranking.telemetry._counting.Recorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Begins calls that count into one stats row (see the module's header comment).",
    .tp_methods = Recorder_methods,
    .tp_getset = Recorder_getset,
    .tp_new = Recorder_new,
};

/* --------------------------------------------------------------------------------- Call */

static void Call_dealloc(Call *c) {
    Py_DECREF(c->rec);
    PyObject_Free(c);
}

static PyObject *Call_lap(Call *c, PyObject *arg) {
    long stage = PyLong_AsLong(arg);
    if (stage == -1 && PyErr_Occurred()) return NULL;
    Recorder *r = c->rec;
    if (stage < 0 || stage >= r->stages - 1) {
        PyErr_SetString(PyExc_ValueError, "lap: no such stage");
        return NULL;
    }
    int64_t t = now_ns(r);
    if (t == -1 && PyErr_Occurred()) return NULL;
    c->marks[stage] = t;
    if (c->sampled) {
        if ((t = cpu_ns(r)) == -1 && PyErr_Occurred()) return NULL;
        c->cpu[stage] = t;
    }
    Py_RETURN_NONE;
}

static PyObject *Call_ranked(Call *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "ranked(candidates, scored, degraded, model_version)");
        return NULL;
    }
    long long candidates = PyLong_AsLongLong(args[0]);
    if (candidates == -1 && PyErr_Occurred()) return NULL;
    long long scored = PyLong_AsLongLong(args[1]);
    if (scored == -1 && PyErr_Occurred()) return NULL;
    Recorder *r = c->rec;
    uint16_t counts[MAX_REASONS] = {0};
    int any = 0;
    PyObject *seq = PySequence_Fast(args[2], "ranked: degraded must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *slot = PyDict_GetItemWithError(r->reason_slot, items[i]);
        long s = r->reasons - 1; /* "other" */
        if (slot != NULL)
            s = PyLong_AsLong(slot);
        else if (PyErr_Occurred())
            goto fail; /* an unhashable reason */
        if (counts[s] < UINT16_MAX) counts[s]++;
        any = 1;
    }
    Py_DECREF(seq);
    c->candidates = candidates, c->scored = scored;
    c->ranked = 1, c->degraded = (char)any;
    memcpy(c->reason_counts, counts, sizeof counts);
    Py_RETURN_NONE;
fail:
    Py_DECREF(seq);
    return NULL;
}

static int outcome_of(Recorder *r, PyObject *exc) {
    if (exc == Py_None) return 0;
    for (int i = 1; i < r->outcomes - 1; i++) {
        int is = PyObject_IsInstance(exc, r->outcome_types[i]);
        if (is < 0) return -1;
        if (is) return i;
    }
    return r->outcomes - 1;
}

static PyObject *Call_end(Call *c, PyObject *exc) {
    Recorder *r = c->rec;
    int o = outcome_of(r, exc);
    if (o < 0) return NULL;
    PyObject *name = Py_NewRef(r->outcome_names[o]);
    if (c->ended) return name;
    int64_t now = now_ns(r);
    if (now == -1 && PyErr_Occurred()) goto fail;
    int64_t cpu_now = 0;
    if (c->sampled && (cpu_now = cpu_ns(r)) == -1 && PyErr_Occurred()) goto fail;
    c->ended = 1;
    c->end = now;
    double *row = r->row;
    row[r->outcome_index[o]] += 1;
    if (c->ranked) {
        row[r->i_cand] += (double)c->candidates;
        row[r->i_scored] += (double)c->scored;
        row[r->i_unscored] += (double)(c->candidates - c->scored);
        if (c->degraded) {
            row[r->i_degraded] += 1;
            for (int s = 0; s < r->reasons; s++)
                if (c->reason_counts[s]) row[r->reason_index[s]] += c->reason_counts[s];
        }
    }
    int last = r->stages - 1;
    int64_t prev = c->start, prev_cpu = c->cpu0;
    for (int s = 0; s < last; s++) {
        int64_t mark = c->marks[s];
        if (mark == 0) continue; /* the stage did not run */
        int64_t dt = mark - prev;
        row[r->wall[s]] += (double)dt;
        row[r->bucket[s] + bucket_of(r->bounds[s], r->nb[s], dt)] += 1;
        prev = mark;
        if (c->sampled) {
            row[r->cpu[s]] += (double)(c->cpu[s] - prev_cpu);
            prev_cpu = c->cpu[s];
        }
    }
    int64_t total = now - c->start;
    row[r->wall[last]] += (double)total;
    row[r->bucket[last] + bucket_of(r->bounds[last], r->nb[last], total)] += 1;
    if (c->sampled) {
        row[r->cpu[last]] += (double)(cpu_now - c->cpu0);
        if (o == 0) row[r->i_cpu_sampled] += 1;
    }
    return name;
fail:
    Py_DECREF(name);
    return NULL;
}

static PyObject *Call_timeline(Call *c, PyObject *unused) {
    (void)unused;
    int last = c->rec->stages - 1;
    PyObject *t = PyTuple_New(2 + last);
    if (t == NULL) return NULL;
    int64_t v[2 + MAX_STAGES];
    v[0] = c->start, v[1] = c->end;
    memcpy(v + 2, c->marks, (size_t)last * sizeof(int64_t));
    for (int i = 0; i < 2 + last; i++) {
        PyObject *x = PyLong_FromLongLong(v[i]);
        if (x == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

static PyMethodDef Call_methods[] = {
    {"lap", (PyCFunction)Call_lap, METH_O, "The stage `stage` ended now."},
    {"ranked", (PyCFunction)(void (*)(void))Call_ranked, METH_FASTCALL,
     "What an answered call carried (counted at end)."},
    {"end", (PyCFunction)Call_end, METH_O, "The call ended: count it (once); the outcome."},
    {"timeline", (PyCFunction)Call_timeline, METH_NOARGS, "(start, end or 0, stage marks...)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CallType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ranking.telemetry._counting.Call",
    .tp_basicsize = sizeof(Call),
    .tp_dealloc = (destructor)Call_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_doc = "One call in flight (Recorder.begin); not thread-safe: one event loop.",
    .tp_methods = Call_methods,
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_counting",
    .m_doc = "A call's record, counted into a stats row, in C.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__counting(void) {
    if (PyType_Ready(&RecorderType) < 0 || PyType_Ready(&CallType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Recorder", (PyObject *)&RecorderType) < 0 ||
        PyModule_AddObjectRef(m, "Call", (PyObject *)&CallType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

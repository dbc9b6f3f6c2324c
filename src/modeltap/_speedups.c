/* The request path of capture, compiled: the same behaviour as the pure-Python
 * `modeltap.capture.exchange.PyExchangeCapture`, for a fraction of its interpreter time.
 *
 * `Capture(app, sink, offer, max_body_bytes, start_trace, attach, detach, cold_start_requests)`
 * is called like the Python class: `await capture(scope, receive, send, weight, payload_weight)`.
 * The call returns an awaitable (`Exchange`) that drives the app's coroutine itself, so no
 * Python frame runs per exchange besides the app's: the receive wrapper returns an awaitable
 * that looks at the message the server produced, the send wrapper looks at the app's message
 * and returns the server's own awaitable untouched. When the app returns or raises, the record
 * (the same 19-tuple, `modeltap.records.ExchangeRecord` order) is offered.
 *
 * Nothing here raises into the app: a failure of capture's own bookkeeping is reported to the
 * sink (`note_internal_error`) and the message passes on unchanged.
 *
 * Reference cycles: the app's coroutine holds the wrappers, the wrappers hold the per-exchange
 * `State`, and the `Exchange` holds both; `State` holds nothing that leads back, but the scope
 * may (an app can keep anything in it), so every type takes part in garbage collection.
 *
 * Around the capture: `Encoder` writes each record in `modeltap.handoff.framing`'s layout for
 * the monitor process, `Dispatch` is the middleware's call (the base of `ModelTapMiddleware`,
 * which hands an HTTP exchange to the capture without a Python frame), and `RecordQueue` is the
 * bounded hand-off the capture offers its records to (`PyRecordQueue` in Python). Beside it,
 * `decode_records` is the monitor's side of the hand-off (`framing.decode_records`), and
 * `parse_response` reads the sidecar's usual upstream response in one call (llhttp reads the
 * rest; `modeltap.sidecar.upstream`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <strings.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030A0000
#error "modeltap._speedups needs Python 3.10 or later (PyIter_Send, am_send)"
#endif

/* ------------------------------------------------------------------------------------------ */
/* Clocks: time.perf_counter() and time.time_ns() are CLOCK_MONOTONIC and CLOCK_REALTIME on   */
/* the platforms this module is built for (setup.py builds it on Linux only).                 */

static double perf_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long long wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------ */
/* Interned strings                                                                           */

static PyObject *s_type, *s_body, *s_more_body, *s_status, *s_headers, *s_more_trailers;
static PyObject *s_root_path, *s_http_request, *s_http_disconnect, *s_response_body;
static PyObject *s_response_start, *s_response_pathsend, *s_response_trailers, *s_empty;
static PyObject *s_throw, *s_close, *s_qualname, *s_capture, *s_trace_start, *s_trace_detach;
static PyObject *s_note_internal_error, *s_note_first_answer;
static PyObject *no_headers;  /* the shared empty header list, as the Python form's _NO_HEADERS */
static PyObject *no_parts;    /* no body kept: encoded as an empty field, never handed out */
static PyObject *bits_64, *bits_32, *zero_int, *s_bound;
static PyObject *empty_tuple, *s_dunder_init;

/* `mapping[key]`, or NULL without an error when the key is absent (any mapping). */
static PyObject *lookup(PyObject *mapping, PyObject *key) {
    if (PyDict_CheckExact(mapping)) {
        PyObject *value = PyDict_GetItemWithError(mapping, key);
        Py_XINCREF(value);
        return value;
    }
    PyObject *value = PyObject_GetItem(mapping, key);
    if (value == NULL && PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();
    }
    return value;
}

/* `obj`'s instance dict (a new reference) when it has a plain one; NULL, with no exception,
 * otherwise. */
static PyObject *instance_dict(PyObject *obj) {
    PyObject *dict = PyObject_GenericGetDict(obj, NULL);
    if (dict == NULL) {
        PyErr_Clear();  /* no instance dict */
    } else if (!PyDict_CheckExact(dict)) {
        Py_CLEAR(dict);
    }
    return dict;
}

/* `obj`'s own attribute dict (a new reference) when its class defines none of `names`, so that
 * the dict is where `getattr` finds them: read per request without the attribute protocol's
 * type lookups (whose method cache entries other types' hot lookups may evict). NULL, with no
 * exception, when `getattr` is needed. */
static PyObject *own_attribute_dict(PyObject *obj, PyObject *const *names, int count) {
    PyObject *type = (PyObject *)Py_TYPE(obj);
    for (int i = 0; i < count; i++) {
        int defined = PyObject_HasAttr(type, names[i]);
        if (defined) {
            return NULL;
        }
    }
    return instance_dict(obj);
}

/* `obj.<name>` (a new reference): from `dict` (its `own_attribute_dict`) when there is one,
 * else by `getattr`. NULL when absent, with an exception set only by `getattr`. */
static PyObject *own_attribute(PyObject *dict, PyObject *obj, PyObject *name) {
    if (dict == NULL) {
        return PyObject_GetAttr(obj, name);
    }
    return Py_XNewRef(PyDict_GetItemWithError(dict, name));
}

/* Whether `mapping[key]` is true (absent: false); -1 with an exception on failure. */
static int is_true_value(PyObject *mapping, PyObject *key) {
    PyObject *value = lookup(mapping, key);
    if (value == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* The exception being raised, normalised and taken (the error indicator is cleared). */
static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
#endif
}

static void restore_exception(PyObject *exception) {
    if (exception == NULL) {
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exception);
#else
    PyObject *type = (PyObject *)Py_TYPE(exception);
    Py_INCREF(type);
    PyErr_Restore(type, exception, PyException_GetTraceback(exception));
#endif
}

/* Raise StopIteration(value): how an iterator's send/throw says "returned value". */
static void set_stop_iteration(PyObject *value) {
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
}

/* The iterator behind an awaitable: a coroutine is its own, else `__await__()`. */
static PyObject *awaitable_iterator(PyObject *awaitable) {
    if (PyCoro_CheckExact(awaitable)) {
        Py_INCREF(awaitable);
        return awaitable;
    }
    PyAsyncMethods *am = Py_TYPE(awaitable)->tp_as_async;
    if (am == NULL || am->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(awaitable)->tp_name);
        return NULL;
    }
    PyObject *iterator = am->am_await(awaitable);
    if (iterator != NULL && !PyIter_Check(iterator)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(iterator)->tp_name);
        Py_CLEAR(iterator);
    }
    return iterator;
}

/* Raise what `throw(type[, value[, traceback]])` was given, as a finished coroutine does. */
static PyObject *raise_thrown(PyObject *args) {
    PyObject *type = PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : Py_None;
    PyObject *value = PyTuple_GET_SIZE(args) > 1 ? PyTuple_GET_ITEM(args, 1) : Py_None;
    if (PyExceptionInstance_Check(type)) {
        PyErr_SetObject((PyObject *)Py_TYPE(type), type);
    } else if (PyExceptionClass_Check(type)) {
        PyErr_SetObject(type, value != Py_None ? value : NULL);
    } else {
        PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException");
    }
    return NULL;
}


/* ------------------------------------------------------------------------------------------ */
/* Encoder: one record to the hand-off's bytes (`modeltap.handoff.framing`, RECORDS payload)   */
/*                                                                                            */
/* Byte for byte what `framing.RecordEncoder.encode` writes (its head, then the kept body     */
/* chunks), as one bytes object: the request path of process mode then hands over bytes, which */
/* the garbage collector never visits, and the scope is let go when the exchange ends.        */

#define FIXED_SIZE 77   /* <q4diqqiiBii */
#define TRACE_SIZE 32   /* <QQQQ */
#define LENGTHS_SIZE 48 /* <12I */
#define F_DISCONNECTED 1
#define F_TRACED 2
#define F_REMOTE_PARENT 4
#define F_SAMPLED 8
#define F_ENRICHED 16
#define F_COLD 32

typedef struct {
    PyObject_HEAD
    PyObject *request_wanted;   /* frozenset of bytes */
    PyObject *response_wanted;  /* frozenset of bytes */
    /* The same names as a tuple of exact bytes, searched by length and bytes (no hash of every
     * header name per request); NULL when a name is not exact bytes or there are many. */
    PyObject *request_names, *response_names;
    PyObject *route_of;         /* route_of(scope, root_path_at_start) -> str | None */
    PyObject *route_key, *template_key, *proxy_error_key, *cold_start_key;
} EncoderObject;

static PyTypeObject EncoderType;

static PyObject *s_method, *s_scheme, *s_http_version, *s_path, *s_query_string, *s_client;
static PyObject *s_server, *s_GET, *s_http, *s_1_1, *s_raw_path;
static PyObject *s_fastapi, *s_effective_route_context, *s_original_route;

typedef struct {
    PyObject *scope;
    PyObject *root_path_at_start;
    long long start_ns;
    double response_started, ended, finished, first_body;  /* relative to the start; NaN: none */
    long long status, request_size, response_size, weight, payload_weight;
    int disconnected;
    PyObject *response_headers;
    PyObject *request_parts, *response_parts;
    PyObject *exception_type;  /* str or None */
    PyObject *ids;             /* TraceIds or None */
} RecordFields;

/* Pieces of the output: pointers into objects kept alive by `owners` until the copy. */
typedef struct {
    const char *data;
    Py_ssize_t size;
} Piece;

/* A record's owners fit here (its texts and header fields); more (many kept body chunks, many
 * wanted headers) go to `spilled`. No list is made per record: under load it was the one
 * allocation of the encoding besides the record itself. */
#define INLINE_OWNERS 24

typedef struct {
    Piece *pieces;
    Py_ssize_t count, capacity;
    PyObject *owners[INLINE_OWNERS];
    int owned;
    PyObject *spilled;  /* list, or NULL */
    Py_ssize_t total;
    int on_heap;
} Pieces;

static int pieces_add(Pieces *out, const char *data, Py_ssize_t size) {
    if (out->count == out->capacity) {
        Py_ssize_t capacity = out->capacity * 2;
        Piece *grown;
        if (out->on_heap) {
            grown = PyMem_Realloc(out->pieces, capacity * sizeof(Piece));
        } else {
            grown = PyMem_Malloc(capacity * sizeof(Piece));  /* the first ones were on the stack */
            if (grown != NULL) {
                memcpy(grown, out->pieces, out->count * sizeof(Piece));
            }
        }
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        out->pieces = grown;
        out->capacity = capacity;
        out->on_heap = 1;
    }
    out->pieces[out->count].data = data;
    out->pieces[out->count].size = size;
    out->count++;
    out->total += size;
    return 0;
}

static int pieces_own(Pieces *out, PyObject *owner) {
    /* Steals `owner`. */
    if (out->owned < INLINE_OWNERS) {
        out->owners[out->owned++] = owner;
        return 0;
    }
    if (out->spilled == NULL && (out->spilled = PyList_New(0)) == NULL) {
        Py_DECREF(owner);
        return -1;
    }
    int failed = PyList_Append(out->spilled, owner);
    Py_DECREF(owner);
    return failed;
}

/* Let go of what the pieces point into (after the copy, or on failure). */
static void pieces_release(Pieces *out) {
    if (out->on_heap) {
        PyMem_Free(out->pieces);
        out->on_heap = 0;
    }
    for (int i = 0; i < out->owned; i++) {
        Py_DECREF(out->owners[i]);
    }
    out->owned = 0;
    Py_CLEAR(out->spilled);
}

/* UTF-8 bytes of `str(value)` with surrogate escapes (the Python encoder's `_text`). */
static int text_of(Pieces *out, PyObject *value, const char **data, Py_ssize_t *size) {
    PyObject *text;
    if (PyUnicode_Check(value)) {
        Py_INCREF(value);
        text = value;
    } else {
        text = PyObject_Str(value);
        if (text == NULL) {
            return -1;
        }
    }
    *data = PyUnicode_AsUTF8AndSize(text, size);
    if (*data == NULL) {
        /* Lone surrogates: the strict (cached) form refuses them. */
        PyErr_Clear();
        PyObject *encoded = PyUnicode_AsEncodedString(text, "utf-8", "surrogateescape");
        Py_DECREF(text);
        if (encoded == NULL) {
            return -1;
        }
        *data = PyBytes_AS_STRING(encoded);
        *size = PyBytes_GET_SIZE(encoded);
        return pieces_own(out, encoded);
    }
    return pieces_own(out, text);  /* the UTF-8 form is cached in the str: keep it alive */
}

/* Little-endian fields. On a little-endian machine the 32- and 64-bit ones are one store of the
 * native value each: the byte loops were not merged by the compiler, and cost a record about
 * 1 200 instructions. */
static void put_u16(unsigned char *at, Py_ssize_t value) {
    at[0] = (unsigned char)(value & 0xFF);
    at[1] = (unsigned char)((value >> 8) & 0xFF);
}

static void put_u32(unsigned char *at, unsigned long long value) {
#if PY_LITTLE_ENDIAN
    uint32_t native = (uint32_t)value;
    memcpy(at, &native, sizeof(native));
#else
    for (int i = 0; i < 4; i++) {
        at[i] = (unsigned char)((value >> (8 * i)) & 0xFF);
    }
#endif
}

static void put_u64(unsigned char *at, unsigned long long value) {
#if PY_LITTLE_ENDIAN
    uint64_t native = (uint64_t)value;
    memcpy(at, &native, sizeof(native));
#else
    for (int i = 0; i < 8; i++) {
        at[i] = (unsigned char)((value >> (8 * i)) & 0xFF);
    }
#endif
}

static void put_f64(unsigned char *at, double value) {
    unsigned long long bits;
    if (value != value) {
        /* One NaN ("not taken"), the bits of Python's `math.nan`: before 3.11 `Py_NAN` is made
         * by arithmetic and carries the sign bit on x86, and the record would differ. */
        bits = 0x7ff8000000000000ULL;
    } else {
        memcpy(&bits, &value, sizeof(bits));
    }
    put_u64(at, bits);
}

/* The scope's value for `key`, or `fallback` (borrowed; NULL with an error on failure). A new
 * reference is returned in every success case. */
static PyObject *scope_get(PyObject *scope, PyObject *key, PyObject *fallback) {
    PyObject *value = lookup(scope, key);
    if (value == NULL && !PyErr_Occurred()) {
        Py_XINCREF(fallback);
        return fallback;
    }
    return value;
}

/* A joined field: `count` u16 lengths, then the texts (each cut at 64 KiB). `lengths` is
 * caller storage that outlives the pieces. */
static int joined(Pieces *out, PyObject **values, int count, unsigned char *lengths, int none_is_empty) {
    const char *data[3];
    Py_ssize_t size[3];
    for (int i = 0; i < count; i++) {
        if (values[i] == NULL || (none_is_empty && values[i] == Py_None)) {
            data[i] = "";
            size[i] = 0;
        } else if (text_of(out, values[i], &data[i], &size[i]) < 0) {
            return -1;
        }
        if (size[i] > 65535) {
            size[i] = 65535;
        }
        put_u16(lengths + 2 * i, size[i]);
    }
    Py_ssize_t start = out->total;
    if (pieces_add(out, (const char *)lengths, 2 * count) < 0) {
        return -1;
    }
    for (int i = 0; i < count; i++) {
        if (size[i] && pieces_add(out, data[i], size[i]) < 0) {
            return -1;
        }
    }
    return (int)(out->total - start);
}

/* Whether `name` is one of the wanted: 1, 0, or -1 with an exception (as `name in wanted`). */
static int is_wanted(PyObject *name, PyObject *names, PyObject *wanted) {
    if (names == NULL || !PyBytes_CheckExact(name)) {
        return PySet_Contains(wanted, name);
    }
    Py_ssize_t size = PyBytes_GET_SIZE(name);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *candidate = PyTuple_GET_ITEM(names, i);
        if (PyBytes_GET_SIZE(candidate) == size &&
            memcmp(PyBytes_AS_STRING(candidate), PyBytes_AS_STRING(name), (size_t)size) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Up to this many wanted names are searched one by one; more, in the set. */
#define FEW_NAMES 16

/* The wanted set's names as a tuple, or NULL (no error) when the set suits them better. */
static PyObject *few_names(PyObject *wanted) {
    if (PySet_GET_SIZE(wanted) > FEW_NAMES) {
        return NULL;
    }
    PyObject *names = PySequence_Tuple(wanted);
    if (names == NULL) {
        PyErr_Clear();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(names, i))) {
            Py_DECREF(names);
            return NULL;
        }
    }
    return names;
}

/* `name:value` lines of the wanted headers, joined by newlines (the Python `_headers`). */
static Py_ssize_t header_lines(Pieces *out, PyObject *headers, PyObject *names, PyObject *wanted) {
    Py_ssize_t start = out->total;
    if (headers == NULL || headers == Py_None) {
        return 0;
    }
    /* A list (every server's) is read by index: no iterator made per message. */
    int listed = PyList_CheckExact(headers);
    PyObject *iterator = listed ? NULL : PyObject_GetIter(headers);
    if (!listed && iterator == NULL) {
        return -1;
    }
    int first = 1;
    Py_ssize_t index = 0;
    for (;;) {
        PyObject *pair;
        if (listed) {
            if (index >= PyList_GET_SIZE(headers)) {
                break;
            }
            pair = Py_NewRef(PyList_GET_ITEM(headers, index++));
        } else if ((pair = PyIter_Next(iterator)) == NULL) {
            break;
        }
        PyObject *name, *value;
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2) {
            name = PyTuple_GET_ITEM(pair, 0);
            value = PyTuple_GET_ITEM(pair, 1);
            Py_INCREF(name);
            Py_INCREF(value);
        } else {
            PyObject *items = PySequence_Tuple(pair);
            if (items == NULL || PyTuple_GET_SIZE(items) != 2) {
                if (items != NULL) {
                    PyErr_SetString(PyExc_ValueError, "a header is not a (name, value) pair");
                }
                Py_XDECREF(items);
                Py_DECREF(pair);
                Py_XDECREF(iterator);
                return -1;
            }
            name = PyTuple_GET_ITEM(items, 0);
            value = PyTuple_GET_ITEM(items, 1);
            Py_INCREF(name);
            Py_INCREF(value);
            Py_DECREF(items);
        }
        Py_DECREF(pair);
        int keep = is_wanted(name, names, wanted);
        if (keep > 0) {
            /* Both as bytes (a bytearray is copied), the value without a line break. */
            PyObject *name_bytes = PyBytes_CheckExact(name) ? (Py_INCREF(name), name) : PyBytes_FromObject(name);
            PyObject *value_bytes = name_bytes == NULL ? NULL
                                    : PyBytes_CheckExact(value) ? (Py_INCREF(value), value)
                                                                 : PyBytes_FromObject(value);
            if (value_bytes == NULL) {
                Py_XDECREF(name_bytes);
                keep = -1;
            } else if (memchr(PyBytes_AS_STRING(value_bytes), '\n', PyBytes_GET_SIZE(value_bytes)) != NULL) {
                Py_DECREF(name_bytes);
                Py_DECREF(value_bytes);
            } else {
                const char *n = PyBytes_AS_STRING(name_bytes);
                Py_ssize_t nn = PyBytes_GET_SIZE(name_bytes);
                const char *v = PyBytes_AS_STRING(value_bytes);
                Py_ssize_t vn = PyBytes_GET_SIZE(value_bytes);
                int owned = pieces_own(out, name_bytes);
                owned = pieces_own(out, value_bytes) < 0 ? -1 : owned;
                if (owned < 0 || (!first && pieces_add(out, "\n", 1) < 0) || pieces_add(out, n, nn) < 0 ||
                    pieces_add(out, ":", 1) < 0 || pieces_add(out, v, vn) < 0) {
                    keep = -1;
                }
                first = 0;
            }
        }
        Py_DECREF(name);
        Py_DECREF(value);
        if (keep < 0) {
            Py_XDECREF(iterator);
            return -1;
        }
    }
    Py_XDECREF(iterator);
    if (PyErr_Occurred()) {
        return -1;
    }
    return out->total - start;
}

static Py_ssize_t body_parts(Pieces *out, PyObject *parts) {
    Py_ssize_t start = out->total;
    Py_ssize_t count = PyList_GET_SIZE(parts);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyList_GET_ITEM(parts, i);
        if (!PyBytes_Check(part)) {
            PyErr_SetString(PyExc_TypeError, "a kept body chunk is not bytes");
            return -1;
        }
        Py_INCREF(part);
        if (pieces_own(out, part) < 0 || pieces_add(out, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part)) < 0) {
            return -1;
        }
    }
    return out->total - start;
}

/* FastAPI's whole template of a route it matched through `include_router` (the Python
 * `routes.included_template`, read the same way): a new reference, or NULL with no exception
 * where there is none or it is not exactly as expected. */
static PyObject *included_template(PyObject *scope, PyObject *route) {
    PyObject *fastapi = lookup(scope, s_fastapi);
    if (fastapi == NULL || !PyDict_CheckExact(fastapi)) {
        PyErr_Clear();
        Py_XDECREF(fastapi);
        return NULL;
    }
    PyObject *context = PyDict_GetItemWithError(fastapi, s_effective_route_context);
    Py_XINCREF(context);
    Py_DECREF(fastapi);
    if (context == NULL || context == Py_None) {
        PyErr_Clear();
        Py_XDECREF(context);
        return NULL;
    }
    PyObject *original = PyObject_GetAttr(context, s_original_route);
    int same = original == route;
    Py_XDECREF(original);
    PyObject *path = same ? PyObject_GetAttr(context, s_path) : NULL;
    Py_DECREF(context);
    if (path == NULL || !PyUnicode_CheckExact(path) || PyUnicode_GET_LENGTH(path) == 0 ||
        PyUnicode_READ_CHAR(path, 0) != '/') {
        PyErr_Clear();
        Py_XDECREF(path);
        return NULL;
    }
    return path;
}

/* The route template (`RouteTemplates.of`): computed here for the usual case (no mount moved
 * root_path during the request), else asked of the Python form. New reference or None. */
static PyObject *route_template_of(EncoderObject *encoder, PyObject *scope, PyObject *root_at_start) {
    PyObject *route = lookup(scope, encoder->route_key);
    if (route == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        PyObject *template = lookup(scope, encoder->template_key);
        if (template == NULL && !PyErr_Occurred()) {
            Py_RETURN_NONE;
        }
        return template;
    }
    if (route == Py_None) {
        Py_DECREF(route);
        PyObject *template = lookup(scope, encoder->template_key);
        if (template == NULL && !PyErr_Occurred()) {
            Py_RETURN_NONE;
        }
        return template;
    }
    PyObject *root = lookup(scope, s_root_path);
    if (root == NULL && PyErr_Occurred()) {
        Py_DECREF(route);
        return NULL;
    }
    int same_root = root == NULL ? PyUnicode_Check(root_at_start) && PyUnicode_GET_LENGTH(root_at_start) == 0
                                 : (root == root_at_start ||
                                    (PyUnicode_Check(root) && PyUnicode_Check(root_at_start) &&
                                     PyUnicode_Compare(root, root_at_start) == 0));
    Py_XDECREF(root);
    if (same_root) {
        PyObject *included = included_template(scope, route);
        if (included != NULL) {
            Py_DECREF(route);
            return included;
        }
        PyObject *template = PyObject_GetAttr(route, s_path);
        Py_DECREF(route);
        if (template == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                return NULL;
            }
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        if (!PyUnicode_Check(template)) {
            Py_DECREF(template);
            Py_RETURN_NONE;
        }
        return template;
    }
    Py_DECREF(route);
    return PyObject_CallFunctionObjArgs(encoder->route_of, scope, root_at_start, NULL);
}

static int check_int32(long long value, const char *what) {
    if (value < INT32_MIN || value > INT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "%s out of range for the record format", what);
        return -1;
    }
    return 0;
}

/* A trace id's 16 bytes, little-endian: 0, or -1 with an exception (negative, over 128 bits). */
static int trace_id_bytes(PyObject *trace_id, unsigned char *bytes) {
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t needed = PyLong_AsNativeBytes(trace_id, bytes, 16,
                                             Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
                                                 Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (needed < 0) {
        return -1;
    }
    if (needed > 16) {
        PyErr_SetString(PyExc_OverflowError, "trace id over 128 bits");
        return -1;
    }
    return 0;
#else
    return _PyLong_AsByteArray((PyLongObject *)trace_id, bytes, 16, 1, 0);
#endif
}

static PyObject *encode_fields(EncoderObject *encoder, RecordFields *r) {
    unsigned char fixed[FIXED_SIZE], trace[TRACE_SIZE], lengths[LENGTHS_SIZE];
    unsigned char protocol_lengths[6], peer_lengths[4];
    Piece initial[48];
    Pieces out = {.pieces = initial, .count = 0, .capacity = 48, .owned = 0, .spilled = NULL, .total = 0,
                  .on_heap = 0};
    PyObject *result = NULL;
    PyObject *client = NULL, *server = NULL, *method = NULL, *scheme = NULL, *version = NULL;
    PyObject *path = NULL, *query = NULL, *template = NULL, *proxy_error = NULL;
    PyObject *scope_headers = NULL;
    long long field_length[12];
#define CHECK(x) if ((x) < 0) goto fail
    PyObject *scope = r->scope;
    int flags = r->disconnected ? F_DISCONNECTED : 0;
    int cold = is_true_value(scope, encoder->cold_start_key);
    CHECK(cold);
    if (cold) {
        flags |= F_COLD;
    }
    client = scope_get(scope, s_client, Py_None);
    server = scope_get(scope, s_server, Py_None);
    if (client == NULL || server == NULL) goto fail;
    long long client_port = -1, server_port = -1;
    PyObject *client_host = NULL, *server_host = NULL;
    /* (host, port) pairs; an empty one counts as none, as `if client` does. */
    int has_client = PyObject_IsTrue(client);
    int has_server = PyObject_IsTrue(server);
    CHECK(has_client);
    CHECK(has_server);
    if (has_client) {
        PyObject *items = PySequence_Fast(client, "client is not a sequence");
        if (items == NULL || PySequence_Fast_GET_SIZE(items) < 2) {
            if (items != NULL) PyErr_SetString(PyExc_ValueError, "client is not a (host, port) pair");
            Py_XDECREF(items);
            goto fail;
        }
        client_host = PySequence_Fast_GET_ITEM(items, 0);
        PyObject *port = PySequence_Fast_GET_ITEM(items, 1);
        if (port != Py_None) {
            client_port = PyLong_AsLongLong(port);
            if (client_port == -1 && PyErr_Occurred()) { Py_DECREF(items); goto fail; }
        }
        Py_INCREF(client_host);
        Py_SETREF(client, items);
        CHECK(pieces_own(&out, client_host));  /* kept alive with the pieces */
    }
    if (has_server) {
        PyObject *items = PySequence_Fast(server, "server is not a sequence");
        if (items == NULL || PySequence_Fast_GET_SIZE(items) < 2) {
            if (items != NULL) PyErr_SetString(PyExc_ValueError, "server is not a (host, port) pair");
            Py_XDECREF(items);
            goto fail;
        }
        server_host = PySequence_Fast_GET_ITEM(items, 0);
        PyObject *port = PySequence_Fast_GET_ITEM(items, 1);
        if (port != Py_None) {
            server_port = PyLong_AsLongLong(port);
            if (server_port == -1 && PyErr_Occurred()) { Py_DECREF(items); goto fail; }
        }
        Py_INCREF(server_host);
        Py_SETREF(server, items);
        CHECK(pieces_own(&out, server_host));
    }
    CHECK(check_int32(client_port, "client port"));
    CHECK(check_int32(server_port, "server port"));
    CHECK(check_int32(r->status, "status"));
    CHECK(check_int32(r->weight, "weight"));
    CHECK(check_int32(r->payload_weight, "payload weight"));

    /* Trace identity. */
    unsigned long long trace_high = 0, trace_low = 0, span_id = 0, parent_id = 0;
    PyObject *trace_state = NULL;
    if (r->ids != NULL && r->ids != Py_None) {
        if (!PyTuple_Check(r->ids) || PyTuple_GET_SIZE(r->ids) < 7) {
            PyErr_SetString(PyExc_TypeError, "trace ids are not a TraceIds");
            goto fail;
        }
        flags |= F_TRACED;
        PyObject *ids = r->ids;
        int remote = PyObject_IsTrue(PyTuple_GET_ITEM(ids, 3));
        int sampled = PyObject_IsTrue(PyTuple_GET_ITEM(ids, 4));
        int enriched = PyObject_IsTrue(PyTuple_GET_ITEM(ids, 6));
        CHECK(remote);
        CHECK(sampled);
        CHECK(enriched);
        flags |= (remote ? F_REMOTE_PARENT : 0) | (sampled ? F_SAMPLED : 0) | (enriched ? F_ENRICHED : 0);
        PyObject *trace_id = PyTuple_GET_ITEM(ids, 0);
        unsigned char id_bytes[16];
        CHECK(trace_id_bytes(trace_id, id_bytes));
        memcpy(&trace_low, id_bytes, 8);
        memcpy(&trace_high, id_bytes + 8, 8);
        span_id = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(ids, 1));
        if (span_id == (unsigned long long)-1 && PyErr_Occurred()) goto fail;
        parent_id = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(ids, 2));
        if (parent_id == (unsigned long long)-1 && PyErr_Occurred()) goto fail;
        PyObject *state = PyTuple_GET_ITEM(ids, 5);
        /* A new root's state is empty: nothing to encode (the codec's lookup is most of it). */
        if (!PyUnicode_CheckExact(state) || PyUnicode_GET_LENGTH(state) != 0) {
            trace_state = PyUnicode_AsEncodedString(state, "latin-1", "replace");
            if (trace_state == NULL) goto fail;
            CHECK(pieces_own(&out, trace_state));
        }
    }

    /* The fixed part. */
    unsigned char *at = fixed;
    put_u64(at, (unsigned long long)r->start_ns); at += 8;
    put_f64(at, r->response_started); at += 8;
    put_f64(at, r->ended); at += 8;
    put_f64(at, r->finished); at += 8;
    put_f64(at, r->first_body); at += 8;
    put_u32(at, (unsigned long long)(long long)r->status); at += 4;
    put_u64(at, (unsigned long long)r->request_size); at += 8;
    put_u64(at, (unsigned long long)r->response_size); at += 8;
    put_u32(at, (unsigned long long)r->weight); at += 4;
    put_u32(at, (unsigned long long)r->payload_weight); at += 4;
    *at++ = (unsigned char)flags;
    put_u32(at, (unsigned long long)client_port); at += 4;
    put_u32(at, (unsigned long long)server_port); at += 4;
    CHECK(pieces_add(&out, (const char *)fixed, FIXED_SIZE));
    if (flags & F_TRACED) {
        put_u64(trace, trace_high);
        put_u64(trace + 8, trace_low);
        put_u64(trace + 16, span_id);
        put_u64(trace + 24, parent_id);
        CHECK(pieces_add(&out, (const char *)trace, TRACE_SIZE));
    }
    CHECK(pieces_add(&out, (const char *)lengths, LENGTHS_SIZE));  /* filled below */

    /* The variable fields, in order. */
    method = scope_get(scope, s_method, s_GET);
    scheme = method ? scope_get(scope, s_scheme, s_http) : NULL;
    version = scheme ? scope_get(scope, s_http_version, s_1_1) : NULL;
    if (version == NULL) goto fail;
    PyObject *protocol[3] = {method, scheme, version};
    int n = joined(&out, protocol, 3, protocol_lengths, 0);
    CHECK(n);
    field_length[0] = n;

    path = scope_get(scope, s_path, s_empty);
    if (path == NULL) goto fail;
    if (!PyUnicode_Check(path)) {
        PyErr_SetString(PyExc_TypeError, "scope path is not a str");
        goto fail;
    }
    {
        const char *data;
        Py_ssize_t size;
        CHECK(text_of(&out, path, &data, &size));  /* keeps its own reference */
        CHECK(pieces_add(&out, data, size));
        field_length[1] = size;
    }

    query = scope_get(scope, s_query_string, NULL);
    if (query == NULL && PyErr_Occurred()) goto fail;
    if (query != NULL && !PyBytes_CheckExact(query)) {
        Py_SETREF(query, PyBytes_FromObject(query));
        if (query == NULL) goto fail;
    }
    if (query != NULL) {
        Py_INCREF(query);
        CHECK(pieces_own(&out, query));
        CHECK(pieces_add(&out, PyBytes_AS_STRING(query), PyBytes_GET_SIZE(query)));
        field_length[2] = PyBytes_GET_SIZE(query);
    } else {
        field_length[2] = 0;
    }

    template = route_template_of(encoder, scope, r->root_path_at_start);
    if (template == NULL) goto fail;
    field_length[3] = 0;
    {
        int truth = PyObject_IsTrue(template);
        CHECK(truth);
        if (truth) {
            const char *data;
            Py_ssize_t size;
            CHECK(text_of(&out, template, &data, &size));
            CHECK(pieces_add(&out, data, size));
            field_length[3] = size;
        }
    }

    PyObject *peers[2] = {client_host, server_host};
    n = joined(&out, peers, 2, peer_lengths, 1);
    CHECK(n);
    field_length[4] = n;

    field_length[5] = 0;
    if (r->exception_type != NULL && r->exception_type != Py_None) {
        int truth = PyObject_IsTrue(r->exception_type);
        CHECK(truth);
        if (truth) {
            const char *data;
            Py_ssize_t size;
            CHECK(text_of(&out, r->exception_type, &data, &size));
            CHECK(pieces_add(&out, data, size));
            field_length[5] = size;
        }
    }

    proxy_error = scope_get(scope, encoder->proxy_error_key, Py_None);
    if (proxy_error == NULL) goto fail;
    field_length[6] = 0;
    {
        int truth = PyObject_IsTrue(proxy_error);
        CHECK(truth);
        if (truth) {
            const char *data;
            Py_ssize_t size;
            CHECK(text_of(&out, proxy_error, &data, &size));
            CHECK(pieces_add(&out, data, size));
            field_length[6] = size;
        }
    }

    field_length[7] = 0;
    if (trace_state != NULL) {
        CHECK(pieces_add(&out, PyBytes_AS_STRING(trace_state), PyBytes_GET_SIZE(trace_state)));
        field_length[7] = PyBytes_GET_SIZE(trace_state);
    }

    scope_headers = scope_get(scope, s_headers, Py_None);
    if (scope_headers == NULL) goto fail;
    Py_ssize_t size = header_lines(&out, scope_headers, encoder->request_names, encoder->request_wanted);
    CHECK(size);
    field_length[8] = size;
    size = header_lines(&out, r->response_headers, encoder->response_names, encoder->response_wanted);
    CHECK(size);
    field_length[9] = size;
    size = body_parts(&out, r->request_parts);
    CHECK(size);
    field_length[10] = size;
    size = body_parts(&out, r->response_parts);
    CHECK(size);
    field_length[11] = size;
    for (int i = 0; i < 12; i++) {
        if (field_length[i] > UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "a record field is over 4 GiB");
            goto fail;
        }
        put_u32(lengths + 4 * i, (unsigned long long)field_length[i]);
    }

    result = PyBytes_FromStringAndSize(NULL, out.total);
    if (result != NULL) {
        char *write = PyBytes_AS_STRING(result);
        for (Py_ssize_t i = 0; i < out.count; i++) {
            memcpy(write, out.pieces[i].data, out.pieces[i].size);
            write += out.pieces[i].size;
        }
    }
fail:
#undef CHECK
    pieces_release(&out);
    Py_XDECREF(client);
    Py_XDECREF(server);
    Py_XDECREF(method);
    Py_XDECREF(scheme);
    Py_XDECREF(version);
    Py_XDECREF(path);
    Py_XDECREF(query);
    Py_XDECREF(template);
    Py_XDECREF(proxy_error);
    Py_XDECREF(scope_headers);
    return result;
}


static double relative(PyObject *reading, double started) {
    /* A clock reading relative to the start; NaN when it was never taken (None). */
    if (reading == Py_None) {
        return Py_NAN;
    }
    return PyFloat_AsDouble(reading) - started;
}

/* Encoder.encode(raw): a raw record tuple (ExchangeRecord order) to its bytes. */
static PyObject *encoder_encode(EncoderObject *self, PyObject *raw) {
    if (!PyTuple_Check(raw) || PyTuple_GET_SIZE(raw) != 19) {
        PyErr_SetString(PyExc_TypeError, "a raw record is a tuple of 19 fields");
        return NULL;
    }
#define F(i) PyTuple_GET_ITEM(raw, i)
    RecordFields r;
    r.scope = F(0);
    r.root_path_at_start = F(1);
    r.start_ns = PyLong_AsLongLong(F(2));
    double started = PyFloat_AsDouble(F(3));
    r.response_started = relative(F(4), started);
    r.ended = relative(F(5), started);
    r.finished = PyFloat_AsDouble(F(6)) - started;
    r.first_body = relative(F(18), started);
    r.status = PyLong_AsLongLong(F(7));
    r.response_headers = F(8);
    r.request_parts = F(9);
    r.request_size = PyLong_AsLongLong(F(10));
    r.response_parts = F(11);
    r.response_size = PyLong_AsLongLong(F(12));
    r.exception_type = F(13);
    r.disconnected = PyObject_IsTrue(F(14));
    r.ids = F(15);
    r.weight = PyLong_AsLongLong(F(16));
    r.payload_weight = PyLong_AsLongLong(F(17));
#undef F
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyList_Check(r.request_parts) || !PyList_Check(r.response_parts)) {
        PyErr_SetString(PyExc_TypeError, "body chunks are not lists");
        return NULL;
    }
    return encode_fields(self, &r);
}

static int encoder_init(EncoderObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"request_headers", "response_headers", "route_of", "route_key",
                               "template_key", "proxy_error_key", "cold_start_key", NULL};
    PyObject *request, *response, *route_of, *route_key, *template_key, *proxy_error_key, *cold_start_key;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOUUUU:Encoder", keywords, &request, &response, &route_of,
                                     &route_key, &template_key, &proxy_error_key, &cold_start_key)) {
        return -1;
    }
    PyObject *request_set = PyFrozenSet_New(request);
    PyObject *response_set = request_set ? PyFrozenSet_New(response) : NULL;
    if (response_set == NULL) {
        Py_XDECREF(request_set);
        return -1;
    }
    Py_XSETREF(self->request_wanted, request_set);
    Py_XSETREF(self->response_wanted, response_set);
    Py_XSETREF(self->request_names, few_names(request_set));
    Py_XSETREF(self->response_names, few_names(response_set));
    Py_INCREF(route_of);
    Py_XSETREF(self->route_of, route_of);
    Py_INCREF(route_key);
    Py_XSETREF(self->route_key, route_key);
    Py_INCREF(template_key);
    Py_XSETREF(self->template_key, template_key);
    Py_INCREF(proxy_error_key);
    Py_XSETREF(self->proxy_error_key, proxy_error_key);
    Py_INCREF(cold_start_key);
    Py_XSETREF(self->cold_start_key, cold_start_key);
    return 0;
}

static int encoder_traverse(EncoderObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->request_wanted);
    Py_VISIT(self->response_wanted);
    Py_VISIT(self->request_names);
    Py_VISIT(self->response_names);
    Py_VISIT(self->route_of);
    return 0;
}

static int encoder_clear(EncoderObject *self) {
    Py_CLEAR(self->request_wanted);
    Py_CLEAR(self->response_wanted);
    Py_CLEAR(self->request_names);
    Py_CLEAR(self->response_names);
    Py_CLEAR(self->route_of);
    Py_CLEAR(self->route_key);
    Py_CLEAR(self->template_key);
    Py_CLEAR(self->proxy_error_key);
    Py_CLEAR(self->cold_start_key);
    return 0;
}

static void encoder_dealloc(EncoderObject *self) {
    PyObject_GC_UnTrack(self);
    encoder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef encoder_methods[] = {
    {"encode", (PyCFunction)encoder_encode, METH_O,
     "encode(raw) -> bytes: the record's RECORDS-payload bytes, bodies included."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.Encoder",
    .tp_basicsize = sizeof(EncoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Encoder(request_headers, response_headers, route_of, route_key, template_key, "
              "proxy_error_key, cold_start_key): records to the hand-off's bytes.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)encoder_init,
    .tp_methods = encoder_methods,
    .tp_traverse = (traverseproc)encoder_traverse,
    .tp_clear = (inquiry)encoder_clear,
    .tp_dealloc = (destructor)encoder_dealloc,
};

/* ------------------------------------------------------------------------------------------ */
/* Capture: the per-app configuration, one per tap                                            */

typedef struct {
    PyObject_HEAD
    PyObject *app;
    PyObject *sink;
    PyObject *offer;
    PyObject *start_trace;  /* None: tracing is off */
    PyObject *attach;
    PyObject *detach;
    PyObject *cold_start_key;
    PyObject *encoder;  /* an Encoder: offer bytes (process mode); None: offer the raw tuple */
    /* The root-trace fast path (all NULL: always ask `start_trace`): OpenTelemetry's context
     * variable, the TraceSampler (its `_bound` is read per request: the monitor may change the
     * ratio), the TraceIds class and random.getrandbits. */
    PyObject *context_var, *sampler, *trace_ids, *getrandbits;
    PyObject *sampler_dict;  /* `own_attribute_dict` of the sampler for `_bound`, or NULL */
    /* Attaching a trace's context here (NULL: always call `attach` and `detach`): the
     * SpanContext and NonRecordingSpan classes, TraceFlags.SAMPLED, the key OpenTelemetry files
     * the current span under, and its Context class. Only with `context_var` (the default
     * runtime context: the context is that variable's value). */
    PyObject *span_context, *non_recording_span, *sampled_flags, *span_key, *context_class;
    /* Made here as those classes make them (`check_otel_classes`, once): a SpanContext's default
     * trace state (NULL: call the class), the attribute a NonRecordingSpan keeps its context in
     * (NULL: call the class), and whether a Context is a plain dict subclass filled here. */
    PyObject *default_trace_state, *span_attribute;
    int context_here;
    /* The classes' version tags when checked: a class changed since (its tag reset by any
     * assignment to it or to a base) is called again (`unchanged`). */
    unsigned int span_context_tag, span_tag, context_tag;
    /* The sampler's last `_bound` seen and its value (the ratio changes seldom: the 64-bit
     * conversion is made once per change, not per exchange); `bound_all`: 2**64, every trace. */
    PyObject *bound_seen;
    unsigned long long bound_value;
    int bound_all;
    Py_ssize_t cap;
    Py_ssize_t cold_left;
    int answered;
} CaptureObject;

static void note_error(CaptureObject *capture, PyObject *where) {
    /* Capture's own failure: counted by the sink, never raised. Keeps a pending exception. */
    PyObject *pending = PyErr_Occurred() ? take_exception() : NULL;
    PyObject *result = PyObject_CallMethodOneArg(capture->sink, s_note_internal_error, where);
    if (result == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(result);
    if (pending != NULL) {
        restore_exception(pending);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* State: what one exchange has seen so far (shared by the wrappers and the Exchange)         */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;  /* `state_vectorcall`: the app calls `send` with no argument tuple */
    CaptureObject *capture;
    PyObject *send;
    PyObject *request_parts;   /* list of bytes; NULL when no payload is kept (weight 0) */
    PyObject *response_parts;  /* list of bytes; NULL when no payload is kept (weight 0) */
    PyObject *response_headers;
    Py_ssize_t request_left, request_size, response_left, response_size;
    double response_started, first_body, ended;  /* < 0: not yet */
    long status;
    int disconnected;
} StateObject;

static PyTypeObject StateType;

/* Keep a reference to a body chunk, up to what is left of the cap. */
static int keep_part(PyObject *parts, PyObject *body, Py_ssize_t size, Py_ssize_t *left) {
    PyObject *kept;
    if (size > *left) {
        kept = PySequence_GetSlice(body, 0, *left);
        if (kept == NULL) {
            return -1;
        }
    } else {
        Py_INCREF(body);
        kept = body;
    }
    if (!PyBytes_CheckExact(kept)) {
        /* A bytearray or memoryview could change under us: copy it. */
        PyObject *copy = PyBytes_FromObject(kept);
        Py_DECREF(kept);
        if (copy == NULL) {
            return -1;
        }
        kept = copy;
    }
    int failed = PyList_Append(parts, kept);
    *left -= PyBytes_GET_SIZE(kept);
    Py_DECREF(kept);
    return failed;
}

/* Whether the str `kind` equals the interned ASCII `interned`. Apps write message types as
 * literals, which Python does not intern (they hold dots): told apart by their length and bytes,
 * without the general comparison's code (the request path runs this four times). */
static int equals(PyObject *kind, PyObject *interned) {
    if (kind == interned) {
        return 1;
    }
    if (PyUnicode_CheckExact(kind) && PyUnicode_IS_COMPACT_ASCII(kind)) {
        Py_ssize_t size = PyUnicode_GET_LENGTH(kind);
        return size == PyUnicode_GET_LENGTH(interned) &&
               memcmp(PyUnicode_DATA(kind), PyUnicode_DATA(interned), (size_t)size) == 0;
    }
    return PyUnicode_Compare(kind, interned) == 0;
}

/* A message's `type` (a new reference), or NULL: no type to watch (not a mapping, absent, not a
 * str), with an exception only when looking it up failed. */
static PyObject *message_kind(PyObject *message) {
    if (!PyDict_Check(message) && !PyMapping_Check(message)) {
        return NULL;
    }
    PyObject *kind = lookup(message, s_type);
    if (kind != NULL && !PyUnicode_Check(kind)) {
        Py_CLEAR(kind);
    }
    return kind;
}

/* The server's message to the app. Returns -1 with an exception on a bookkeeping failure. */
static int watch_received(StateObject *state, PyObject *message) {
    PyObject *kind = message_kind(message);
    if (kind == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int result = 0;
    if (equals(kind, s_http_request)) {
        PyObject *body = lookup(message, s_body);
        if (body == NULL) {
            result = PyErr_Occurred() ? -1 : 0;
            goto done;
        }
        Py_ssize_t size = PyObject_Length(body);
        if (size < 0) {
            result = -1;
        } else if (size > 0) {
            state->request_size += size;
            if (state->request_left > 0) {
                result = keep_part(state->request_parts, body, size, &state->request_left);
            }
        }
        Py_DECREF(body);
    } else if (equals(kind, s_http_disconnect)) {
        state->disconnected = 1;
    }
done:
    Py_DECREF(kind);
    return result;
}

/* The app's message to the server. */
static int watch_sent(StateObject *state, PyObject *message) {
    PyObject *kind = message_kind(message);
    if (kind == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int result = 0;
    if (equals(kind, s_response_body)) {
        PyObject *body = lookup(message, s_body);
        if (body != NULL) {
            Py_ssize_t size = PyObject_Length(body);
            if (size < 0) {
                result = -1;
            } else if (size > 0) {
                if (state->response_size == 0) {
                    state->first_body = perf_now();  /* time to first byte or token */
                }
                state->response_size += size;
                if (state->response_left > 0) {
                    result = keep_part(state->response_parts, body, size, &state->response_left);
                }
            }
            Py_DECREF(body);
        } else if (PyErr_Occurred()) {
            result = -1;
        }
        if (result == 0 && state->ended < 0) {
            int more = is_true_value(message, s_more_body);
            if (more < 0) {
                result = -1;
            } else if (!more) {
                state->ended = perf_now();
            }
        }
    } else if (equals(kind, s_response_start)) {
        PyObject *status = lookup(message, s_status);
        if (status == NULL) {
            result = PyErr_Occurred() ? -1 : 0;
            goto done;
        }
        long value = PyLong_AsLong(status);
        Py_DECREF(status);
        if (value == -1 && PyErr_Occurred()) {
            result = -1;
            goto done;
        }
        state->status = value;
        PyObject *headers = lookup(message, s_headers);
        if (headers == NULL && PyErr_Occurred()) {
            result = -1;
            goto done;
        }
        if (headers != NULL) {
            int truth = PyObject_IsTrue(headers);
            if (truth > 0) {
                Py_XSETREF(state->response_headers, headers);
                headers = NULL;
            }
            Py_XDECREF(headers);
            if (truth < 0) {
                result = -1;
                goto done;
            }
        }
        state->response_started = perf_now();
    } else if (equals(kind, s_response_pathsend)) {
        state->ended = perf_now();
    } else if (equals(kind, s_response_trailers)) {
        int more = is_true_value(message, s_more_trailers);
        if (more < 0) {
            result = -1;
        } else if (!more) {
            state->ended = perf_now();
        }
    }
done:
    Py_DECREF(kind);
    return result;
}

/* The wrapped `send`: note the message, then hand the server's own awaitable back. Called by
 * vectorcall (`send(message)` makes no tuple); `tp_call` takes the same path for other callers. */
static PyObject *state_vectorcall(StateObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        return PyObject_Vectorcall(self->send, args, nargsf, kwnames);
    }
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "send expected 1 argument, got %zd", nargs);
        return NULL;
    }
    PyObject *message = args[0];
    if (watch_sent(self, message) < 0) {
        PyErr_Clear();
        note_error(self->capture, s_capture);
    }
    return PyObject_CallOneArg(self->send, message);
}

static int state_traverse(StateObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->capture);
    Py_VISIT(self->send);
    Py_VISIT(self->request_parts);
    Py_VISIT(self->response_parts);
    Py_VISIT(self->response_headers);
    return 0;
}

static int state_clear(StateObject *self) {
    Py_CLEAR(self->capture);
    Py_CLEAR(self->send);
    Py_CLEAR(self->request_parts);
    Py_CLEAR(self->response_parts);
    Py_CLEAR(self->response_headers);
    return 0;
}

static void state_dealloc(StateObject *self) {
    PyObject_GC_UnTrack(self);
    state_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.TapSend",
    .tp_basicsize = sizeof(StateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The app's send, watched by capture.",
    .tp_vectorcall_offset = offsetof(StateObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)state_traverse,
    .tp_clear = (inquiry)state_clear,
    .tp_dealloc = (destructor)state_dealloc,
};

/* ------------------------------------------------------------------------------------------ */
/* ReceiveTap: the wrapped `receive`; each call returns a ReceiveAwait                        */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;  /* `receive_tap_vectorcall` */
    StateObject *state;
    PyObject *receive;
} ReceiveTapObject;

typedef struct {
    PyObject_HEAD
    StateObject *state;
    PyObject *inner;  /* the server's receive awaitable's iterator; NULL once done */
} ReceiveAwaitObject;

static PyTypeObject ReceiveTapType, ReceiveAwaitType;

static PyObject *receive_tap_vectorcall(ReceiveTapObject *self, PyObject *const *args, size_t nargsf,
                                        PyObject *kwnames) {
    PyObject *awaitable = PyObject_Vectorcall(self->receive, args, nargsf, kwnames);
    if (awaitable == NULL) {
        return NULL;
    }
    PyObject *inner = awaitable_iterator(awaitable);
    Py_DECREF(awaitable);
    if (inner == NULL) {
        return NULL;
    }
    ReceiveAwaitObject *waiting = PyObject_GC_New(ReceiveAwaitObject, &ReceiveAwaitType);
    if (waiting == NULL) {
        Py_DECREF(inner);
        return NULL;
    }
    Py_INCREF(self->state);
    waiting->state = self->state;
    waiting->inner = inner;
    PyObject_GC_Track(waiting);
    return (PyObject *)waiting;
}

static int receive_tap_traverse(ReceiveTapObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->state);
    Py_VISIT(self->receive);
    return 0;
}

static int receive_tap_clear(ReceiveTapObject *self) {
    Py_CLEAR(self->state);
    Py_CLEAR(self->receive);
    return 0;
}

static void receive_tap_dealloc(ReceiveTapObject *self) {
    PyObject_GC_UnTrack(self);
    receive_tap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ReceiveTapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.TapReceive",
    .tp_basicsize = sizeof(ReceiveTapObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The app's receive, watched by capture.",
    .tp_vectorcall_offset = offsetof(ReceiveTapObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)receive_tap_traverse,
    .tp_clear = (inquiry)receive_tap_clear,
    .tp_dealloc = (destructor)receive_tap_dealloc,
};

/* The server's message arrived: note it (never failing the app) and pass it on. */
static void receive_arrived(ReceiveAwaitObject *self, PyObject *message) {
    Py_CLEAR(self->inner);
    if (watch_received(self->state, message) < 0) {
        PyErr_Clear();
        note_error(self->state->capture, s_capture);
    }
}

static PySendResult receive_await_send(ReceiveAwaitObject *self, PyObject *arg, PyObject **result) {
    if (self->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited receive");
        *result = NULL;
        return PYGEN_ERROR;
    }
    PySendResult status = PyIter_Send(self->inner, arg, result);
    if (status == PYGEN_RETURN) {
        receive_arrived(self, *result);
    } else if (status == PYGEN_ERROR) {
        Py_CLEAR(self->inner);
    }
    return status;
}

/* Shared by the awaitables: a send result as an iterator's return (StopIteration on return). */
static PyObject *as_iterator_result(PySendResult status, PyObject *result) {
    if (status == PYGEN_RETURN) {
        if (result == Py_None) {
            Py_DECREF(result);
            PyErr_SetNone(PyExc_StopIteration);
        } else {
            set_stop_iteration(result);
            Py_DECREF(result);
        }
        return NULL;
    }
    return result;  /* yielded, or NULL with the error set */
}

/* The iterator protocol of both awaitables, from their `am_send`. */
static PyObject *next_by(sendfunc send, PyObject *self) {
    PyObject *result;
    PySendResult status = send(self, Py_None, &result);
    if (status == PYGEN_RETURN && result == Py_None) {
        Py_DECREF(result);
        return NULL;  /* exhausted iterator: StopIteration without a value */
    }
    return as_iterator_result(status, result);
}

static PyObject *send_by(sendfunc send, PyObject *self, PyObject *arg) {
    PyObject *result;
    PySendResult status = send(self, arg, &result);
    return as_iterator_result(status, result);
}

static PyObject *receive_await_iternext(PyObject *self) {
    return next_by((sendfunc)receive_await_send, self);
}

static PyObject *receive_await_send_method(PyObject *self, PyObject *arg) {
    return send_by((sendfunc)receive_await_send, self, arg);
}

/* After `inner.throw(...)` or a method that may end the iterator: StopIteration means returned. */
static PyObject *receive_after_throw(ReceiveAwaitObject *self, PyObject *result) {
    if (result != NULL) {
        return result;  /* the inner awaitable yielded again */
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *stop = take_exception();
        PyObject *value = PyObject_GetAttrString(stop, "value");
        if (value == NULL) {
            Py_DECREF(stop);
            Py_CLEAR(self->inner);
            return NULL;
        }
        receive_arrived(self, value);
        Py_DECREF(value);
        restore_exception(stop);
    } else {
        Py_CLEAR(self->inner);
    }
    return NULL;
}

static PyObject *receive_await_throw(ReceiveAwaitObject *self, PyObject *args) {
    if (self->inner == NULL) {
        return raise_thrown(args);
    }
    PyObject *throw = PyObject_GetAttr(self->inner, s_throw);
    if (throw == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Call(throw, args, NULL);
    Py_DECREF(throw);
    return receive_after_throw(self, result);
}

static PyObject *close_iterator(PyObject *inner) {
    PyObject *close = PyObject_GetAttr(inner, s_close);
    if (close == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        Py_RETURN_NONE;  /* an iterator without close(): nothing to close */
    }
    PyObject *result = PyObject_CallNoArgs(close);
    Py_DECREF(close);
    return result;
}

static PyObject *receive_await_close(ReceiveAwaitObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->inner == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *inner = self->inner;
    self->inner = NULL;
    PyObject *result = close_iterator(inner);
    Py_DECREF(inner);
    return result;
}

static PyObject *self_await(PyObject *self) {
    Py_INCREF(self);
    return self;
}

static int receive_await_traverse(ReceiveAwaitObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->state);
    Py_VISIT(self->inner);
    return 0;
}

static int receive_await_clear(ReceiveAwaitObject *self) {
    Py_CLEAR(self->state);
    Py_CLEAR(self->inner);
    return 0;
}

static void receive_await_dealloc(ReceiveAwaitObject *self) {
    PyObject_GC_UnTrack(self);
    receive_await_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyAsyncMethods receive_await_async = {
    .am_await = self_await,
    .am_send = (sendfunc)receive_await_send,
};

static PyMethodDef receive_await_methods[] = {
    {"send", (PyCFunction)receive_await_send_method, METH_O, NULL},
    {"throw", (PyCFunction)receive_await_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)receive_await_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReceiveAwaitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.TapReceiveAwaitable",
    .tp_basicsize = sizeof(ReceiveAwaitObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_as_async = &receive_await_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)receive_await_iternext,
    .tp_methods = receive_await_methods,
    .tp_traverse = (traverseproc)receive_await_traverse,
    .tp_clear = (inquiry)receive_await_clear,
    .tp_dealloc = (destructor)receive_await_dealloc,
};

/* ------------------------------------------------------------------------------------------ */
/* Exchange: the awaitable one capture call returns; it runs the app                          */

typedef struct {
    PyObject_HEAD
    CaptureObject *capture;
    PyObject *scope, *receive, *send;
    StateObject *state;
    PyObject *inner;  /* the app's awaitable's iterator while it runs */
    PyObject *root_path_at_start;
    PyObject *ids;    /* TraceIds or NULL */
    PyObject *token;  /* the attached context's token or NULL */
    int token_here;   /* the token is the context variable's own (attached here): reset it here */
    long long start_ns;
    double started;
    long weight, payload_weight;
    int phase;        /* 0 not started, 1 running, 2 done */
    int preset;       /* start times and trace identity were given (`Capture.resume`, `offer_whole`) */
} ExchangeObject;

static PyTypeObject ExchangeType;

static PyObject *double_or_none(double value) {
    if (value < 0) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble(value);
}

/* What every queued record is charged on top of its kept body bytes (`RecordQueue`): a
 * record's fixed fields, and a head under this size, are covered by it. */
#define RECORD_OVERHEAD_BYTES 1024

/* The bytes a head field takes, 0 for none; -1 with an exception. A str by the widest of its
 * characters (the Python `_str_charge`): its length if ASCII, else up to 2, 3 or 4 bytes a
 * character as its storage is 1, 2 or 4 bytes wide, what its UTF-8 and its memory take at most.
 * By its length alone a path of four-byte characters was charged a quarter of what it holds. */
static Py_ssize_t head_field_size(PyObject *value) {
    if (value == NULL || value == Py_None) {
        return 0;
    }
    if (PyBytes_CheckExact(value)) {
        return PyBytes_GET_SIZE(value);
    }
    if (PyUnicode_Check(value)) {
        Py_ssize_t length = PyUnicode_GET_LENGTH(value);
        if (PyUnicode_IS_ASCII(value)) {
            return length;
        }
        int kind = PyUnicode_KIND(value);
        return length * (kind == PyUnicode_1BYTE_KIND ? 2 : kind == PyUnicode_2BYTE_KIND ? 3 : 4);
    }
    return PyObject_Size(value);
}

/* What a raw record holds of the request's head beyond RECORD_OVERHEAD_BYTES (the Python
 * `head_charge`): its path, raw path, query string, request header names and values (one pass
 * over a list or tuple of them) and the trace state. The client chooses all of them: a queue
 * charged only the kept bodies would hold 10 000 records of 120 KB heads against a 64 MiB bound.
 * -1 with an exception on failure (a header not a pair, as the Python form's unpacking). */
static Py_ssize_t head_charge(PyObject *scope, PyObject *ids) {
    PyObject *const keys[3] = {s_path, s_raw_path, s_query_string};
    Py_ssize_t total = 0;
    for (int i = 0; i < 3; i++) {
        PyObject *value = lookup(scope, keys[i]);
        if (value == NULL && PyErr_Occurred()) {
            return -1;
        }
        Py_ssize_t size = head_field_size(value);
        Py_XDECREF(value);
        if (size < 0) {
            return -1;
        }
        total += size;
    }
    PyObject *headers = lookup(scope, s_headers);
    if (headers == NULL && PyErr_Occurred()) {
        return -1;
    }
    /* Another iterable is not read: it may be an iterator, which the worker must still read. */
    if (headers != NULL && (PyList_CheckExact(headers) || PyTuple_CheckExact(headers))) {
        /* By index with the size read again each time: a `__len__` called here may change the
         * list, and what is measured is held meanwhile. */
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(headers); i++) {
            PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(headers, i));
            PyObject *pair = PySequence_Fast(item, "a header is not a pair");
            Py_DECREF(item);
            if (pair == NULL || PySequence_Fast_GET_SIZE(pair) != 2) {
                if (pair != NULL) {
                    PyErr_SetString(PyExc_ValueError, "a header is not a (name, value) pair");
                }
                Py_XDECREF(pair);
                Py_DECREF(headers);
                return -1;
            }
            for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(pair); j++) {
                PyObject *field = Py_NewRef(PySequence_Fast_GET_ITEM(pair, j));
                Py_ssize_t size = head_field_size(field);
                Py_DECREF(field);
                if (size < 0) {
                    Py_DECREF(pair);
                    Py_DECREF(headers);
                    return -1;
                }
                total += size;
            }
            Py_DECREF(pair);
        }
    }
    Py_XDECREF(headers);
    if (ids != NULL && PyTuple_Check(ids) && PyTuple_GET_SIZE(ids) > 5) {
        Py_ssize_t size = head_field_size(PyTuple_GET_ITEM(ids, 5));
        if (size < 0) {
            return -1;
        }
        total += size;
    }
    return total > RECORD_OVERHEAD_BYTES ? total - RECORD_OVERHEAD_BYTES : 0;
}

/* The app returned or raised (`exception` is borrowed, or NULL): offer the record. Never
 * raises; any pending exception is kept. */
static void exchange_finish(ExchangeObject *self, PyObject *exception) {
    CaptureObject *capture = self->capture;
    StateObject *state = self->state;
    self->phase = 2;
    Py_CLEAR(self->inner);
    PyObject *pending = PyErr_Occurred() ? take_exception() : NULL;
    if (self->token != NULL && self->token_here && capture->context_var != NULL) {
        /* As OpenTelemetry's detach does; a reset it refuses goes to it, which logs the failure. */
        if (PyContextVar_Reset(capture->context_var, self->token) == 0) {
            Py_CLEAR(self->token);
        } else {
            PyErr_Clear();
        }
    }
    if (self->token != NULL) {
        PyObject *done = PyObject_CallOneArg(capture->detach, self->token);
        if (done == NULL) {
            PyErr_Clear();
            note_error(capture, s_trace_detach);
        }
        Py_XDECREF(done);
        Py_CLEAR(self->token);
    }
    if (capture->cold_left > 0) {
        capture->cold_left -= 1;
        if (PyObject_SetItem(self->scope, capture->cold_start_key, Py_True) < 0) {
            PyErr_Clear();
            note_error(capture, s_capture);
        }
    }
    if (state == NULL) {  /* the app was never called: nothing to offer */
        if (pending != NULL) {
            restore_exception(pending);
        }
        return;
    }
    if (state->status && !capture->answered) {
        capture->answered = 1;
        PyObject *when = PyLong_FromLongLong(wall_ns());
        PyObject *done = when ? PyObject_CallMethodOneArg(capture->sink, s_note_first_answer, when) : NULL;
        if (done == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(done);
        Py_XDECREF(when);
    }
    PyObject *exception_type = Py_None;
    Py_INCREF(exception_type);
    if (exception != NULL) {
        PyObject *name = PyObject_GetAttr((PyObject *)Py_TYPE(exception), s_qualname);
        if (name == NULL) {
            PyErr_Clear();
        } else {
            Py_SETREF(exception_type, name);
        }
    }
    Py_ssize_t cap = capture->cap;
    Py_ssize_t kept = (self->payload_weight ? 2 * cap : 0) - state->request_left - state->response_left;
    PyObject *headers = state->response_headers != NULL ? state->response_headers : no_headers;
    double finished = perf_now();
    PyObject *record;
    if (capture->encoder != Py_None) {
        /* Process mode: the record leaves as bytes now; the scope is let go with the exchange. */
        RecordFields fields = {
            .scope = self->scope,
            .root_path_at_start = self->root_path_at_start,
            .start_ns = self->start_ns,
            .response_started = state->response_started < 0 ? Py_NAN : state->response_started - self->started,
            .ended = state->ended < 0 ? Py_NAN : state->ended - self->started,
            .finished = finished - self->started,
            .first_body = state->first_body < 0 ? Py_NAN : state->first_body - self->started,
            .status = state->status,
            .request_size = self->payload_weight ? state->request_size : -1,
            .response_size = state->response_size,
            .weight = self->weight,
            .payload_weight = self->payload_weight,
            .disconnected = state->disconnected,
            .response_headers = headers,
            .request_parts = state->request_parts != NULL ? state->request_parts : no_parts,
            .response_parts = state->response_parts != NULL ? state->response_parts : no_parts,
            .exception_type = exception_type,
            .ids = self->ids != NULL ? self->ids : Py_None,
        };
        record = encode_fields((EncoderObject *)capture->encoder, &fields);
        /* The record is what the queue holds, kept bodies inside: a head over the overhead (a
         * long query, wanted headers, trace state) is charged by the record's own length. */
        if (record != NULL && PyBytes_GET_SIZE(record) - RECORD_OVERHEAD_BYTES > kept) {
            kept = PyBytes_GET_SIZE(record) - RECORD_OVERHEAD_BYTES;
        }
    } else {
        /* Inline mode: the record's part lists are its own (none were made without a payload). */
        if (state->request_parts == NULL) {
            state->request_parts = PyList_New(0);
        }
        if (state->response_parts == NULL) {
            state->response_parts = PyList_New(0);
        }
        record = state->request_parts != NULL && state->response_parts != NULL ? PyTuple_New(19) : NULL;
        if (record != NULL) {
            PyObject *items[19] = {
                self->scope,
                self->root_path_at_start,
                PyLong_FromLongLong(self->start_ns),
                PyFloat_FromDouble(self->started),
                double_or_none(state->response_started),
                double_or_none(state->ended),
                PyFloat_FromDouble(finished),
                PyLong_FromLong(state->status),
                headers,
                state->request_parts,
                PyLong_FromSsize_t(self->payload_weight ? state->request_size : (Py_ssize_t)-1),
                state->response_parts,
                PyLong_FromSsize_t(state->response_size),
                exception_type,
                PyBool_FromLong(state->disconnected),
                self->ids != NULL ? self->ids : Py_None,
                PyLong_FromLong(self->weight),
                PyLong_FromLong(self->payload_weight),
                double_or_none(state->first_body),
            };
            /* Borrowed ones get a reference of their own; new ones are given to the tuple. */
            static const int borrowed[19] = {1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0};
            int complete = 1;
            for (int i = 0; i < 19; i++) {
                if (items[i] == NULL) {
                    complete = 0;
                    continue;
                }
                if (borrowed[i]) {
                    Py_INCREF(items[i]);
                }
                PyTuple_SET_ITEM(record, i, items[i]);
            }
            if (!complete) {
                Py_CLEAR(record);  /* the tuple's NULL slots are skipped by its dealloc */
            }
        }
        /* The tuple holds the whole scope: a head over the overhead is charged beyond it. One
         * that cannot be measured is charged nothing (the record is offered all the same). */
        Py_ssize_t head = record != NULL ? head_charge(self->scope, self->ids) : 0;
        if (head < 0) {
            PyErr_Clear();
            head = 0;
        }
        kept += head;
    }
    Py_DECREF(exception_type);
    if (record == NULL) {
        PyErr_Clear();
        note_error(capture, s_capture);
    } else {
        PyObject *size = PyLong_FromSsize_t(kept);
        PyObject *offered = NULL;
        if (size != NULL) {
            PyObject *call_args[2] = {record, size};
            offered = PyObject_Vectorcall(capture->offer, call_args, 2, NULL);
        }
        if (offered == NULL) {
            PyErr_Clear();
            note_error(capture, s_capture);
        }
        Py_XDECREF(offered);
        Py_XDECREF(size);
        Py_DECREF(record);
    }
    if (pending != NULL) {
        restore_exception(pending);
    }
}

/* 1: a new root trace was decided here (`*ids` None or new TraceIds); 0: ask `start_trace`
 * (a current OpenTelemetry context, or a `traceparent` header, needs the Python form); -1: error.
 * The same draws as `TraceSampler.new_sampled_trace_id`: the ratio-tested low half first. */
static int new_root_trace(CaptureObject *capture, PyObject *headers, PyObject **ids) {
    PyObject *context = NULL;
    if (PyContextVar_Get(capture->context_var, NULL, &context) < 0) {
        return -1;
    }
    int empty = context == NULL || (PyDict_Check(context) && PyDict_GET_SIZE(context) == 0);
    Py_XDECREF(context);
    if (!empty) {
        return 0;
    }
    if (headers != NULL) {
        if (!PyList_CheckExact(headers)) {
            return 0;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
            PyObject *pair = PyList_GET_ITEM(headers, i);
            if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
                return 0;
            }
            PyObject *name = PyTuple_GET_ITEM(pair, 0);
            if (!PyBytes_CheckExact(name)) {
                return 0;
            }
            if (PyBytes_GET_SIZE(name) == 11 && memcmp(PyBytes_AS_STRING(name), "traceparent", 11) == 0) {
                return 0;
            }
        }
    }
    PyObject *bound_object = own_attribute(capture->sampler_dict, capture->sampler, s_bound);
    if (bound_object == NULL) {
        return -1;  /* absent from the dict: the Python form decides (and reports) */
    }
    if (bound_object != capture->bound_seen) {
        unsigned long long bound = PyLong_AsUnsignedLongLong(bound_object);
        int all = 0;
        if (bound == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                Py_DECREF(bound_object);
                return -1;
            }
            PyErr_Clear();
            all = 1;  /* 2**64: every trace */
        }
        Py_XSETREF(capture->bound_seen, Py_NewRef(bound_object));
        capture->bound_value = bound;
        capture->bound_all = all;
    }
    Py_DECREF(bound_object);
    /* The low 64 bits as two 32-bit draws: the same bits `getrandbits(64)` gives from the same
     * state (it fills its words from the least significant one on little-endian machines, from
     * the most significant on others), without its buffer and its 64-bit integer both ways. */
    unsigned long words[2];
    for (int i = 0; i < 2; i++) {
        PyObject *drawn = PyObject_Vectorcall(capture->getrandbits, &bits_32, 1, NULL);
        if (drawn == NULL) {
            return -1;
        }
        words[i] = PyLong_AsUnsignedLong(drawn);
        Py_DECREF(drawn);
        if (words[i] == (unsigned long)-1 && PyErr_Occurred()) {
            return -1;
        }
    }
#if PY_LITTLE_ENDIAN
    unsigned long long low_value = ((unsigned long long)(words[1] & 0xffffffffUL) << 32) | (words[0] & 0xffffffffUL);
#else
    unsigned long long low_value = ((unsigned long long)(words[0] & 0xffffffffUL) << 32) | (words[1] & 0xffffffffUL);
#endif
    if (!capture->bound_all && low_value >= capture->bound_value) {
        Py_INCREF(Py_None);
        *ids = Py_None;
        return 1;
    }
    PyObject *call_args[1] = {bits_64};
    /* The high 64 bits drawn as `getrandbits(64)` (again while the whole id is zero), and the
     * 128-bit id made once from both halves' bytes (not by shifting and or-ing integers). */
    unsigned long long high_value = 0;
    do {
        PyObject *high = PyObject_Vectorcall(capture->getrandbits, call_args, 1, NULL);
        if (high == NULL) {
            return -1;
        }
        high_value = PyLong_AsUnsignedLongLong(high);
        Py_DECREF(high);
        if (high_value == (unsigned long long)-1 && PyErr_Occurred()) {
            return -1;
        }
    } while (high_value == 0 && low_value == 0);
    unsigned char id_bytes[16];
    put_u64(id_bytes, low_value);  /* little-endian, as the record writes them */
    put_u64(id_bytes + 8, high_value);
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *trace_id = PyLong_FromUnsignedNativeBytes(id_bytes, 16, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    PyObject *trace_id = _PyLong_FromByteArray(id_bytes, 16, 1, 0);
#endif
    if (trace_id == NULL) {
        return -1;
    }
    PyObject *span_id = NULL;
    while (span_id == NULL) {
        PyObject *drawn = PyObject_Vectorcall(capture->getrandbits, call_args, 1, NULL);
        if (drawn == NULL) {
            Py_DECREF(trace_id);
            return -1;
        }
        int zero = PyObject_Not(drawn);
        if (zero) {
            Py_DECREF(drawn);
            if (zero < 0) {
                Py_DECREF(trace_id);
                return -1;
            }
        } else {
            span_id = drawn;
        }
    }
    PyObject *fields[7] = {trace_id, span_id, zero_int, Py_False, Py_True, s_empty, Py_False};
    if (PyType_Check(capture->trace_ids) && PyType_IsSubtype((PyTypeObject *)capture->trace_ids, &PyTuple_Type)) {
        /* A named tuple, made as its generated `__new__` makes it (`tuple.__new__(cls, fields)`)
         * without running that Python function. */
        PyObject *values = PyTuple_New(7);
        PyObject *args = values != NULL ? PyTuple_New(1) : NULL;
        if (args != NULL) {
            for (int i = 0; i < 7; i++) {
                PyTuple_SET_ITEM(values, i, Py_NewRef(fields[i]));
            }
            PyTuple_SET_ITEM(args, 0, values);
            values = NULL;
            *ids = PyTuple_Type.tp_new((PyTypeObject *)capture->trace_ids, args, NULL);
            Py_DECREF(args);
        } else {
            Py_XDECREF(values);
            *ids = NULL;
        }
    } else {
        *ids = PyObject_Vectorcall(capture->trace_ids, fields, 7, NULL);
    }
    Py_DECREF(trace_id);
    Py_DECREF(span_id);
    return *ids == NULL ? -1 : 1;
}

/* Whether `cls` is still as it was when checked: its version tag (0: none, never trusted).
 * Before 3.11 a change only marks the tag invalid (it is reset to 0 since). */
static int unchanged(PyObject *cls, unsigned int tag) {
    PyTypeObject *type = (PyTypeObject *)cls;
#if PY_VERSION_HEX < 0x030B0000
    if (!PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
        return 0;
    }
#endif
    return tag != 0 && type->tp_version_tag == tag;
}

/* A SpanContext of a sampled local trace as its class's `__new__` makes it, `tuple.__new__(cls,
 * (trace_id, span_id, False, flags, DEFAULT_TRACE_STATE, is_valid))`, without running that
 * Python function (about 3 700 instructions of the 14 200 a sampled exchange cost the serving
 * thread); only once `check_otel_classes` found the class makes exactly that. The ids must be
 * valid (the caller checks): is_valid is True. */
static PyObject *span_context_here(CaptureObject *capture, PyObject *trace_id, PyObject *span_id) {
    PyObject *values = PyTuple_New(6);
    if (values == NULL) {
        return NULL;
    }
    PyObject *items[6] = {trace_id, span_id, Py_False, capture->sampled_flags, capture->default_trace_state, Py_True};
    for (int i = 0; i < 6; i++) {
        PyTuple_SET_ITEM(values, i, Py_NewRef(items[i]));
    }
    PyObject *args = PyTuple_New(1);
    if (args == NULL) {
        Py_DECREF(values);
        return NULL;
    }
    PyTuple_SET_ITEM(args, 0, values);
    PyObject *made = PyTuple_Type.tp_new((PyTypeObject *)capture->span_context, args, NULL);
    Py_DECREF(args);
    return made;
}

/* Whether SpanContext's own check would call these ids valid (0 < trace id < 2**128, 0 < span
 * id < 2**64): 1 or 0 (also for an id that is not an int). */
static int valid_ids(PyObject *trace_id, PyObject *span_id) {
    if (!PyLong_CheckExact(trace_id) || !PyLong_CheckExact(span_id)) {
        return 0;
    }
    unsigned long long span = PyLong_AsUnsignedLongLong(span_id);
    if (span == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();  /* negative or over 64 bits */
        return 0;
    }
    if (span == 0) {
        return 0;
    }
    unsigned char bytes[16];
    if (trace_id_bytes(trace_id, bytes) < 0) {
        PyErr_Clear();  /* negative or over 128 bits */
        return 0;
    }
    for (int i = 0; i < 16; i++) {
        if (bytes[i]) {
            return 1;
        }
    }
    return 0;
}

/* A NonRecordingSpan of `span_context` made here: its class's instance with the one attribute
 * its `__init__` sets (`check_otel_classes` found which). */
static PyObject *new_span(CaptureObject *capture, PyObject *span_context) {
    PyObject *span = PyBaseObject_Type.tp_new((PyTypeObject *)capture->non_recording_span, empty_tuple, NULL);
    if (span != NULL && PyObject_GenericSetAttr(span, capture->span_attribute, span_context) < 0) {
        Py_CLEAR(span);
    }
    return span;
}

/* Which of a sampled trace's objects are made here now: checked, and their class unchanged. */
static int makes_span_context(CaptureObject *capture) {
    return capture->default_trace_state != NULL && unchanged(capture->span_context, capture->span_context_tag);
}

static int makes_span(CaptureObject *capture) {
    return capture->span_attribute != NULL && unchanged(capture->non_recording_span, capture->span_tag);
}

static int makes_context(CaptureObject *capture) {
    return capture->context_here && unchanged(capture->context_class, capture->context_tag);
}

/* A NonRecordingSpan of `span_context`: made here where the class was checked and is
 * unchanged, else the class called. */
static PyObject *non_recording_span_here(CaptureObject *capture, PyObject *span_context) {
    if (!makes_span(capture)) {
        return PyObject_CallOneArg(capture->non_recording_span, span_context);
    }
    return new_span(capture, span_context);
}

/* The version tag of `cls` once a lookup on it has given it one (0: none). */
static unsigned int version_tag(PyObject *cls) {
    PyObject *init = PyObject_GetAttr(cls, s_dunder_init);  /* a lookup assigns the tag */
    if (init == NULL) {
        return 0;
    }
    Py_DECREF(init);
    return ((PyTypeObject *)cls)->tp_version_tag;
}

/* Whether a failed step of `check_otel_classes` may be passed over: an Exception is (the class
 * is then called, as before); anything else (KeyboardInterrupt, MemoryError's kin) is not. */
static int passed_over(void) {
    if (!PyErr_Occurred()) {
        return 1;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return 0;
    }
    PyErr_Clear();
    return 1;
}

/* Whether `span` holds nothing but `context`, in one attribute; that attribute's name or NULL. */
static PyObject *sole_attribute(PyObject *span, PyObject *context) {
    PyObject *dict = instance_dict(span);
    PyObject *name = NULL, *key, *value;
    Py_ssize_t position = 0;
    if (dict != NULL && PyDict_GET_SIZE(dict) == 1 && PyDict_Next(dict, &position, &key, &value) &&
        value == context && PyUnicode_CheckExact(key)) {
        name = Py_NewRef(key);
    }
    Py_XDECREF(dict);
    return name;
}

/* Whether the OpenTelemetry classes make what the shortcuts above make, checked against the
 * classes themselves when the capture is built: a SpanContext of the ids (3, 5) called through
 * its class and made here must be equal tuples of the same type, with no instance attributes,
 * whose fields sit where `span_context_here` puts them; a NonRecordingSpan called through its
 * class, of that context and of an invalid one, must hold nothing but its context, in one
 * attribute, as one made here does; a Context must be a dict subclass that neither makes nor
 * initialises itself in Python. None of them may have a metaclass with its own `__call__`.
 * Whatever does not hold is called, as is a class changed later (`unchanged`). Side effects of
 * a class's Python code that leave no trace in what it makes cannot be seen here, nor a
 * `__call__` given to a metaclass after the check (that changes the metaclass, not the class).
 * Returns -1 only for an error that is not an Exception (it propagates). */
static int check_otel_classes(CaptureObject *capture) {
    Py_CLEAR(capture->default_trace_state);
    Py_CLEAR(capture->span_attribute);
    capture->context_here = 0;
    capture->span_context_tag = capture->span_tag = capture->context_tag = 0;
    PyObject *cls = capture->span_context, *span_cls = capture->non_recording_span;
    PyObject *context_cls = capture->context_class;
    PyObject *three = NULL, *five = NULL, *called = NULL, *invalid = NULL, *made = NULL;
    int status = 0;
    if (PyType_Check(cls) && Py_TYPE(cls)->tp_call == PyType_Type.tp_call &&
        PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type) &&
        ((PyTypeObject *)cls)->tp_init == PyTuple_Type.tp_init) {
        three = PyLong_FromLong(3);
        five = PyLong_FromLong(5);
        PyObject *args[4] = {three, five, Py_False, capture->sampled_flags};
        called = three != NULL && five != NULL ? PyObject_Vectorcall(cls, args, 4, NULL) : NULL;
        PyObject *invalid_args[4] = {zero_int, zero_int, Py_False, capture->sampled_flags};
        invalid = called != NULL ? PyObject_Vectorcall(cls, invalid_args, 4, NULL) : NULL;
        PyObject *attributes = invalid != NULL ? instance_dict(called) : NULL;
        int fields = invalid != NULL && Py_TYPE(called) == (PyTypeObject *)cls && PyTuple_GET_SIZE(called) == 6 &&
                     (attributes == NULL || PyDict_GET_SIZE(attributes) == 0) &&
                     PyTuple_GET_ITEM(called, 2) == Py_False && PyTuple_GET_ITEM(called, 3) == capture->sampled_flags &&
                     PyTuple_GET_ITEM(called, 5) == Py_True;
        Py_XDECREF(attributes);
        fields = fields && PyObject_RichCompareBool(PyTuple_GET_ITEM(called, 0), three, Py_EQ) == 1;
        fields = fields && PyObject_RichCompareBool(PyTuple_GET_ITEM(called, 1), five, Py_EQ) == 1;
        if (fields && !PyErr_Occurred()) {
            capture->default_trace_state = Py_NewRef(PyTuple_GET_ITEM(called, 4));
            made = span_context_here(capture, three, five);
            if (made == NULL || Py_TYPE(made) != (PyTypeObject *)cls ||
                PyObject_RichCompareBool(made, called, Py_EQ) != 1) {
                Py_CLEAR(capture->default_trace_state);
            }
        }
    }
    if (!passed_over()) goto fail;
    if (invalid != NULL && PyType_Check(span_cls) && Py_TYPE(span_cls)->tp_call == PyType_Type.tp_call &&
        ((PyTypeObject *)span_cls)->tp_new == PyBaseObject_Type.tp_new &&
        ((PyTypeObject *)span_cls)->tp_setattro == PyObject_GenericSetAttr) {
        /* Its attribute is what the class keeps each context in; ours must look the same. */
        PyObject *contexts[2] = {called, invalid};
        int same = 1;
        for (int i = 0; i < 2 && same; i++) {
            PyObject *span = PyObject_CallOneArg(span_cls, contexts[i]);
            PyObject *name = span != NULL ? sole_attribute(span, contexts[i]) : NULL;
            if (name != NULL && i == 0) {
                capture->span_attribute = Py_NewRef(name);
            }
            PyObject *ours = name != NULL && capture->span_attribute != NULL ? new_span(capture, contexts[i]) : NULL;
            PyObject *our_name = ours != NULL ? sole_attribute(ours, contexts[i]) : NULL;
            same = our_name != NULL && Py_TYPE(ours) == Py_TYPE(span) &&
                   PyUnicode_Compare(our_name, name) == 0 && PyUnicode_Compare(name, capture->span_attribute) == 0;
            Py_XDECREF(span);
            Py_XDECREF(name);
            Py_XDECREF(ours);
            Py_XDECREF(our_name);
        }
        if (!same || PyErr_Occurred()) {
            Py_CLEAR(capture->span_attribute);
        }
    }
    if (!passed_over()) goto fail;
    capture->context_here = PyType_Check(context_cls) && Py_TYPE(context_cls)->tp_call == PyType_Type.tp_call &&
                            PyType_IsSubtype((PyTypeObject *)context_cls, &PyDict_Type) &&
                            ((PyTypeObject *)context_cls)->tp_new == PyDict_Type.tp_new &&
                            ((PyTypeObject *)context_cls)->tp_init == PyDict_Type.tp_init;
    /* The tags last (checking, calling the classes, may have changed them); none: not trusted. */
    if (capture->default_trace_state != NULL && (capture->span_context_tag = version_tag(cls)) == 0) {
        Py_CLEAR(capture->default_trace_state);
    }
    if (capture->span_attribute != NULL && (capture->span_tag = version_tag(span_cls)) == 0) {
        Py_CLEAR(capture->span_attribute);
    }
    if (capture->context_here && (capture->context_tag = version_tag(context_cls)) == 0) {
        capture->context_here = 0;
    }
    if (!passed_over()) goto fail;
    goto done;
fail:
    status = -1;
    Py_CLEAR(capture->default_trace_state);
    Py_CLEAR(capture->span_attribute);
    capture->context_here = 0;
done:
    Py_XDECREF(three);
    Py_XDECREF(five);
    Py_XDECREF(called);
    Py_XDECREF(invalid);
    Py_XDECREF(made);
    return status;
}

/* What `exchange._attach` does, without its Python calls: the current context with the trace's
 * span (a NonRecordingSpan of the trace and span ids, sampled) set, attached. Returns the
 * context variable's token, or NULL with an exception (nothing attached). */
static PyObject *attach_here(CaptureObject *capture, PyObject *ids) {
    PyObject *trace_id = PyTuple_GET_ITEM(ids, 0), *span_id = PyTuple_GET_ITEM(ids, 1);
    PyObject *span_context = NULL;
    if (makes_span_context(capture) && valid_ids(trace_id, span_id)) {
        span_context = span_context_here(capture, trace_id, span_id);
    } else {
        PyObject *ids_args[4] = {trace_id, span_id, Py_False, capture->sampled_flags};
        span_context = PyObject_Vectorcall(capture->span_context, ids_args, 4, NULL);
    }
    if (span_context == NULL) {
        return NULL;
    }
    PyObject *span = non_recording_span_here(capture, span_context);
    Py_DECREF(span_context);
    if (span == NULL) {
        return NULL;
    }
    PyObject *current = NULL;
    if (PyContextVar_Get(capture->context_var, NULL, &current) < 0) {
        Py_DECREF(span);
        return NULL;
    }
    if (current != NULL && !PyDict_Check(current)) {
        PyErr_SetString(PyExc_TypeError, "the current OpenTelemetry context is not a mapping");
        Py_DECREF(current);
        Py_DECREF(span);
        return NULL;
    }
    PyObject *context;
    if (makes_context(capture)) {
        /* `Context({**current, key: span})`, filled with the dict functions (a Context refuses
         * item assignment only through its Python methods, as it is meant to, to its users). */
        context = PyDict_Type.tp_new((PyTypeObject *)capture->context_class, empty_tuple, NULL);
        if (context != NULL && ((current != NULL && PyDict_Update(context, current) < 0) ||
                                PyDict_SetItem(context, capture->span_key, span) < 0)) {
            Py_CLEAR(context);
        }
    } else {
        /* `context.copy()`: a plain dict of the same items, then the class called on it */
        PyObject *values = current == NULL ? PyDict_New() : PyDict_Copy(current);
        if (values != NULL && PyDict_SetItem(values, capture->span_key, span) < 0) {
            Py_CLEAR(values);
        }
        context = values != NULL ? PyObject_CallOneArg(capture->context_class, values) : NULL;
        Py_XDECREF(values);
    }
    Py_XDECREF(current);
    Py_DECREF(span);
    if (context == NULL) {
        return NULL;
    }
    PyObject *token = PyContextVar_Set(capture->context_var, context);
    Py_DECREF(context);
    return token;
}

/* Make the exchange's trace current for the app (its own outbound instrumentation then parents
 * under modeltap's span), unless another instrumentation's span stays current (enriched). */
static void attach_trace(ExchangeObject *self) {
    CaptureObject *capture = self->capture;
    /* enriched_local_span (field 6): another instrumentation's span stays current. */
    PyObject *enriched = PyTuple_Check(self->ids) && PyTuple_GET_SIZE(self->ids) > 6
                             ? PyTuple_GET_ITEM(self->ids, 6)
                             : Py_True;
    if (!PyObject_IsTrue(enriched)) {
        if (capture->span_key != NULL && capture->context_var != NULL) {
            self->token = attach_here(capture, self->ids);
            if (self->token != NULL) {
                self->token_here = 1;
                return;
            }
            PyErr_Clear();  /* the Python form attaches it instead, or counts its failure */
        }
        self->token = PyObject_CallOneArg(capture->attach, self->ids);
        if (self->token == NULL) {
            PyErr_Clear();
            note_error(capture, s_trace_start);
        }
    }
}

/* What the exchange has seen so far, nothing yet: the wrappers' shared state. */
static StateObject *new_state(ExchangeObject *self) {
    CaptureObject *capture = self->capture;
    StateObject *state = PyObject_GC_New(StateObject, &StateType);
    if (state == NULL) {
        return NULL;
    }
    state->vectorcall = (vectorcallfunc)state_vectorcall;
    Py_INCREF(capture);
    state->capture = capture;
    Py_INCREF(self->send);
    state->send = self->send;
    Py_ssize_t left = self->payload_weight ? capture->cap : 0;
    /* Under load nearly no exchange keeps its payload: its lists are not made at all. */
    state->request_parts = left > 0 ? PyList_New(0) : NULL;
    state->response_parts = left > 0 ? PyList_New(0) : NULL;
    state->response_headers = NULL;
    state->request_left = state->response_left = left;
    state->request_size = state->response_size = 0;
    state->response_started = state->first_body = state->ended = -1.0;
    state->status = 0;
    state->disconnected = 0;
    PyObject_GC_Track(state);
    if (left > 0 && (state->request_parts == NULL || state->response_parts == NULL)) {
        Py_DECREF(state);
        return NULL;
    }
    return state;
}

/* Start: trace identity, the wrappers, the app's coroutine. Returns -1 with an exception
 * raised by the app's call itself (the record is then offered with it). */
static int exchange_start(ExchangeObject *self) {
    CaptureObject *capture = self->capture;
    self->phase = 1;
    if (!self->preset) {
        self->started = perf_now();
        self->start_ns = wall_ns();
    }
    PyObject *root = lookup(self->scope, s_root_path);
    if (root == NULL) {
        PyErr_Clear();
        Py_INCREF(s_empty);
        root = s_empty;
    }
    self->root_path_at_start = root;
    if (self->preset) {
        if (self->ids != NULL) {
            attach_trace(self);
        }
    } else if (capture->start_trace != Py_None) {
        PyObject *headers = lookup(self->scope, s_headers);
        if (headers == NULL) {
            PyErr_Clear();
        }
        PyObject *ids = NULL;
        int truth = headers != NULL ? PyObject_IsTrue(headers) : 0;
        if (truth < 0) {
            PyErr_Clear();
            truth = 0;
        }
        int decided = capture->context_var != NULL ? new_root_trace(capture, truth ? headers : NULL, &ids) : 0;
        if (decided < 0) {
            PyErr_Clear();  /* the Python form decides instead */
            decided = 0;
        }
        if (!decided) {
            ids = PyObject_CallOneArg(capture->start_trace, truth ? headers : no_headers);
        }
        Py_XDECREF(headers);
        if (ids == NULL) {
            PyErr_Clear();
            note_error(capture, s_trace_start);
        } else if (ids != Py_None) {
            self->ids = ids;
            ids = NULL;
            attach_trace(self);
        }
        Py_XDECREF(ids);
    }
    StateObject *state = new_state(self);
    if (state == NULL) {
        return -1;
    }
    self->state = state;
    ReceiveTapObject *receive = PyObject_GC_New(ReceiveTapObject, &ReceiveTapType);
    if (receive == NULL) {
        return -1;
    }
    receive->vectorcall = (vectorcallfunc)receive_tap_vectorcall;
    Py_INCREF(state);
    receive->state = state;
    Py_INCREF(self->receive);
    receive->receive = self->receive;
    PyObject_GC_Track(receive);
    PyObject *app_args[3] = {self->scope, (PyObject *)receive, (PyObject *)state};
    PyObject *awaitable = PyObject_Vectorcall(capture->app, app_args, 3, NULL);
    Py_DECREF(receive);
    if (awaitable == NULL) {
        return -1;
    }
    self->inner = awaitable_iterator(awaitable);
    Py_DECREF(awaitable);
    return self->inner == NULL ? -1 : 0;
}

/* The app's iterator reported `status`: finish on return or error. */
static PySendResult exchange_after(ExchangeObject *self, PySendResult status) {
    if (status == PYGEN_RETURN) {
        exchange_finish(self, NULL);
    } else if (status == PYGEN_ERROR) {
        PyObject *exception = take_exception();
        exchange_finish(self, exception);
        restore_exception(exception);
    }
    return status;
}

static PySendResult exchange_send(ExchangeObject *self, PyObject *arg, PyObject **result) {
    if (self->phase == 0) {
        if (exchange_start(self) < 0) {
            *result = NULL;
            return exchange_after(self, PYGEN_ERROR);
        }
    } else if (self->phase == 2) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        *result = NULL;
        return PYGEN_ERROR;
    }
    return exchange_after(self, PyIter_Send(self->inner, arg, result));
}

static PyObject *exchange_iternext(PyObject *self) {
    return next_by((sendfunc)exchange_send, self);
}

static PyObject *exchange_send_method(PyObject *self, PyObject *arg) {
    return send_by((sendfunc)exchange_send, self, arg);
}

static PyObject *exchange_throw(ExchangeObject *self, PyObject *args) {
    if (self->phase != 1) {
        /* Not running: raise the exception here, as an unstarted coroutine does. */
        self->phase = 2;
        return raise_thrown(args);
    }
    PyObject *throw = PyObject_GetAttr(self->inner, s_throw);
    PyObject *result = throw != NULL ? PyObject_Call(throw, args, NULL) : NULL;
    Py_XDECREF(throw);
    if (result != NULL) {
        return result;  /* the app caught it and awaits again */
    }
    PyObject *exception = take_exception();
    if (PyErr_GivenExceptionMatches(exception, PyExc_StopIteration)) {
        exchange_finish(self, NULL);  /* the app caught it and returned */
    } else {
        exchange_finish(self, exception);
    }
    restore_exception(exception);
    return NULL;
}

static PyObject *exchange_close(ExchangeObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->phase != 1) {
        self->phase = 2;
        Py_RETURN_NONE;
    }
    PyObject *result = close_iterator(self->inner);
    /* As the coroutine form records it: the exchange ended by GeneratorExit. */
    PyObject *exit = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exit == NULL) {
        PyErr_Clear();
    }
    exchange_finish(self, exit);
    Py_XDECREF(exit);
    return result;
}

static void exchange_finalize(ExchangeObject *self) {
    if (self->phase != 1) {
        return;
    }
    PyObject *pending = PyErr_Occurred() ? take_exception() : NULL;
    PyObject *result = exchange_close(self, NULL);
    if (result == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_XDECREF(result);
    if (pending != NULL) {
        restore_exception(pending);
    }
}

static int exchange_traverse(ExchangeObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->capture);
    Py_VISIT(self->scope);
    Py_VISIT(self->receive);
    Py_VISIT(self->send);
    Py_VISIT(self->state);
    Py_VISIT(self->inner);
    Py_VISIT(self->root_path_at_start);
    Py_VISIT(self->ids);
    Py_VISIT(self->token);
    return 0;
}

static int exchange_clear(ExchangeObject *self) {
    Py_CLEAR(self->capture);
    Py_CLEAR(self->scope);
    Py_CLEAR(self->receive);
    Py_CLEAR(self->send);
    Py_CLEAR(self->state);
    Py_CLEAR(self->inner);
    Py_CLEAR(self->root_path_at_start);
    Py_CLEAR(self->ids);
    Py_CLEAR(self->token);
    return 0;
}

static void exchange_dealloc(ExchangeObject *self) {
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    exchange_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyAsyncMethods exchange_async = {
    .am_await = self_await,
    .am_send = (sendfunc)exchange_send,
};

static PyMethodDef exchange_methods[] = {
    {"send", (PyCFunction)exchange_send_method, METH_O, NULL},
    {"throw", (PyCFunction)exchange_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)exchange_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.Exchange",
    .tp_basicsize = sizeof(ExchangeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One captured exchange: awaiting it runs the app.",
    .tp_as_async = &exchange_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)exchange_iternext,
    .tp_methods = exchange_methods,
    .tp_traverse = (traverseproc)exchange_traverse,
    .tp_clear = (inquiry)exchange_clear,
    .tp_dealloc = (destructor)exchange_dealloc,
    .tp_finalize = (destructor)exchange_finalize,
};

/* ------------------------------------------------------------------------------------------ */
/* Capture type                                                                               */

static PyObject *capture_exchange(CaptureObject *self, PyObject *scope, PyObject *receive, PyObject *send,
                                  long weight, long payload_weight);

static PyObject *capture_call(CaptureObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *scope, *receive, *send;
    long weight, payload_weight;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Capture() takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOll:Capture", &scope, &receive, &send, &weight, &payload_weight)) {
        return NULL;
    }
    return capture_exchange(self, scope, receive, send, weight, payload_weight);
}

/* The awaitable of one exchange (what `await capture(...)` drives). */
static PyObject *capture_exchange(CaptureObject *self, PyObject *scope, PyObject *receive, PyObject *send,
                                  long weight, long payload_weight) {
    ExchangeObject *exchange = PyObject_GC_New(ExchangeObject, &ExchangeType);
    if (exchange == NULL) {
        return NULL;
    }
    Py_INCREF(self);
    exchange->capture = self;
    Py_INCREF(scope);
    exchange->scope = scope;
    Py_INCREF(receive);
    exchange->receive = receive;
    Py_INCREF(send);
    exchange->send = send;
    exchange->state = NULL;
    exchange->inner = NULL;
    exchange->root_path_at_start = NULL;
    exchange->ids = NULL;
    exchange->token = NULL;
    exchange->token_here = 0;
    exchange->start_ns = 0;
    exchange->started = 0.0;
    exchange->weight = weight;
    exchange->payload_weight = payload_weight;
    exchange->phase = 0;
    exchange->preset = 0;
    PyObject_GC_Track(exchange);
    return (PyObject *)exchange;
}

static int capture_init(CaptureObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"app", "sink", "offer", "max_body_bytes", "start_trace", "attach",
                               "detach", "cold_start_key", "cold_start_requests", "encoder",
                               "context_var", "sampler", "trace_ids", "getrandbits", "otel", NULL};
    PyObject *app, *sink, *offer, *start_trace, *attach, *detach, *cold_start_key, *encoder = Py_None;
    PyObject *context_var = Py_None, *sampler = Py_None, *trace_ids = Py_None, *getrandbits = Py_None;
    PyObject *otel = Py_None;
    Py_ssize_t cap, cold = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOnOOOU|nOOOOOO:Capture", keywords, &app, &sink, &offer,
                                     &cap, &start_trace, &attach, &detach, &cold_start_key, &cold, &encoder,
                                     &context_var, &sampler, &trace_ids, &getrandbits, &otel)) {
        return -1;
    }
    if (otel != Py_None) {
        /* (SpanContext, NonRecordingSpan, TraceFlags.SAMPLED, the span's context key, Context) */
        if (context_var == Py_None || !PyTuple_CheckExact(otel) || PyTuple_GET_SIZE(otel) != 5 ||
            !PyCallable_Check(PyTuple_GET_ITEM(otel, 0)) || !PyCallable_Check(PyTuple_GET_ITEM(otel, 1)) ||
            !PyUnicode_Check(PyTuple_GET_ITEM(otel, 3)) || !PyCallable_Check(PyTuple_GET_ITEM(otel, 4))) {
            PyErr_SetString(PyExc_TypeError,
                            "otel needs context_var and (SpanContext, NonRecordingSpan, sampled flags, span key, "
                            "Context)");
            return -1;
        }
        Py_XSETREF(self->span_context, Py_NewRef(PyTuple_GET_ITEM(otel, 0)));
        Py_XSETREF(self->non_recording_span, Py_NewRef(PyTuple_GET_ITEM(otel, 1)));
        Py_XSETREF(self->sampled_flags, Py_NewRef(PyTuple_GET_ITEM(otel, 2)));
        Py_XSETREF(self->span_key, Py_NewRef(PyTuple_GET_ITEM(otel, 3)));
        Py_XSETREF(self->context_class, Py_NewRef(PyTuple_GET_ITEM(otel, 4)));
        if (check_otel_classes(self) < 0) {
            return -1;
        }
    } else {
        Py_CLEAR(self->span_context);
        Py_CLEAR(self->non_recording_span);
        Py_CLEAR(self->sampled_flags);
        Py_CLEAR(self->span_key);
        Py_CLEAR(self->context_class);
        Py_CLEAR(self->default_trace_state);
        Py_CLEAR(self->span_attribute);
        self->context_here = 0;
        self->span_context_tag = self->span_tag = self->context_tag = 0;
    }
    if (context_var != Py_None) {
        if (!PyContextVar_CheckExact(context_var) || sampler == Py_None || !PyCallable_Check(trace_ids) ||
            !PyCallable_Check(getrandbits)) {
            PyErr_SetString(PyExc_TypeError,
                            "context_var needs a ContextVar, with sampler, trace_ids and getrandbits");
            return -1;
        }
        Py_INCREF(context_var);
        Py_XSETREF(self->context_var, context_var);
        Py_INCREF(sampler);
        Py_XSETREF(self->sampler, sampler);
        Py_XSETREF(self->sampler_dict, own_attribute_dict(sampler, &s_bound, 1));
        Py_INCREF(trace_ids);
        Py_XSETREF(self->trace_ids, trace_ids);
        Py_INCREF(getrandbits);
        Py_XSETREF(self->getrandbits, getrandbits);
    } else {
        Py_CLEAR(self->context_var);
        Py_CLEAR(self->sampler);
        Py_CLEAR(self->sampler_dict);
        Py_CLEAR(self->trace_ids);
        Py_CLEAR(self->getrandbits);
    }
    if (encoder != Py_None && !PyObject_TypeCheck(encoder, &EncoderType)) {
        PyErr_SetString(PyExc_TypeError, "encoder must be an Encoder or None");
        return -1;
    }
    Py_INCREF(encoder);
    Py_XSETREF(self->encoder, encoder);
    if (cap < 0) {
        PyErr_SetString(PyExc_ValueError, "max_body_bytes must not be negative");
        return -1;
    }
    Py_INCREF(app);
    Py_XSETREF(self->app, app);
    Py_INCREF(sink);
    Py_XSETREF(self->sink, sink);
    Py_INCREF(offer);
    Py_XSETREF(self->offer, offer);
    Py_INCREF(start_trace);
    Py_XSETREF(self->start_trace, start_trace);
    Py_INCREF(attach);
    Py_XSETREF(self->attach, attach);
    Py_INCREF(detach);
    Py_XSETREF(self->detach, detach);
    Py_INCREF(cold_start_key);
    Py_XSETREF(self->cold_start_key, cold_start_key);
    self->cap = cap;
    self->cold_left = cold > 0 ? cold : 0;
    self->answered = 0;
    return 0;
}

static int capture_traverse(CaptureObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->app);
    Py_VISIT(self->sink);
    Py_VISIT(self->offer);
    Py_VISIT(self->start_trace);
    Py_VISIT(self->attach);
    Py_VISIT(self->detach);
    Py_VISIT(self->cold_start_key);
    Py_VISIT(self->encoder);
    Py_VISIT(self->context_var);
    Py_VISIT(self->sampler);
    Py_VISIT(self->sampler_dict);
    Py_VISIT(self->trace_ids);
    Py_VISIT(self->getrandbits);
    Py_VISIT(self->span_context);
    Py_VISIT(self->non_recording_span);
    Py_VISIT(self->sampled_flags);
    Py_VISIT(self->span_key);
    Py_VISIT(self->context_class);
    Py_VISIT(self->default_trace_state);
    Py_VISIT(self->span_attribute);
    return 0;
}

static int capture_clear(CaptureObject *self) {
    Py_CLEAR(self->app);
    Py_CLEAR(self->sink);
    Py_CLEAR(self->offer);
    Py_CLEAR(self->start_trace);
    Py_CLEAR(self->attach);
    Py_CLEAR(self->detach);
    Py_CLEAR(self->cold_start_key);
    Py_CLEAR(self->encoder);
    Py_CLEAR(self->context_var);
    Py_CLEAR(self->sampler);
    Py_CLEAR(self->sampler_dict);
    Py_CLEAR(self->trace_ids);
    Py_CLEAR(self->getrandbits);
    Py_CLEAR(self->span_context);
    Py_CLEAR(self->non_recording_span);
    Py_CLEAR(self->sampled_flags);
    Py_CLEAR(self->span_key);
    Py_CLEAR(self->context_class);
    Py_CLEAR(self->default_trace_state);
    Py_CLEAR(self->span_attribute);
    Py_CLEAR(self->bound_seen);
    return 0;
}

static void capture_dealloc(CaptureObject *self) {
    PyObject_GC_UnTrack(self);
    capture_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *capture_get_encoder(CaptureObject *self, void *Py_UNUSED(closure)) {
    PyObject *encoder = self->encoder != NULL ? self->encoder : Py_None;
    Py_INCREF(encoder);
    return encoder;
}

static int capture_set_encoder(CaptureObject *self, PyObject *value, void *Py_UNUSED(closure)) {
    if (value == NULL || (value != Py_None && !PyObject_TypeCheck(value, &EncoderType))) {
        PyErr_SetString(PyExc_TypeError, "encoder must be an Encoder or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->encoder, value);
    return 0;
}

/* ---- The sidecar's direct path: an exchange forwarded without calling the ASGI app ------- */

/* Capture.root_trace(headers): the trace identity an exchange with these request headers gets
 * (TraceIds, or None: not traced), drawn as the exchange's start draws it; NotImplemented where
 * the start would ask the Python form (a current OpenTelemetry context, a `traceparent` header,
 * no compiled root-trace path), and then nothing was drawn. */
static PyObject *capture_root_trace(CaptureObject *self, PyObject *headers) {
    if (self->start_trace == Py_None) {
        Py_RETURN_NONE;  /* tracing is off */
    }
    if (self->context_var == NULL) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    int truth = PyObject_IsTrue(headers);
    if (truth < 0) {
        return NULL;
    }
    PyObject *ids = NULL;
    int decided = new_root_trace(self, truth ? headers : NULL, &ids);
    if (decided <= 0) {
        PyErr_Clear();  /* as at the start: the Python form decides */
        Py_RETURN_NOTIMPLEMENTED;
    }
    return ids;
}

/* An exchange that began at `start_ns` / `started` with trace identity `ids` (None: untraced). */
static ExchangeObject *preset_exchange(CaptureObject *self, PyObject *scope, PyObject *receive, PyObject *send,
                                       long weight, long payload_weight, PyObject *ids, long long start_ns,
                                       double started) {
    ExchangeObject *exchange =
        (ExchangeObject *)capture_exchange(self, scope, receive, send, weight, payload_weight);
    if (exchange == NULL) {
        return NULL;
    }
    exchange->preset = 1;
    exchange->start_ns = start_ns;
    exchange->started = started;
    if (ids != Py_None) {
        exchange->ids = Py_NewRef(ids);
    }
    return exchange;
}

/* The arguments both entries share: weights, trace identity, start times (-1 with an exception). */
static int preset_arguments(PyObject *const *args, long *weight, long *payload_weight, long long *start_ns,
                            double *started) {
    /* One conversion at a time: none may run with an exception already set. */
    if ((*weight = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred()) {
        return -1;
    }
    if ((*payload_weight = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred()) {
        return -1;
    }
    if ((*start_ns = PyLong_AsLongLong(args[3])) == -1 && PyErr_Occurred()) {
        return -1;
    }
    if ((*started = PyFloat_AsDouble(args[4])) == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (args[2] != Py_None && !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "ids must be TraceIds or None");
        return -1;
    }
    return 0;
}

/* Capture.resume(scope, receive, send, weight, payload_weight, ids, start_ns, started): the
 * awaitable of an exchange that began before the app was called (the sidecar's direct path
 * handing a request it forwarded over to the app): as calling the capture, with the start's
 * times and trace identity (`root_trace`) given instead of taken. */
static PyObject *capture_resume(CaptureObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "resume(scope, receive, send, weight, payload_weight, ids, start_ns, started)");
        return NULL;
    }
    long weight, payload_weight;
    long long start_ns;
    double started;
    if (preset_arguments(args + 3, &weight, &payload_weight, &start_ns, &started) < 0) {
        return NULL;
    }
    return (PyObject *)preset_exchange(self, args[0], args[1], args[2], weight, payload_weight, args[5],
                                       start_ns, started);
}

/* Capture.offer_whole(scope, weight, payload_weight, ids, start_ns, started, request_body, status,
 * headers, response_started, response_body, ended): offer the record of an exchange the sidecar
 * answered without calling the app, as the capture records an app that receives `request_body`
 * in one message, sends `http.response.start` (status, headers) at `response_started` and the
 * whole `response_body` in one message at `ended` (perf_counter readings, like `started`; None for
 * both, with status 0: no response, the client left first). */
static PyObject *capture_offer_whole(CaptureObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError,
                        "offer_whole(scope, weight, payload_weight, ids, start_ns, started, request_body, "
                        "status, headers, response_started, response_body, ended)");
        return NULL;
    }
    PyObject *scope = args[0], *request_body = args[6], *headers = args[8], *response_body = args[10];
    long weight, payload_weight;
    long long start_ns;
    double started;
    if (preset_arguments(args + 1, &weight, &payload_weight, &start_ns, &started) < 0) {
        return NULL;
    }
    long status = PyLong_AsLong(args[7]);
    if (status == -1 && PyErr_Occurred()) {
        return NULL;
    }
    /* None: no response (the client left first). */
    double response_started = args[9] == Py_None ? -1.0 : PyFloat_AsDouble(args[9]);
    if (response_started == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    double ended = args[11] == Py_None ? -1.0 : PyFloat_AsDouble(args[11]);
    if (ended == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyBytes_CheckExact(request_body) || !PyBytes_CheckExact(response_body) || !PyList_CheckExact(headers)) {
        PyErr_SetString(PyExc_TypeError, "the bodies are bytes and the headers a list");
        return NULL;
    }
    ExchangeObject *exchange =
        preset_exchange(self, scope, Py_None, Py_None, weight, payload_weight, args[3], start_ns, started);
    if (exchange == NULL) {
        return NULL;
    }
    exchange->phase = 1;
    PyObject *root = lookup(scope, s_root_path);
    if (root == NULL) {
        PyErr_Clear();
        root = Py_NewRef(s_empty);
    }
    exchange->root_path_at_start = root;
    StateObject *state = new_state(exchange);
    if (state == NULL) {
        exchange->phase = 2;
        Py_DECREF(exchange);
        return NULL;
    }
    exchange->state = state;
    int failed = 0;
    Py_ssize_t size = PyBytes_GET_SIZE(request_body);
    if (size > 0) {
        state->request_size += size;
        if (state->request_left > 0) {
            failed |= keep_part(state->request_parts, request_body, size, &state->request_left) < 0;
        }
    }
    state->status = status;
    if (PyList_GET_SIZE(headers) > 0) {
        state->response_headers = Py_NewRef(headers);
    }
    state->response_started = response_started;
    size = PyBytes_GET_SIZE(response_body);
    if (size > 0) {
        state->first_body = ended;
        state->response_size += size;
        if (state->response_left > 0) {
            failed |= keep_part(state->response_parts, response_body, size, &state->response_left) < 0;
        }
    }
    state->ended = ended;
    if (failed) {
        PyErr_Clear();
        note_error(self, s_capture);
    }
    exchange_finish(exchange, NULL);
    Py_DECREF(exchange);
    Py_RETURN_NONE;
}

static PyMethodDef capture_methods[] = {
    {"root_trace", (PyCFunction)capture_root_trace, METH_O,
     "root_trace(headers): the trace identity an exchange gets (TraceIds or None), or NotImplemented"},
    {"resume", (PyCFunction)(void (*)(void))capture_resume, METH_FASTCALL,
     "resume(scope, receive, send, weight, payload_weight, ids, start_ns, started): a started exchange"},
    {"offer_whole", (PyCFunction)(void (*)(void))capture_offer_whole, METH_FASTCALL,
     "offer_whole(...): the record of an exchange answered without the app"},
    {NULL, NULL, 0, NULL},
};

static PyObject *capture_get_made_here(CaptureObject *self, void *Py_UNUSED(closure)) {
    return Py_BuildValue("(OOO)", makes_span_context(self) ? Py_True : Py_False,
                         makes_span(self) ? Py_True : Py_False, makes_context(self) ? Py_True : Py_False);
}

static PyGetSetDef capture_getset[] = {
    {"encoder", (getter)capture_get_encoder, (setter)capture_set_encoder,
     "Encoder: records are offered as bytes; None: as the raw tuple", NULL},
    {"made_here", (getter)capture_get_made_here, NULL,
     "(SpanContext, NonRecordingSpan, Context): which of a sampled trace's OpenTelemetry objects "
     "are made here rather than by calling their class (`check_otel_classes`)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CaptureType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.Capture",
    .tp_basicsize = sizeof(CaptureObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Capture(app, sink, offer, max_body_bytes, start_trace, attach, detach, cold_start_key, "
              "cold_start_requests=0, encoder=None, context_var=None, sampler=None, trace_ids=None, "
              "getrandbits=None, otel=None): the compiled request path of modeltap's capture.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)capture_init,
    .tp_call = (ternaryfunc)capture_call,
    .tp_methods = capture_methods,
    .tp_getset = capture_getset,
    .tp_traverse = (traverseproc)capture_traverse,
    .tp_clear = (inquiry)capture_clear,
    .tp_dealloc = (destructor)capture_dealloc,
};

/* ------------------------------------------------------------------------------------------ */
/* Dispatch: the base class of ModelTapMiddleware where this module is built                  */

/* Which exchanges are captured and whose payloads are kept (`modeltap.worker.sampling`): the two
 * strides and their counters, and `admit()`, for `Sampling` to hold. The compiled call below
 * admits an exchange here with no Python call at all when the tap's sampling is exactly the class
 * registered with `compile_admit` (a subclass may change `admit`: it is asked). The pure-Python
 * form, `PyAdmission`, gives the same weights in the same order (the tests hold them to it). */

typedef struct {
    PyObject_HEAD
    Py_ssize_t stride;         /* capture 1 in `stride` exchanges, each standing for `stride` */
    Py_ssize_t payload_stride; /* keep the payload of 1 in `payload_stride` of those */
    Py_ssize_t seq;            /* exchanges since the last one captured, modulo `stride` */
    Py_ssize_t payload_seq;    /* captured since the last payload kept, modulo `payload_stride` */
    Py_ssize_t max_stride, max_payload_stride;
} AdmissionObject;

static PyTypeObject AdmissionType;

/* (weight, payload_weight) of the next exchange: (0, 0) not captured, (w, 0) without payload. */
static void admission_decide(AdmissionObject *self, long *weight, long *payload_weight) {
    Py_ssize_t stride = self->stride;
    *weight = *payload_weight = 0;
    if (stride > 1) {
        self->seq = (self->seq + 1) % stride;
        if (self->seq) {
            return;
        }
    }
    Py_ssize_t payload_stride = self->payload_stride;
    *weight = (long)stride;
    if (payload_stride > 1) {
        self->payload_seq = (self->payload_seq + 1) % payload_stride;
        if (self->payload_seq) {
            return;
        }
    }
    *payload_weight = (long)(stride * payload_stride);
}

static PyObject *admission_admit(AdmissionObject *self, PyObject *Py_UNUSED(ignored)) {
    long weight, payload_weight;
    admission_decide(self, &weight, &payload_weight);
    return Py_BuildValue("(ll)", weight, payload_weight);
}

static int admission_set(Py_ssize_t *field, Py_ssize_t bound, PyObject *value, const char *name) {
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "cannot delete %s", name);
        return -1;
    }
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    Py_ssize_t stride = PyLong_AsSsize_t(value);
    if (stride == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        stride = -1;
    }
    if (stride < 1 || stride > bound) {
        PyErr_Format(PyExc_ValueError, "%s must be between 1 and %zd", name, bound);
        return -1;
    }
    *field = stride;
    return 0;
}

static PyObject *admission_get_stride(AdmissionObject *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->stride);
}

static int admission_set_stride(AdmissionObject *self, PyObject *value, void *Py_UNUSED(closure)) {
    return admission_set(&self->stride, self->max_stride, value, "stride");
}

static PyObject *admission_get_payload_stride(AdmissionObject *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->payload_stride);
}

static int admission_set_payload_stride(AdmissionObject *self, PyObject *value, void *Py_UNUSED(closure)) {
    return admission_set(&self->payload_stride, self->max_payload_stride, value, "payload_stride");
}

static int admission_init(AdmissionObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"max_stride", "max_payload_stride", NULL};
    Py_ssize_t max_stride, max_payload_stride;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nn:Admission", keywords, &max_stride, &max_payload_stride)) {
        return -1;
    }
    /* Bounded so that a weight (their product) fits the record's signed 32 bits. */
    if (max_stride < 1 || max_payload_stride < 1 || max_stride > INT32_MAX / max_payload_stride) {
        PyErr_SetString(PyExc_ValueError, "the largest strides must be at least 1, their product below 2**31");
        return -1;
    }
    self->max_stride = max_stride;
    self->max_payload_stride = max_payload_stride;
    self->stride = self->payload_stride = 1;
    self->seq = self->payload_seq = 0;
    return 0;
}

static PyMethodDef admission_methods[] = {
    {"admit", (PyCFunction)admission_admit, METH_NOARGS,
     "admit() -> (weight, payload_weight): (0, 0) not captured, (w, 0) timed and counted without its "
     "payload."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef admission_getset[] = {
    {"stride", (getter)admission_get_stride, (setter)admission_set_stride,
     "Capture 1 in this many exchanges (1: all).", NULL},
    {"payload_stride", (getter)admission_get_payload_stride, (setter)admission_set_payload_stride,
     "Keep the payload of 1 in this many captured exchanges (1: all).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject AdmissionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.Admission",
    .tp_basicsize = sizeof(AdmissionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Admission(max_stride, max_payload_stride): the sampling strides, their counters and admit().",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)admission_init,
    .tp_methods = admission_methods,
    .tp_getset = admission_getset,
};

/* The class whose instances are admitted by their `admission` here (`compile_admit`), or NULL. */
static PyObject *admitted_class = NULL;
static int admission_in_dict = 0;  /* the class defines no `admission`: its instances' dict holds it */

static PyObject *compile_admit(PyObject *Py_UNUSED(module), PyObject *cls) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "compile_admit needs a class");
        return NULL;
    }
    int defined = PyObject_HasAttrString(cls, "admission");
    Py_XSETREF(admitted_class, Py_NewRef(cls));
    admission_in_dict = !defined;
    Py_RETURN_NONE;
}

/* The middleware's per-request decision, made without a Python frame of its own for an HTTP
 * exchange once the tap has the compiled capture and the path is outside the local views: the
 * capture's awaitable is returned itself, as `_dispatch` would have awaited it, at weights 1
 * while everything is captured, else at those `Sampling.admit()` gives (or the app's own
 * awaitable when admit leaves the exchange out). Anything else (lifespan, websockets, the first
 * request, the views, a pure-Python capture, a scope that is not a plain dict) calls the
 * subclass's `_dispatch` coroutine, which makes every decision again: this is a shortcut, never
 * a second source of truth. Nothing is cached: the tap's capture and sampling are read on every
 * call (from its attribute dict, where `getattr` would find them), so a fork (a new capture), a
 * change of strides or a fallback is seen at once. */

typedef struct {
    PyObject_HEAD
    PyObject *tap;          /* NULL: always `_dispatch` (not set up, or monitoring disabled) */
    PyObject *views_prefix; /* the local views' prefix (str), or NULL when there are none */
    /* The tap's own attribute dict, where its class defines neither `capture` nor `sampling`
     * (then the dict is where `getattr` finds them): read directly, without the attribute
     * protocol's type lookups. Still read on every call. NULL: `getattr` on the tap. */
    PyObject *tap_dict;
} DispatchObject;

static PyObject *s_dispatch, *s_sampling, *s_stride, *s_payload_stride, *s_admit, *s_app, *s_admission;

/* 1 when `value` is the int 1, else 0 (no error set). */
static int is_one(PyObject *value) {
    if (value == NULL || !PyLong_CheckExact(value)) {
        return 0;
    }
    int overflow = 0;
    return PyLong_AsLongAndOverflow(value, &overflow) == 1 && overflow == 0;
}

/* Whether `path` may be one of the local views (`LocalViews.handles` decides exactly): it starts
 * with the prefix, or does once the scope's non-empty `root_path` is taken off. 1, 0, or -1 when
 * the scope is not as expected (then the full decision is made in Python). */
static int may_be_views(PyObject *prefix, PyObject *scope) {
    PyObject *path = PyDict_GetItemWithError(scope, s_path);
    if (path == NULL || !PyUnicode_Check(path)) {
        return -1;
    }
    Py_ssize_t end = PyUnicode_GET_LENGTH(path);
    Py_ssize_t match = PyUnicode_Tailmatch(path, prefix, 0, end, -1);
    if (match != 0) {
        return match < 0 ? -1 : 1;
    }
    PyObject *root = PyDict_GetItemWithError(scope, s_root_path);
    if (root == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyUnicode_Check(root)) {
        return -1;
    }
    Py_ssize_t start = PyUnicode_GET_LENGTH(root);
    if (start == 0) {
        return 0;
    }
    match = PyUnicode_Tailmatch(path, root, 0, end, -1);
    if (match <= 0) {
        return match < 0 ? -1 : 0;
    }
    match = PyUnicode_Tailmatch(path, prefix, start, end, -1);
    return match < 0 ? -1 : match > 0;
}

/* Whether both sampling strides are 1 (`Sampling.takes_everything`, read without its frame):
 * 1, 0, or -1 when they cannot be read. */
static int takes_everything(PyObject *sampling) {
    PyObject *stride = PyObject_GetAttr(sampling, s_stride);
    if (stride == NULL) {
        return -1;
    }
    PyObject *payload_stride = PyObject_GetAttr(sampling, s_payload_stride);
    if (payload_stride == NULL) {
        Py_DECREF(stride);
        return -1;
    }
    int everything = is_one(stride) && is_one(payload_stride);
    Py_DECREF(payload_stride);
    Py_DECREF(stride);
    return everything;
}

/* The compiled admission of the registered class itself (a new reference), or NULL, with no
 * error: a subclass, or a pure-Python admission, is asked through `admit()` instead. */
static AdmissionObject *compiled_admission(PyObject *sampling) {
    if (admitted_class == NULL || (PyObject *)Py_TYPE(sampling) != admitted_class) {
        return NULL;
    }
    /* The sampling object changes with the tap's: its dict is looked up here, not kept. */
    PyObject *dict = admission_in_dict ? instance_dict(sampling) : NULL;  /* none: `getattr` */
    PyObject *admission = own_attribute(dict, sampling, s_admission);
    Py_XDECREF(dict);
    if (admission != NULL && Py_IS_TYPE(admission, &AdmissionType)) {
        return (AdmissionObject *)admission;
    }
    Py_XDECREF(admission);
    PyErr_Clear();
    return NULL;
}

/* The exchange at the weights admission gave: the capture's awaitable, or the app's own when it
 * is left out (weight 0). */
static PyObject *admitted_call(DispatchObject *self, PyObject *capture, PyObject *scope, PyObject *receive,
                               PyObject *send, long weight, long payload_weight) {
    if (weight) {
        return capture_exchange((CaptureObject *)capture, scope, receive, send, weight, payload_weight);
    }
    PyObject *app = PyObject_GetAttr((PyObject *)self, s_app);
    if (app == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallFunctionObjArgs(app, scope, receive, send, NULL);
    Py_DECREF(app);
    return result;
}

/* What `_dispatch` would do with an HTTP exchange once the tap has the compiled capture: the
 * capture's awaitable, at the weights `Sampling.admit()` gives under load, or the app's own when
 * admit leaves the exchange out. `*decided` says whether the decision was made here: when it was,
 * NULL means an error to raise (admit has counted the exchange: it must not be decided again);
 * when not, `_dispatch` decides, and any error set here is cleared by the caller. */
static PyObject *dispatch_shortcut(DispatchObject *self, PyObject *tap, PyObject *tap_dict, PyObject *scope,
                                   PyObject *receive, PyObject *send, int *decided) {
    *decided = 0;
    if (!PyDict_CheckExact(scope)) {
        return NULL;
    }
    PyObject *kind = PyDict_GetItemWithError(scope, s_type);
    if (kind != s_http && (kind == NULL || !PyUnicode_CheckExact(kind) || PyUnicode_Compare(kind, s_http) != 0)) {
        return NULL;
    }
    if (self->views_prefix != NULL && may_be_views(self->views_prefix, scope) != 0) {
        return NULL;
    }
    PyObject *capture = own_attribute(tap_dict, tap, s_capture);
    if (capture == NULL) {
        return NULL;
    }
    if (!Py_IS_TYPE(capture, &CaptureType)) {
        Py_DECREF(capture);
        return NULL;
    }
    PyObject *sampling = own_attribute(tap_dict, tap, s_sampling);
    if (sampling == NULL) {
        Py_DECREF(capture);
        return NULL;
    }
    PyObject *result = NULL;
    AdmissionObject *admission = compiled_admission(sampling);
    if (admission != NULL) {
        long weight, payload_weight;
        admission_decide(admission, &weight, &payload_weight);
        Py_DECREF(admission);
        *decided = 1;
        result = admitted_call(self, capture, scope, receive, send, weight, payload_weight);
    } else {
        int everything = takes_everything(sampling);
        if (everything == 1) {
            *decided = 1;
            result = capture_exchange((CaptureObject *)capture, scope, receive, send, 1, 1);
        } else if (everything == 0) {
            /* Decided from here on, also when admit raises: `_dispatch` would ask it a second time. */
            PyObject *admitted = PyObject_CallMethodNoArgs(sampling, s_admit);
            *decided = 1;
            long weight = 0, payload_weight = 0;
            if (admitted != NULL && PyTuple_CheckExact(admitted) && PyTuple_GET_SIZE(admitted) == 2) {
                weight = PyLong_AsLong(PyTuple_GET_ITEM(admitted, 0));
                payload_weight =
                    weight == -1 && PyErr_Occurred() ? -1 : PyLong_AsLong(PyTuple_GET_ITEM(admitted, 1));
            } else if (admitted != NULL) {
                PyErr_SetString(PyExc_TypeError, "Sampling.admit() must return (weight, payload_weight)");
            }
            if (!PyErr_Occurred()) {  /* else raised by the caller: admit failed, or gave no two ints */
                result = admitted_call(self, capture, scope, receive, send, weight, payload_weight);
            }
            Py_XDECREF(admitted);
        }
    }
    Py_DECREF(sampling);
    Py_DECREF(capture);
    return result;
}

static PyObject *dispatch_call(DispatchObject *self, PyObject *args, PyObject *kwargs) {
    if (self->tap != NULL && PyTuple_GET_SIZE(args) == 3 && (kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0)) {
        int decided;
        /* Held for the whole decision: the attribute reads below may run Python code (a property,
         * another thread) that calls `_set_shortcut` and lets go of the middleware's reference. */
        PyObject *tap = Py_NewRef(self->tap);
        PyObject *tap_dict = Py_XNewRef(self->tap_dict);  /* that tap's, even if it is let go */
        PyObject *result = dispatch_shortcut(self, tap, tap_dict, PyTuple_GET_ITEM(args, 0),
                                             PyTuple_GET_ITEM(args, 1), PyTuple_GET_ITEM(args, 2), &decided);
        Py_XDECREF(tap_dict);
        Py_DECREF(tap);
        if (result != NULL || decided) {
            return result;
        }
        PyErr_Clear(); /* nothing decided yet: `_dispatch` decides (and raises, if it must) */
    }
    PyObject *method = PyObject_GetAttr((PyObject *)self, s_dispatch);
    if (method == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Call(method, args, kwargs);
    Py_DECREF(method);
    return result;
}

static PyObject *dispatch_set_shortcut(DispatchObject *self, PyObject *args) {
    PyObject *tap, *views_prefix;
    if (!PyArg_ParseTuple(args, "OO:_set_shortcut", &tap, &views_prefix)) {
        return NULL;
    }
    if (views_prefix != Py_None && !PyUnicode_Check(views_prefix)) {
        PyErr_SetString(PyExc_TypeError, "views_prefix must be a str or None");
        return NULL;
    }
    PyObject *names[2] = {s_capture, s_sampling};
    Py_XSETREF(self->tap_dict, tap == Py_None ? NULL : own_attribute_dict(tap, names, 2));
    Py_XSETREF(self->tap, tap == Py_None ? NULL : Py_NewRef(tap));
    Py_XSETREF(self->views_prefix, views_prefix == Py_None ? NULL : Py_NewRef(views_prefix));
    Py_RETURN_NONE;
}

static PyMethodDef dispatch_methods[] = {
    {"_set_shortcut", (PyCFunction)dispatch_set_shortcut, METH_VARARGS,
     "_set_shortcut(tap, views_prefix): take the normal case without `_dispatch` (tap None: never)."},
    {NULL, NULL, 0, NULL},
};

static int dispatch_traverse(DispatchObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->tap);
    Py_VISIT(self->views_prefix);
    Py_VISIT(self->tap_dict);
    return 0;
}

static int dispatch_clear(DispatchObject *self) {
    Py_CLEAR(self->tap);
    Py_CLEAR(self->views_prefix);
    Py_CLEAR(self->tap_dict);
    return 0;
}

static void dispatch_dealloc(DispatchObject *self) {
    PyObject_GC_UnTrack(self);
    dispatch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject DispatchType;

/* `compile_call(cls)`: instances of `cls` (a Python subclass of Dispatch) are called through the
 * compiled call, while the class keeps its Python `__call__` for everyone who looks at it (uvicorn
 * tells an ASGI 3 app by a coroutine function `__call__`). Setting an attribute of the class that
 * names `__call__` again puts Python's own slot back: correct, only slower. */
static PyObject *compile_call(PyObject *Py_UNUSED(module), PyObject *cls) {
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &DispatchType) ||
        !PyType_HasFeature((PyTypeObject *)cls, Py_TPFLAGS_HEAPTYPE)) {
        PyErr_SetString(PyExc_TypeError, "compile_call needs a class derived from Dispatch");
        return NULL;
    }
    ((PyTypeObject *)cls)->tp_call = (ternaryfunc)dispatch_call;
    Py_RETURN_NONE;
}

static PyTypeObject DispatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.Dispatch",
    .tp_basicsize = sizeof(DispatchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Base of the ASGI middleware: calls `_dispatch(scope, receive, send)`, or the capture "
              "directly in the normal case once `_set_shortcut` named the tap.",
    .tp_new = PyType_GenericNew,
    .tp_call = (ternaryfunc)dispatch_call,
    .tp_methods = dispatch_methods,
    .tp_traverse = (traverseproc)dispatch_traverse,
    .tp_clear = (inquiry)dispatch_clear,
    .tp_dealloc = (destructor)dispatch_dealloc,
};

/* ------------------------------------------------------------------------------------------ */
/* RecordQueue: the bounded hand-off, with `offer` a C call (the capture offers every record)  */

/* The same queue as `modeltap.capture.record_queue.PyRecordQueue` (see there for the rules):
 * bounded in records and in bytes, a full queue drops the new record and counts the exchanges
 * it stands for (`weight_of`, called only on a drop). Records sit in a ring that grows by
 * doubling up to `max_records`. Every method runs holding the interpreter, so the event loop's
 * `offer` and the shipper's `drain` never interleave, as with the deque they replace. */

/* RECORD_OVERHEAD_BYTES (above, with the capture that charges a record's head beyond it) is
 * added to every record's kept bytes. */

typedef struct {
    PyObject_HEAD
    PyObject **records;
    long long *sizes;
    Py_ssize_t capacity, head, count;
    Py_ssize_t max_records;
    long long max_bytes, bytes_in, bytes_out;
    long long worker_held_bytes, drained_bytes;
    long long dropped_full, dropped_bytes, dropped_unavailable;
    char unavailable;
    PyObject *weight_of;
} RecordQueueObject;

/* The ring at `capacity` slots (at least `count`), the queued records moved to its start. */
static int queue_resize(RecordQueueObject *self, Py_ssize_t capacity) {
    PyObject **records = PyMem_Malloc(sizeof(PyObject *) * (size_t)capacity);
    long long *sizes = PyMem_Malloc(sizeof(long long) * (size_t)capacity);
    if (records == NULL || sizes == NULL) {
        PyMem_Free(records);
        PyMem_Free(sizes);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Py_ssize_t at = (self->head + i) % self->capacity;
        records[i] = self->records[at];
        sizes[i] = self->sizes[at];
    }
    PyMem_Free(self->records);
    PyMem_Free(self->sizes);
    self->records = records;
    self->sizes = sizes;
    self->capacity = capacity;
    self->head = 0;
    return 0;
}

/* Double the ring, up to `max_records`. */
static int queue_grow(RecordQueueObject *self) {
    Py_ssize_t capacity = self->capacity * 2;
    return queue_resize(self, capacity < self->max_records ? capacity : self->max_records);
}

/* A drop of `record`: counted by the exchanges it stands for, under the reason that applies.
 * Never raises (the request path offers): a weight that cannot be read counts as one exchange. */
static PyObject *queue_drop(RecordQueueObject *self, PyObject *record, long long *reason) {
    long long n = 1;
    PyObject *weight = self->weight_of != NULL ? PyObject_CallOneArg(self->weight_of, record) : NULL;
    if (weight != NULL) {
        n = PyLong_AsLongLong(weight);
        Py_DECREF(weight);
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
        n = 1;
    }
    if (self->unavailable) {
        self->dropped_unavailable += n;
    } else {
        *reason += n;
    }
    Py_RETURN_FALSE;
}

static PyObject *queue_offer(RecordQueueObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "offer(record, kept_bytes)");
        return NULL;
    }
    int overflow = 0;
    long long kept = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (kept == -1 && PyErr_Occurred()) {
        return NULL; /* not an int: the caller's bug, not a state of the queue */
    }
    if (self->count >= self->max_records || self->records == NULL) {
        return queue_drop(self, args[0], &self->dropped_full);
    }
    /* In this order no sum can overflow: the record alone must fit (max_bytes >= 0), then what
     * is queued and what the shipper holds must fit in the room left beside it. */
    if (overflow != 0 || kept > self->max_bytes - RECORD_OVERHEAD_BYTES) {
        return queue_drop(self, args[0], &self->dropped_bytes);
    }
    long long size = kept + RECORD_OVERHEAD_BYTES;
    long long room = self->max_bytes - size;
    long long queued = self->bytes_in - self->bytes_out;
    if (queued > room || self->worker_held_bytes > room - queued) {
        return queue_drop(self, args[0], &self->dropped_bytes);
    }
    if (self->count == self->capacity && queue_grow(self) < 0) {
        PyErr_Clear(); /* no memory to grow the ring: a full queue, as far as this record goes */
        return queue_drop(self, args[0], &self->dropped_full);
    }
    Py_ssize_t at = (self->head + self->count) % self->capacity;
    self->records[at] = Py_NewRef(args[0]);
    self->sizes[at] = size;
    self->count++;
    self->bytes_in += size;
    Py_RETURN_TRUE;
}

/* How many records `drain(limit, max_bytes)` takes (max_bytes -1: no byte bound): up to `limit`,
 * oldest first; with a byte bound that the queue exceeds, until that many bytes are taken (at
 * least one record is). */
static Py_ssize_t queue_take_count(RecordQueueObject *self, Py_ssize_t limit, long long max_bytes) {
    Py_ssize_t take = limit < self->count ? (limit > 0 ? limit : 0) : self->count;
    if (max_bytes < 0 || self->bytes_in - self->bytes_out <= max_bytes) {
        return take;
    }
    long long freed = 0;
    Py_ssize_t taken = 0;
    while (taken < take && freed < max_bytes) {
        freed += self->sizes[(self->head + taken) % self->capacity];
        taken++;
    }
    return taken;
}

static PyObject *queue_drain(RecordQueueObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"limit", "max_bytes", NULL};
    Py_ssize_t limit;
    PyObject *bound = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|O:drain", keywords, &limit, &bound)) {
        return NULL;
    }
    long long max_bytes = -1; /* -1: no byte bound */
    if (bound != Py_None) {
        max_bytes = PyLong_AsLongLong(bound);
        if (max_bytes == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (max_bytes < 0) {
            max_bytes = 0;
        }
    }
    /* How many go is decided first and the list made at that size, so that nothing can fail
     * once records leave the ring. Making the list may run a collection (and code of the app's
     * in finalizers): if the queue changed meanwhile, decide again. */
    PyObject *out = NULL;
    Py_ssize_t take;
    for (;;) {
        take = queue_take_count(self, limit, max_bytes);
        out = PyList_New(take);
        if (out == NULL) {
            return NULL;
        }
        if (queue_take_count(self, limit, max_bytes) == take) {
            break;
        }
        Py_DECREF(out);
    }
    long long freed = 0;
    for (Py_ssize_t i = 0; i < take; i++) {
        Py_ssize_t at = self->head;
        PyList_SET_ITEM(out, i, self->records[at]); /* the ring's reference moves to the list */
        self->records[at] = NULL;
        freed += self->sizes[at];
        self->head = (self->head + 1) % self->capacity;
        self->count--;
    }
    self->bytes_out += freed;
    self->drained_bytes = freed;
    return out;
}

static PyObject *queue_oldest(RecordQueueObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->count == 0) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(self->records[self->head]);
}

static PyObject *queue_get_depth(RecordQueueObject *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->count);
}

static PyObject *queue_get_pending_bytes(RecordQueueObject *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(self->bytes_in - self->bytes_out + self->worker_held_bytes);
}

static int queue_init(RecordQueueObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"max_records", "max_bytes", "weight_of", NULL};
    Py_ssize_t max_records;
    long long max_bytes;
    PyObject *weight_of;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nLO:RecordQueue", keywords, &max_records, &max_bytes,
                                     &weight_of)) {
        return -1;
    }
    if (max_records < 1 || max_bytes < 0 || !PyCallable_Check(weight_of)) {
        PyErr_SetString(PyExc_ValueError,
                        "RecordQueue needs max_records >= 1, max_bytes >= 0 and a callable weight_of");
        return -1;
    }
    if (self->records != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RecordQueue is already initialised");
        return -1;
    }
    if (queue_resize(self, max_records < 1024 ? max_records : 1024) < 0) {
        return -1;
    }
    self->max_records = max_records;
    self->max_bytes = max_bytes;
    Py_XSETREF(self->weight_of, Py_NewRef(weight_of));
    return 0;
}

static int queue_traverse(RecordQueueObject *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Py_VISIT(self->records[(self->head + i) % self->capacity]);
    }
    Py_VISIT(self->weight_of);
    return 0;
}

static int queue_clear(RecordQueueObject *self) {
    while (self->count > 0) {
        PyObject *record = self->records[self->head];
        self->records[self->head] = NULL;
        self->head = (self->head + 1) % self->capacity;
        self->count--;
        Py_DECREF(record);
    }
    Py_CLEAR(self->weight_of);
    return 0;
}

static void queue_dealloc(RecordQueueObject *self) {
    PyObject_GC_UnTrack(self);
    queue_clear(self);
    PyMem_Free(self->records);
    PyMem_Free(self->sizes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef queue_methods[] = {
    {"offer", (PyCFunction)(void (*)(void))queue_offer, METH_FASTCALL,
     "offer(record, kept_bytes) -> bool: False when full (the record is dropped and counted)."},
    {"drain", (PyCFunction)(void (*)(void))queue_drain, METH_VARARGS | METH_KEYWORDS,
     "drain(limit, max_bytes=None) -> list: up to `limit` records, oldest first; with `max_bytes`, "
     "stop once that many bytes are taken (at least one record is)."},
    {"oldest", (PyCFunction)queue_oldest, METH_NOARGS, "The oldest queued record, or None."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef queue_members[] = {
    {"max_records", T_PYSSIZET, offsetof(RecordQueueObject, max_records), READONLY, NULL},
    {"max_bytes", T_LONGLONG, offsetof(RecordQueueObject, max_bytes), READONLY, NULL},
    {"worker_held_bytes", T_LONGLONG, offsetof(RecordQueueObject, worker_held_bytes), 0, NULL},
    {"drained_bytes", T_LONGLONG, offsetof(RecordQueueObject, drained_bytes), 0, NULL},
    {"dropped_full", T_LONGLONG, offsetof(RecordQueueObject, dropped_full), 0, NULL},
    {"dropped_bytes", T_LONGLONG, offsetof(RecordQueueObject, dropped_bytes), 0, NULL},
    {"dropped_unavailable", T_LONGLONG, offsetof(RecordQueueObject, dropped_unavailable), 0, NULL},
    {"unavailable", T_BOOL, offsetof(RecordQueueObject, unavailable), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef queue_getset[] = {
    {"depth", (getter)queue_get_depth, NULL, "records queued", NULL},
    {"pending_bytes", (getter)queue_get_pending_bytes, NULL, "bytes queued plus those the worker still holds",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RecordQueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeltap._speedups.RecordQueue",
    .tp_basicsize = sizeof(RecordQueueObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RecordQueue(max_records, max_bytes, weight_of): the bounded hand-off, compiled.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)queue_init,
    .tp_methods = queue_methods,
    .tp_members = queue_members,
    .tp_getset = queue_getset,
    .tp_traverse = (traverseproc)queue_traverse,
    .tp_clear = (inquiry)queue_clear,
    .tp_dealloc = (destructor)queue_dealloc,
};

/* ------------------------------------------------------------------------------------------ */
/* decode_records: the monitor's side of the hand-off (`framing.decode_records` in Python)     */
/*                                                                                            */
/* A RECORDS payload back to raw records, each with a synthetic scope: the same objects as the */
/* Python form, which the monitor ran for about a third of its time per record. Malformed      */
/* input raises ValueError (the monitor then drops the connection), never reads past the end.  */

typedef struct {
    const unsigned char *data;
    Py_ssize_t size;
    Py_ssize_t at;
} Reader;

static int read_bytes(Reader *r, void *out, Py_ssize_t n) {
    if (n > r->size - r->at) {
        PyErr_SetString(PyExc_ValueError, "malformed record batch: a record cut short");
        return -1;
    }
    memcpy(out, r->data + r->at, (size_t)n);
    r->at += n;
    return 0;
}

/* Little-endian readers (the format is "<"): x86-64 and aarch64 Linux are little-endian. */
#define READ(reader, var) read_bytes((reader), &(var), (Py_ssize_t)sizeof(var))

static PyObject *text_from(const unsigned char *data, Py_ssize_t size) {
    return PyUnicode_DecodeUTF8((const char *)data, size, "surrogateescape");
}

/* `_split`: `count` u16 lengths, then the texts, which must fill the field exactly. */
static int split_joined(const unsigned char *field, Py_ssize_t size, int count, const unsigned char **parts,
                        Py_ssize_t *sizes) {
    Py_ssize_t at = 2 * (Py_ssize_t)count;
    if (size < at) {
        PyErr_SetString(PyExc_ValueError, "malformed record batch: a joined field cut short");
        return -1;
    }
    for (int i = 0; i < count; i++) {
        sizes[i] = field[2 * i] | (field[2 * i + 1] << 8);
        parts[i] = field + at;
        at += sizes[i];
    }
    if (at != size) {
        PyErr_SetString(PyExc_ValueError, "malformed joined field");
        return -1;
    }
    return 0;
}

/* `_parse_headers`: `name:value` lines separated by LF, every line with a colon. */
static PyObject *headers_from(const unsigned char *blob, Py_ssize_t size) {
    PyObject *headers = PyList_New(0);
    if (headers == NULL || size == 0) {
        return headers;
    }
    Py_ssize_t at = 0;
    for (;;) {
        const unsigned char *line = blob + at;
        const unsigned char *end = memchr(line, '\n', (size_t)(size - at));
        Py_ssize_t line_size = end != NULL ? end - line : size - at;
        const unsigned char *colon = memchr(line, ':', (size_t)line_size);
        if (colon == NULL) {
            Py_DECREF(headers);
            PyErr_SetString(PyExc_ValueError, "a header line without a colon");
            return NULL;
        }
        Py_ssize_t name_size = colon - line;
        PyObject *pair = Py_BuildValue("(y#y#)", (const char *)line, name_size, (const char *)colon + 1,
                                       line_size - name_size - 1);
        if (pair == NULL || PyList_Append(headers, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(headers);
            return NULL;
        }
        Py_DECREF(pair);
        if (end == NULL) {
            return headers;
        }
        at += line_size + 1;
    }
}

static PyObject *float_or_none(double value) {
    if (value != value) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble(value);
}

/* A list holding `bytes(field)`, or an empty one for an empty field. */
static PyObject *parts_from(const unsigned char *field, Py_ssize_t size) {
    if (size == 0) {
        return PyList_New(0);
    }
    PyObject *part = PyBytes_FromStringAndSize((const char *)field, size);
    if (part == NULL) {
        return NULL;
    }
    PyObject *list = PyList_New(1);
    if (list == NULL) {
        Py_DECREF(part);
        return NULL;
    }
    PyList_SET_ITEM(list, 0, part);
    return list;
}

enum {
    V_PROTOCOL, V_PATH, V_QUERY, V_TEMPLATE, V_PEERS, V_EXCEPTION, V_PROXY_ERROR, V_TRACE_STATE,
    V_REQUEST_HEADERS, V_RESPONSE_HEADERS, V_REQUEST_BODY, V_RESPONSE_BODY, V_COUNT
};

/* One record's layout in the batch: its fixed part read, its fields located and the joined ones
 * checked. No Python object is made: a record filed under a group only needs this. */
typedef struct {
    long long start_ns, request_size, response_size;
    double response_started, ended, finished, first_body;
    int32_t status, weight, payload_weight, client_port, server_port;
    unsigned char flags;
    unsigned long long trace_words[4];
    const unsigned char *fields[V_COUNT];
    Py_ssize_t sizes[V_COUNT];
    const unsigned char *protocol[3], *peers[2];
    Py_ssize_t protocol_sizes[3], peer_sizes[2];
} Layout;

static int read_layout(Reader *r, Layout *l) {
    if (READ(r, l->start_ns) < 0 || READ(r, l->response_started) < 0 || READ(r, l->ended) < 0 ||
        READ(r, l->finished) < 0 || READ(r, l->first_body) < 0 || READ(r, l->status) < 0 ||
        READ(r, l->request_size) < 0 || READ(r, l->response_size) < 0 || READ(r, l->weight) < 0 ||
        READ(r, l->payload_weight) < 0 || READ(r, l->flags) < 0 || READ(r, l->client_port) < 0 ||
        READ(r, l->server_port) < 0) {
        return -1;
    }
    memset(l->trace_words, 0, sizeof(l->trace_words));
    if ((l->flags & F_TRACED) && read_bytes(r, l->trace_words, sizeof(l->trace_words)) < 0) {
        return -1;
    }
    uint32_t lengths[V_COUNT];
    if (read_bytes(r, lengths, sizeof(lengths)) < 0) {
        return -1;
    }
    for (int i = 0; i < V_COUNT; i++) {
        if ((Py_ssize_t)lengths[i] > r->size - r->at) {
            PyErr_SetString(PyExc_ValueError, "field beyond the end of the batch");
            return -1;
        }
        l->fields[i] = r->data + r->at;
        l->sizes[i] = (Py_ssize_t)lengths[i];
        r->at += l->sizes[i];
    }
    if (split_joined(l->fields[V_PROTOCOL], l->sizes[V_PROTOCOL], 3, l->protocol, l->protocol_sizes) < 0 ||
        split_joined(l->fields[V_PEERS], l->sizes[V_PEERS], 2, l->peers, l->peer_sizes) < 0) {
        return -1;
    }
    return 0;
}

/* One record from its layout; NULL with an exception. `keys`: route template, proxy error, cold
 * start. */
static PyObject *build_record(const Layout *l, PyObject *trace_ids, PyObject *const *keys) {
    const unsigned char *const *fields = l->fields;
    const Py_ssize_t *sizes = l->sizes;
    const unsigned char *const *protocol = l->protocol;
    const Py_ssize_t *protocol_sizes = l->protocol_sizes;
    const unsigned char *const *peers = l->peers;
    const Py_ssize_t *peer_sizes = l->peer_sizes;
    const unsigned long long *trace_words = l->trace_words;
    unsigned char flags = l->flags;
    int32_t client_port = l->client_port, server_port = l->server_port;
    PyObject *scope = NULL, *record = NULL, *value = NULL;
    scope = PyDict_New();
    if (scope == NULL) {
        return NULL;
    }
#define PUT(key, make)                                                      \
    do {                                                                    \
        value = (make);                                                     \
        if (value == NULL || PyDict_SetItem(scope, (key), value) < 0) goto failed; \
        Py_CLEAR(value);                                                    \
    } while (0)
    PUT(s_type, (Py_INCREF(s_http), s_http));
    PUT(s_method, text_from(protocol[0], protocol_sizes[0]));
    PUT(s_scheme, text_from(protocol[1], protocol_sizes[1]));
    PUT(s_http_version, text_from(protocol[2], protocol_sizes[2]));
    PUT(s_path, text_from(fields[V_PATH], sizes[V_PATH]));
    PUT(s_root_path, (Py_INCREF(s_empty), s_empty));
    PUT(s_query_string, PyBytes_FromStringAndSize((const char *)fields[V_QUERY], sizes[V_QUERY]));
    PUT(s_headers, headers_from(fields[V_REQUEST_HEADERS], sizes[V_REQUEST_HEADERS]));
    if (peer_sizes[0]) {
        PyObject *host = text_from(peers[0], peer_sizes[0]);
        PUT(s_client, host ? Py_BuildValue("(Ni)", host, (int)client_port) : NULL);
    } else {
        PUT(s_client, (Py_INCREF(Py_None), Py_None));
    }
    if (peer_sizes[1]) {
        PyObject *host = text_from(peers[1], peer_sizes[1]);
        PyObject *port = server_port == -1 ? (Py_INCREF(Py_None), Py_None) : PyLong_FromLong(server_port);
        if (host == NULL || port == NULL) {
            Py_XDECREF(host);
            Py_XDECREF(port);
            goto failed;
        }
        PUT(s_server, Py_BuildValue("(NN)", host, port));
    } else {
        PUT(s_server, (Py_INCREF(Py_None), Py_None));
    }
    if (sizes[V_TEMPLATE]) {
        PUT(keys[0], text_from(fields[V_TEMPLATE], sizes[V_TEMPLATE]));
    }
    if (sizes[V_PROXY_ERROR]) {
        PUT(keys[1], text_from(fields[V_PROXY_ERROR], sizes[V_PROXY_ERROR]));
    }
    if (flags & F_COLD) {
        PUT(keys[2], (Py_INCREF(Py_True), Py_True));
    }
#undef PUT
    PyObject *trace = Py_None;
    Py_INCREF(trace);
    if (flags & F_TRACED) {
        PyObject *high = PyLong_FromUnsignedLongLong(trace_words[0]);
        PyObject *low = PyLong_FromUnsignedLongLong(trace_words[1]);
        PyObject *shifted = high ? PyNumber_Lshift(high, bits_64) : NULL;
        PyObject *trace_id = shifted && low ? PyNumber_Or(shifted, low) : NULL;
        Py_XDECREF(high);
        Py_XDECREF(low);
        Py_XDECREF(shifted);
        PyObject *state = PyUnicode_DecodeLatin1((const char *)fields[V_TRACE_STATE], sizes[V_TRACE_STATE], NULL);
        PyObject *made = NULL;
        if (trace_id != NULL && state != NULL) {
            made = PyObject_CallFunction(trace_ids, "OKKOOOO", trace_id, trace_words[2], trace_words[3],
                                         flags & F_REMOTE_PARENT ? Py_True : Py_False,
                                         flags & F_SAMPLED ? Py_True : Py_False, state,
                                         flags & F_ENRICHED ? Py_True : Py_False);
        }
        Py_XDECREF(trace_id);
        Py_XDECREF(state);
        Py_DECREF(trace);
        if (made == NULL) {
            goto failed;
        }
        trace = made;
    }
    PyObject *exception = sizes[V_EXCEPTION] ? text_from(fields[V_EXCEPTION], sizes[V_EXCEPTION])
                                             : (Py_INCREF(Py_None), Py_None);
    PyObject *items[19] = {
        scope,
        (Py_INCREF(s_empty), s_empty),
        PyLong_FromLongLong(l->start_ns),
        PyFloat_FromDouble(0.0),
        float_or_none(l->response_started),
        float_or_none(l->ended),
        PyFloat_FromDouble(l->finished),
        PyLong_FromLong(l->status),
        headers_from(fields[V_RESPONSE_HEADERS], sizes[V_RESPONSE_HEADERS]),
        parts_from(fields[V_REQUEST_BODY], sizes[V_REQUEST_BODY]),
        PyLong_FromLongLong(l->request_size),
        parts_from(fields[V_RESPONSE_BODY], sizes[V_RESPONSE_BODY]),
        PyLong_FromLongLong(l->response_size),
        exception,
        PyBool_FromLong(flags & F_DISCONNECTED),
        trace,
        PyLong_FromLong(l->weight),
        PyLong_FromLong(l->payload_weight),
        float_or_none(l->first_body),
    };
    scope = NULL; /* the items own it now */
    record = PyTuple_New(19);
    int complete = record != NULL;
    for (int i = 0; i < 19; i++) {
        if (items[i] == NULL) {
            complete = 0;
        } else if (record != NULL) {
            PyTuple_SET_ITEM(record, i, items[i]);
        } else {
            Py_DECREF(items[i]);
        }
    }
    if (!complete) {
        Py_XDECREF(record); /* its NULL slots are skipped */
        return NULL;
    }
    return record;
failed:
    Py_XDECREF(value);
    Py_XDECREF(scope);
    return NULL;
}


static PyObject *decode_one(Reader *r, PyObject *trace_ids, PyObject *const *keys) {
    Layout layout;
    if (read_layout(r, &layout) < 0) {
        return NULL;
    }
    return build_record(&layout, trace_ids, keys);
}

/* A batch's arguments checked (`name`(data: bytes, trace_ids, and the three scope keys)) and its
 * record count read; -1 with an exception. */
static int open_batch(const char *name, PyObject *const *args, Py_ssize_t nargs, Reader *reader, uint32_t *count) {
    if (nargs != 5 || !PyBytes_CheckExact(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s(data: bytes, trace_ids, route_key, proxy_error_key, cold_start_key)",
                     name);
        return -1;
    }
    *reader = (Reader){(const unsigned char *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), 0};
    if (READ(reader, *count) < 0) {
        return -1;
    }
    /* Each record takes at least its fixed part and lengths table: a count the payload cannot
     * hold is refused before anything is allocated for it. */
    if ((Py_ssize_t)*count > reader->size / (FIXED_SIZE + LENGTHS_SIZE)) {
        PyErr_SetString(PyExc_ValueError, "malformed record batch: more records than bytes");
        return -1;
    }
    return 0;
}

/* decode_records(data, trace_ids, route_template_key, proxy_error_key, cold_start_key) */
static PyObject *decode_records(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    Reader reader;
    uint32_t count;
    if (open_batch("decode_records", args, nargs, &reader, &count) < 0) {
        return NULL;
    }
    PyObject *records = PyList_New(count);
    if (records == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < count; i++) {
        PyObject *record = decode_one(&reader, args[1], args + 2);
        if (record == NULL) {
            Py_DECREF(records); /* the NULL slots left are skipped */
            return NULL;
        }
        PyList_SET_ITEM(records, i, record);
    }
    if (reader.at != reader.size) {
        Py_DECREF(records);
        PyErr_SetString(PyExc_ValueError, "trailing bytes after the record batch");
        return NULL;
    }
    return records;
}

/* decode_grouped(data, trace_ids, route_key, proxy_error_key, cold_start_key): (records, groups) */
/*                                                                                            */
/* Under sustained load nearly every record is timed and counted only (untraced, its payload  */
/* sampled out), and most are alike but for their clock readings. Such records are filed by   */
/* group: a record of each shape is made once, with the durations of all records of its shape */
/* in the batch (`(record, [duration, ...])`); everything else comes back as decode_records    */
/* gives it. A shape is every field the monitor files a timed record by: method, scheme, HTTP  */
/* version, path, route template, exception, proxy error, response headers, status, weight,    */
/* client gone, cold start, answered or not. What differs within a group (clock readings,      */
/* sizes, request headers, peers) is read by nothing that files a timed record. The same       */
/* payloads are refused as by decode_records.                                                 */

#define GROUP_SLOTS 128 /* a power of two, twice the groups kept: probes stay short */
#define GROUPS_KEPT 64  /* distinct shapes per batch grouped; past that, records as they are */

static const int grouped_fields[] = {V_PROTOCOL, V_PATH, V_TEMPLATE, V_EXCEPTION, V_PROXY_ERROR,
                                     V_RESPONSE_HEADERS};
#define GROUPED_FIELDS ((int)(sizeof(grouped_fields) / sizeof(grouped_fields[0])))

typedef struct {
    Layout layout;
    uint64_t hash;
    PyObject *durations; /* borrowed: the group's tuple owns it */
} Group;

static int timed_only(const Layout *l) { return !(l->flags & F_TRACED) && l->payload_weight == 0; }

static uint32_t shape_bits(const Layout *l) {
    return (uint32_t)(l->flags & (F_DISCONNECTED | F_COLD)) | (l->ended != l->ended ? 0x100u : 0u);
}

static uint64_t fnv(uint64_t hash, const void *data, size_t size) {
    const unsigned char *bytes = data;
    for (size_t i = 0; i < size; i++) {
        hash = (hash ^ bytes[i]) * 0x100000001b3ULL;
    }
    return hash;
}

static uint64_t shape_hash(const Layout *l) {
    uint64_t hash = 0xcbf29ce484222325ULL;
    uint32_t bits = shape_bits(l);
    hash = fnv(hash, &l->status, sizeof(l->status));
    hash = fnv(hash, &l->weight, sizeof(l->weight));
    hash = fnv(hash, &bits, sizeof(bits));
    for (int i = 0; i < GROUPED_FIELDS; i++) {
        Py_ssize_t size = l->sizes[grouped_fields[i]];
        hash = fnv(hash, &size, sizeof(size));
        hash = fnv(hash, l->fields[grouped_fields[i]], (size_t)size);
    }
    return hash;
}

static int same_shape(const Layout *a, const Layout *b) {
    if (a->status != b->status || a->weight != b->weight || shape_bits(a) != shape_bits(b)) {
        return 0;
    }
    for (int i = 0; i < GROUPED_FIELDS; i++) {
        int f = grouped_fields[i];
        if (a->sizes[f] != b->sizes[f] || memcmp(a->fields[f], b->fields[f], (size_t)a->sizes[f]) != 0) {
            return 0;
        }
    }
    return 1;
}

/* What headers_from would refuse, without making the list (a record filed under a group). */
static int headers_valid(const unsigned char *blob, Py_ssize_t size) {
    Py_ssize_t at = 0;
    while (size > 0) {
        const unsigned char *line = blob + at;
        const unsigned char *end = memchr(line, '\n', (size_t)(size - at));
        Py_ssize_t line_size = end != NULL ? end - line : size - at;
        if (memchr(line, ':', (size_t)line_size) == NULL) {
            PyErr_SetString(PyExc_ValueError, "a header line without a colon");
            return -1;
        }
        if (end == NULL) {
            break;
        }
        at += line_size + 1;
    }
    return 0;
}

static PyObject *decode_grouped(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    Reader reader;
    uint32_t count;
    if (open_batch("decode_grouped", args, nargs, &reader, &count) < 0) {
        return NULL;
    }
    Group *slots = PyMem_Calloc(GROUP_SLOTS, sizeof(Group));
    PyObject *records = PyList_New(0), *groups = PyList_New(0);
    if (slots == NULL || records == NULL || groups == NULL) {
        if (slots == NULL) {
            PyErr_NoMemory();
        }
        goto failed;
    }
    int kept = 0;
    for (uint32_t i = 0; i < count; i++) {
        Layout layout;
        if (read_layout(&reader, &layout) < 0) {
            goto failed;
        }
        Group *group = NULL;
        uint64_t hash = 0;
        if (timed_only(&layout)) {
            hash = shape_hash(&layout);
            for (size_t probe = (size_t)hash & (GROUP_SLOTS - 1);; probe = (probe + 1) & (GROUP_SLOTS - 1)) {
                Group *slot = &slots[probe];
                if (slot->durations == NULL) {
                    if (kept < GROUPS_KEPT) {
                        group = slot; /* a new shape: its record is made below */
                    }
                    break;
                }
                if (slot->hash == hash && same_shape(&slot->layout, &layout)) {
                    /* Refused as the record itself would be, though its headers are not made. */
                    if (headers_valid(layout.fields[V_REQUEST_HEADERS], layout.sizes[V_REQUEST_HEADERS]) < 0) {
                        goto failed;
                    }
                    double duration = layout.ended == layout.ended ? layout.ended : layout.finished;
                    PyObject *value = PyFloat_FromDouble(duration);
                    if (value == NULL || PyList_Append(slot->durations, value) < 0) {
                        Py_XDECREF(value);
                        goto failed;
                    }
                    Py_DECREF(value);
                    goto next;
                }
            }
        }
        PyObject *record = build_record(&layout, args[1], args + 2);
        if (record == NULL) {
            goto failed;
        }
        if (group == NULL) {
            int appended = PyList_Append(records, record);
            Py_DECREF(record);
            if (appended < 0) {
                goto failed;
            }
            continue;
        }
        double duration = layout.ended == layout.ended ? layout.ended : layout.finished;
        PyObject *durations = Py_BuildValue("[d]", duration);
        PyObject *pair = durations != NULL ? PyTuple_Pack(2, record, durations) : NULL;
        Py_DECREF(record);
        Py_XDECREF(durations); /* the pair holds it */
        if (pair == NULL || PyList_Append(groups, pair) < 0) {
            Py_XDECREF(pair);
            goto failed;
        }
        Py_DECREF(pair);
        group->layout = layout;
        group->hash = hash;
        group->durations = durations;
        kept++;
    next:;
    }
    if (reader.at != reader.size) {
        PyErr_SetString(PyExc_ValueError, "trailing bytes after the record batch");
        goto failed;
    }
    PyMem_Free(slots);
    PyObject *result = PyTuple_Pack(2, records, groups);
    Py_DECREF(records);
    Py_DECREF(groups);
    return result;
failed:
    PyMem_Free(slots);
    Py_XDECREF(records);
    Py_XDECREF(groups);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* request_head: the sidecar's request fields for the upstream (`headers.request_head`)        */
/*                                                                                            */
/* The Python form runs a loop over the client's fields per request. This is the same loop    */
/* for the usual request: it returns None (the Python form decides) when a field is not a pair */
/* of bytes, when a Connection field names fields to drop (not when it only says keep-alive or */
/* close), or for a Content-Length too long to read here; tests/unit/sidecar/test_headers.py   */
/* holds both to the same result.                                                             */

static const char *const request_noted[] = {
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
    "proxy-authorization", "proxy-authenticate", "expect", "content-length", "host", "x-forwarded-for",
    "x-forwarded-proto", "x-forwarded-host", "traceparent",
};
enum {
    RN_CONNECTION = 0, RN_TRANSFER_ENCODING = 3, RN_CONTENT_LENGTH = 10, RN_HOST, RN_FORWARDED_FOR,
    RN_FORWARDED_PROTO, RN_FORWARDED_HOST, RN_TRACEPARENT, RN_COUNT
};

static int request_noted_index(const char *name, Py_ssize_t size) {
    for (int i = 0; i < RN_COUNT; i++) {
        if ((size_t)size == strlen(request_noted[i]) && memcmp(name, request_noted[i], (size_t)size) == 0) {
            return i;
        }
    }
    return -1;
}

/* `prefix` + `value` + CRLF as a new bytes object (`value` may be NULL: `prefix` holds it all). */
static PyObject *field_line(const char *prefix, Py_ssize_t prefix_size, const char *value, Py_ssize_t value_size) {
    PyObject *line = PyBytes_FromStringAndSize(NULL, prefix_size + value_size + 2);
    if (line == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(line);
    memcpy(out, prefix, (size_t)prefix_size);
    if (value_size) {
        memcpy(out + prefix_size, value, (size_t)value_size);
    }
    memcpy(out + prefix_size + value_size, "\r\n", 2);
    return line;
}

static int append_line(PyObject *fields, PyObject *line) {
    if (line == NULL) {
        return -1;
    }
    int failed = PyList_Append(fields, line);
    Py_DECREF(line);
    return failed;
}

/* `size` bytes of `in` to `out`, ASCII letters lower-cased (field names). */
static void ascii_lower(char *out, const char *in, Py_ssize_t size) {
    for (Py_ssize_t i = 0; i < size; i++) {
        out[i] = (char)(in[i] >= 'A' && in[i] <= 'Z' ? in[i] + 32 : in[i]);
    }
}

/* A field value of 1 to `max_digits` decimal digits (a Content-Length), or -1. */
static long long decimal_digits(const char *value, Py_ssize_t size, Py_ssize_t max_digits) {
    if (size == 0 || size > max_digits) return -1;
    long long number = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        if (value[i] < '0' || value[i] > '9') return -1;
        number = number * 10 + (value[i] - '0');
    }
    return number;
}

/* bytes.strip()'s whitespace */
static int is_ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* The next token of a comma-separated field value (`Connection`), trimmed as bytes.strip()
 * trims: [*first, *last). Start with *at = 0; returns 0 once the value is used up. */
static int next_token(const char *value, Py_ssize_t size, Py_ssize_t *at, Py_ssize_t *first, Py_ssize_t *last) {
    if (*at > size) {
        return 0;
    }
    Py_ssize_t end = *at;
    while (end < size && value[end] != ',') end++;
    *first = *at;
    *last = end;
    while (*first < *last && is_ascii_space(value[*first])) (*first)++;
    while (*last > *first && is_ascii_space(value[*last - 1])) (*last)--;
    *at = end + 1;
    return 1;
}

/* Whether a Connection field's tokens (comma-separated, trimmed, any case) name one of the lines
 * in `fields` (by the name before its first colon) or a forwarding field the proxy writes: then
 * something is to be dropped, which the Python form does. "keep-alive" and "close" name nothing. */
static int connection_names_a_field(const char *value, Py_ssize_t size, PyObject *fields) {
    static const char *const forwarding[] = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"};
    Py_ssize_t at = 0, first, last;
    while (next_token(value, size, &at, &first, &last)) {
        Py_ssize_t token_size = last - first;
        if (token_size > 0) {
            char token[64];
            if (token_size > (Py_ssize_t)sizeof(token)) {
                return 1; /* longer than any name worth comparing here: let Python decide */
            }
            ascii_lower(token, value + first, token_size);
            for (size_t k = 0; k < sizeof(forwarding) / sizeof(forwarding[0]); k++) {
                if ((size_t)token_size == strlen(forwarding[k]) && memcmp(token, forwarding[k], (size_t)token_size) == 0) {
                    return 1;
                }
            }
            for (Py_ssize_t k = 0; k < PyList_GET_SIZE(fields); k++) {
                PyObject *line = PyList_GET_ITEM(fields, k);
                const char *text = PyBytes_AS_STRING(line);
                const char *colon = memchr(text, ':', (size_t)PyBytes_GET_SIZE(line));
                Py_ssize_t name_size = colon != NULL ? colon - text : PyBytes_GET_SIZE(line);
                if (name_size == token_size && memcmp(text, token, (size_t)token_size) == 0) {
                    return 1;
                }
            }
        }
    }
    return 0;
}

/* request_head(headers, peer, scheme, trusted, default_host, via) ->
 *     (fields, content_length, chunked, host, traceparent_index) or None */
static PyObject *request_head(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "request_head(headers, peer, scheme, trusted, default_host, via)");
        return NULL;
    }
    PyObject *headers = args[0], *peer = args[1], *scheme = args[2], *trusted = args[3];
    PyObject *default_host = args[4], *via = args[5];
    if (!PyList_CheckExact(headers) || !PyBytes_CheckExact(default_host) || (via != Py_None && !PyBytes_CheckExact(via)) ||
        !PyUnicode_Check(scheme) || (peer != Py_None && !PyUnicode_Check(peer))) {
        Py_RETURN_NONE;
    }
    PyObject *fields = PyList_New(0), *forwarded_for = PyList_New(0), *connection = PyList_New(0);
    PyObject *result = NULL, *peer_bytes = NULL, *proto_bytes = NULL;
    if (fields == NULL || forwarded_for == NULL || connection == NULL) {
        goto done;
    }
    long long content_length = -1;
    int chunked = 0;
    Py_ssize_t traceparent_index = -1;
    PyObject *host = NULL, *forwarded_proto = NULL, *forwarded_host = NULL; /* borrowed */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        const char *name_data = PyBytes_AS_STRING(name), *value_data = PyBytes_AS_STRING(value);
        Py_ssize_t name_size = PyBytes_GET_SIZE(name), value_size = PyBytes_GET_SIZE(value);
        int noted = request_noted_index(name_data, name_size);
        if (noted < 0 || noted == RN_TRACEPARENT) {
            if (noted == RN_TRACEPARENT) {
                traceparent_index = PyList_GET_SIZE(fields);
            }
            PyObject *line = PyBytes_FromStringAndSize(NULL, name_size + value_size + 4);
            if (line == NULL) {
                goto done;
            }
            char *out = PyBytes_AS_STRING(line);
            memcpy(out, name_data, (size_t)name_size);
            memcpy(out + name_size, ": ", 2);
            if (value_size) {
                memcpy(out + name_size + 2, value_data, (size_t)value_size);
            }
            memcpy(out + name_size + 2 + value_size, "\r\n", 2);
            if (append_line(fields, line) < 0) {
                goto done;
            }
            continue;
        }
        switch (noted) {
        case RN_CONNECTION: /* what it names is looked at once all fields are in */
            if (PyList_Append(connection, value) < 0) {
                goto done;
            }
            break;
        case RN_CONTENT_LENGTH:
            if (value_size > 18) {
                result = Py_None; /* a length this long: the Python form reads (or refuses) it */
                Py_INCREF(result);
                goto done;
            }
            content_length = decimal_digits(value_data, value_size, 18);
            if (content_length < 0) {
                PyErr_SetString(PyExc_ValueError, "invalid Content-Length");
                goto done;
            }
            break;
        case RN_HOST:
            host = value;
            break;
        case RN_TRANSFER_ENCODING:
            chunked = 1;
            break;
        case RN_FORWARDED_FOR:
            if (PyList_Append(forwarded_for, value) < 0) {
                goto done;
            }
            break;
        case RN_FORWARDED_PROTO:
            forwarded_proto = value;
            break;
        case RN_FORWARDED_HOST:
            forwarded_host = value;
            break;
        default: /* the other hop-by-hop fields and Expect: not forwarded */
            break;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(connection); i++) {
        PyObject *value = PyList_GET_ITEM(connection, i);
        if (connection_names_a_field(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), fields)) {
            result = Py_None; /* fields to drop: the Python form does it */
            Py_INCREF(result);
            goto done;
        }
    }
    PyObject *upstream_host = host != NULL && PyBytes_GET_SIZE(host) ? host : default_host;
    if (append_line(fields, field_line("host: ", 6, PyBytes_AS_STRING(upstream_host), PyBytes_GET_SIZE(upstream_host))) < 0) {
        goto done;
    }
    if (peer != Py_None) {
        peer_bytes = PyUnicode_AsLatin1String(peer);
        if (peer_bytes == NULL || PyList_Append(forwarded_for, peer_bytes) < 0) {
            goto done;
        }
    }
    Py_ssize_t hops = PyList_GET_SIZE(forwarded_for);
    if (hops) {
        /* "x-forwarded-for: " + b", ".join(forwarded_for) + CRLF */
        Py_ssize_t size = 17 + 2 * (hops - 1) + 2;
        for (Py_ssize_t i = 0; i < hops; i++) {
            size += PyBytes_GET_SIZE(PyList_GET_ITEM(forwarded_for, i));
        }
        PyObject *line = PyBytes_FromStringAndSize(NULL, size);
        if (line == NULL) {
            goto done;
        }
        char *out = PyBytes_AS_STRING(line);
        memcpy(out, "x-forwarded-for: ", 17);
        out += 17;
        for (Py_ssize_t i = 0; i < hops; i++) {
            PyObject *hop = PyList_GET_ITEM(forwarded_for, i);
            if (i) {
                memcpy(out, ", ", 2);
                out += 2;
            }
            memcpy(out, PyBytes_AS_STRING(hop), (size_t)PyBytes_GET_SIZE(hop));
            out += PyBytes_GET_SIZE(hop);
        }
        memcpy(out, "\r\n", 2);
        if (append_line(fields, line) < 0) {
            goto done;
        }
    }
    int peer_trusted = 0;
    if (peer != Py_None && ((forwarded_proto && PyBytes_GET_SIZE(forwarded_proto)) ||
                            (forwarded_host && PyBytes_GET_SIZE(forwarded_host)))) {
        peer_trusted = PySequence_Contains(trusted, peer);
        if (peer_trusted < 0) {
            goto done;
        }
    }
    PyObject *proto = forwarded_proto;
    if (!(peer_trusted && proto && PyBytes_GET_SIZE(proto))) {
        proto_bytes = PyUnicode_AsLatin1String(scheme);
        if (proto_bytes == NULL) {
            goto done;
        }
        proto = proto_bytes;
    }
    if (append_line(fields, field_line("x-forwarded-proto: ", 19, PyBytes_AS_STRING(proto), PyBytes_GET_SIZE(proto))) < 0) {
        goto done;
    }
    PyObject *forwarded = peer_trusted && forwarded_host && PyBytes_GET_SIZE(forwarded_host) ? forwarded_host : host;
    if (forwarded != NULL && PyBytes_GET_SIZE(forwarded)) {
        PyObject *line = field_line("x-forwarded-host: ", 18, PyBytes_AS_STRING(forwarded), PyBytes_GET_SIZE(forwarded));
        if (append_line(fields, line) < 0) {
            goto done;
        }
    }
    if (via != Py_None && append_line(fields, field_line("via: ", 5, PyBytes_AS_STRING(via), PyBytes_GET_SIZE(via))) < 0) {
        goto done;
    }
    PyObject *length = content_length < 0 ? (Py_INCREF(Py_None), Py_None) : PyLong_FromLongLong(content_length);
    if (length == NULL) {
        goto done;
    }
    result = Py_BuildValue("(ONNOn)", fields, length, PyBool_FromLong(chunked), host != NULL ? host : Py_None,
                           traceparent_index);
done:
    Py_XDECREF(fields);
    Py_XDECREF(forwarded_for);
    Py_XDECREF(connection);
    Py_XDECREF(peer_bytes);
    Py_XDECREF(proto_bytes);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* parse_response: the sidecar's upstream responses, the common case without llhttp callbacks  */
/*                                                                                            */
/* `modeltap.sidecar.upstream` feeds every upstream response to httptools (llhttp), which calls */
/* Python once per field and once per event: about 2 µs a small response. Most responses from  */
/* a model server are one read holding an HTTP/1.1 head framed by Content-Length and the whole */
/* body. This reads exactly that shape in one call and returns None for anything else, which   */
/* then takes llhttp's path as before (nothing was consumed). What it accepts it must read as  */
/* llhttp does (tests/unit/sidecar/test_upstream_fast_path.py holds both to the same result),  */
/* so it is strict: what it does not accept it does not judge.                                 */

/* tchar (RFC 9110 5.6.2) */
static int is_tchar(unsigned char c) {
    if (c >= '0' && c <= '9') return 1;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* field-vchar, SP, HTAB, obs-text (RFC 9110 5.5) */
static int is_field_char(unsigned char c) {
    return c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7f);
}

static const char *const hop_by_hop_names[] = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
    "proxy-authorization", "proxy-authenticate",
};

/* Whether `value` (a Connection field) lists the token "close" (any case, OWS around). */
static int lists_close(const unsigned char *value, Py_ssize_t size) {
    Py_ssize_t at = 0, first, last;
    while (next_token((const char *)value, size, &at, &first, &last)) {
        if (last - first == 5 && strncasecmp((const char *)value + first, "close", 5) == 0) return 1;
    }
    return 0;
}

/* A field line of a head in one read, for the two readers below: "name: value" CRLF. */
typedef struct {
    char name[64]; /* lower-cased */
    Py_ssize_t name_size;
    const unsigned char *value;
    Py_ssize_t value_size;
} FieldLine;

/* Reads the line at `*at`: 1 a field (in `line`, `*at` past it), 0 the empty line ending the head
 * (`*at` past it), -1 a shape these readers leave to llhttp: a name that is not a token or is
 * longer than 64, whitespace before the colon or at the value's end, a bare CR or LF, a cut
 * line. Values are field-vchar, SP and HTAB; `plain` also refuses obs-text and empty values. */
static int read_field_line(const unsigned char *data, Py_ssize_t size, Py_ssize_t *at, int plain,
                           FieldLine *line) {
    Py_ssize_t i = *at;
    if (i + 1 >= size) return -1;
    if (data[i] == '\r') {
        if (data[i + 1] != '\n') return -1;
        *at = i + 2;
        return 0;
    }
    Py_ssize_t name_start = i;
    while (i < size && is_tchar(data[i])) i++;
    Py_ssize_t name_size = i - name_start;
    if (name_size == 0 || name_size > 64 || i >= size || data[i] != ':') return -1;
    i++;
    while (i < size && (data[i] == ' ' || data[i] == '\t')) i++;
    Py_ssize_t value_start = i;
    while (i < size && data[i] != '\r') {
        if (!is_field_char(data[i]) || (plain && data[i] >= 0x7f)) return -1;
        i++;
    }
    Py_ssize_t value_size = i - value_start;
    if (i + 1 >= size || data[i + 1] != '\n') return -1;
    if (value_size == 0 ? plain : (data[i - 1] == ' ' || data[i - 1] == '\t')) return -1;
    ascii_lower(line->name, (const char *)data + name_start, name_size);
    line->name_size = name_size;
    line->value = data + value_start;
    line->value_size = value_size;
    *at = i + 2;
    return 1;
}

static int field_is(const FieldLine *line, const char *name) {
    size_t size = strlen(name);
    return (size_t)line->name_size == size && memcmp(line->name, name, size) == 0;
}

/* Appends (name, value) to `fields`; -1 with an exception set. */
static int append_field(PyObject *fields, const FieldLine *line) {
    PyObject *pair = Py_BuildValue("(y#y#)", line->name, line->name_size, (const char *)line->value,
                                   line->value_size);
    if (pair == NULL) return -1;
    int failed = PyList_Append(fields, pair);
    Py_DECREF(pair);
    return failed;
}

/* parse_response(data, max_head, max_body) -> (status, fields, hop_by_hop, keep_alive, body) or
 * None. `fields` are (lower-cased name, value) pairs, as the upstream connection keeps them. */
static PyObject *parse_response(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse_response(data: bytes, max_head: int, max_body: int)");
        return NULL;
    }
    Py_ssize_t max_head = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_body = PyLong_AsSsize_t(args[2]);
    if ((max_head == -1 || max_body == -1) && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    /* Status line: "HTTP/1.1 " 3DIGIT [SP reason] CRLF. */
    if (size < 14 || memcmp(data, "HTTP/1.1 ", 9) != 0) {
        Py_RETURN_NONE;
    }
    for (int i = 9; i < 12; i++) {
        if (data[i] < '0' || data[i] > '9') Py_RETURN_NONE;
    }
    int status = (data[9] - '0') * 100 + (data[10] - '0') * 10 + (data[11] - '0');
    if (status < 200 || status > 599 || status == 204 || status == 304) {
        Py_RETURN_NONE; /* interim responses, and those whose length the request decides */
    }
    Py_ssize_t at = 12;
    if (data[at] == ' ') {
        at++;
        while (at < size && data[at] != '\r') {
            if (!is_field_char(data[at])) Py_RETURN_NONE;
            at++;
        }
    }
    if (at + 1 >= size || data[at] != '\r' || data[at + 1] != '\n') {
        Py_RETURN_NONE;
    }
    at += 2;
    PyObject *fields = PyList_New(0);
    if (fields == NULL) {
        return NULL;
    }
    int hop_by_hop = 0, keep_alive = 1, lengths = 0;
    long long content_length = 0;
    FieldLine line;
    for (;;) {
        if (at > max_head) goto fallback;
        int got = read_field_line(data, size, &at, 0, &line);
        if (got < 0) goto fallback;
        if (got == 0) break;
        if (field_is(&line, "content-length")) {
            if (++lengths > 1 || (content_length = decimal_digits((const char *)line.value, line.value_size, 15)) < 0) goto fallback;
        } else if (field_is(&line, "transfer-encoding")) {
            goto fallback;
        } else {
            for (size_t i = 0; i < sizeof(hop_by_hop_names) / sizeof(hop_by_hop_names[0]); i++) {
                if (field_is(&line, hop_by_hop_names[i])) {
                    hop_by_hop = 1;
                    if (i == 0 && lists_close(line.value, line.value_size)) keep_alive = 0;
                    break;
                }
            }
        }
        if (append_field(fields, &line) < 0) {
            Py_DECREF(fields);
            return NULL;
        }
    }
    /* Exactly the head and a Content-Length body: nothing before or after it in this read. */
    if (at > max_head || lengths != 1 || content_length > max_body || size - at != content_length) {
        goto fallback;
    }
    PyObject *body = PyBytes_FromStringAndSize((const char *)data + at, (Py_ssize_t)content_length);
    if (body == NULL) {
        Py_DECREF(fields);
        return NULL;
    }
    return Py_BuildValue("(iNOON)", status, fields, hop_by_hop ? Py_True : Py_False,
                         keep_alive ? Py_True : Py_False, body);
fallback:
    Py_DECREF(fields);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* The sidecar's client request, whole in one read                                          */
/*                                                                                            */
/* What a client of a model endpoint sends is, nearly always, one read holding an HTTP/1.1    */
/* request: a method every server knows, an origin-form target, one Host field, a body framed */
/* by Content-Length (or none), and nothing after it. This reads exactly that shape in one    */
/* call, in place of llhttp's callbacks (one Python call per field and per event), and        */
/* returns None for anything else, which then takes llhttp's path as before (nothing was      */
/* consumed). What it accepts it must read as llhttp and uvicorn do                           */
/* (tests/unit/sidecar/test_downstream_fast_path.py holds both to the same scope, body and    */
/* answer); it is strict, and leaves every refusal, limit and unusual field to that path.     */

static PyObject *s_methods[7];
static const char *const method_names[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};

/* RFC 3986 pchar without pct-encoded, plus '/' and '?': a target with '%' (which uvicorn    */
/* unquotes) or '#' is not read here.                                                         */
static int is_target_char(unsigned char c) {
    if (c >= '0' && c <= '9') return 1;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return 1;
    return c != 0 && strchr("-._~!$&'()*+,;=:@/?", c) != NULL;
}

/* Whether a Connection field lists nothing but keep-alive (a request the connection outlives). */
static int keeps_alive_only(const unsigned char *value, Py_ssize_t size) {
    Py_ssize_t at = 0, first, last;
    int tokens = 0;
    while (next_token((const char *)value, size, &at, &first, &last)) {
        if (last - first != 10 || strncasecmp((const char *)value + first, "keep-alive", 10) != 0) return 0;
        tokens++;
    }
    return tokens > 0;
}

/* parse_request(data, max_url, max_headers, max_header_bytes) -> (method, path, raw_path,
 * query_string, fields, body) or None. `fields` are (lower-cased name, value) pairs, as uvicorn
 * keeps them; the limits are the client protocol's (what exceeds them is left to its path). */
static PyObject *parse_request(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "parse_request(data: bytes, max_url: int, max_headers: int, max_header_bytes: int)");
        return NULL;
    }
    Py_ssize_t max_url = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_headers = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_header_bytes = PyLong_AsSsize_t(args[3]);
    if ((max_url == -1 || max_headers == -1 || max_header_bytes == -1) && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    /* Request line: method SP origin-form SP "HTTP/1.1" CRLF. */
    int method = -1;
    Py_ssize_t at = 0;
    for (int i = 0; i < 7; i++) {
        size_t length = strlen(method_names[i]);
        if ((Py_ssize_t)length < size && memcmp(data, method_names[i], length) == 0 && data[length] == ' ') {
            method = i;
            at = (Py_ssize_t)length + 1;
            break;
        }
    }
    if (method < 0 || at >= size || data[at] != '/') {
        Py_RETURN_NONE;
    }
    Py_ssize_t target = at, query = -1;
    while (at < size && data[at] != ' ') {
        if (!is_target_char(data[at])) Py_RETURN_NONE;
        if (data[at] == '?' && query < 0) query = at;
        at++;
    }
    Py_ssize_t target_end = at;
    if (target_end - target > max_url || size - at < 11 || memcmp(data + at, " HTTP/1.1\r\n", 11) != 0) {
        Py_RETURN_NONE;
    }
    at += 11;
    PyObject *fields = PyList_New(0);
    if (fields == NULL) {
        return NULL;
    }
    Py_ssize_t count = 0, field_bytes = 0;
    int hosts = 0, lengths = 0;
    long long content_length = 0;
    FieldLine line;
    for (;;) {
        /* plain: obs-text, controls and empty values are llhttp's to judge */
        int got = read_field_line(data, size, &at, 1, &line);
        if (got < 0) goto fallback;
        if (got == 0) break;
        /* The client protocol's limits, counted as it counts them (a field is name, value and 4). */
        count++;
        field_bytes += line.name_size + line.value_size + 4;
        if (count > max_headers || field_bytes > max_header_bytes) goto fallback;
        if (field_is(&line, "host")) {
            hosts++;
        } else if (field_is(&line, "content-length")) {
            if (++lengths > 1 || (content_length = decimal_digits((const char *)line.value, line.value_size, 15)) < 0) goto fallback;
        } else if (field_is(&line, "connection")) {
            /* close, upgrade and fields named in it change what the connection does next */
            if (!keeps_alive_only(line.value, line.value_size)) goto fallback;
        } else if (field_is(&line, "transfer-encoding") || field_is(&line, "expect") ||
                   field_is(&line, "upgrade")) {
            goto fallback;
        }
        if (append_field(fields, &line) < 0) {
            Py_DECREF(fields);
            return NULL;
        }
    }
    /* One Host field, and exactly the head and its body in this read: nothing after it. */
    if (hosts != 1 || size - at != content_length) {
        goto fallback;
    }
    Py_ssize_t path_end = query >= 0 ? query : target_end;
    PyObject *path = PyUnicode_DecodeASCII((const char *)data + target, path_end - target, NULL);
    PyObject *raw_path = PyBytes_FromStringAndSize((const char *)data + target, path_end - target);
    PyObject *query_string =
        query >= 0 ? PyBytes_FromStringAndSize((const char *)data + query + 1, target_end - query - 1)
                   : PyBytes_FromStringAndSize(NULL, 0);
    PyObject *body = PyBytes_FromStringAndSize((const char *)data + at, (Py_ssize_t)content_length);
    if (path == NULL || raw_path == NULL || query_string == NULL || body == NULL) {
        Py_XDECREF(path);
        Py_XDECREF(raw_path);
        Py_XDECREF(query_string);
        Py_XDECREF(body);
        Py_DECREF(fields);
        return NULL;
    }
    return Py_BuildValue("(ONNNNN)", s_methods[method], path, raw_path, query_string, fields, body);
fallback:
    Py_DECREF(fields);
    Py_RETURN_NONE;
}

/* The response head a client of the sidecar gets, as uvicorn's `RequestResponseCycle.send`  */
/* writes it (fields checked, names lower-cased, its framing and keep-alive read, `connection: */
/* close` or `transfer-encoding: chunked` added), for fields that are pairs of bytes of plain  */
/* ASCII and a Content-Length of digits; None for anything else, which uvicorn's `send` then   */
/* writes or refuses as before (test_downstream_fast_path.py holds both to the same bytes).    */

/* One (name, value) pair as uvicorn would write it, or 0: not for this reader. */
static int plain_field(PyObject *pair, PyObject **name, PyObject **value) {
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) return 0;
    *name = PyTuple_GET_ITEM(pair, 0);
    *value = PyTuple_GET_ITEM(pair, 1);
    if (!PyBytes_CheckExact(*name) || !PyBytes_CheckExact(*value)) return 0;
    const unsigned char *n = (const unsigned char *)PyBytes_AS_STRING(*name);
    Py_ssize_t n_size = PyBytes_GET_SIZE(*name);
    if (n_size == 0 || n_size > 64) return 0;
    for (Py_ssize_t i = 0; i < n_size; i++) {
        if (!is_tchar(n[i])) return 0;
    }
    const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(*value);
    Py_ssize_t v_size = PyBytes_GET_SIZE(*value);
    for (Py_ssize_t i = 0; i < v_size; i++) {
        if (!(v[i] == '\t' || (v[i] >= 0x20 && v[i] < 0x7f))) return 0;
    }
    return 1;
}

/* response_head(status_line, default_fields, fields, keep_alive, may_chunk) -> (head, chunked,
 * expected_content_length, keep_alive) or None. `may_chunk`: neither HEAD nor 204/304, where
 * uvicorn frames a response without Content-Length as chunked. */
static PyObject *response_head(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "response_head(status_line: bytes, default_fields, fields, keep_alive, may_chunk)");
        return NULL;
    }
    int keep_alive = PyObject_IsTrue(args[3]);
    int may_chunk = PyObject_IsTrue(args[4]);
    if (keep_alive < 0 || may_chunk < 0) {
        return NULL;
    }
    PyObject *lists[2] = {args[1], args[2]};
    for (int l = 0; l < 2; l++) {
        if (!PyList_CheckExact(lists[l]) && !PyTuple_CheckExact(lists[l])) Py_RETURN_NONE;
    }
    /* First pass: every field plain, the framing and keep-alive read as uvicorn reads them
     * (in order: a Content-Length after `transfer-encoding: chunked` is only written), the size. */
    int chunked = -1, close_listed = 0;
    long long expected = 0;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]) + 2;
    for (int l = 0; l < 2; l++) {
        PyObject *list = lists[l];
        Py_ssize_t count = PySequence_Fast_GET_SIZE(list);
        PyObject **items = PySequence_Fast_ITEMS(list);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *name, *value;
            if (!plain_field(items[i], &name, &value)) Py_RETURN_NONE;
            const char *n = PyBytes_AS_STRING(name);
            Py_ssize_t n_size = PyBytes_GET_SIZE(name);
            const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
            Py_ssize_t v_size = PyBytes_GET_SIZE(value);
            if (n_size == 14 && strncasecmp(n, "content-length", 14) == 0 && chunked < 0) {
                if ((expected = decimal_digits((const char *)v, v_size, 18)) < 0) Py_RETURN_NONE;
                chunked = 0;
            } else if (n_size == 17 && strncasecmp(n, "transfer-encoding", 17) == 0 && v_size == 7 &&
                       strncasecmp((const char *)v, "chunked", 7) == 0) {
                expected = 0;
                chunked = 1;
            } else if (n_size == 10 && strncasecmp(n, "connection", 10) == 0 && lists_close(v, v_size)) {
                keep_alive = 0;
                close_listed = 1;
            }
            size += n_size + 2 + v_size + 2;
        }
    }
    static const char closing[] = "connection: close\r\n";
    static const char chunking[] = "transfer-encoding: chunked\r\n";
    int add_close = !keep_alive && !close_listed;
    int add_chunked = chunked < 0 && may_chunk;
    size += (add_close ? (Py_ssize_t)sizeof(closing) - 1 : 0) + (add_chunked ? (Py_ssize_t)sizeof(chunking) - 1 : 0);
    PyObject *head = PyBytes_FromStringAndSize(NULL, size);
    if (head == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(head);
    memcpy(out, PyBytes_AS_STRING(args[0]), (size_t)PyBytes_GET_SIZE(args[0]));
    out += PyBytes_GET_SIZE(args[0]);
    for (int l = 0; l < 2; l++) {
        Py_ssize_t count = PySequence_Fast_GET_SIZE(lists[l]);
        PyObject **items = PySequence_Fast_ITEMS(lists[l]);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *name = PyTuple_GET_ITEM(items[i], 0), *value = PyTuple_GET_ITEM(items[i], 1);
            const char *n = PyBytes_AS_STRING(name);
            Py_ssize_t n_size = PyBytes_GET_SIZE(name);
            ascii_lower(out, n, n_size);
            out += n_size;
            *out++ = ':';
            *out++ = ' ';
            memcpy(out, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
            out += PyBytes_GET_SIZE(value);
            *out++ = '\r';
            *out++ = '\n';
        }
    }
    if (add_close) {
        memcpy(out, closing, sizeof(closing) - 1);
        out += sizeof(closing) - 1;
    }
    if (add_chunked) {
        memcpy(out, chunking, sizeof(chunking) - 1);
        out += sizeof(chunking) - 1;
        chunked = 1;
    }
    *out++ = '\r';
    *out++ = '\n';
    PyObject *framing = chunked < 0 ? Py_None : chunked ? Py_True : Py_False;
    return Py_BuildValue("(NOLO)", head, framing, expected, keep_alive ? Py_True : Py_False);
}

/* ------------------------------------------------------------------------------------------ */
/* Module                                                                                     */

static int intern_all(void) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    INTERN(s_type, "type");
    INTERN(s_body, "body");
    INTERN(s_more_body, "more_body");
    INTERN(s_status, "status");
    INTERN(s_headers, "headers");
    INTERN(s_more_trailers, "more_trailers");
    INTERN(s_root_path, "root_path");
    INTERN(s_http_request, "http.request");
    INTERN(s_http_disconnect, "http.disconnect");
    INTERN(s_response_body, "http.response.body");
    INTERN(s_response_start, "http.response.start");
    INTERN(s_response_pathsend, "http.response.pathsend");
    INTERN(s_response_trailers, "http.response.trailers");
    INTERN(s_empty, "");
    INTERN(s_throw, "throw");
    INTERN(s_close, "close");
    INTERN(s_qualname, "__qualname__");
    INTERN(s_dunder_init, "__init__");
    INTERN(s_capture, "capture");
    INTERN(s_trace_start, "trace_start");
    INTERN(s_trace_detach, "trace_detach");
    INTERN(s_note_internal_error, "note_internal_error");
    INTERN(s_note_first_answer, "note_first_answer");
    INTERN(s_method, "method");
    INTERN(s_scheme, "scheme");
    INTERN(s_http_version, "http_version");
    INTERN(s_path, "path");
    INTERN(s_query_string, "query_string");
    INTERN(s_raw_path, "raw_path");
    INTERN(s_fastapi, "fastapi");
    INTERN(s_effective_route_context, "effective_route_context");
    INTERN(s_original_route, "original_route");
    INTERN(s_client, "client");
    INTERN(s_server, "server");
    INTERN(s_GET, "GET");
    INTERN(s_http, "http");
    INTERN(s_1_1, "1.1");
    INTERN(s_bound, "_bound");
    INTERN(s_dispatch, "_dispatch");
    INTERN(s_sampling, "sampling");
    INTERN(s_stride, "stride");
    INTERN(s_payload_stride, "payload_stride");
    INTERN(s_admit, "admit");
    INTERN(s_admission, "admission");
    INTERN(s_app, "app");
    for (int i = 0; i < 7; i++) {
        INTERN(s_methods[i], method_names[i]);
    }
#undef INTERN
    no_headers = PyList_New(0);
    no_parts = PyList_New(0);
    bits_64 = PyLong_FromLong(64);
    bits_32 = PyLong_FromLong(32);
    zero_int = PyLong_FromLong(0);
    empty_tuple = PyTuple_New(0);
    return no_headers == NULL || no_parts == NULL || bits_64 == NULL || bits_32 == NULL || zero_int == NULL ||
                   empty_tuple == NULL
               ? -1
               : 0;
}

static PyMethodDef speedups_functions[] = {
    {"compile_admit", (PyCFunction)compile_admit, METH_O,
     "compile_admit(cls): instances of exactly `cls` (a Sampling) are admitted by their compiled "
     "`admission` in the middleware's compiled call, without calling `cls.admit`."},
    {"compile_call", (PyCFunction)compile_call, METH_O,
     "compile_call(cls): call instances of a Dispatch subclass through the compiled call."},
    {"decode_grouped", (PyCFunction)(void (*)(void))decode_grouped, METH_FASTCALL,
     "decode_grouped(data, trace_ids, route_key, proxy_error_key, cold_start_key): a RECORDS payload "
     "back to (records, groups): records timed and counted only come back one per shape, with the "
     "durations of all of that shape (`modeltap.handoff.framing.decode_grouped`)."},
    {"decode_records", (PyCFunction)(void (*)(void))decode_records, METH_FASTCALL,
     "decode_records(data, trace_ids, route_key, proxy_error_key, cold_start_key): a RECORDS "
     "payload back to raw records (`modeltap.handoff.framing.decode_records`)."},
    {"request_head", (PyCFunction)(void (*)(void))request_head, METH_FASTCALL,
     "request_head(headers, peer, scheme, trusted, default_host, via): the sidecar's request "
     "fields for the upstream (`modeltap.sidecar.headers.request_head`), or None."},
    {"parse_request", (PyCFunction)(void (*)(void))parse_request, METH_FASTCALL,
     "parse_request(data, max_url, max_headers, max_header_bytes): one complete HTTP/1.1 "
     "keep-alive request, as (method, path, raw_path, query_string, fields, body), or None."},
    {"response_head", (PyCFunction)(void (*)(void))response_head, METH_FASTCALL,
     "response_head(status_line, default_fields, fields, keep_alive, may_chunk): the response "
     "head uvicorn would write, as (head, chunked, expected_content_length, keep_alive), or None."},
    {"parse_response", (PyCFunction)(void (*)(void))parse_response, METH_FASTCALL,
     "parse_response(data, max_head, max_body): one complete HTTP/1.1 response framed by "
     "Content-Length, as (status, fields, hop_by_hop, keep_alive, body), or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "modeltap._speedups",
    .m_doc = "modeltap's request path in compiled code (optional; pure-Python fallbacks exist).",
    .m_size = -1,
    .m_methods = speedups_functions,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (intern_all() < 0) {
        return NULL;
    }
    PyTypeObject *types[] = {&StateType, &ReceiveTapType, &ReceiveAwaitType, &ExchangeType, &CaptureType,
                             &EncoderType, &DispatchType, &RecordQueueType, &AdmissionType};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (PyType_Ready(types[i]) < 0) {
            return NULL;
        }
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddType(module, &CaptureType) < 0 || PyModule_AddType(module, &EncoderType) < 0 ||
        PyModule_AddType(module, &DispatchType) < 0 || PyModule_AddType(module, &RecordQueueType) < 0 ||
        PyModule_AddType(module, &AdmissionType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

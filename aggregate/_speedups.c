/* The candle core's one C helper: a Bybit message's statistics in one pass.
 *
 * summarize(prices, sizes, buys) == (max(prices), min(prices), sum(sizes),
 *                                    sum(map(operator.mul, prices, sizes)),
 *                                    sum(itertools.compress(sizes, buys)))
 *
 * Same values as those five builtins (aggregate/speedups.py has them as the fallback when this
 * module is not built): exact, any int size. Scaled prices and sizes fit in 64 bits, their
 * products in 128: that is the fast path; anything else (huge ints, other number types, an
 * overflow) takes the generic path, which does what the builtins do with Python objects.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>

typedef __int128 i128;

static PyObject *
from_i128(i128 v)
{
    if (v >= LLONG_MIN && v <= LLONG_MAX) {
        return PyLong_FromLongLong((long long)v);
    }
    unsigned char buf[16];
    unsigned __int128 u = (unsigned __int128)v;
    for (int i = 0; i < 16; i++) {
        buf[i] = (unsigned char)(u & 0xff);
        u >>= 8;
    }
    return _PyLong_FromByteArray(buf, 16, 1, 1);
}

/* 1 = fits (stored in *out), 0 = does not (no error set), -1 = error. */
static int
as_i64(PyObject *obj, long long *out)
{
    if (!PyLong_CheckExact(obj)) {
        return 0;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow) {
        return 0;
    }
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = v;
    return 1;
}

static int
truth(PyObject *obj)
{
    if (obj == Py_True) {
        return 1;
    }
    if (obj == Py_False) {
        return 0;
    }
    return PyObject_IsTrue(obj);
}

/* The builtins' way, for what the fast path does not take. */
static PyObject *
summarize_generic(PyObject **p, PyObject **s, PyObject **b, Py_ssize_t n)
{
    PyObject *hi = p[0], *lo = p[0];
    PyObject *vol = PyLong_FromLong(0), *turn = PyLong_FromLong(0), *buy = PyLong_FromLong(0);
    Py_INCREF(hi);
    Py_INCREF(lo);
    if (vol == NULL || turn == NULL || buy == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int cmp;
        if (i) {
            cmp = PyObject_RichCompareBool(p[i], hi, Py_GT);  /* max() keeps the first of equals */
            if (cmp < 0) {
                goto error;
            }
            if (cmp) {
                Py_INCREF(p[i]);
                Py_SETREF(hi, p[i]);
            }
            cmp = PyObject_RichCompareBool(p[i], lo, Py_LT);
            if (cmp < 0) {
                goto error;
            }
            if (cmp) {
                Py_INCREF(p[i]);
                Py_SETREF(lo, p[i]);
            }
        }
        PyObject *sum = PyNumber_Add(vol, s[i]);
        if (sum == NULL) {
            goto error;
        }
        Py_SETREF(vol, sum);
        PyObject *product = PyNumber_Multiply(p[i], s[i]);
        if (product == NULL) {
            goto error;
        }
        sum = PyNumber_Add(turn, product);
        Py_DECREF(product);
        if (sum == NULL) {
            goto error;
        }
        Py_SETREF(turn, sum);
        cmp = truth(b[i]);
        if (cmp < 0) {
            goto error;
        }
        if (cmp) {
            sum = PyNumber_Add(buy, s[i]);
            if (sum == NULL) {
                goto error;
            }
            Py_SETREF(buy, sum);
        }
    }
    PyObject *result = PyTuple_Pack(5, hi, lo, vol, turn, buy);
    Py_DECREF(hi);
    Py_DECREF(lo);
    Py_DECREF(vol);
    Py_DECREF(turn);
    Py_DECREF(buy);
    return result;
error:
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(vol);
    Py_XDECREF(turn);
    Py_XDECREF(buy);
    return NULL;
}

/* 1 = done (*result set), 0 = not for the fast path, -1 = error. */
static int
summarize_fast(PyObject **p, PyObject **s, PyObject **b, Py_ssize_t n, PyObject **result)
{
    long long hi = 0, lo = 0, price, size;
    i128 vol = 0, turn = 0, buy = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int ok = as_i64(p[i], &price);
        if (ok <= 0) {
            return ok;
        }
        ok = as_i64(s[i], &size);
        if (ok <= 0) {
            return ok;
        }
        if (i == 0 || price > hi) {
            hi = price;
        }
        if (i == 0 || price < lo) {
            lo = price;
        }
        vol += size;  /* at most n * 2**63: no overflow */
        if (__builtin_add_overflow(turn, (i128)price * size, &turn)) {
            return 0;
        }
        int bought = truth(b[i]);
        if (bought < 0) {
            return -1;
        }
        if (bought) {
            buy += size;
        }
    }
    PyObject *items[5] = {
        PyLong_FromLongLong(hi), PyLong_FromLongLong(lo), from_i128(vol), from_i128(turn),
        from_i128(buy),
    };
    for (int i = 0; i < 5; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < 5; j++) {
                Py_XDECREF(items[j]);
            }
            return -1;
        }
    }
    PyObject *tuple = PyTuple_New(5);
    if (tuple == NULL) {
        for (int j = 0; j < 5; j++) {
            Py_DECREF(items[j]);
        }
        return -1;
    }
    for (int i = 0; i < 5; i++) {
        PyTuple_SET_ITEM(tuple, i, items[i]);
    }
    *result = tuple;
    return 1;
}

static PyObject *
summarize(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "summarize() takes 3 arguments (prices, sizes, buys), %zd given",
                     nargs);
        return NULL;
    }
    PyObject *prices = PySequence_Fast(args[0], "summarize(): prices must be a sequence");
    if (prices == NULL) {
        return NULL;
    }
    PyObject *sizes = PySequence_Fast(args[1], "summarize(): sizes must be a sequence");
    if (sizes == NULL) {
        Py_DECREF(prices);
        return NULL;
    }
    PyObject *buys = PySequence_Fast(args[2], "summarize(): buys must be a sequence");
    if (buys == NULL) {
        Py_DECREF(prices);
        Py_DECREF(sizes);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(prices);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "summarize(): no trades");
    }
    else if (PySequence_Fast_GET_SIZE(sizes) != n || PySequence_Fast_GET_SIZE(buys) != n) {
        PyErr_SetString(PyExc_ValueError, "summarize(): prices, sizes and buys differ in length");
    }
    else {
        PyObject **p = PySequence_Fast_ITEMS(prices);
        PyObject **s = PySequence_Fast_ITEMS(sizes);
        PyObject **b = PySequence_Fast_ITEMS(buys);
        int done = summarize_fast(p, s, b, n, &result);
        if (done == 0) {
            result = summarize_generic(p, s, b, n);
        }
    }
    Py_DECREF(prices);
    Py_DECREF(sizes);
    Py_DECREF(buys);
    return result;
}

static PyMethodDef methods[] = {
    {"summarize", (PyCFunction)(void (*)(void))summarize, METH_FASTCALL,
     "summarize(prices, sizes, buys) -> (high, low, volume, turnover, buy_volume)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "aggregate._speedups", "The candle core's C helper.", 0, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}

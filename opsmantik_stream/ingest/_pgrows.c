/*
 * The partition's batch rows in PostgreSQL's binary array format, in one C call.
 *
 * Why this is hand-written: asyncpg encodes an array of composite rows field by field
 * through its generic codecs (four `collections.abc` isinstance checks per row, a codec
 * dispatch per field), about 6 us per 67-attribute row, a quarter of a partition's CPU per
 * event; and it accepts no binary codec of our own for a composite type. No library builds
 * this format from Python tuples. It is a plain serialisation (array_send/record_send of
 * PostgreSQL's source, documented in the protocol's "Binary format" notes): no rule of the
 * product lives here; which value goes in which attribute stays in store.py.
 *
 * encode_array(rows, elem_oid, attr_oids, row_type=None, fields=None) -> bytes
 *   rows: a sequence of tuples, each with len(attr_oids) values; with row_type and fields,
 *     a row may also be a row_type instance, whose attributes `fields` (one name per
 *     attribute, in order) are read where the instance keeps them: each name must be a
 *     slot of row_type (a member descriptor, as msgspec's Structs have), so no tuple is
 *     built per row (msgspec's astuple: ~0.8 us per 67-field row);
 *   elem_oid: the composite type's OID; attr_oids: each attribute's type OID, in order.
 * Supported attribute types: bool, int2, int4, int8, float8, text, uuid, date. None is NULL.
 * A value of the wrong type raises TypeError (ValueError when out of range), naming the row
 * and the attribute, as asyncpg's own encoders would refuse it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_TEXT 25
#define OID_FLOAT8 701
#define OID_VARCHAR 1043
#define OID_DATE 1082
#define OID_UUID 2950

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} Buf;

static int buf_grow(Buf *b, size_t more);

static inline int buf_reserve(Buf *b, size_t more) {
    if (b->len + more <= b->cap)
        return 0;
    return buf_grow(b, more);
}

static int buf_grow(Buf *b, size_t more) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline void put_u32(Buf *b, uint32_t v) {
    unsigned char *p = (unsigned char *)b->data + b->len;
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    b->len += 4;
}

/* hex digit values, -1 for anything else */
static signed char HEX[256];

static void init_hex(void) {
    memset(HEX, -1, sizeof HEX);
    for (int c = 0; c < 10; c++)
        HEX['0' + c] = (signed char)c;
    for (int c = 0; c < 6; c++) {
        HEX['a' + c] = (signed char)(10 + c);
        HEX['A' + c] = (signed char)(10 + c);
    }
}

static inline void put_u64(Buf *b, uint64_t v) {
    put_u32(b, (uint32_t)(v >> 32));
    put_u32(b, (uint32_t)v);
}

/* Days from 2000-01-01 (PostgreSQL's date epoch) to y-m-d, proleptic Gregorian. */
static int32_t pg_days(int y, int m, int d) {
    /* days from civil (Howard Hinnant's algorithm), relative to 1970-01-01 */
    y -= m <= 2;
    const int era = (y >= 0 ? y : y - 399) / 400;
    const int yoe = y - era * 400;
    const int doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return (int32_t)(era * 146097 + doe - 719468) - 10957;
}

static int fail(const char *kind, Py_ssize_t row, Py_ssize_t attr, const char *what) {
    PyErr_Format(strcmp(kind, "value") == 0 ? PyExc_ValueError : PyExc_TypeError,
                 "row %zd, attribute %zd: %s", row, attr + 1, what);
    return -1;
}

static int put_value(Buf *b, uint32_t oid, PyObject *v, Py_ssize_t row, Py_ssize_t attr) {
    if (buf_reserve(b, 8 + 16) < 0)
        return -1;
    put_u32(b, oid);
    if (v == Py_None) {
        put_u32(b, 0xFFFFFFFFu);
        return 0;
    }
    switch (oid) {
    case OID_BOOL:
        if (!PyBool_Check(v))
            return fail("type", row, attr, "a bool expected");
        put_u32(b, 1);
        b->data[b->len++] = (char)(v == Py_True);
        return 0;
    case OID_INT2:
    case OID_INT4:
    case OID_INT8: {
        if (!PyLong_Check(v) || PyBool_Check(v))
            return fail("type", row, attr, "an int expected");
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && !overflow && PyErr_Occurred())
            return -1;
        if (overflow || (oid == OID_INT2 && (x < -32768 || x > 32767)) ||
            (oid == OID_INT4 && (x < INT32_MIN || x > INT32_MAX)))
            return fail("value", row, attr, "integer out of range");
        if (oid == OID_INT2) {
            put_u32(b, 2);
            b->data[b->len++] = (char)((x >> 8) & 0xFF);
            b->data[b->len++] = (char)(x & 0xFF);
        } else if (oid == OID_INT4) {
            put_u32(b, 4);
            put_u32(b, (uint32_t)(int32_t)x);
        } else {
            put_u32(b, 8);
            put_u64(b, (uint64_t)x);
        }
        return 0;
    }
    case OID_FLOAT8: {
        double x;
        if (PyFloat_Check(v))
            x = PyFloat_AS_DOUBLE(v);
        else if (PyLong_Check(v) && !PyBool_Check(v)) {
            x = PyLong_AsDouble(v);
            if (x == -1.0 && PyErr_Occurred())
                return -1;
        } else
            return fail("type", row, attr, "a float expected");
        uint64_t bits;
        memcpy(&bits, &x, sizeof bits);
        put_u32(b, 8);
        put_u64(b, bits);
        return 0;
    }
    case OID_TEXT:
    case OID_VARCHAR: {
        if (!PyUnicode_Check(v))
            return fail("type", row, attr, "a str expected");
        Py_ssize_t n;
        const char *s;
        if (PyUnicode_IS_COMPACT_ASCII(v)) {
            /* the usual field: its characters are its UTF-8 bytes */
            s = (const char *)PyUnicode_DATA(v);
            n = PyUnicode_GET_LENGTH(v);
        } else if ((s = PyUnicode_AsUTF8AndSize(v, &n)) == NULL)
            return -1;
        if ((size_t)n > 0x3FFFFFFF)
            return fail("value", row, attr, "text too long");
        if (buf_reserve(b, (size_t)n) < 0)
            return -1;
        put_u32(b, (uint32_t)n);
        memcpy(b->data + b->len, s, (size_t)n);
        b->len += (size_t)n;
        return 0;
    }
    case OID_UUID: {
        unsigned char out[16];
        if (PyUnicode_Check(v)) {
            if (!PyUnicode_IS_COMPACT_ASCII(v))
                return fail("value", row, attr, "not a UUID");
            const unsigned char *s = (const unsigned char *)PyUnicode_DATA(v);
            Py_ssize_t n = PyUnicode_GET_LENGTH(v);
            int k = 0;
            for (Py_ssize_t j = 0; j < n; j++) {
                int hi;
                if (s[j] == '-')
                    continue;
                if (k >= 32 || (hi = HEX[s[j]]) < 0)
                    return fail("value", row, attr, "not a UUID");
                if (k % 2 == 0)
                    out[k / 2] = (unsigned char)(hi << 4);
                else
                    out[k / 2] |= (unsigned char)hi;
                k++;
            }
            if (k != 32)
                return fail("value", row, attr, "not a UUID");
        } else {
            /* uuid.UUID and anything else with 16 raw bytes in `.bytes` */
            PyObject *raw = PyObject_GetAttrString(v, "bytes");
            if (raw == NULL) {
                PyErr_Clear();
                return fail("type", row, attr, "a UUID or str expected");
            }
            if (!PyBytes_Check(raw) || PyBytes_GET_SIZE(raw) != 16) {
                Py_DECREF(raw);
                return fail("type", row, attr, "a UUID or str expected");
            }
            memcpy(out, PyBytes_AS_STRING(raw), 16);
            Py_DECREF(raw);
        }
        put_u32(b, 16);
        memcpy(b->data + b->len, out, 16);
        b->len += 16;
        return 0;
    }
    case OID_DATE:
        if (!PyDate_Check(v) || PyDateTime_Check(v))
            return fail("type", row, attr, "a date expected");
        put_u32(b, 4);
        put_u32(b, (uint32_t)pg_days(PyDateTime_GET_YEAR(v), PyDateTime_GET_MONTH(v), PyDateTime_GET_DAY(v)));
        return 0;
    default:
        PyErr_Format(PyExc_TypeError, "attribute %zd: type OID %u is not supported", attr + 1, oid);
        return -1;
    }
}

/* The offset in an instance of `type` of each slot named in `fields` (a tuple of str), or
 * -1 with an exception set when one is not a plain object slot of the type. */
static int slot_offsets(PyTypeObject *type, PyObject *fields, Py_ssize_t natts, Py_ssize_t *out) {
    if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != natts) {
        PyErr_Format(PyExc_TypeError, "fields must be a tuple of %zd names", natts);
        return -1;
    }
    for (Py_ssize_t a = 0; a < natts; a++) {
        PyObject *name = PyTuple_GET_ITEM(fields, a);
        PyObject *descr = PyUnicode_Check(name) ? _PyType_Lookup(type, name) : NULL;
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX ||
            ((PyDescrObject *)descr)->d_type != type) {
            PyErr_Format(PyExc_TypeError, "attribute %zd: %R is not a slot of %s", a + 1, name, type->tp_name);
            return -1;
        }
        out[a] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    return 0;
}

static PyObject *encode_array(PyObject *self, PyObject *args) {
    PyObject *rows, *oids_obj, *row_type = Py_None, *fields = Py_None;
    unsigned long elem_oid;
    if (!PyArg_ParseTuple(args, "OkO!|OO", &rows, &elem_oid, &PyTuple_Type, &oids_obj, &row_type, &fields))
        return NULL;
    Py_ssize_t natts = PyTuple_GET_SIZE(oids_obj);
    uint32_t *oids = PyMem_Malloc(sizeof(uint32_t) * (size_t)(natts ? natts : 1));
    Py_ssize_t *offsets = NULL;
    if (oids == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t a = 0; a < natts; a++) {
        unsigned long o = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(oids_obj, a));
        if (o == (unsigned long)-1 && PyErr_Occurred()) {
            PyMem_Free(oids);
            return NULL;
        }
        oids[a] = (uint32_t)o;
    }
    if (row_type != Py_None) {
        if (!PyType_Check(row_type)) {
            PyMem_Free(oids);
            PyErr_SetString(PyExc_TypeError, "row_type must be a type");
            return NULL;
        }
        offsets = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(natts ? natts : 1));
        if (offsets == NULL) {
            PyMem_Free(oids);
            return PyErr_NoMemory();
        }
        if (slot_offsets((PyTypeObject *)row_type, fields, natts, offsets) < 0) {
            PyMem_Free(offsets);
            PyMem_Free(oids);
            return NULL;
        }
    }
    PyObject *seq = PySequence_Fast(rows, "rows must be a sequence");
    if (seq == NULL) {
        PyMem_Free(offsets);
        PyMem_Free(oids);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Buf b = {NULL, 0, 0};
    if (buf_reserve(&b, 20) < 0)
        goto error;
    put_u32(&b, 1);                  /* dimensions */
    put_u32(&b, 0);                  /* no NULL elements */
    put_u32(&b, (uint32_t)elem_oid); /* element type */
    put_u32(&b, (uint32_t)n);        /* length */
    put_u32(&b, 1);                  /* lower bound */
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *row = PySequence_Fast_GET_ITEM(seq, r);
        /* exactly row_type (a subclass could keep its slots elsewhere), or a tuple */
        int slots = offsets != NULL && Py_IS_TYPE(row, (PyTypeObject *)row_type);
        if (!slots && (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != natts)) {
            if (offsets != NULL)
                PyErr_Format(PyExc_TypeError, "row %zd: a %s or a tuple of %zd values expected", r,
                             ((PyTypeObject *)row_type)->tp_name, natts);
            else
                PyErr_Format(PyExc_TypeError, "row %zd: a tuple of %zd values expected", r, natts);
            goto error;
        }
        if (buf_reserve(&b, 8) < 0)
            goto error;
        size_t at = b.len; /* the record's length, filled in once it is written */
        put_u32(&b, 0);
        put_u32(&b, (uint32_t)natts);
        for (Py_ssize_t a = 0; a < natts; a++) {
            PyObject *v;
            if (slots) {
                v = *(PyObject **)((char *)row + offsets[a]);
                if (v == NULL) {
                    PyErr_Format(PyExc_AttributeError, "row %zd, attribute %zd: not set", r, a + 1);
                    goto error;
                }
            } else
                v = PyTuple_GET_ITEM(row, a);
            if (put_value(&b, oids[a], v, r, a) < 0)
                goto error;
        }
        uint32_t size = (uint32_t)(b.len - at - 4);
        unsigned char *p = (unsigned char *)b.data + at;
        p[0] = (unsigned char)(size >> 24);
        p[1] = (unsigned char)(size >> 16);
        p[2] = (unsigned char)(size >> 8);
        p[3] = (unsigned char)size;
    }
    PyObject *out = PyBytes_FromStringAndSize(b.data, (Py_ssize_t)b.len);
    PyMem_Free(b.data);
    PyMem_Free(offsets);
    PyMem_Free(oids);
    Py_DECREF(seq);
    return out;
error:
    PyMem_Free(b.data);
    PyMem_Free(offsets);
    PyMem_Free(oids);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"encode_array", encode_array, METH_VARARGS,
     "encode_array(rows, elem_oid, attr_oids, row_type=None, fields=None) -> bytes: rows (tuples, or "
     "row_type instances read slot by slot) as a PostgreSQL binary array of records."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pgrows", "Batch rows in PostgreSQL's binary array format (see the file's head).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__pgrows(void) {
    init_hex();
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    return PyModule_Create(&module);
}

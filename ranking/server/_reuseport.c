/* Round-robin connection balancing across the workers of one SO_REUSEPORT port (eBPF).
 *
 * Linux hands a new connection on a SO_REUSEPORT port to one of the group's listening sockets
 * by a hash of its address pair. With few connections (a client holding four HTTP/2
 * connections over two workers) the hash is lopsided more often than not: 3:1 or 4:0 in five
 * draws of eight. A BPF_PROG_TYPE_SK_REUSEPORT program attached to the group can choose the
 * socket instead; this one deals connections to the workers in turn:
 *
 *     k = counter++ % workers;            (an ARRAY map of one u64)
 *     bpf_sk_select_reuseport(ctx, sockets, &k, 0);   (a REUSEPORT_SOCKARRAY map)
 *     return SK_PASS;
 *
 * Worker i puts its listening socket at index i of `sockets`. When a worker's slot is empty
 * (it died and has not re-registered) the select fails and the kernel falls back to its hash,
 * so a connection is never refused by the balancer. The counter's increment is a plain load
 * and store: two SYNs handled at the same instant on two CPUs may take the same worker, which
 * costs balance, never correctness.
 *
 * load(workers) -> (program fd, socket map fd): OSError with the kernel's reason (EPERM
 * without CAP_BPF / CAP_SYS_ADMIN, which container runtimes often withhold; the verifier's
 * log on EINVAL). join(socket fd, index, program fd, socket map fd): the socket into its slot,
 * the program onto the socket's group (SO_ATTACH_REUSEPORT_EBPF; the same for every member).
 * The caller owns and closes the fds. No raw syscall is made anywhere else in the package.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SO_ATTACH_REUSEPORT_EBPF
#define SO_ATTACH_REUSEPORT_EBPF 52
#endif

static long sys_bpf(int cmd, union bpf_attr *attr) {
    return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static int map_create(uint32_t type, uint32_t key_size, uint32_t value_size, uint32_t entries) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = type;
    attr.key_size = key_size;
    attr.value_size = value_size;
    attr.max_entries = entries;
    return (int)sys_bpf(BPF_MAP_CREATE, &attr);
}

/* Instruction builders (struct bpf_insn: code, dst_reg:4, src_reg:4, off, imm). */
static struct bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    struct bpf_insn i;
    memset(&i, 0, sizeof(i));
    i.code = code;
    i.dst_reg = dst;
    i.src_reg = src;
    i.off = off;
    i.imm = imm;
    return i;
}

#define MOV64_REG(d, s) insn(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define MOV64_IMM(d, v) insn(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, v)
#define ADD64_IMM(d, v) insn(BPF_ALU64 | BPF_ADD | BPF_K, d, 0, 0, v)
#define MOD64_IMM(d, v) insn(BPF_ALU64 | BPF_MOD | BPF_K, d, 0, 0, v)
#define ST_W(d, off, v) insn(BPF_ST | BPF_MEM | BPF_W, d, 0, off, v)
#define STX_W(d, s, off) insn(BPF_STX | BPF_MEM | BPF_W, d, s, off, 0)
#define STX_DW(d, s, off) insn(BPF_STX | BPF_MEM | BPF_DW, d, s, off, 0)
#define LDX_DW(d, s, off) insn(BPF_LDX | BPF_MEM | BPF_DW, d, s, off, 0)
#define CALL(fn) insn(BPF_JMP | BPF_CALL, 0, 0, 0, fn)
#define JEQ_IMM(d, v, off) insn(BPF_JMP | BPF_JEQ | BPF_K, d, 0, off, v)
#define EXIT() insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
/* A map's fd into a register: two instruction slots. */
#define LD_MAP_FD(d, fd) insn(BPF_LD | BPF_DW | BPF_IMM, d, BPF_PSEUDO_MAP_FD, 0, fd), insn(0, 0, 0, 0, 0)

/* OSError(errno, "what: reason (detail)"): callers tell EPERM from the rest by its errno. */
static PyObject *raise_errno(const char *what, int err, const char *detail) {
    PyObject *msg = (detail != NULL && detail[0] != '\0')
                        ? PyUnicode_FromFormat("%s: %s (%s)", what, strerror(err), detail)
                        : PyUnicode_FromFormat("%s: %s", what, strerror(err));
    PyObject *exc_args = msg ? Py_BuildValue("(iN)", err, msg) : NULL;
    if (exc_args != NULL) {
        PyErr_SetObject(PyExc_OSError, exc_args);
        Py_DECREF(exc_args);
    }
    return NULL;
}

static PyObject *py_load(PyObject *self, PyObject *args) {
    (void)self;
    int workers;
    if (!PyArg_ParseTuple(args, "i", &workers)) {
        return NULL;
    }
    if (workers < 1 || workers > 4096) {
        PyErr_SetString(PyExc_ValueError, "workers must be in [1, 4096]");
        return NULL;
    }
    int counter = map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1);
    if (counter < 0) {
        return raise_errno("bpf map (counter)", errno, NULL);
    }
    int sockets = map_create(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, (uint32_t)workers);
    if (sockets < 0) {
        int err = errno;
        close(counter);
        return raise_errno("bpf map (sockets)", err, NULL);
    }
    struct bpf_insn prog[] = {
        MOV64_REG(BPF_REG_6, BPF_REG_1),          /* r6 = ctx */
        ST_W(BPF_REG_10, -4, 0),                  /* key 0 of the counter */
        LD_MAP_FD(BPF_REG_1, counter),
        MOV64_REG(BPF_REG_2, BPF_REG_10),
        ADD64_IMM(BPF_REG_2, -4),
        CALL(BPF_FUNC_map_lookup_elem),
        JEQ_IMM(BPF_REG_0, 0, 13),                /* no counter: let the kernel hash */
        LDX_DW(BPF_REG_1, BPF_REG_0, 0),          /* r1 = counter */
        MOV64_REG(BPF_REG_2, BPF_REG_1),
        ADD64_IMM(BPF_REG_2, 1),
        STX_DW(BPF_REG_0, BPF_REG_2, 0),          /* counter = r1 + 1 */
        MOD64_IMM(BPF_REG_1, workers),
        STX_W(BPF_REG_10, BPF_REG_1, -8),         /* slot = r1 % workers */
        LD_MAP_FD(BPF_REG_2, sockets),
        MOV64_REG(BPF_REG_1, BPF_REG_6),
        MOV64_REG(BPF_REG_3, BPF_REG_10),
        ADD64_IMM(BPF_REG_3, -8),
        MOV64_IMM(BPF_REG_4, 0),
        CALL(BPF_FUNC_sk_select_reuseport),       /* fails on an empty slot: hash instead */
        MOV64_IMM(BPF_REG_0, SK_PASS),
        EXIT(),
    };
    static char verifier_log[4096];
    verifier_log[0] = '\0';
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_SK_REUSEPORT;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.insn_cnt = (uint32_t)(sizeof(prog) / sizeof(prog[0]));
    attr.license = (uint64_t)(uintptr_t) "Apache-2.0";
    attr.log_buf = (uint64_t)(uintptr_t)verifier_log;
    attr.log_size = sizeof(verifier_log);
    attr.log_level = 1;
    int fd = (int)sys_bpf(BPF_PROG_LOAD, &attr);
    int err = errno;
    close(counter); /* the program holds the counter map */
    if (fd < 0) {
        close(sockets);
        return raise_errno("bpf program", err, verifier_log);
    }
    return Py_BuildValue("(ii)", fd, sockets);
}

static PyObject *py_join(PyObject *self, PyObject *args) {
    (void)self;
    int sock, index, prog, sockets;
    if (!PyArg_ParseTuple(args, "iiii", &sock, &index, &prog, &sockets)) {
        return NULL;
    }
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "index must be >= 0");
        return NULL;
    }
    uint32_t key = (uint32_t)index;
    uint64_t value = (uint64_t)sock;
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)sockets;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)&value;
    attr.flags = BPF_ANY;
    if (sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) < 0) {
        return raise_errno("bpf socket map update", errno, NULL);
    }
    if (setsockopt(sock, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog, sizeof(prog)) < 0) {
        return raise_errno("SO_ATTACH_REUSEPORT_EBPF", errno, NULL);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"load", py_load, METH_VARARGS,
     "load(workers) -> (program fd, socket map fd): the round-robin program and its map."},
    {"join", py_join, METH_VARARGS,
     "join(socket fd, index, program fd, socket map fd): a worker's listener into its slot."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_reuseport",
    "Round-robin connection balancing across SO_REUSEPORT workers (eBPF).", -1, methods,
};

PyMODINIT_FUNC PyInit__reuseport(void) { return PyModule_Create(&module); }

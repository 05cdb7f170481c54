/* corral.runtime._clone: start a program straight inside a cgroup (Linux, cgroup2).
 *
 * Python's subprocess forks a child in the parent's cgroup; moving it into a run's
 * cgroup afterwards (a write to cgroup.procs) waits for an RCU grace period on cgroup2
 * mounted without favordynmods.  clone3() with CLONE_INTO_CGROUP (Linux 5.7) makes the
 * child in the target cgroup instead, so nothing is moved.
 *
 * spawn() does what subprocess's fork_exec does for the arguments corral uses (stdio
 * fds, fds to keep, cwd, env, a new session, default SIGPIPE/SIGXFSZ), with these
 * differences: the child is created by clone3 with CLONE_INTO_CGROUP, CLONE_VM and
 * CLONE_VFORK (as vfork: it shares this address space, on a stack of its own, while the
 * calling thread sleeps until the child has exec'd or died) and CLONE_CLEAR_SIGHAND (no
 * Python signal handler can run in the child), with every signal blocked around the
 * clone in the calling thread.  The child makes only async-signal-safe system calls on
 * memory prepared before the clone.  x86_64 only for now (the child's entry on its new
 * stack is a few lines of assembly); elsewhere spawn() fails with ENOSYS and SUPPORTED
 * is 0.
 *
 * Errors: a refused clone3 raises OSError(errno) with nothing started; a failure in the
 * child (cwd, fds, exec) is written as two ints (stage, errno) to errpipe_write (which
 * must be close-on-exec), and the child exits 127; the caller reads the pipe.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

/* The clone_args layout of Linux 5.7 (with the cgroup field); defined here so that
 * older kernel headers still build the module (the kernel then refuses at run time). */
struct corral_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

#if defined(__x86_64__)
#define CORRAL_CLONE_SUPPORTED 1
#else
#define CORRAL_CLONE_SUPPORTED 0
#endif

/* The child's stack: it makes a few system calls and loops, nothing deep. */
#define CHILD_STACK (64 * 1024)

/* Where the child failed (the first int written to the error pipe). */
enum { STAGE_FDS = 1, STAGE_CWD = 2, STAGE_SESSION = 3, STAGE_EXEC = 4 };

struct child_plan {
    char *const *argv;
    char *const *envp;
    char *const *programs; /* candidates for argv[0], tried in order */
    Py_ssize_t n_programs;
    const char *cwd; /* NULL: unchanged */
    const int *keep; /* sorted fds >= 3 kept open */
    Py_ssize_t n_keep;
    int stdin_fd, stdout_fd, stderr_fd; /* -1: inherited */
    int errpipe;
    int new_session;
    int max_fd;
    const sigset_t *mask; /* the caller's mask, restored before exec */
};

static void report(int errpipe, int stage, int err) {
    int msg[2] = {stage, err};
    ssize_t ignored = write(errpipe, msg, sizeof msg);
    (void)ignored;
    _exit(127);
}

static void close_unkept(const struct child_plan *p) {
    int low = 3;
    for (Py_ssize_t i = 0; i <= p->n_keep; i++) {
        int high = i < p->n_keep ? p->keep[i] - 1 : INT_MAX;
        if (high >= low) {
            if (syscall(SYS_close_range, (unsigned)low, (unsigned)high, 0) != 0) {
                int last = high < p->max_fd ? high : p->max_fd;
                for (int fd = low; fd <= last; fd++) {
                    close(fd);
                }
            }
        }
        if (i < p->n_keep) {
            low = p->keep[i] + 1;
        }
    }
}

/* In the child: only system calls, on memory made before the clone. */
static void child(const struct child_plan *p) {
    int in = p->stdin_fd, out = p->stdout_fd, err = p->stderr_fd;
    /* An fd about to be replaced must not be the source of a later dup2. */
    if (out == 0 && (out = fcntl(out, F_DUPFD, 3)) < 0) {
        report(p->errpipe, STAGE_FDS, errno);
    }
    if ((err == 0 || err == 1) && (err = fcntl(err, F_DUPFD, 3)) < 0) {
        report(p->errpipe, STAGE_FDS, errno);
    }
    int targets[3] = {in, out, err};
    for (int fd = 0; fd < 3; fd++) {
        int from = targets[fd];
        if (from == -1) {
            continue;
        }
        if (from == fd) {
            if (fcntl(fd, F_SETFD, 0) != 0) {
                report(p->errpipe, STAGE_FDS, errno);
            }
        } else if (dup2(from, fd) < 0) {
            report(p->errpipe, STAGE_FDS, errno);
        }
    }
    for (Py_ssize_t i = 0; i < p->n_keep; i++) {
        if (p->keep[i] != p->errpipe && fcntl(p->keep[i], F_SETFD, 0) != 0) {
            report(p->errpipe, STAGE_FDS, errno);
        }
    }
    close_unkept(p);
    if (p->cwd != NULL && chdir(p->cwd) != 0) {
        report(p->errpipe, STAGE_CWD, errno);
    }
    if (p->new_session && setsid() < 0) {
        report(p->errpipe, STAGE_SESSION, errno);
    }
    /* Python ignores these; programs expect the default (subprocess restore_signals). */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    sigprocmask(SIG_SETMASK, p->mask, NULL);
    int saved = 0;
    for (Py_ssize_t i = 0; i < p->n_programs; i++) {
        execve(p->programs[i], p->argv, p->envp);
        if (errno != ENOENT && errno != ENOTDIR && saved == 0) {
            saved = errno;
        }
    }
    report(p->errpipe, STAGE_EXEC, saved ? saved : errno);
}

#if CORRAL_CLONE_SUPPORTED
/* clone3 whose child runs ``fn(plan)`` on the stack given in ``args`` and never returns
 * (it execs or exits).  The libc syscall() wrapper cannot be used with a new stack: the
 * child would return through a frame that is not on it.  The child finds fn and plan in
 * r12 and r13, which the kernel keeps across the system call; a raw -errno is returned. */
static long clone3_call(struct corral_clone_args *args, void (*fn)(const struct child_plan *),
                        const struct child_plan *plan) {
    register long rax __asm__("rax") = SYS_clone3;
    register void (*r12)(const struct child_plan *) __asm__("r12") = fn;
    register const struct child_plan *r13 __asm__("r13") = plan;
    __asm__ volatile("syscall\n\t"
                     "testq %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xorl %%ebp, %%ebp\n\t"
                     "movq %%r13, %%rdi\n\t"
                     "callq *%%r12\n\t"
                     "movl $127, %%edi\n\t"
                     "movl $60, %%eax\n\t"
                     "syscall\n\t"
                     "hlt\n\t"
                     "1:\n\t"
                     : "+r"(rax)
                     : "D"(args), "S"(sizeof *args), "r"(r12), "r"(r13)
                     : "rcx", "r11", "memory", "cc");
    return rax;
}
#endif

/* A NULL-terminated array of the bytes in ``seq`` (borrowed pointers: keep ``seq``). */
static char **byte_array(PyObject *seq, const char *what, Py_ssize_t *count) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s: item %zd is not bytes", what, i);
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    /* The items stay alive through ``seq``, which the caller holds. */
    Py_DECREF(fast);
    if (count != NULL) {
        *count = n;
    }
    return out;
}

PyDoc_STRVAR(spawn_doc,
             "spawn(cgroup_fd, argv, programs, env, cwd, keep, stdin_fd, stdout_fd, "
             "stderr_fd, errpipe_write, new_session) -> pid\n\n"
             "Start a child inside the cgroup2 directory open as cgroup_fd and exec the\n"
             "first of ``programs`` that can be run, with ``argv`` and ``env`` (lists of\n"
             "bytes; sequences must be lists or tuples and must not change meanwhile).\n"
             "OSError when clone3 refuses (nothing started). Failures in the child are\n"
             "written to errpipe_write as two native ints: stage, errno.");

static PyObject *spawn(PyObject *self, PyObject *args) {
    (void)self;
    int cgroup_fd, stdin_fd, stdout_fd, stderr_fd, errpipe, new_session;
    PyObject *argv_obj, *programs_obj, *env_obj, *cwd_obj, *keep_obj;
    if (!PyArg_ParseTuple(args, "iOOOOOiiiip:spawn", &cgroup_fd, &argv_obj, &programs_obj,
                          &env_obj, &cwd_obj, &keep_obj, &stdin_fd, &stdout_fd, &stderr_fd,
                          &errpipe, &new_session)) {
        return NULL;
    }
    if (cwd_obj != Py_None && !PyBytes_Check(cwd_obj)) {
        PyErr_SetString(PyExc_TypeError, "spawn: cwd must be bytes or None");
        return NULL;
    }
    PyObject *result = NULL;
    char **argv = NULL, **envp = NULL, **programs = NULL;
    int *keep = NULL;
    PyObject *keep_fast = NULL;
    Py_ssize_t n_args = 0, n_programs = 0;

    argv = byte_array(argv_obj, "spawn: argv", &n_args);
    if (argv == NULL) {
        goto done;
    }
    if (n_args == 0) {
        PyErr_SetString(PyExc_ValueError, "spawn: argv is empty");
        goto done;
    }
    envp = byte_array(env_obj, "spawn: env", NULL);
    if (envp == NULL) {
        goto done;
    }
    programs = byte_array(programs_obj, "spawn: programs", &n_programs);
    if (programs == NULL) {
        goto done;
    }
    keep_fast = PySequence_Fast(keep_obj, "spawn: keep");
    if (keep_fast == NULL) {
        goto done;
    }
    Py_ssize_t n_keep = PySequence_Fast_GET_SIZE(keep_fast);
    keep = PyMem_Calloc((size_t)n_keep + 1, sizeof(int));
    if (keep == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_keep; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(keep_fast, i));
        if (fd == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (fd < 3 || fd > INT_MAX || (i > 0 && fd <= keep[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "spawn: keep must be sorted distinct fds >= 3");
            goto done;
        }
        keep[i] = (int)fd;
    }

    struct rlimit nofile;
    int max_fd = 65535;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY &&
        nofile.rlim_cur < (rlim_t)INT_MAX) {
        max_fd = (int)nofile.rlim_cur;
    }
    sigset_t all, old;
    sigfillset(&all);
    struct child_plan plan = {
        .argv = argv,
        .envp = envp,
        .programs = programs,
        .n_programs = n_programs,
        .cwd = cwd_obj == Py_None ? NULL : PyBytes_AS_STRING(cwd_obj),
        .keep = keep,
        .n_keep = n_keep,
        .stdin_fd = stdin_fd,
        .stdout_fd = stdout_fd,
        .stderr_fd = stderr_fd,
        .errpipe = errpipe,
        .new_session = new_session,
        .max_fd = max_fd,
        .mask = &old,
    };
#if CORRAL_CLONE_SUPPORTED
    /* The child shares this address space (CLONE_VM, as vfork and posix_spawn do: no
     * page tables to copy, no copy-on-write faults for the parent afterwards) on a stack
     * of its own; CLONE_VFORK keeps this thread (and so that stack and ``plan``) waiting
     * until the child has exec'd or exited. */
    void *stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    struct corral_clone_args clone_args;
    memset(&clone_args, 0, sizeof clone_args);
    clone_args.flags = CLONE_VM | CLONE_VFORK | CLONE_CLEAR_SIGHAND | CLONE_INTO_CGROUP;
    clone_args.exit_signal = SIGCHLD;
    clone_args.stack = (uint64_t)(uintptr_t)stack;
    clone_args.stack_size = CHILD_STACK;
    clone_args.cgroup = (uint64_t)cgroup_fd;

    long pid;
    Py_BEGIN_ALLOW_THREADS;
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone3_call(&clone_args, child, &plan);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    Py_END_ALLOW_THREADS;
    munmap(stack, CHILD_STACK);
    if (pid < 0) {
        errno = (int)-pid;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyLong_FromLong(pid);
#else
    (void)all;
    (void)plan;
    errno = ENOSYS;
    PyErr_SetFromErrno(PyExc_OSError);
#endif

done:
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(programs);
    PyMem_Free(keep);
    Py_XDECREF(keep_fast);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "corral.runtime._clone",
    "Start a program straight inside a cgroup (clone3 with CLONE_INTO_CGROUP).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__clone(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "STAGE_FDS", STAGE_FDS) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_CWD", STAGE_CWD) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_SESSION", STAGE_SESSION) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_EXEC", STAGE_EXEC) < 0 ||
        PyModule_AddIntConstant(m, "SUPPORTED", CORRAL_CLONE_SUPPORTED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

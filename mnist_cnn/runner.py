"""How a stage runs: one line for a user's mistake, clean stops on Ctrl-C and kill, TensorFlow kept quiet.

Every stage ends with `run(main)`.
"""
import atexit
import contextlib
import ctypes
import errno
import gc
import os
import re
import signal
import sys
import threading
import time

from mnist_cnn.errors import UserError, carried_by

# Errors of the machine rather than of our code: a full disk, a read-only or forbidden folder
DISK_ERRORS = {errno.ENOSPC: "the disk is full: free some space",
               errno.EDQUOT: "the disk quota is used up: free some space",
               errno.EACCES: "permission denied: make the folder writable",
               errno.EPERM: "permission denied: make the folder writable",
               errno.EROFS: "the file system is read-only: write somewhere else"}


RECEIVED = []  # the names of the signals _interrupt was called for, first one first
DEFERRING = []  # non-empty inside deferred_interrupts()


def _interrupt(signum, frame):
    RECEIVED.append(signal.Signals(signum).name)
    if DEFERRING and len(RECEIVED) == 1:  # a second signal stops at once, wherever it lands
        return
    raise KeyboardInterrupt(RECEIVED[0])


@contextlib.contextmanager
def deferred_interrupts():
    """Within it, the first SIGINT or SIGTERM is only recorded, and the code raises it where it is safe to stop,
    calling stop_if_interrupted (training: after each step); on the way out, one that came is raised.

    Raised wherever it lands, a KeyboardInterrupt can reach TensorFlow's C++ in the middle of its work: a
    SIGINT sent as an epoch began (the tf.data iterator being made) aborted the train stage 3 times in 25
    (SIGABRT, once "free(): invalid next size"), where it should end with its one line and status 130."""
    DEFERRING.append(True)
    try:
        yield
    finally:
        DEFERRING.pop()
    stop_if_interrupted()


def stop_if_interrupted():
    """Raise again the KeyboardInterrupt of a signal that already came, if one did.

    Python raises it in whatever Python code the main thread runs when the signal lands, and some code loses
    it: a __del__ (Python prints "Exception ignored in ..." and goes on) or TensorFlow's C++ calling back
    into Python. Sending SIGINT every few ms during a loop of tf.function calls, 7 of 5361 were lost so
    (bench/lost_interrupts.py), and a multi-worker run in CI trained on after Ctrl-C. The training loops call
    this after each step, so a lost one stops the stage a step later."""
    if RECEIVED:
        raise KeyboardInterrupt(RECEIVED[0])


def _unraisable(unraisable):
    """Python's report of an exception it cannot raise, except for KeyboardInterrupt (a signal that landed in
    a __del__): stop_if_interrupted raises that one again, and the stage ends with its one line."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Who started this process, read as the module is imported (first thing in every stage). When the parent
# dies, Linux gives its children to PID 1 (or a subreaper): a changed parent, not a parent of 1, tells
# that the parent died; a process started by PID 1 (systemd, `docker run --init`, a container's shell)
# has had that parent all along.
PARENT_AT_START = os.getppid()
SHELLS = {b"sh", b"dash", b"bash", b"zsh", b"ksh"}
INTERRUPTED = ("interrupted: this run wrote none of its outputs. Under `dvc repro`, DVC set the previous outputs "
               "aside before the stage started: `dvc checkout` brings back the cached ones (data, model) and "
               "`git checkout metrics plots` the committed metrics and plots; run the stage without DVC and "
               "they were never touched")


def _stat_fields(pid):
    """/proc/PID/stat's fields after the command name: [state, ppid, ...]; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _watched_parent():
    """(pid, start time) of the process this stage's life is tied to: its parent, or, when the parent is
    the `sh -c CMD` that DVC runs each cmd in, that shell's parent (DVC itself)."""
    pid = os.getppid()
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().split(b"\0")
    except OSError:
        command = []
    if len(command) > 1 and os.path.basename(command[0]) in SHELLS and command[1] == b"-c":
        fields = _stat_fields(pid)
        pid = int(fields[1]) if fields else pid
    fields = _stat_fields(pid)
    return pid, fields[19] if fields else None  # field 22 of stat: the start time, against PID reuse


def _watch(pid, started):
    while True:
        time.sleep(1)
        fields = _stat_fields(pid)
        if fields is None or fields[19] != started or fields[0] == "Z":
            os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread like any `kill`
            return


def die_with_parent():
    """Stop this stage (as `kill` would) when the process that started it dies: `dvc repro`, or the
    shell DVC runs the cmd in, and DVC behind it. Without it, a stage whose `dvc repro` was killed
    carries on as an orphan and writes its outputs after DVC has gone.

    Linux sends SIGTERM when the direct parent dies (PR_SET_PDEATHSIG); when that parent is DVC's
    `sh -c` (a shell that waits for the command rather than becoming it, as dash does), a thread
    also watches DVC. Elsewhere there is no such call, and nothing is done.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != PARENT_AT_START:  # it died before the call: stop now, as the signal would have made us
        os.kill(os.getpid(), signal.SIGTERM)
    pid, started = _watched_parent()
    if pid != os.getppid() and started is not None:
        threading.Thread(target=_watch, args=(pid, started), daemon=True, name="watch-dvc").start()


# What the libraries under TensorFlow print to fd 2 themselves, past TF_CPP_MIN_LOG_LEVEL: absl's C++ log lines
# ("E0000 00:00:1796033037.092479 23491 node_def_util.cc:682] NodeDef mentions attribute ...", which a user reads
# as an error of the run; before absl's log is set up its date is 0000 and its time the Unix time), and LiteRT's
# "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
LIBRARY_LOG_LINE = re.compile(rb"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.+/-]+:\d+\] "
                              rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
                              rb"|INFO: Created TensorFlow Lite \w+ delegate for \w+")


def filter_library_logs():
    """Route fd 2 through a thread that drops LIBRARY_LOG_LINE lines and passes every other line on, so a run
    that succeeds prints nothing on stderr. TF_CPP_MIN_LOG_LEVEL=0 (TensorFlow's "show me everything") keeps all.

    Python's own sys.stderr (our error lines, warnings, tracebacks, uvicorn's log) keeps writing to the real
    stderr directly, so it stays in order with stdout; only what C code writes to fd 2 takes the detour.
    At exit, fd 2 is put back and the thread drains what is left. Returns the thread (None when off).
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return None
    sys.stderr.flush()
    original = os.dup(2)
    sys.stderr = open(os.dup(original), "w", buffering=1, encoding=sys.stderr.encoding, errors=sys.stderr.errors)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb", buffering=0) as lines:
            for line in iter(lines.readline, b""):
                if not LIBRARY_LOG_LINE.match(line):
                    try:
                        os.write(original, line)
                    except OSError:  # nobody reads our stderr any more: keep draining, or writers would block
                        pass

    thread = threading.Thread(target=forward, daemon=True, name="stderr-filter")
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end here: the thread reads to its end and stops
        thread.join(timeout=2)  # a child still holding the pipe (a worker pool) must not keep us waiting

    atexit.register(restore)
    return thread


def run(main, command=None):
    """Run a stage's main(argv), or a command's (predict, serve: `command` names it): user errors become
    one line on stderr and exit status 1. A stage's life is tied to the `dvc repro` that started it.

    Ctrl-C (SIGINT) and `kill` (SIGTERM) stop the stage through the same clean-up path: temporary
    files are removed and the outputs of the previous run are left as they were. SIGINT is handled
    here too, not left to Python, which ignores it for good in a process started with SIGINT ignored
    (as a script's background jobs are): there, Ctrl-C and `dvc repro`'s interruption did nothing.
    """
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up live under dvc repro and in logs
    filter_library_logs()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, _interrupt)
    sys.unraisablehook = _unraisable
    status = _outcome(main, command)
    # Free what main's frames held before the interpreter's exit: an error's traceback holds a tf.data pipeline,
    # and a pipeline freed during the exit waits for ever for a shard read whose thread Python has stopped
    gc.collect()
    if status:
        sys.exit(status)


# A signal that lands while TensorFlow's C++ is raising an error of its own (a collective that failed) comes out
# as pybind11's "RuntimeError: pybind11::error_already_set: MISMATCH of original and normalized active exception
# types: ORIGINAL UnavailableError REPLACED BY KeyboardInterrupt: SIGINT"
PYBIND_INTERRUPT = "REPLACED BY KeyboardInterrupt"


def _interrupted(command):
    print(INTERRUPTED if command is None else f"{command}: interrupted", file=sys.stderr)
    return 130


def _outcome(main, command):
    """Run main(argv): 0 when it returns, else the exit status, its line (or a bug's traceback) printed."""
    try:
        if command is None:
            die_with_parent()
        main(sys.argv[1:])
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted(command)
    except Exception as e:
        if PYBIND_INTERRUPT in str(e):  # Ctrl-C inside TensorFlow's C++, as pybind11 reports it
            return _interrupted(command)
        error = carried_by(e)  # a UserError raised in a tf.data pipeline, inside TensorFlow's error
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
        elif isinstance(e, OSError) and e.errno in DISK_ERRORS:
            print(f"error: cannot write {e.filename or 'an output file'}: {DISK_ERRORS[e.errno]}, then run "
                  f"{'the stage' if command is None else command} again", file=sys.stderr)
        else:
            sys.excepthook(*sys.exc_info())  # our bug: its traceback, as Python prints it
        return 1


# What TensorFlow's import of Keras imports for features this project never uses, each inside Keras' own
# `except ImportError`: scikit-learn and the SciPy it pulls in (keras.wrappers, the scikit-learn
# estimators) and matplotlib (keras.visualization). A third of TensorFlow's import time (bench/startup.py).
UNUSED_BY_KERAS = ("sklearn", "matplotlib")


def quiet_tensorflow():
    """Import TensorFlow without its start-up log lines (set TF_CPP_MIN_LOG_LEVEL=0 to see them), and without
    UNUSED_BY_KERAS, which stay importable afterwards for the code that uses them (evaluate's metrics)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # errors too: TF logs harmless ones
    blocked = [name for name in UNUSED_BY_KERAS if name not in sys.modules]
    sys.modules.update(dict.fromkeys(blocked))  # a None entry makes `import name` raise ImportError
    verbose = os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    # TensorFlow writes some lines to fd 2 before its log level applies; hide fd 2 during import.
    saved = None if verbose else os.dup(2)
    try:
        if saved is not None:
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        import tensorflow as tf
        tf.config.list_physical_devices()  # probes for GPUs now, while fd 2 is hidden
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        for name in blocked:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]
    return tf

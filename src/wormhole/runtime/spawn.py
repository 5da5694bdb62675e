"""Start the confined worker's process: the bubblewrap command line, the bootstrap it runs, and
an early start while a new backend is still loading the runtime.

Stdlib builtins only (``os``, ``_signal``, ``sys``, ``time``): this module is imported by a new
backend *before* the rest of the runtime, so that the worker's own start (bubblewrap, Python's
start-up, the worker's imports: ~25 ms) runs on another CPU while the backend imports the host
(~15 ms) instead of after it.

:func:`prestart` is a prediction, never a decision: ``wormhole_execute``'s entry point asks
``_wormhole_worker_hint(hash, current_user)`` on a backend's first call and, when the call will
most likely run in the worker (untrusted execution is the worker, the hash is not approved, the
role is not trusted), the boot function starts one worker here with the very argv and boot frame
that ``sandbox.WorkerExecutor`` would use. The host's ``choose_executor`` still decides; the
executor adopts the early worker (:func:`take_prestarted`) only if it is the one it would have
started itself. A wrong prediction costs one idle worker in that backend (it dies with the
backend) or, the other way, no overlap. The worker confines itself only when its ``hello``
arrives, exactly as a worker started late does; until then it runs nothing but its bootstrap.
"""

from __future__ import annotations

import os
import sys
import time

# the C module: signal.py wraps it in enums (it imports enum, functools, collections...: ~3.5 ms
# of a new backend before the worker could start); only the plain numbers are needed here
import _signal as signal  # type: ignore[import-not-found]  # (no stub for the C module)

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only
    from collections.abc import Mapping

__all__ = [
    "BOOTSTRAP",
    "BOOT_LOADER",
    "DEFAULT_BWRAP",
    "DEFAULT_PYTHON",
    "SANDBOX_ID",
    "boot_frame",
    "bwrap_argv",
    "discard_prestarted",
    "prestart",
    "python_version",
    "take_prestarted",
]

DEFAULT_BWRAP = "/usr/bin/bwrap"
DEFAULT_PYTHON = "/usr/bin/python3"
#: the identity inside the sandbox's user namespace ("nobody").
SANDBOX_ID = 65534

#: the program ``python3 -c`` runs inside the sandbox (``BOOTSTRAP``). ``BOOT_LOADER`` reads one
#: ``boot`` frame from fd 0 whose body is ``marshal.dumps({module: source text | marshalled
#: code})`` for ``runtime.WORKER_MODULES`` (dependencies first; see :func:`boot_frame`) and
#: builds the package ``wormhole_rt`` (no path; a meta-path loader over those modules only) so
#: the runtime's relative imports resolve to them, each executed when first imported; it
#: imports ``wormhole_rt.worker`` (and so everything but the parser, ``policy``, which is loaded
#: only when a call comes without checked code). ``BOOTSTRAP`` then serves calls on fds 0 and 1
#: (``worker.main``). The loader itself imports nothing but builtin modules (``marshal``,
#: ``os``, ``sys``, ``fcntl``): the frame comes from the backend, which is trusted, and parsing
#: it needs no ``json``. Once it has read the frame it gives the boot pipe its default size
#: back (``prestart`` enlarged it; the kernel counts every pipe's capacity against the
#: postgres user's pipe-user-pages-soft, whether or not the host ever adopts this worker).
BOOT_LOADER = """\
import os, sys, marshal
def _read(n):
    data = b''
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit(3)
        data += chunk
    return data
_p = _read(8)
if _read(int.from_bytes(_p[:4], 'big')) != b'{"op":"boot"}':
    raise SystemExit(4)
_sources = marshal.loads(_read(int.from_bytes(_p[4:], 'big')))
if type(_sources) is not dict:
    raise SystemExit(4)
try:  # an early start enlarged this pipe for the boot frame: its default size back, now read
    import fcntl
    if fcntl.fcntl(0, fcntl.F_GETPIPE_SZ) > 65536:
        fcntl.fcntl(0, fcntl.F_SETPIPE_SZ, 65536)
    del fcntl
except Exception:
    pass
class _Loader:
    # the runtime's modules, each made (unmarshalled, else compiled) when first imported:
    # the parser (policy) is loaded only if a call comes without checked code
    @staticmethod
    def find_spec(fullname, path=None, target=None):
        head, _, name = fullname.rpartition('.')
        if head == 'wormhole_rt' and name in _sources:
            return sys.modules['_frozen_importlib'].ModuleSpec(fullname, _Loader)
        return None
    @staticmethod
    def create_module(spec):
        return None
    @staticmethod
    def exec_module(module):
        name = module.__name__.rpartition('.')[2]
        module.__file__ = '<wormhole_rt/' + name + '.py>'
        src = _sources[name]
        if type(src) is bytes:  # code the backend compiled already (same /usr/bin/python3)
            code = marshal.loads(src)
        else:
            code = compile(src, module.__file__, 'exec')
        exec(code, module.__dict__)
_pkg = type(sys)('wormhole_rt')
_pkg.__path__ = []
_pkg.__package__ = 'wormhole_rt'
sys.modules['wormhole_rt'] = _pkg
sys.meta_path.append(_Loader)
__import__('wormhole_rt.worker')
del _read, _p, _pkg
"""
BOOTSTRAP = BOOT_LOADER + "sys.modules['wormhole_rt.worker'].main(0, 1)\n"


# -- the bubblewrap command line -----------------------------------------------------------


def _root_links() -> list[str]:
    """``/lib``, ``/lib64`` and ``/bin`` as the host has them (symlinks into /usr on merged-/usr
    systems such as Debian 12; read-only binds where they are real directories)."""
    args: list[str] = []
    for path in ("/bin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def bwrap_argv(
    bwrap: str = DEFAULT_BWRAP,
    python: str = DEFAULT_PYTHON,
    code: str = BOOTSTRAP,
) -> list[str]:
    """The exact command line the worker runs with (``code`` is what ``python3 -c`` runs).

    Tests run attack snippets with this very argv, so what they prove is what the worker gets.
    """
    argv = [
        bwrap,
        "--unshare-all",  # new user, pid, net, ipc, uts and cgroup namespaces
        "--unshare-user",  # ... and fail (not silently continue) without a user namespace
        "--disable-userns",  # no nested user namespaces (kernel attack surface)
        "--die-with-parent",  # SIGKILL when the backend that started it dies
        "--new-session",  # setsid: no controlling terminal (TIOCSTI)
        "--clearenv",
        "--cap-drop", "ALL",
        "--uid", str(SANDBOX_ID),
        "--gid", str(SANDBOX_ID),
        "--hostname", "wormhole",
        "--ro-bind", "/usr", "/usr",
        *_root_links(),
        "--remount-ro", "/",  # the root tmpfs bubblewrap builds: read-only too
        "--chdir", "/",
    ]
    argv += ["--", python, "-I", "-S", "-B", "-c", code]
    return argv


#: signals the worker is started with blocked. Until the child's ``setsid`` it is still in the
#: backend's process group, and PostgreSQL signals whole groups (``pg_cancel_backend``: SIGINT,
#: a reload: SIGHUP, ...): one landing in that instant would kill the starting worker. Blocked,
#: it stays pending and harmless; nothing in the worker uses these (its limits are SIGXCPU and
#: SIGKILL, its parent's death SIGKILL).
_BLOCKED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGUSR2)


class _Process:
    """The bubblewrap process, started with ``posix_spawn``.

    Not ``subprocess``: importing it costs a new backend ~5 ms of its first worker call. The
    child gets exactly what ``subprocess.Popen(close_fds=True, start_new_session=True, env={})``
    gave it: three pipes as fds 0-2 and no other descriptor (each one this process has open is
    closed in the child, before bubblewrap runs), a new session, an empty environment,
    default SIGPIPE/SIGXFSZ and no blocked signals.
    """

    def __init__(self, argv: list[str]) -> None:
        fds: list[int] = []
        try:
            for _ in range(3):
                fds.extend(os.pipe())  # close-on-exec: only the dup2'd copies survive exec
            if min(fds) < 3:
                raise OSError("the standard descriptors 0-2 are not open in this process")
            r0, w0, r1, w1, r2, w2 = fds
            actions: list[tuple[int, ...]] = [
                (os.POSIX_SPAWN_DUP2, r0, 0),
                (os.POSIX_SPAWN_DUP2, w1, 1),
                (os.POSIX_SPAWN_DUP2, w2, 2),
            ]
            # every other descriptor (PostgreSQL opens its files and sockets without
            # close-on-exec); closing one that is already closed is not an error
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _open_fds() if fd > 2]
            self.pid = os.posix_spawn(
                argv[0], argv, {}, file_actions=actions, setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ), setsigmask=_BLOCKED,
            )
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in (r0, w1, w2):
            os.close(fd)
        self.stdin, self.stdout, self.stderr = w0, r1, r2
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: the status is lost
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process is still running after ``timeout`` s."""
        end = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None and time.monotonic() < end:
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for fd in (self.stdin, self.stdout, self.stderr):
            try:
                os.close(fd)
            except OSError:
                pass
        self.stdin = self.stdout = self.stderr = -1


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every descriptor up to the limit
        return list(range(3, os.sysconf("SC_OPEN_MAX")))




def boot_frame(modules: Mapping[str, str | bytes], order: tuple[str, ...]) -> bytes:
    """The ``boot`` frame ``BOOT_LOADER`` reads: the modules named in ``order``, each as its
    source text or as ``marshal`` bytes of its code (from the same Python as the worker's), in
    the channel's framing (``channel.Channel.frame({"op": "boot"}, body)``, built here without
    importing the channel)."""
    import marshal

    ordered: dict[str, str | bytes] = {}
    for name in order:
        value = modules[name]
        if type(value) is not str and type(value) is not bytes:
            raise TypeError(f"worker module {name}: source text or marshalled code expected")
        ordered[name] = value
    body = marshal.dumps(ordered)
    head = b'{"op":"boot"}'
    return len(head).to_bytes(4, "big") + len(body).to_bytes(4, "big") + head + body


def python_version(python: str = DEFAULT_PYTHON) -> tuple[int, int]:
    """The major.minor of the worker's Python, read from the name its path resolves to
    (Debian 12: ``/usr/bin/python3`` -> ``python3.11``); ``(0, 0)`` when the name does not
    tell (the worker then boots from source text instead of this process's compiled code)."""
    name = os.path.basename(os.path.realpath(python))
    if name.startswith("python"):
        major, dot, minor = name[len("python"):].partition(".")
        if dot and major.isdigit() and minor.isdigit():
            return (int(major), int(minor))
    return (0, 0)


#: a pipe's default capacity on Linux; the boot pipe of an early worker is enlarged to hold the
#: whole boot frame (~300 kB) until the worker has read it, and the worker's bootstrap gives it
#: this size back (``BOOT_LOADER``): the kernel counts every pipe's capacity against the user's
#: pipe-user-pages-soft (64 MiB for all of the postgres user's pipes), past which new pipes
#: get 8 KiB
PIPE_SIZE = 1 << 16

#: at most one early worker per process: (pid that started it, argv, process, unsent boot bytes)
_EARLY: list[tuple[int, tuple[str, ...], _Process, bytes]] = []


def prestart(modules: Mapping[str, bytes], order: tuple[str, ...], *,
             bwrap: str = DEFAULT_BWRAP, python: str = DEFAULT_PYTHON) -> bool:
    """Start the worker now, before the host asks for it; True if one was started.

    ``modules`` must hold marshalled code for every module in ``order`` and the worker's Python
    must be this process's major.minor (the boot frame is then this process's compiled code,
    as ``sandbox.WorkerExecutor`` would send it); otherwise nothing starts and the executor
    starts its worker late, as always. Never raises: an early start is only an optimisation.
    """
    if _EARLY or sys.version_info[:2] != python_version(python):
        return False
    try:
        if any(type(modules.get(name)) is not bytes for name in order):
            return False
        frame = boot_frame(modules, order)
        argv = bwrap_argv(bwrap, python, BOOTSTRAP)
        proc = _Process(argv)
    except Exception:  # noqa: BLE001 - no early worker; the executor starts one later
        return False
    rest = b""
    try:
        try:
            import fcntl

            fcntl.fcntl(proc.stdin, fcntl.F_SETPIPE_SZ, max(len(frame), PIPE_SIZE))
        except (ImportError, AttributeError, OSError):  # not Linux, or over a cap: no matter
            pass
        os.set_blocking(proc.stdin, False)
        try:
            written = os.write(proc.stdin, frame)
        except BlockingIOError:
            written = 0
        rest = frame[written:]
    except OSError:
        _stop(proc)
        return False
    _EARLY[:] = [(os.getpid(), tuple(argv), proc, rest)]
    return True


def discard_prestarted() -> None:
    """Stop an early worker nobody will adopt (the host ran the call in-process after all: a
    wrong prediction). Nothing if there is none."""
    if _EARLY:
        pid, _, proc, _ = _EARLY.pop()
        if pid == os.getpid():
            _stop(proc)
        else:
            proc.close()  # the parent's worker: not ours to kill


def take_prestarted(argv: list[str]) -> tuple[_Process, bytes] | None:
    """The early worker and the part of its boot frame not written yet, if one was started in
    this process with exactly ``argv`` and is still running; it is then the caller's. An early
    worker with another argv, or inherited through ``fork()``, is never handed out."""
    if not _EARLY:
        return None
    pid, early_argv, proc, rest = _EARLY.pop()
    if pid != os.getpid():
        proc.close()  # the parent's worker: not ours to use or kill
        return None
    if early_argv != tuple(argv) or proc.poll() is not None:
        _stop(proc)
        return None
    return proc, rest


def _stop(proc: _Process) -> None:
    """SIGKILL the early worker's process group (bubblewrap and the sandboxed Python under it,
    its own session), reap it, close our ends of its pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()
    proc.wait(1.0)
    proc.close()

"""A launched server process: own process group, log file, health wait, clean stop.

Nothing here knows about vLLM's flags; ``ServerProcess`` runs an argument list (never a
shell), writes stdout and stderr to one log file, waits for ``/health`` while watching
that the process is still alive, and stops the whole process group (vLLM's API server
spawns engine and worker processes): SIGTERM, then SIGKILL after a grace period.

Servers must not outlive the launcher, even when it is SIGKILLed (no ``finally``, no
``atexit`` runs then). Two guards, both on by default:

* a watchdog process per server (``_watchdog.py``, own session) holding the read end of
  a pipe whose write end only the launcher holds: when the launcher dies the pipe ends
  and the watchdog stops the server's whole process group, vLLM's engine and worker
  processes included;
* ``PR_SET_PDEATHSIG`` (SIGTERM) on the server's top process, set in the child between
  fork and exec, then ``getppid()`` re-checked to close the race with a parent that died
  before the call. The signal fires when the *thread* that forked exits, so it is only
  set when launching from the main thread (which lives as long as the process).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..control import TargetUnreachable, wait_healthy
from ..errors import TargetError

#: Lines of the server log carried in a launch error.
LOG_TAIL_LINES = 40
#: Seconds between SIGTERM and SIGKILL of the process group.
STOP_GRACE_S = 15.0


WATCHDOG = Path(__file__).resolve().with_name("_watchdog.py")
#: Seconds the watchdog waits between SIGTERM and SIGKILL once the launcher is gone.
WATCHDOG_GRACE_S = 5.0
PR_SET_PDEATHSIG = 1


class LaunchError(TargetError):
    """A server could not be started; the message carries the tail of its log."""


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` with its argument types fixed (resolved here, never in a forked child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Any = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


_PRCTL = _load_prctl()


def parent_death_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when this process dies, or None.

    None off Linux, and when called from a thread other than the main thread:
    PR_SET_PDEATHSIG fires when the forking *thread* exits, which for a worker thread
    would kill a healthy server. Works with ``start_new_session`` (setsid runs first).
    The function does no allocation-heavy work: it runs between fork and exec.
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl, parent, signum = _PRCTL, os.getpid(), int(sig)

    def _preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signum)

    return _preexec


class Watchdog:
    """The ``_watchdog.py`` process guarding one process group (see the module docs)."""

    def __init__(self, proc: subprocess.Popen[bytes], pipe_w: int) -> None:
        self.proc = proc
        self._w: int | None = pipe_w

    @classmethod
    def start(cls, pgid: int, log: IO[bytes] | int | None = None,
              grace_s: float = WATCHDOG_GRACE_S) -> "Watchdog | None":
        """Start guarding ``pgid``; None when the watchdog cannot be started (logged by the caller)."""
        r, w = os.pipe()  # both ends non-inheritable: only the watchdog's stdin gets r
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", str(WATCHDOG), str(pgid), str(grace_s), str(os.getpid())],
                stdin=r, stdout=log if log is not None else subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        except OSError:
            os.close(w)
            return None
        finally:
            os.close(r)
        return cls(proc, w)

    def disarm(self, timeout_s: float = 5.0) -> None:
        """The launcher stopped the group itself: let the watchdog exit; reap it."""
        if self._w is not None:
            try:
                os.write(self._w, b"disarm\n")
            except OSError:  # it exited already (group gone)
                pass
            os.close(self._w)
            self._w = None
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def log_tail(path: Path | str, lines: int = LOG_TAIL_LINES, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a (possibly large, possibly missing) log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [line for line in text.split("\n") if line.strip()]
    return "\n".join(kept[-lines:])


def kill_group(pid: int, grace_s: float = STOP_GRACE_S, *, proc: subprocess.Popen[bytes] | None = None) -> int | None:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``grace_s``; reap ``proc``.

    Returns the leader's exit code when known. Safe to call on a group that is gone.
    """
    def _signal(sig: int) -> bool:
        try:
            os.killpg(pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _group_alive() -> bool:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    _signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    code: int | None = None
    while time.monotonic() < deadline:
        if proc is not None and code is None:
            code = proc.poll()
        if not _group_alive() and (proc is None or code is not None):
            return code
        time.sleep(0.1)
    _signal(signal.SIGKILL)
    if proc is not None:
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
    # children re-parented to init are reaped by it; wait until the group is gone
    end = time.monotonic() + 5
    while _group_alive() and time.monotonic() < end:
        time.sleep(0.05)
    return code


class ServerProcess:
    """One server: ``start()``, ``wait_healthy()``, ``stop()``; ``url`` is its base URL."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path | str,
                 host: str = "127.0.0.1", port: int, cwd: str | None = None, orphan_guard: bool = True) -> None:
        if not argv:
            raise ValueError("empty command line")
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.host = host
        self.port = port
        self.cwd = cwd
        self.orphan_guard = orphan_guard
        self.proc: subprocess.Popen[bytes] | None = None
        self.watchdog: Watchdog | None = None
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"# pdslo: starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,  # own session and process group: killpg reaches workers
                    close_fds=True,
                    preexec_fn=parent_death_preexec() if self.orphan_guard else None,
                )
            except OSError as exc:
                raise LaunchError(f"{self.name}: cannot start {self.argv[0]!r}: {exc.strerror or exc}") from None
            if self.orphan_guard:
                self.watchdog = Watchdog.start(self.proc.pid, log)
                if self.watchdog is None:
                    log.write(b"# pdslo: could not start the orphan watchdog; the server may outlive a killed launcher\n")
        return self

    def poll(self) -> int | None:
        """The exit code if the server process has ended, else None."""
        if self.proc is None:
            return self.returncode
        code = self.proc.poll()
        if code is not None:
            self.returncode = code
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.poll() is None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def failure(self, what: str) -> LaunchError:
        tail = self.tail()
        body = "\n".join("    " + line for line in tail.splitlines()) if tail else "    (log is empty)"
        return LaunchError(f"{self.name}: {what}\n  log {self.log_path} ends with:\n{body}")

    def wait_healthy(self, timeout_s: float, progress: Callable[[str], None] | None = None,
                     progress_every_s: float = 15.0) -> float:
        """Wait for ``/health``; raise ``LaunchError`` (with the log tail) on exit or timeout."""
        last_report = [0.0]

        def _check(elapsed: float, reason: str) -> None:
            code = self.poll()
            if code is not None:
                raise self.failure(f"server exited with code {code} after {elapsed:.0f}s, before it was healthy")
            if progress is not None and elapsed - last_report[0] >= progress_every_s:
                last_report[0] = elapsed
                last = (self.tail(1) or "").strip()[:160]
                progress(f"{self.name}: waiting for {self.url}/health ({elapsed:.0f}s of {timeout_s:g}s) {last}")

        try:
            return wait_healthy(self.url, timeout_s, _check, poll_s=0.5)
        except TargetUnreachable:
            raise self.failure(f"not healthy after {timeout_s:g}s") from None

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """Stop the whole process group; idempotent."""
        if self.proc is None:
            return self.returncode
        proc, self.proc = self.proc, None
        code = kill_group(proc.pid, grace_s, proc=proc)
        self.returncode = code if code is not None else proc.returncode
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.disarm()  # after the group is gone: a launcher killed mid-stop stays covered
        return self.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port_block(count: int = 1, host: str = "127.0.0.1", avoid: set[int] | frozenset[int] = frozenset(),
                    tries: int = 200) -> int:
    """The first of ``count`` consecutive TCP ports that were free a moment ago, none in ``avoid``.

    For listeners a server opens itself on PORT + k (vLLM's NIXL side channel: one per
    data-parallel rank).
    """
    for _ in range(tries):
        base = free_port(host)
        if base + count > 65536 or any(p in avoid for p in range(base, base + count)):
            continue
        if all(not _bound(p, host) for p in range(base + 1, base + count)):
            return base
    raise LaunchError(f"no block of {count} free TCP ports found on {host}")


def _bound(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False

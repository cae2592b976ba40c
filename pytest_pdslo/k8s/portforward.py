"""``kubectl port-forward`` to a Service, for a gateway with no address outside the cluster.

The Python client's port-forward speaks the WebSocket stream protocol per connection;
bridging that to a local TCP listener for hundreds of streaming connections would be a
proxy of our own. kubectl does exactly this and is what an operator uses anyway, so we
run it (an argument list, own process group, stopped with the deployment).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque

from ..errors import TargetError

_FORWARDING = re.compile(r"Forwarding from (127\.0\.0\.1|\[::1\]):(\d+) ->")
KUBECTL_ENV = "PDSLO_KUBECTL"


def parse_forwarding(line: str) -> int | None:
    """The local port of a ``Forwarding from 127.0.0.1:PORT -> N`` line."""
    m = _FORWARDING.search(line)
    return int(m.group(2)) if m else None


class PortForward:
    """``kubectl port-forward -n NS svc/NAME :PORT``, started and stopped by us."""

    def __init__(self, namespace: str, service: str, port: int, *, context: str | None = None,
                 kubectl: str | None = None) -> None:
        self.namespace = namespace
        self.service = service
        self.port = port
        self.context = context
        self.kubectl = kubectl or os.environ.get(KUBECTL_ENV) or shutil.which("kubectl")
        self.local_port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._output: deque[str] = deque(maxlen=50)
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.local_port is None:
            raise TargetError("port-forward not started")
        return f"http://127.0.0.1:{self.local_port}"

    def argv(self) -> list[str]:
        argv = [str(self.kubectl or "kubectl"), "port-forward", "-n", self.namespace, f"svc/{self.service}",
                f":{self.port}", "--address", "127.0.0.1"]
        if self.context:
            argv += ["--context", self.context]
        return argv

    def start(self, timeout_s: float = 30.0) -> "PortForward":
        if not self.kubectl:
            raise TargetError(f"reaching svc/{self.service} in namespace {self.namespace!r} needs kubectl on PATH "
                              "(or ${KUBECTL_ENV}); or set k8s.gateway.url to an address this machine reaches")
        try:
            self._proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True, bufsize=1)
        except OSError as exc:
            raise TargetError(f"cannot run {self.kubectl}: {exc}") from None
        found = threading.Event()

        def read() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                self._output.append(line.rstrip())
                port = parse_forwarding(line)
                if port is not None and self.local_port is None:
                    self.local_port = port
                    found.set()

        self._reader = threading.Thread(target=read, name=f"port-forward-{self.service}", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not found.wait(0.1):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                out = "\n".join(self._output) or "(no output)"
                self.stop()
                raise TargetError(f"kubectl port-forward to svc/{self.service} in namespace {self.namespace!r} "
                                  f"did not start:\n{out}")
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(2)
        if proc.stdout is not None:
            proc.stdout.close()

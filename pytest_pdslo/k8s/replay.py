"""A Kubernetes API server on loopback that replays recorded responses (for tests).

The real ``kubernetes`` client talks HTTP to it, so its request building, serialization,
content types and error handling all run. A recording is JSON::

    {"routes": [
       {"method": "GET", "path": "/apis/apps/v1/namespaces/bench/deployments/pdslo-agg-tp8",
        "responses": [{"status": 200, "body": {...}}, {"status": 200, "body": {...}}]},
       {"method": "PATCH", "path": "/apis/apps/v1/namespaces/bench/deployments/pdslo-agg-tp8",
        "responses": [{"echo": true}]},
       {"method": "GET", "path": "/api/v1/namespaces/bench/pods/p/log", "responses": [{"text": "..."}]}
    ]}

Each request to a route takes its next response; the last one repeats (so a status that
stays the same is written once). ``echo`` answers with the request's JSON body (what an
apply returns, near enough). A route may also require query parameters
(``"query": {"labelSelector": "job-name=x"}``) and may apply only once another request
was seen (``"after": "DELETE /apis/apps/v1/..."``: the cluster's state after a deletion);
of the routes that match, the most specific answers. A request no route matches gets a
404 ``Status`` and is listed in ``unexpected``. Every request is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class _Route:
    method: str
    path: str
    responses: list[dict[str, Any]]
    query: dict[str, str] = field(default_factory=dict)
    after: str | None = None
    served: int = 0

    def matches(self, method: str, path: str, query: Mapping[str, list[str]], seen: set[str]) -> bool:
        if method != self.method or path != self.path:
            return False
        if any(query.get(k, [None])[0] != v for k, v in self.query.items()):
            return False
        return self.after is None or self.after in seen

    @property
    def specificity(self) -> int:
        return len(self.query) + (1 if self.after else 0)

    def next(self) -> dict[str, Any]:
        resp = self.responses[min(self.served, len(self.responses) - 1)]
        self.served += 1
        return resp


def _status_body(code: int, message: str, reason: str = "NotFound") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


@dataclass
class ReplayApiServer:
    """Serve ``routes`` on 127.0.0.1 until ``stop()``; ``url`` is the API server's address."""

    routes: list[_Route] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @classmethod
    def from_recording(cls, recording: Mapping[str, Any] | str | Path, **substitutions: str) -> "ReplayApiServer":
        if not isinstance(recording, Mapping):
            text = Path(recording).read_text(encoding="utf-8")
            for k, v in substitutions.items():
                text = text.replace("{{" + k + "}}", v)
            recording = json.loads(text)
        server = cls()
        for route in recording.get("routes", []):
            server.add(route["method"], route["path"], route["responses"], query=route.get("query"),
                       after=route.get("after"))
        return server

    def add(self, method: str, path: str, responses: list[dict[str, Any]], *, query: Mapping[str, str] | None = None,
            after: str | None = None) -> None:
        """A route; it replaces an earlier one with the same method, path, query and condition."""
        route = _Route(method.upper(), path, list(responses), dict(query or {}), after)
        self.routes = [r for r in self.routes
                       if (r.method, r.path, r.query, r.after) != (route.method, route.path, route.query, route.after)]
        self.routes.append(route)

    def calls(self, method: str | None = None, path_part: str = "") -> list[Seen]:
        return [r for r in self.requests if (method is None or r.method == method) and path_part in r.path]

    def start(self) -> "ReplayApiServer":
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                seen = Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
                with lock:
                    done = {f"{r.method} {r.path}" for r in replay.requests}
                    replay.requests.append(seen)
                    candidates = [r for r in replay.routes if r.matches(self.command, parts.path, seen.query, done)]
                    route = max(candidates, key=lambda r: r.specificity) if candidates else None
                    resp = route.next() if route else None
                    if route is None:
                        replay.unexpected.append(f"{self.command} {parts.path}?{parts.query}")
                if resp is None:
                    self._send(404, "application/json", json.dumps(_status_body(404, f"no recording for {parts.path}")))
                elif resp.get("echo"):
                    out = body if isinstance(body, dict) else {}
                    self._send(int(resp.get("status", 200)), "application/json", json.dumps(out))
                elif "text" in resp:
                    self._send(int(resp.get("status", 200)), "text/plain", str(resp["text"]))
                else:
                    self._send(int(resp.get("status", 200)), "application/json", json.dumps(resp.get("body", {})))

            def _send(self, code: int, ctype: str, text: str) -> None:
                data = text.encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="k8s-replay", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self) -> Any:
        """A ``kubernetes`` ApiClient aimed at this server."""
        from kubernetes import client

        cfg = client.Configuration(host=self.url)
        return client.ApiClient(cfg)

    def stop(self) -> None:
        httpd = getattr(self, "_httpd", None)
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ReplayApiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

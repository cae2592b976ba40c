"""Control-plane calls to a serving endpoint: reachability, models, version, health.

These are blocking ``requests`` calls with short timeouts, used before a run to
fail fast with one clear message instead of a thousand failed records. Every
message names the URL with its credentials masked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

import requests

from pytest_pdslo.redact import redact, redact_url, url_secrets


class TargetUnreachable(Exception):
    """The endpoint did not answer as a serving endpoint should."""


def normalize_base_url(base_url: str) -> str:
    """Validate ``base_url`` and drop a trailing ``/`` or ``/v1`` (OpenAI clients' habit).

    Raises ``ValueError`` naming the (redacted) URL when it is not http(s) with a host.
    """
    shown = redact_url(base_url)
    try:
        parts = urlsplit(base_url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:
        raise ValueError(f"invalid target URL {shown!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"invalid target URL {shown!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"invalid target URL {shown!r}: no host")
    if not port_ok:
        raise ValueError(f"invalid target URL {shown!r}: port must be positive")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid target URL {shown!r}: no query or fragment allowed")
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def _reason(exc: requests.RequestException, timeout_s: float) -> str:
    """A short human reason for a failed control call."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout_s:g}s"
    text = str(exc)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if any(s in lowered for s in ("name or service not known", "nodename nor servname",
                                  "nameresolutionerror", "getaddrinfo failed",
                                  "temporary failure in name resolution")):
        return "DNS lookup failed"
    if "reset" in lowered:
        return "connection reset"
    return f"{type(exc).__name__}: {text[:200]}"


def _credentials(url: str, api_key: str | None) -> tuple[str, dict[str, str], tuple[str, str] | None]:
    """The URL without ``user:password@``, and how to authenticate as the streaming client does:
    the API key as a bearer token, else the URL's user and password as basic auth.

    (Left in the URL, ``requests`` would send basic auth in place of the bearer token.)
    """
    parts = urlsplit(url)
    auth = None
    if "@" in parts.netloc:
        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    if api_key:
        return url, {"Authorization": f"Bearer {api_key}"}, None
    return url, {}, auth


def _get(base_url: str, path: str, *, timeout_s: float,
         api_key: str | None) -> requests.Response:
    """GET ``path``; raise ``TargetUnreachable`` for no answer or an HTTP error status."""
    url, headers, auth = _credentials(normalize_base_url(base_url) + path, api_key)
    secrets = [api_key, *url_secrets(base_url)]
    try:
        response = requests.get(url, headers=headers, auth=auth, timeout=timeout_s)
    except requests.RequestException as exc:
        reason = redact(_reason(exc, timeout_s), secrets)
        raise TargetUnreachable(f"{redact_url(url)} unreachable: {reason}") from None
    if response.status_code >= 400:
        body = redact(response.text[:200], secrets)
        raise TargetUnreachable(
            f"{redact_url(url)} answered HTTP {response.status_code}: {body}"
        )
    return response


def check_reachable(base_url: str, timeout_s: float = 5.0, *,
                    api_key: str | None = None) -> None:
    """Raise ``TargetUnreachable`` unless ``/v1/models`` answers successfully.

    ``/v1/models`` rather than ``/health`` because every OpenAI-compatible server
    (gateways, proxies) has it, and it also checks the API key.
    """
    _get(base_url, "/v1/models", timeout_s=timeout_s, api_key=api_key)


def get_models(base_url: str, timeout_s: float = 5.0, *,
               api_key: str | None = None) -> list[str]:
    """The served model names (``/v1/models`` ids)."""
    response = _get(base_url, "/v1/models", timeout_s=timeout_s, api_key=api_key)
    try:
        return [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise TargetUnreachable(
            f"{redact_url(normalize_base_url(base_url))}/v1/models: "
            f"not an OpenAI model list ({type(exc).__name__})"
        ) from None


def get_version(base_url: str, timeout_s: float = 5.0, *,
                api_key: str | None = None) -> str | None:
    """vLLM's ``/version``, or ``None`` when the server has none or does not answer."""
    try:
        response = _get(base_url, "/version", timeout_s=timeout_s, api_key=api_key)
        version = response.json().get("version")
    except (TargetUnreachable, ValueError, AttributeError):
        return None
    return str(version) if version is not None else None


def health(base_url: str, timeout_s: float = 5.0) -> bool:
    """Whether ``/health`` answers 2xx (never raises for an unhealthy server)."""
    try:
        _get(base_url, "/health", timeout_s=timeout_s, api_key=None)
    except TargetUnreachable:
        return False
    return True


def wait_healthy(base_url: str, timeout_s: float, progress: Callable[[float, str], None]
                 | None = None, *, poll_s: float = 0.5) -> float:
    """Poll ``/health`` until it answers; return the seconds waited.

    ``progress(elapsed_s, last_reason)`` is called after each failed poll; it
    may raise to abort the wait (say, when the server process has died).
    Raises ``TargetUnreachable`` with the last reason after ``timeout_s``.
    """
    normalize_base_url(base_url)
    start = time.monotonic()
    while True:
        attempt_timeout = max(0.1, min(5.0, timeout_s - (time.monotonic() - start)))
        try:
            _get(base_url, "/health", timeout_s=attempt_timeout, api_key=None)
            return time.monotonic() - start
        except TargetUnreachable as exc:
            reason = str(exc)
        elapsed = time.monotonic() - start
        if elapsed >= timeout_s:
            raise TargetUnreachable(f"not healthy after {timeout_s:g}s: {reason}")
        if progress is not None:
            progress(elapsed, reason)
        time.sleep(min(poll_s, max(0.0, timeout_s - elapsed)))

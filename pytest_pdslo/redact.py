"""Keep secrets out of messages, records and reports.

Error text travels into JUnit XML, CI logs and stored baselines, so every
message that may carry a URL or a server's echo of a request goes through here
first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"

_SECRET_QUERY_KEYS = frozenset(
    {
        "key",
        "api_key",
        "apikey",
        "api-key",
        "x-api-key",
        "token",
        "access_token",
        "auth",
        "authorization",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "sig",
        "signature",
    }
)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")
_QUERY_PAIR = re.compile(r"(?P<sep>[?&;])(?P<key>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")


def _mask_query(match: re.Match[str]) -> str:
    key = match["key"]
    if unquote(key).lower() in _SECRET_QUERY_KEYS:
        return f"{match['sep']}{key}={MASK}"
    return match[0]


def redact_url(url: str) -> str:
    """``url`` with ``user:password@`` and secret-looking query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        url = url.replace(parts.netloc, f"{MASK}@{host}", 1)
    else:
        url = _USERINFO.sub(rf"\g<scheme>{MASK}@", url)
    return _QUERY_PAIR.sub(_mask_query, url)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each secret (longest first) and any URL credentials masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    return _QUERY_PAIR.sub(_mask_query, text)


def url_secrets(url: str) -> list[str]:
    """The credentials embedded in ``url`` (user info, password, secret query values)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found.append(userinfo)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
    for match in _QUERY_PAIR.finditer("?" + parts.query):
        if match["value"] and unquote(match["key"]).lower() in _SECRET_QUERY_KEYS:
            found += [match["value"], unquote(match["value"])]
    return found

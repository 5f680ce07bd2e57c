"""Keep secrets out of logs, reprs and error messages."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_KEY = re.compile(r"token|key|secret|pass|pwd|auth|sig|session|cred|code|jwt|bearer", re.I)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and secret-looking query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_KEY.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"})


def redact_headers(headers: dict) -> dict:
    """A copy of ``headers`` with credential-bearing values masked."""
    return {k: (MASK if k.lower() in SECRET_HEADERS or _SECRET_KEY.search(k) else v) for k, v in headers.items()}

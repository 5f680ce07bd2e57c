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
    except ValueError:  # not a URL urllib can split ("ws://[::1/"): show it, what may be secret masked
        head, sep, _query = url.split("#", 1)[0].partition("?")  # the fragment goes, as urlunsplit drops it below
        scheme, slashes, rest = head.partition("//")
        netloc, slash, path = rest.partition("/")
        return scheme + slashes + _mask_userinfo(netloc) + slash + path + (sep + MASK if sep else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_KEY.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, _mask_userinfo(parts.netloc), parts.path, query, ""))


def _mask_userinfo(netloc: str) -> str:
    """``user:password@host`` -> ``user:***@host``; a user alone may be a token: ``***@host``."""
    if "@" not in netloc:
        return netloc
    userinfo, _, host = netloc.rpartition("@")
    return f"{userinfo.split(':', 1)[0]}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"


SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"})


def redact_headers(headers: dict) -> dict:
    """A copy of ``headers`` (or of any mapping of names: ``sslopt``) with the
    values of credential-bearing names masked."""
    return {k: (MASK if k.lower() in SECRET_HEADERS or _SECRET_KEY.search(k) else v) for k, v in headers.items()}

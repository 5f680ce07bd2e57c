"""Keep secrets out of logs, reprs and error messages."""

from __future__ import annotations

import re
from typing import List, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_SECRET_KEY = re.compile(r"token|key|secret|pass|pwd|auth|sig|session|cred|code|jwt|bearer", re.I)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and every query value masked (the
    keys stay; a bare item, ``?TOKEN``, is masked whole), and the values of ``;name=value``
    parameters in its path. Query values are all masked because no list of names
    catches every credential (``t``, ``ticket``, ``otp``, ``hmac``, ...)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:  # not a URL urllib can split ("ws://[::1/", "ws://u:pa/ss@h/"): the suspect part masked
        return _redact_unsplittable(url)
    if "@" not in parts.netloc and ":" in parts.netloc and "@" in parts.path:
        # "user:8080/Secret@host": urllib reads a password of digits, then '/', as a port
        # and a path. Read so, the URL could not work: mask up to the '@' to be safe.
        return _redact_unsplittable(url)
    return urlunsplit((parts.scheme, _mask_userinfo(parts.netloc), _mask_params(parts.path), _mask_query(parts.query), ""))


def _redact_unsplittable(url: str) -> str:
    head, slashes, rest = url.partition("//")
    at = rest.rfind("@")
    if at >= 0:  # a password holding '/', '?' or '#' hides where the user info ends: mask up to the last '@'
        userinfo, rest = rest[:at], rest[at + 1:]
        netloc_prefix = _shown_userinfo(userinfo) + "@"
    else:
        netloc_prefix = ""
    base, sep, query = rest.split("#", 1)[0].partition("?")  # the fragment goes, as urlunsplit drops it
    netloc, slash, path = base.partition("/")
    host = netloc_prefix + (netloc.split("@")[-1] if at < 0 else netloc)
    return head + slashes + host + slash + _mask_params(path) + (sep + _mask_query(query) if sep else "")


def _mask_query(query: str) -> str:
    items = [item for item in re.split(r"[&;]", query) if item]
    return "&".join(f"{item.partition('=')[0]}={MASK}" if "=" in item else MASK for item in items)


def _mask_params(path: str) -> str:
    """``/feed;token=abc/x`` -> ``/feed;token=***/x`` (RFC 3986 path parameters)."""
    return re.sub(r"(;[^/;=]*=)[^/;]*", lambda m: m.group(1) + MASK, path)


def _mask_userinfo(netloc: str) -> str:
    """``user:password@host`` -> ``user:***@host``; a user alone may be a token
    (``TOKEN@host``, ``APIKEY:@host``, as some services spell an API key): ``***@host``."""
    if "@" not in netloc:
        return netloc
    userinfo, _, host = netloc.rpartition("@")
    return f"{_shown_userinfo(userinfo)}@{host}"


def _shown_userinfo(userinfo: str) -> str:
    user, colon, password = userinfo.partition(":")
    return f"{user}:{MASK}" if colon and password else MASK


def redact_protocol(protocol: str) -> str:
    """A subprotocol as logs and errors show it: one that looks like a credential
    (Kubernetes' ``base64url.bearer.authorization.k8s.io.<token>``, or any name with
    ``token``, ``key``, ``auth`` ... in it) keeps only what comes before its last dot."""
    if _SECRET_KEY.search(protocol):
        head, dot, _ = protocol.rpartition(".")
        return f"{head}{dot}{MASK}" if dot and not _SECRET_KEY.search(_) else MASK
    return protocol


def redact_protocols(protocols: Sequence[str]) -> List[str]:
    """Offered subprotocols as logs and errors show them: each through `redact_protocol`,
    and masked whole when it follows a credential's name (``["token", KEY]``,
    ``["access_token", JWT]``, as some services take a key) or is long enough to be a
    key itself (32 characters or more)."""
    shown: List[str] = []
    after_name = False
    for protocol in protocols:
        named = bool(_SECRET_KEY.search(protocol))
        shown.append(MASK if after_name or (len(protocol) >= 32 and not named) else redact_protocol(protocol))
        after_name = named
    return shown


def without_traceback(error: Optional[BaseException]) -> Optional[BaseException]:
    """``error`` (and the errors it was raised from) without their tracebacks: an error
    that outlives its connection (``last_error``, the cause of a give-up) must not keep
    the frames of the upgrade alive, whose local variables hold the request's headers
    (tools such as Sentry or rich show the locals of a traceback)."""
    seen = set()
    current = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        for linked in (current.__cause__, current.__context__):
            if linked is not None and id(linked) not in seen:
                without_traceback(linked)
        current = None
    return error


SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"})


def redact_headers(headers: dict) -> dict:
    """A copy of ``headers`` (or of any mapping of names: ``sslopt``) with the
    values of credential-bearing names masked."""
    return {k: (MASK if k.lower() in SECRET_HEADERS or _SECRET_KEY.search(k) else v) for k, v in headers.items()}

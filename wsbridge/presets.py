"""Presets: client options for servers whose conventions wsbridge knows.

By default a client sends nothing the user did not ask for and drops no
message by a field the user did not name. Servers that speak wsbridge's own
conventions (`wsbridge.testing.Server`, ``wsbridge serve``) number their
messages in ``seq`` (per ``stream``), give them an ``id``, and understand the
default resume request; for them::

    client = wsbridge.Client(url, **wsbridge.conventions())
"""

from __future__ import annotations

from typing import Any, Dict

from .codecs import JsonCodec


def conventions(**overrides: Any) -> Dict[str, Any]:
    """`Client` options for a server that speaks wsbridge's conventions: JSON whose
    ``seq``, ``id`` and ``stream`` fields drive sequence tracking and dedup, and the
    default resume request after every reconnect. ``overrides`` win."""
    return {"codec": JsonCodec.conventions(), "resume": True, **overrides}

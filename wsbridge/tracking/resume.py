"""The resume request: "send me what came after these sequence ids".

The client sends one after every (re)connect (after the send buffer is
flushed) and whenever it finds a gap, carrying the last contiguous sequence
id it received per stream. Its shape is the user's to choose (the
``resume=`` callable of `Client`); this module holds the default shape, which
`wsbridge.testing.Server` understands:

* JSON: ``{"type": "resume", "positions": [{"stream": null, "seq": 41}, ...]}``
  (an entry carries ``"epoch"`` too when the stream's messages carry one)
* pipe: ``resume|N|[{"stream":null,"seq":41}]``
* raw: the JSON form as a text frame.
"""

from __future__ import annotations

import json
from typing import Any, List, Mapping, Optional, Union

from ..codecs import Codec, JsonCodec, PipeCodec
from ..message import Message
from .sequence import Epochs, Positions

RESUME_TYPE = "resume"


def _entries(positions: Positions, epochs: Epochs) -> List[dict]:
    ordered = sorted(positions.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))
    return [{"stream": s, "seq": n, **({"epoch": epochs[s]} if s in epochs else {})} for s, n in ordered]


def default_resume_request(codec: Codec, positions: Positions,
                           epochs: Optional[Epochs] = None) -> Union[str, Mapping[str, Any], Message]:
    """The default request for ``codec``: a dict for JSON, a message for pipe, text
    otherwise; each position with its stream's epoch when ``epochs`` has one."""
    entries = _entries(positions, epochs or {})
    if isinstance(codec, JsonCodec):
        # Encoded here, ASCII only: a stream name the server sent may hold anything
        # JSON can (a lone surrogate, say), and must come back to it as it came.
        return json.dumps(codec.typed(RESUME_TYPE, {"positions": entries}), separators=(",", ":"))
    if isinstance(codec, PipeCodec):
        return Message(RESUME_TYPE, json.dumps(entries, separators=(",", ":")))
    return json.dumps({"type": RESUME_TYPE, "positions": entries}, separators=(",", ":"))


def parse_resume_request(msg: Message) -> Optional[Positions]:
    """The positions of a default-shaped resume request; None for any other message."""
    payload = msg.payload
    if msg.type == "text" and isinstance(payload, str):  # raw codec
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.get("type") != RESUME_TYPE:
            return None
    elif msg.type != RESUME_TYPE:
        return None
    if isinstance(payload, str):  # pipe codec
        try:
            payload = {"positions": json.loads(payload)}
        except ValueError:
            return None
    entries = payload.get("positions") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        return None
    positions: Positions = {}
    for entry in entries:
        if isinstance(entry, dict) and type(entry.get("seq")) is int:
            positions[entry.get("stream")] = entry["seq"]
    return positions

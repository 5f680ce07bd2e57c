"""Real servers for tests, samples and the demo (loopback only).

``Server`` is a WebSocket server (the ``websockets`` library's asyncio server
in a thread of its own) that pushes scripted messages in any codec, echoes,
broadcasts like a chat room, records what it receives, and can refuse,
close or drop connections on demand. ``Proxy`` sits between a client and a
server and injects network faults: cuts, half-open stalls, refusals, and
close frames with chosen codes; ``ConnectProxy`` is an HTTP CONNECT proxy
(for ``http_proxy``). ``RawServer`` writes arbitrary bytes.
``Blackhole`` is a port whose TCP handshake is never answered (a host that
is down). ``DocumentServer`` holds one JSON document that clients patch.
``ExchangeServer`` is a market-data feed as exchanges run them: a bearer token
that expires, subscriptions with acks, sequence numbers per channel and a
resume request of its own shape.
Needs the ``server`` extra.
"""

try:  # the servers run on the websockets library: say what to install, not only what is missing
    import websockets  # noqa: F401
except ImportError as _missing:
    from ..errors import install_hint

    raise ImportError(f"wsbridge.testing needs websockets: {install_hint('server')}") from _missing

from .blackhole import Blackhole
from .chaos import ChaosReport, run_chaos
from .exchange import ExchangeServer
from .proxy import ConnectProxy, Proxy
from .raw import RawServer
from .rooms import DocumentServer
from .server import Received, Server

__all__ = ["Blackhole", "ChaosReport", "ConnectProxy", "DocumentServer", "ExchangeServer", "run_chaos", "Proxy", "RawServer",
           "Received", "Server"]

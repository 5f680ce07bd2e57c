"""Real servers for tests, samples and the demo (loopback only).

``Server`` is a WebSocket server (the ``websockets`` library's asyncio server
in a thread of its own) that pushes scripted messages in any codec, echoes,
broadcasts like a chat room, records what it receives, and can refuse,
close or drop connections on demand. Needs the ``server`` extra.
"""

from .server import Received, Server

__all__ = ["Received", "Server"]

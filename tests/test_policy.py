"""The reconnect policy, in a table: no sockets, no clock, no threads."""

from __future__ import annotations

import ssl

import pytest
import websocket

from wsbridge import Backoff, HandshakeError
from wsbridge.runtime.policy import Decision, Ending, ReconnectPolicy

FAST = Backoff(initial=1.0, factor=2.0, max_delay=8.0, jitter=0.0, max_attempts=3, reset_after=10.0)
CERT = ssl.SSLCertVerificationError(1, "certificate verify failed")
CERT.verify_message = "unable to get local issuer certificate"

CASES = [
    # (what happened, failures before, policy, the decision)
    ("refused TCP, first time", Ending(ConnectionRefusedError()), 0, ReconnectPolicy(FAST), Decision(1, delay=1.0)),
    ("refused again: the delay doubles", Ending(ConnectionRefusedError()), 1, ReconnectPolicy(FAST), Decision(2, delay=2.0)),
    ("capped at max_delay", Ending(ConnectionRefusedError()), 4, ReconnectPolicy(FAST.with_(max_attempts=None)),
     Decision(5, delay=8.0)),
    ("retries run out", Ending(ConnectionRefusedError()), 3, ReconnectPolicy(FAST),
     Decision(4, give_up="retries exhausted (max_attempts=3)")),
    ("a long-lived connection resets the count", Ending(None, 1001, "going away", open_for=60.0), 3, ReconnectPolicy(FAST),
     Decision(1, delay=1.0)),
    ("a short one does not", Ending(None, 1001, "going away", open_for=2.0), 2, ReconnectPolicy(FAST), Decision(3, delay=4.0)),
    ("HTTP 401 is fatal", Ending(http_status=401), 0, ReconnectPolicy(FAST),
     Decision(0, give_up="handshake refused with HTTP 401", fatal=True)),
    ("HTTP 503 is not", Ending(http_status=503), 0, ReconnectPolicy(FAST), Decision(1, delay=1.0)),
    ("close 1008 is fatal", Ending(None, 1008, "policy", open_for=1.0), 0, ReconnectPolicy(FAST),
     Decision(0, give_up="server closed the connection with code 1008 (policy)", fatal=True)),
    ("close 1013 (try again later) is not", Ending(None, 1013, "", open_for=1.0), 0, ReconnectPolicy(FAST),
     Decision(1, delay=1.0)),
    ("a bad upgrade is fatal", Ending(HandshakeError("the server chose subprotocol 'x'")), 0, ReconnectPolicy(FAST),
     Decision(0, give_up="the server chose subprotocol 'x'", fatal=True)),
    ("a certificate that fails is fatal", Ending(CERT), 0, ReconnectPolicy(FAST),
     Decision(0, give_up="TLS certificate verification failed: unable to get local issuer certificate", fatal=True)),
    ("retry_fatal retries it", Ending(http_status=403), 0, ReconnectPolicy(FAST, retry_fatal=True), Decision(1, delay=1.0)),
    ("NO_RETRY connects once", Ending(None, 1000, ""), 0, ReconnectPolicy(Backoff(max_attempts=0)),
     Decision(1, give_up="retries exhausted (max_attempts=0)")),
]


@pytest.mark.parametrize("ending,failures,policy,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_policy_decides(ending, failures, policy, expected):
    assert policy.decide(ending, failures, rand=0.0) == expected


def test_jitter_shortens_the_delay_by_at_most_its_fraction():
    policy = ReconnectPolicy(Backoff(initial=1.0, jitter=0.5))
    assert policy.decide(Ending(OSError()), 0, rand=0.999).delay == pytest.approx(0.5005)
    assert policy.decide(Ending(OSError()), 0, rand=0.0).delay == 1.0


def test_a_bad_status_exception_is_read_for_its_status():
    error = websocket.WebSocketBadStatusException("Handshake status %d %s", 404, "Not Found")
    assert ReconnectPolicy.fatal_reason(Ending(error, http_status=error.status_code)) == "handshake refused with HTTP 404"

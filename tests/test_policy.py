"""The reconnect policy, in a table: no sockets, no clock, no threads."""

from __future__ import annotations

import ssl
from dataclasses import replace

import pytest
import websocket

from wsbridge import Backoff, HandshakeError
from wsbridge.runtime.policy import FATAL_CLOSE_CODES, Decision, Ending, ReconnectPolicy

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
    # A healthy connection resets the count, however short it was.
    ("a short connection that delivered resets the count", Ending(None, 1012, "", open_for=0.5, delivered=3), 3,
     ReconnectPolicy(FAST), Decision(1, delay=1.0)),
    ("so does one that passed the connect hook", Ending(None, 1001, "", open_for=0.5, handshake_done=True), 2,
     ReconnectPolicy(FAST), Decision(1, delay=1.0)),
    ("delivered, then closed with a fatal code: still fatal", Ending(None, 1008, "no", open_for=0.5, delivered=1), 0,
     ReconnectPolicy(FAST), Decision(0, give_up="server closed the connection with code 1008 (no)", fatal=True)),
    ("a reset still counts against max_attempts=0", Ending(None, 1000, "", open_for=0.5, delivered=1), 0,
     ReconnectPolicy(Backoff(max_attempts=0)), Decision(1, give_up="retries exhausted (max_attempts=0)")),
    # Retry-After: the longer of the server's wait and the backoff's, the server's capped.
    ("Retry-After longer than the backoff", Ending(http_status=503, retry_after=5.0), 0, ReconnectPolicy(FAST),
     Decision(1, delay=5.0)),
    ("Retry-After shorter than the backoff", Ending(http_status=429, retry_after=0.5), 2, ReconnectPolicy(FAST),
     Decision(3, delay=4.0)),
    ("Retry-After capped by max_retry_after", Ending(http_status=503, retry_after=3600.0), 0,
     ReconnectPolicy(FAST, max_retry_after=60.0), Decision(1, delay=60.0)),
    ("Retry-After capped at 300 s by default", Ending(http_status=503, retry_after=86400.0), 0, ReconnectPolicy(FAST),
     Decision(1, delay=300.0)),
    ("Retry-After on a fatal status is fatal still", Ending(http_status=404, retry_after=1.0), 0, ReconnectPolicy(FAST),
     Decision(0, give_up="handshake refused with HTTP 404", fatal=True)),
    # The rules, passed.
    ("retry_statuses retries a fatal status", Ending(http_status=404), 0, ReconnectPolicy(FAST, retry_statuses={404}),
     Decision(1, delay=1.0)),
    ("retry_statuses retries a 2xx", Ending(http_status=200), 0, ReconnectPolicy(FAST, retry_statuses={200}),
     Decision(1, delay=1.0)),
    ("a 2xx is fatal by default", Ending(http_status=200), 0, ReconnectPolicy(FAST),
     Decision(0, give_up="not a WebSocket server: it answered the upgrade with HTTP 200", fatal=True)),
    ("fatal_statuses replaces the set", Ending(http_status=404), 0, ReconnectPolicy(FAST, fatal_statuses={400}),
     Decision(1, delay=1.0)),
    ("fatal_statuses may add 429", Ending(http_status=429), 0, ReconnectPolicy(FAST, fatal_statuses={429}),
     Decision(0, give_up="handshake refused with HTTP 429", fatal=True)),
    ("fatal_close_codes adds an application code", Ending(None, 4001, "banned", open_for=1.0), 0,
     ReconnectPolicy(FAST, fatal_close_codes=FATAL_CLOSE_CODES | {4001}),
     Decision(0, give_up="server closed the connection with code 4001 (banned)", fatal=True)),
    ("fatal_close_codes replaces the set", Ending(None, 1008, "policy", open_for=1.0), 0,
     ReconnectPolicy(FAST, fatal_close_codes=frozenset()), Decision(1, delay=1.0)),
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
    assert ReconnectPolicy().fatal_reason(Ending(error, http_status=error.status_code)) == "handshake refused with HTTP 404"


def run(policy, endings, failures=0):
    """Decide after each ending in turn, carrying the counts as the supervisor does."""
    decisions, auth = [], 0
    for ending in endings:
        decision = policy.decide(ending, failures, rand=0.0, auth_failures=auth)
        decisions.append(decision)
        if decision.give_up:
            break
        failures, auth = decision.failures, decision.auth_failures
    return [(d.delay, d.give_up) for d in decisions]


UNLIMITED = ReconnectPolicy(FAST.with_(max_attempts=None, max_delay=60.0))
DELIVERED = Ending(None, 1012, "service restart", open_for=2.0, delivered=40)
SILENT = Ending(None, 1012, "service restart", open_for=2.0)
REFUSED = Ending(ConnectionRefusedError())
FRESH_401 = Ending(http_status=401, fresh_credentials=True)
FRESH_403 = Ending(http_status=403, fresh_credentials=True)

SEQUENCES = [
    # (what happened, the policy, the endings in turn, (delay, give_up) after each)
    ("a server that restarts every 2 s and delivers: initial each time", UNLIMITED, [DELIVERED] * 6,
     [(1.0, None)] * 6),
    ("one that delivers nothing backs off as before", UNLIMITED, [SILENT] * 5,
     [(1.0, None), (2.0, None), (4.0, None), (8.0, None), (16.0, None)]),
    ("refusals while it restarts back off; the next delivery resets", UNLIMITED,
     [DELIVERED, REFUSED, REFUSED, DELIVERED, REFUSED],
     [(1.0, None), (2.0, None), (4.0, None), (1.0, None), (2.0, None)]),
    ("a 401 of fresh credentials is retried once, then fatal", UNLIMITED, [FRESH_401, FRESH_401],
     [(1.0, None), (0.0, "handshake refused with HTTP 401, also with fresh credentials")]),
    ("403 too", UNLIMITED, [FRESH_403, FRESH_403],
     [(1.0, None), (0.0, "handshake refused with HTTP 403, also with fresh credentials")]),
    ("a 401 without fresh credentials is fatal at once", UNLIMITED, [Ending(http_status=401)],
     [(0.0, "handshake refused with HTTP 401")]),
    ("auth_retries=0: fatal at once, fresh or not", ReconnectPolicy(FAST, auth_retries=0), [FRESH_401],
     [(0.0, "handshake refused with HTTP 401, also with fresh credentials")]),
    ("auth_retries=2 retries twice", ReconnectPolicy(FAST, auth_retries=2), [FRESH_401, FRESH_403, FRESH_401],
     [(1.0, None), (2.0, None), (0.0, "handshake refused with HTTP 401, also with fresh credentials")]),
    ("another ending between two refusals starts the auth count again", UNLIMITED,
     [FRESH_401, REFUSED, FRESH_401, DELIVERED, FRESH_401, FRESH_401],
     [(1.0, None), (2.0, None), (4.0, None), (1.0, None), (2.0, None),
      (0.0, "handshake refused with HTTP 401, also with fresh credentials")]),
    ("a fresh 404 is fatal: only 401/403 are about credentials", UNLIMITED,
     [Ending(http_status=404, fresh_credentials=True)], [(0.0, "handshake refused with HTTP 404")]),
    ("auth retries count against max_attempts", ReconnectPolicy(FAST.with_(max_attempts=1)), [REFUSED, FRESH_401],
     [(1.0, None), (0.0, "retries exhausted (max_attempts=1)")]),
    ("retry_fatal retries a fresh 401 for ever", ReconnectPolicy(FAST.with_(max_attempts=None), retry_fatal=True),
     [FRESH_401] * 4, [(1.0, None), (2.0, None), (4.0, None), (8.0, None)]),
]


@pytest.mark.parametrize("policy,endings,expected", [c[1:] for c in SEQUENCES], ids=[c[0] for c in SEQUENCES])
def test_the_policy_decides_in_turn(policy, endings, expected):
    assert run(policy, endings) == expected


def test_a_subclass_overrides_decide():
    """A close code of the application's own carries the delay in its reason."""

    class ServerSaysWhen(ReconnectPolicy):
        def decide(self, ending, failures, rand=None, **counts):
            decision = super().decide(ending, failures, rand, **counts)
            if ending.close_code == 4290 and not decision.give_up:
                return replace(decision, delay=float(ending.close_reason or 0))
            return decision

    policy = ServerSaysWhen(FAST)
    assert policy.decide(Ending(None, 4290, "7.5", open_for=1.0), 0, rand=0.0) == Decision(1, delay=7.5)
    assert policy.decide(Ending(None, 1001, "", open_for=1.0), 0, rand=0.0) == Decision(1, delay=1.0)


def test_a_subclass_overrides_healthy():
    class OnlyLongOnesCount(ReconnectPolicy):
        def healthy(self, ending):
            return ending.open_for is not None and ending.open_for >= self.backoff.reset_after

    assert run(ReconnectPolicy(FAST.with_(max_attempts=None)), [DELIVERED] * 3) == [(1.0, None)] * 3
    assert run(OnlyLongOnesCount(FAST.with_(max_attempts=None)), [DELIVERED] * 3) == [(1.0, None), (2.0, None), (4.0, None)]


def test_the_rules_are_frozensets_and_the_policy_is_immutable():
    policy = ReconnectPolicy(fatal_statuses=[400, 401], retry_statuses={503})
    assert policy.fatal_statuses == frozenset({400, 401}) and isinstance(policy.retry_statuses, frozenset)
    assert policy == ReconnectPolicy(fatal_statuses=frozenset({400, 401}), retry_statuses=frozenset({503}))
    with pytest.raises(AttributeError):
        policy.auth_retries = 5  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"fatal_statuses": "401"}, "fatal_statuses is a set of integers"),
    ({"fatal_close_codes": {1008, "1011"}}, "fatal_close_codes is a set of integers"),
    ({"retry_statuses": {True}}, "retry_statuses is a set of integers"),
    ({"auth_retries": -1}, "auth_retries is an integer >= 0"),
    ({"auth_retries": 1.5}, "auth_retries is an integer >= 0"),
    ({"max_retry_after": -1.0}, "max_retry_after is seconds >= 0"),
    ({"max_retry_after": float("nan")}, "max_retry_after is seconds >= 0"),
    ({"backoff": 3}, "backoff is a wsbridge.Backoff"),
])
def test_bad_rules_are_a_value_error_that_names_them(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ReconnectPolicy(**kwargs)


def test_the_client_takes_a_policy_or_builds_one_from_backoff():
    import wsbridge

    policy = wsbridge.ReconnectPolicy(FAST, fatal_statuses={400})
    client = wsbridge.Client("ws://127.0.0.1:9/", policy=policy)
    assert client.policy is policy and client.backoff is FAST and client.retry_fatal is False
    client = wsbridge.Client("ws://127.0.0.1:9/", backoff=FAST, retry_fatal=True)
    assert client.policy == wsbridge.ReconnectPolicy(FAST, retry_fatal=True)
    assert wsbridge.Client("ws://127.0.0.1:9/").policy == wsbridge.ReconnectPolicy()
    with pytest.raises(ValueError, match="pass backoff and retry_fatal to the ReconnectPolicy"):
        wsbridge.Client("ws://127.0.0.1:9/", policy=policy, backoff=FAST)
    with pytest.raises(ValueError, match="pass backoff and retry_fatal to the ReconnectPolicy"):
        wsbridge.Client("ws://127.0.0.1:9/", policy=policy, retry_fatal=True)
    with pytest.raises(ValueError, match="policy is a wsbridge.ReconnectPolicy, not Backoff"):
        wsbridge.Client("ws://127.0.0.1:9/", policy=FAST)  # type: ignore[arg-type]
    assert {"ReconnectPolicy", "Ending", "Decision"} <= set(wsbridge.__all__)

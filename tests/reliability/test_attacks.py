"""The table of attacks (docs/reliability.md lists them): each is sent to the real binary over TCP,
with real PostgreSQL and Redis behind it, and must be refused (or neutralised) with a 4xx JSON
answer, never a 5xx, a hang, a crash, or an action taken as someone else.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg
import pytest
import requests

from .stack import AUTH_SECRET, NEXTAUTH_SECRET, bearer, jwt, nextauth_cookie, token

SQL_PAYLOADS = [
    "1' OR '1'='1",
    "1; DROP TABLE users; --",
    "' UNION SELECT id, username FROM users --",
    "$1); DELETE FROM user_interactions; --",
    "\\'; SELECT pg_sleep(10); --",
    "1/**/OR/**/1=1",
]


def _error(r: requests.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:300]}"
    body = r.json()
    assert set(body) >= {"error", "message"}, body
    if code:
        assert body["error"] == code, body
    return body


def _counts(url: str) -> tuple[int, int, int]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM posts), "
            "(SELECT count(*) FROM user_recommendations)"
        ).fetchone()


def _alive(live) -> None:
    r = requests.get(live.base + "/api/feeds", headers=bearer(live.data.users[0]), timeout=10)
    assert r.status_code == 200, r.text


# --- SQL metacharacters ------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["limit", "offset", "refresh", "seed", "source"])
@pytest.mark.parametrize("payload", SQL_PAYLOADS)
def test_sql_metacharacters_in_query_parameters_are_a_400_naming_the_parameter(live, param, payload):
    before = _counts(live.database_url)
    r = requests.get(live.base + "/api/feeds", params={param: payload},
                     headers=bearer(live.data.users[0]), timeout=10)
    assert _error(r, 400, "bad_request")["field"] == param
    assert _counts(live.database_url) == before


@pytest.mark.parametrize("payload", SQL_PAYLOADS)
def test_sql_metacharacters_in_tracking_fields_are_refused_or_stored_verbatim(live, payload):
    user, post = live.data.users[1], live.data.posts[-1]
    h = bearer(user)
    before = _counts(live.database_url)
    # Typed fields: refused, naming the field.
    r = requests.post(live.base + "/api/track", headers=h, timeout=10,
                      json={"postId": payload, "interactionType": "view"})
    assert _error(r, 400)["field"] == "postId"
    r = requests.post(live.base + "/api/track", headers=h, timeout=10,
                      json={"postId": post, "interactionType": payload})
    assert _error(r, 400)["field"] == "interactionType"
    # Free-text fields: accepted as data, stored byte for byte, never executed.
    event_id = f"{payload}-{uuid.uuid4().hex[:6]}"
    meta = {payload: payload, "nested": {"q": payload}}
    r = requests.post(live.base + "/api/track", headers=h, timeout=10,
                      json={"postId": post, "interactionType": "click", "eventId": event_id,
                            "metadata": meta})
    assert r.status_code == 201, r.text
    with psycopg.connect(live.database_url) as conn:
        row = conn.execute(
            "SELECT user_id::text, event_id, metadata FROM user_interactions WHERE id = %s",
            (r.json()["interactionId"],),
        ).fetchone()
    assert row == (user, event_id, meta)
    assert _counts(live.database_url) == before


@pytest.mark.parametrize("payload", SQL_PAYLOADS)
def test_sql_metacharacters_in_credentials_and_path_are_refused(live, payload):
    # A validly signed token whose subject is SQL: not a user of this app (403), nothing run.
    r = requests.get(live.base + "/api/feeds", headers={"Authorization": f"Bearer {token(payload)}"},
                     timeout=10)
    _error(r, 403, "unknown_user")
    r = requests.get(live.base + "/api/feeds", headers={"Authorization": f"Bearer {payload}"},
                     timeout=10)
    _error(r, 401, "unauthorized")
    r = requests.get(live.base + "/api/feeds",
                     headers={"Cookie": f"next-auth.session-token={payload.replace(';', '%3B')}"},
                     timeout=10)
    _error(r, 401, "unauthorized")
    r = requests.get(live.base + "/api/feeds/" + requests.utils.quote(payload), timeout=10)
    _error(r, 404, "not_found")
    assert _counts(live.database_url)[0] == len(live.data.users)


# --- bearer tokens -----------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


@pytest.mark.parametrize(
    "name,make",
    [
        ("alg none", lambda u: jwt({"sub": u, "exp": _now() + 600}, alg="none")),
        ("alg none, signature kept", lambda u: jwt({"sub": u, "exp": _now() + 600}, alg="none")
         + token(u).rsplit(".", 1)[1]),
        ("wrong key", lambda u: jwt({"sub": u, "exp": _now() + 600}, secret="x" * 40)),
        ("HS512 with the right key", lambda u: jwt({"sub": u, "exp": _now() + 600}, alg="HS512")),
        ("expired beyond the leeway", lambda u: jwt({"sub": u, "exp": _now() - 120})),
        ("not valid before an hour from now",
         lambda u: jwt({"sub": u, "exp": _now() + 7200, "nbf": _now() + 3600})),
        ("no exp", lambda u: jwt({"sub": u})),
        ("no sub", lambda u: jwt({"exp": _now() + 600})),
        ("empty sub", lambda u: jwt({"sub": "", "exp": _now() + 600})),
        ("payload swapped under a valid signature",
         lambda u: ".".join([token(u).split(".")[0],
                             jwt({"sub": str(uuid.uuid4()), "exp": _now() + 600}).split(".")[1],
                             token(u).split(".")[2]])),
        ("garbage", lambda u: "not.a.jwt"),
        ("empty", lambda u: ""),
    ],
)
def test_forged_or_invalid_bearer_tokens_are_401(live, name, make):
    user = live.data.users[2]
    for path, method, body in [("/api/feeds", "GET", None),
                               ("/api/track", "POST", {"postId": live.data.posts[0],
                                                       "interactionType": "like"})]:
        r = requests.request(method, live.base + path, json=body, timeout=10,
                             headers={"Authorization": f"Bearer {make(user)}"})
        _error(r, 401, "unauthorized")


def test_a_valid_token_for_a_user_that_does_not_exist_is_403(live):
    r = requests.get(live.base + "/api/feeds", headers=bearer(str(uuid.uuid4())), timeout=10)
    _error(r, 403, "unknown_user")
    r = requests.post(live.base + "/api/track", headers=bearer(str(uuid.uuid4())), timeout=10,
                      json={"postId": live.data.posts[0], "interactionType": "like"})
    _error(r, 403, "unknown_user")


def test_a_bad_bearer_header_is_not_rescued_by_a_valid_cookie(live):
    cookie = nextauth_cookie(NEXTAUTH_SECRET, live.data.users[0])
    r = requests.get(live.base + "/api/feeds", timeout=10,
                     headers={"Authorization": "Bearer forged",
                              "Cookie": f"next-auth.session-token={cookie}"})
    _error(r, 401, "unauthorized")


# --- NextAuth cookies --------------------------------------------------------------------------


def test_nextauth_cookies_from_another_secret_expired_or_tampered_are_401(live):
    user = live.data.users[3]
    good = nextauth_cookie(NEXTAUTH_SECRET, user)
    r = requests.get(live.base + "/api/feeds", timeout=10,
                     headers={"Cookie": f"next-auth.session-token={good}"})
    assert r.status_code == 200, "control: the real encoder's cookie with the right secret works"
    parts = good.split(".")
    flipped = parts[3][:-2] + ("A" if parts[3][-2] != "A" else "B") + parts[3][-1]
    cases = {
        "another secret": nextauth_cookie("another-secret-of-someone-else-entirely-42", user),
        "the bearer secret": nextauth_cookie(AUTH_SECRET, user),
        "expired": nextauth_cookie(NEXTAUTH_SECRET, user, max_age=-3600),
        "ciphertext tampered": ".".join(parts[:3] + [flipped, parts[4]]),
        "header swapped to alg none": ".".join(
            ["eyJhbGciOiJub25lIn0"] + parts[1:]),
        "truncated": good[: len(good) // 2],
    }
    for name, cookie in cases.items():
        for cname in ("next-auth.session-token", "__Secure-next-auth.session-token"):
            r = requests.get(live.base + "/api/feeds", timeout=10,
                             headers={"Cookie": f"{cname}={cookie}"})
            assert r.status_code == 401, f"{name} via {cname}: {r.status_code} {r.text[:200]}"
            _error(r, 401, "unauthorized")


# --- acting as someone else --------------------------------------------------------------------


def test_tracking_always_records_the_authenticated_user_never_one_named_in_the_body(live):
    me, victim = live.data.users[4], live.data.users[5]
    body = {"postId": live.data.posts[7], "interactionType": "like", "userId": victim,
            "user_id": victim, "user": {"id": victim}, "metadata": {"userId": victim}}
    r = requests.post(live.base + "/api/track", json=body, headers=bearer(me), timeout=10)
    assert r.status_code == 201, r.text
    r2 = requests.post(live.base + "/api/track/batch", headers=bearer(me), timeout=10,
                       json={"events": [body], "userId": victim})
    assert r2.status_code == 200 and r2.json()["accepted"] == 1, r2.text
    ids = [r.json()["interactionId"], r2.json()["results"][0]["interactionId"]]
    with psycopg.connect(live.database_url) as conn:
        owners = conn.execute(
            "SELECT user_id::text FROM user_interactions WHERE id = ANY(%s::uuid[])", (ids,)
        ).fetchall()
        victims = conn.execute(
            "SELECT count(*) FROM user_interactions WHERE user_id = %s", (victim,)
        ).fetchone()[0]
    assert owners == [(me,), (me,)]
    assert victims == 0


def test_an_event_id_used_by_another_user_does_not_reveal_or_reuse_their_interaction(live):
    a, b = live.data.users[6], live.data.users[7]
    ev = f"shared-{uuid.uuid4().hex}"
    ra = requests.post(live.base + "/api/track", headers=bearer(a), timeout=10,
                       json={"postId": live.data.posts[3], "interactionType": "like", "eventId": ev})
    rb = requests.post(live.base + "/api/track", headers=bearer(b), timeout=10,
                       json={"postId": live.data.posts[4], "interactionType": "like", "eventId": ev})
    assert ra.status_code == rb.status_code == 201, (ra.text, rb.text)
    assert ra.json()["interactionId"] != rb.json()["interactionId"]
    with psycopg.connect(live.database_url) as conn:
        rows = conn.execute(
            "SELECT user_id::text, post_id::text FROM user_interactions WHERE event_id = %s "
            "ORDER BY user_id = %s DESC", (ev, a)
        ).fetchall()
    assert rows == [(a, live.data.posts[3]), (b, live.data.posts[4])]


# --- sizes and shapes --------------------------------------------------------------------------


def test_bodies_over_the_size_limit_are_400_naming_the_body(live):
    h = bearer(live.data.users[8])
    limit = 65536  # BODY_LIMIT_BYTES of the `live` stack
    big = {"postId": live.data.posts[0], "interactionType": "view",
           "metadata": {"pad": "x" * (limit + 10)}}
    for path in ("/api/track", "/api/track/batch"):
        payload = big if path == "/api/track" else {"events": [big]}
        r = requests.post(live.base + path, json=payload, headers=h, timeout=10)
        assert _error(r, 400, "bad_request")["field"] == "body", r.text
    # 8 MiB announced, 128 KiB of it sent, then nothing more: answered 400 without the rest (a
    # server that read the whole body would still be waiting for it), and the connection closed.
    head = (f"POST /api/track HTTP/1.1\r\nHost: x\r\nAuthorization: {h['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {8 << 20}\r\n\r\n{{").encode()
    answer = _exchange(live, head + b" " * (128 << 10))
    assert answer.status == 400 and json.loads(answer.body)["field"] == "body", answer
    assert answer.closed, answer
    # Under the limit but metadata over 4 KiB: refused by its own rule.
    r = requests.post(live.base + "/api/track", headers=h, timeout=10,
                      json={"postId": live.data.posts[0], "interactionType": "view",
                            "metadata": {"pad": "y" * 5000}})
    assert _error(r, 400)["field"] == "metadata"
    r = requests.post(live.base + "/api/track/batch", headers=h, timeout=10,
                      json={"events": [{"postId": live.data.posts[0], "interactionType": "view"}]
                            * 101})
    assert _error(r, 400)["field"] == "events"
    _alive(live)


@pytest.mark.parametrize("depth", [20, 127, 200, 10_000, 100_000])
def test_deeply_nested_metadata_is_refused_or_stored_never_a_crash(live, depth):
    h = bearer(live.data.users[9])
    nested = '{"a":' * depth + "1" + "}" * depth
    body = ('{"postId": "%s", "interactionType": "view", "metadata": %s}'
            % (live.data.posts[1], nested))
    r = requests.post(live.base + "/api/track", data=body.encode(), headers=h, timeout=10)
    if len(nested) <= 4096 and depth < 120:
        assert r.status_code == 201, r.text
    else:
        err = _error(r, 400, "bad_request")
        assert err["field"] in ("body", "metadata"), err
    # Nested arrays in the batch envelope too.
    arrays = "[" * depth + "]" * depth
    r = requests.post(live.base + "/api/track/batch", headers=h, timeout=10,
                      data=('{"events": %s}' % arrays).encode())
    if r.status_code == 200:  # parsed: one event that is not an object, refused on its own
        assert r.json()["accepted"] == 0
        assert [x["status"] for x in r.json()["results"]] == [400]
    else:
        _error(r, 400, "bad_request")
    _alive(live)


@pytest.mark.parametrize(
    "value",
    ["\u0000", "a\u0000b", "\ud800", "\U0001f600" * 10, "\u202e" + "evil", "x" * 129],
)
def test_awkward_text_in_free_text_fields_is_refused_or_stored_never_a_5xx(live, value):
    h = bearer(live.data.users[10])
    for body in (
        {"postId": live.data.posts[2], "interactionType": "view", "eventId": value},
        {"postId": live.data.posts[2], "interactionType": "view", "metadata": {"k": value}},
        {"postId": live.data.posts[2], "interactionType": "view", "metadata": {value: 1}},
    ):
        raw = json.dumps(body)  # ensure_ascii: lone surrogates travel as \\ud800 escapes
        r = requests.post(live.base + "/api/track", data=raw.encode(), headers=h, timeout=10)
        assert r.status_code in (201, 400), f"{body!r}: {r.status_code} {r.text[:300]}"
        if r.status_code == 400:
            assert r.json()["field"] in ("body", "eventId", "metadata"), r.text


def test_very_long_query_strings_are_4xx_never_5xx(live):
    h = bearer(live.data.users[11])
    for query, statuses in (
        ("limit=" + "9" * 20_000, {400}),
        ("seed=" + "1" * 100_000, {400, 414}),
        ("&".join(f"p{i}={i}" for i in range(20_000)), {200, 414}),  # unknown parameters: ignored
        ("limit=5&" + "x" * 60_000, {200, 414}),
        ("offset=" + "%27" * 30_000, {400, 414}),
        ("limit=%ZZ", {400}),
    ):
        r = _exchange(live, _get_request(f"/api/feeds?{query}", h))
        assert r.status in statuses, f"{query[:40]}...: {r}"
        if r.status == 400:
            assert json.loads(r.body)["error"] == "bad_request", r
        if r.status == 414:  # refused by the HTTP layer before any handler: it closes
            assert r.closed, r
    # A 1 MiB request line is refused by the HTTP layer, which then closes the connection.
    r = _exchange(live, _get_request(f"/api/feeds?limit={'1' * (1 << 20)}", h))
    assert r.status in (414, 431) and r.closed, r
    _alive(live)


def test_many_headers_and_huge_cookies_are_refused_not_5xx(live):
    # 500 headers: past hyper's header count, refused by the HTTP layer, connection closed.
    headers = {f"X-Pad-{i}": "v" * 100 for i in range(500)}
    headers.update(bearer(live.data.users[12]))
    r = _exchange(live, _get_request("/api/feeds", headers))
    assert r.status == 431 and r.closed, r
    # 60 chunked cookies of 3 KB (180 KB): read, joined, and refused as no valid session.
    cookies = "; ".join(f"next-auth.session-token.{i}={'A' * 3000}" for i in range(60))
    r = _exchange(live, _get_request("/api/feeds", {"Cookie": cookies}))
    assert r.status == 401 and json.loads(r.body)["error"] == "unauthorized", r
    _alive(live)


# --- slow clients ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer at all
    body: bytes
    closed: bool  # the server closed the connection after its answer

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:200]!r}, closed={self.closed})"


def _get_request(target: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _exchange(live, request: bytes) -> Answer:
    """Sends `request` on a raw connection while reading the answer: the server may answer (and
    close) before it has read everything, which a client that first sends it all (requests)
    sees as a broken connection instead of the answer. A send cut short by the server's close
    is expected here; what it answered decides."""
    s = _open(live)

    def send() -> None:
        try:
            s.sendall(request)
        except OSError:
            pass

    sender = threading.Thread(target=send)
    sender.start()
    data = b""
    closed = False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            match = re.search(rb"content-length: *(\d+)", head, re.I)
            if sep and match and len(body) >= int(match.group(1)):
                # a complete answer: did the server close after it?
                s.settimeout(5)
                try:
                    closed = s.recv(1) == b""
                except TimeoutError:  # still open: kept alive
                    closed = False
                except ConnectionResetError:
                    closed = True
                break
    except ConnectionResetError:
        closed = True
    finally:
        sender.join(30)
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.1 (\d{3})", head)
    return Answer(int(status.group(1)) if status else None, body, closed)


def _open(live) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", live.api.port), timeout=30)
    return s


def _read_all(s: socket.socket, until: float) -> bytes:
    data = b""
    while time.monotonic() < until:
        s.settimeout(max(0.1, until - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            return data + b"<closed>"
        data += chunk
    return data


def test_a_client_that_sends_its_body_too_slowly_gets_503_and_is_closed(live):
    """REQUEST_TIMEOUT_MS (3 s in this stack) bounds a request whose body trickles in."""
    tok = token(live.data.users[13])
    s = _open(live)
    body = json.dumps({"postId": live.data.posts[0], "interactionType": "view"}).encode()
    s.sendall(
        b"POST /api/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {tok}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]
    )
    t0 = time.monotonic()
    got = b""
    for b in body[5:]:
        try:
            s.sendall(bytes([b]))
        except OSError:
            break
        got += _read_all(s, time.monotonic() + 0.5)
        if got:
            break
    elapsed = time.monotonic() - t0
    got += _read_all(s, time.monotonic() + 5)
    s.close()
    assert got.startswith(b"HTTP/1.1 503"), got[:200]
    assert b'"unavailable"' in got
    assert got.endswith(b"<closed>"), got[-200:]
    # A test of the configured timeout: the whole body would take about 30 s at this pace, and
    # 15 s is five times REQUEST_TIMEOUT_MS, a wide margin for a loaded machine.
    assert elapsed < 15, f"the slow request was answered after {elapsed:.1f} s"


def _slow_header_sockets(live, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = _open(live)
        s.sendall(b"GET /api/feeds HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    return socks


def test_slow_header_clients_do_not_starve_others(live):
    """Slowloris: many connections that never finish their headers; others are still served."""
    socks = _slow_header_sockets(live, 300)
    try:
        # (no bound on how fast: the timeout only keeps a starved request from hanging the suite)
        for u in live.data.users[:5]:
            r = requests.get(live.base + "/api/feeds", headers=bearer(u), timeout=60)
            assert r.status_code == 200
    finally:
        for s in socks:
            s.close()
    _alive(live)


@pytest.mark.slow
def test_slow_header_clients_are_closed_by_a_header_timeout(live):
    (s,) = _slow_header_sockets(live, 1)
    try:
        # The header-read timeout is REQUEST_TIMEOUT_MS (3 s in this stack); slack for a loaded machine.
        got = _read_all(s, time.monotonic() + 20)
    finally:
        s.close()
    assert got.endswith(b"<closed>") or got.startswith(b"HTTP/1.1 408"), got[:200]

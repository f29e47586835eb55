"""Private services for the reliability tests: a throw-away PostgreSQL cluster, a private Redis and
the API binary serving on free ports, so that fault tests can stop, kill, freeze and flush them
without touching the machine's shared PostgreSQL and Redis (other test suites use those at the same
time).

Also: HS256 tokens made here from first principles (so attack tokens can be forged), seed data,
and a small threaded load generator that records every answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTH_SECRET = "reliability-auth-secret-0123456789abcdef0123"
NEXTAUTH_SECRET = "reliability-nextauth-secret-with-entropy-42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, ok, timeout: float = 30.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = ok()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline, then reported
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what} did not happen within {timeout} s (last error: {last})")


# --- PostgreSQL --------------------------------------------------------------------------------


def _pg_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("initdb not found (install postgresql: apt-get install -y postgresql)")


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; the Debian package creates the postgres user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb in a temp dir, trust auth, 127.0.0.1:<free port>).
    ``stop(mode)`` / ``start()`` restart it on the same port with the same data."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="feedrank-rel-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        done = subprocess.run(
            _as_postgres(
                [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
            ),
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        self.start()

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/feedrank"

    @property
    def admin_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c shared_buffers=32MB -c max_connections=120 -c log_min_messages=warning"
        )
        done = subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.root / "server.log"), "-o", opts, "-w", "-t", "60", "start"]),
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n{log}")

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                          "-t", "60", "stop"]),
            capture_output=True, text=True,
        )

    def create_database(self, name: str = "feedrank") -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- Redis -------------------------------------------------------------------------------------


class PrivateRedis:
    """``redis-server --port <free> --save '' --appendonly no``; stop/start/freeze/thaw/flush."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found (apt-get install -y redis-server)")
        self.exe = exe
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until("redis answers PING", lambda: self.client().ping(), timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        self.client().flushall()


# --- the API -----------------------------------------------------------------------------------


def api_binary() -> Path:
    explicit = os.environ.get("FEEDRANK_API_BIN")
    path = Path(explicit) if explicit else REPO_ROOT / "target" / "release" / "feedrank-api"
    if not path.is_file():
        raise RuntimeError(f"{path} is not built: run `make api`")
    return path


class ApiServer:
    """``feedrank-api serve`` on a free port against the given services."""

    def __init__(self, database_url: str, redis_url: str, prefix: str = "rel:",
                 binary: Path | None = None, **env: str):
        self.binary = binary or api_binary()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="feedrank-rel-api-", suffix=".log")[1])
        self.env = dict(
            os.environ,
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            REDIS_KEY_PREFIX=prefix,
            AUTH_SECRET=AUTH_SECRET,
            NEXTAUTH_SECRET=NEXTAUTH_SECRET,
            BIND_ADDR=f"127.0.0.1:{self.port}",
            RUST_LOG=os.environ.get("RELIABILITY_RUST_LOG", "warn"),
            **env,
        )
        self.proc: subprocess.Popen | None = None
        try:
            self.start()
        except BaseException:
            self.stop()  # the error already carries the log's tail
            raise

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [str(self.binary), "serve"], env=self.env, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_until(
            "the API answers /healthz",
            lambda: self._alive() and requests.get(self.base + "/healthz", timeout=2).ok,
            timeout=30,
        )

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"feedrank-api exited ({self.proc.returncode}):\n{self.log()}")
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self.log_path.unlink(missing_ok=True)


def migrate(database_url: str, binary: Path | None = None) -> None:
    done = subprocess.run(
        [str(binary or api_binary()), "migrate"], env=dict(os.environ, DATABASE_URL=database_url),
        capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"feedrank-api migrate failed:\n{done.stdout}{done.stderr}")


# --- tokens ------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict, secret: str = AUTH_SECRET, alg: str = "HS256") -> str:
    """A compact JWS; ``alg="none"`` gives an unsigned token (the classic forgery)."""
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    if alg == "none":
        return f"{header}.{payload}."
    if alg == "HS256":
        sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    elif alg == "HS512":
        sig = hmac.new(secret.encode(), signing_input, hashlib.sha512).digest()
    else:
        raise ValueError(f"alg {alg} not supported here")
    return f"{header}.{payload}.{_b64(sig)}"


def token(user_id: str, ttl: int = 3600, **extra) -> str:
    now = int(time.time())
    return jwt({"sub": str(user_id), "exp": now + ttl, "iat": now, **extra})


def bearer(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user_id)}"}


def nextauth_cookie(secret: str, sub: str, max_age: int = 3600) -> str:
    """A session token made by the real next-auth encoder (tests/nextauth/mint.mjs)."""
    mint = REPO_ROOT / "tests" / "nextauth"
    if not (mint / "node_modules" / "next-auth").is_dir():
        subprocess.run(["npm", "ci", "--silent"], cwd=mint, check=True, capture_output=True)
    done = subprocess.run(
        ["node", "mint.mjs", "--secret", secret, "--sub", sub, "--max-age", str(max_age)],
        cwd=mint, capture_output=True, text=True, timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mint.mjs failed: {done.stderr}")
    return done.stdout.strip()


# --- data --------------------------------------------------------------------------------------


@dataclass
class Seed:
    users: list[str]
    posts: list[str]
    recommended: dict[str, list[str]] = field(default_factory=dict)
    run_id: int | None = None


def seed(database_url: str, users: int = 20, posts_per_user: int = 10, recommend: int = 30) -> Seed:
    """``users`` users with ``posts_per_user`` posts each, and one complete recommendation run
    giving every user ``recommend`` posts by other authors (best first)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        user_ids = [
            str(r[0]) for r in conn.execute(
                "INSERT INTO users (username, display_name) "
                "SELECT 'rel_' || g || '_' || substr(md5(random()::text), 1, 6), 'User ' || g "
                "FROM generate_series(1, %s) g RETURNING id", (users,)
            ).fetchall()
        ]
        post_ids = [
            str(r[0]) for r in conn.execute(
                "INSERT INTO posts (user_id, content, media_urls, created_at, updated_at) "
                "SELECT u, 'post ' || g || ' about topic ' || (g %% 7), ARRAY[]::text[], "
                "now() - make_interval(mins => g), now() - make_interval(mins => g) "
                "FROM unnest(%s::uuid[]) AS u, generate_series(1, %s) g RETURNING id",
                (user_ids, posts_per_user),
            ).fetchall()
        ]
        run_id = conn.execute(
            "INSERT INTO recommendation_runs (status, completed_at) VALUES ('complete', now()) "
            "RETURNING id"
        ).fetchone()[0]
        conn.execute(
            """
            INSERT INTO user_recommendations (run_id, user_id, post_id, score, collaborative_score,
                content_score, recency_score, engagement_score, reason, expires_at)
            SELECT %s, u.id, p.id, 1.0 / (1 + p.rn), 0.5, 0.2, 0.1, 0.1, 'similar_users',
                   now() + interval '1 day'
            FROM users u
            CROSS JOIN LATERAL (
                SELECT id, row_number() OVER (ORDER BY md5(u.id::text || posts.id::text)) AS rn
                FROM posts WHERE posts.user_id <> u.id
                ORDER BY md5(u.id::text || posts.id::text) LIMIT %s
            ) p
            WHERE u.id = ANY(%s::uuid[])
            """,
            (run_id, recommend, user_ids),
        )
        recommended: dict[str, list[str]] = {}
        for u, p in conn.execute(
            "SELECT user_id::text, post_id::text FROM user_recommendations WHERE run_id = %s "
            "ORDER BY user_id, score DESC, post_id", (run_id,)
        ).fetchall():
            recommended.setdefault(u, []).append(p)
    return Seed(user_ids, post_ids, recommended, run_id)


# --- load --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    at: float
    kind: str  # "feed" or "track"
    status: int  # 0: no answer (connection error or client timeout)
    seconds: float
    source: str | None = None
    event_id: str | None = None
    error: str | None = None
    user: str | None = None
    post: str | None = None


class Load:
    """Threads that send feed reads (and, with ``track_share``, tracking events with unique event
    ids) as fast as they get answers, recording every outcome, until ``stop()``."""

    def __init__(self, base: str, users: list[str], posts: list[str], threads: int = 4,
                 track_share: float = 0.2, timeout: float = 10.0) -> None:
        self.base, self.users, self.posts = base, users, posts
        self.track_share, self.timeout = track_share, timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]
        self._tokens = {u: bearer(u) for u in users}

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, idx: int) -> None:
        import random

        rng = random.Random(idx)
        s = requests.Session()
        n = 0
        while not self._stop.is_set():
            n += 1
            user = self.users[rng.randrange(len(self.users))]
            t0 = time.monotonic()
            if rng.random() < self.track_share:
                ev = f"load-{idx}-{n}-{uuid.uuid4().hex[:8]}"
                body = {"postId": self.posts[rng.randrange(len(self.posts))],
                        "interactionType": "view", "eventId": ev}
                o = Outcome(t0, "track", 0, 0.0, event_id=ev, user=user, post=body["postId"])
                try:
                    r = s.post(self.base + "/api/track", json=body, headers=self._tokens[user],
                               timeout=self.timeout)
                    o.status = r.status_code
                except requests.RequestException as e:
                    o.error = type(e).__name__
            else:
                o = Outcome(t0, "feed", 0, 0.0, user=user)
                try:
                    r = s.get(self.base + "/api/feeds", params={"limit": 20},
                              headers=self._tokens[user], timeout=self.timeout)
                    o.status = r.status_code
                    if r.status_code == 200:
                        o.source = r.json()["metadata"]["source"]
                except requests.RequestException as e:
                    o.error = type(e).__name__
            o.seconds = time.monotonic() - t0
            with self._lock:
                self.outcomes.append(o)

    def between(self, t0: float, t1: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if t0 <= o.at < t1]

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        start = len(self.outcomes)
        wait_until(f"{n} more answers under load", lambda: len(self.outcomes) >= start + n,
                   timeout=timeout)

    @staticmethod
    def summary(outcomes: list[Outcome]) -> Counter:
        return Counter((o.kind, o.status) for o in outcomes)


# --- a whole stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    pg: PrivatePostgres
    redis: PrivateRedis
    api: ApiServer
    database_url: str
    prefix: str
    data: object  # what `load` returned (a Seed by default)

    @property
    def base(self) -> str:
        return self.api.base


@contextmanager
def private_stack(binary: Path | None = None, load: Callable[[str], object] = seed,
                  **api_env: str) -> Iterator[Stack]:
    """A private PostgreSQL cluster (migrated, filled by ``load(url)``), a private Redis and the
    API serving on them; all stopped and removed afterwards, even after an error."""
    pg = PrivatePostgres()
    redis = api = None
    try:
        redis = PrivateRedis()
        url = pg.create_database()
        migrate(url, binary)
        data = load(url)
        prefix = f"rel_{secrets.token_hex(4)}:"
        api = ApiServer(url, redis.url, prefix, binary, **api_env)
        yield Stack(pg, redis, api, url, prefix, data)
    finally:
        if api is not None:
            api.stop()
        if redis is not None:
            redis.stop()
        pg.destroy()


_REQUESTS_TOTAL = re.compile(
    r'feedrank_http_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} (\d+)'
)


def request_counts(base: str) -> Counter:
    """The API's own count of answered requests, by (method, route, status), from /metrics."""
    text = requests.get(base + "/metrics", timeout=10).text
    out: Counter = Counter()
    for method, route, status, n in _REQUESTS_TOTAL.findall(text):
        out[(method, route, status)] += int(n)
    return out

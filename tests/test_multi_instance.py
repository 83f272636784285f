"""Two service instances on one PostgreSQL database and one Redis, started as an operator does.

Each instance is `referral-service serve --host 127.0.0.1 --port P` (gunicorn, two worker
processes) on a port of its own, with the same SECRET_KEY, DATABASE_URL (migrated once first with
`referral-service db upgrade`) and REDIS_URL; the tests speak HTTP to both. Races across the two
grant one reward, a rate limit counts the hits of both, a code rotated on one is refused for
attribution on the other at once (its share link may go on redirecting with `ref` for the
documented cache time), a click on one attributes a sign-up on the other at once, and neither
instance takes the other's gunicorn control socket: stopping one leaves the other serving. (And,
without a server: a stopping worker refuses new connections before it writes its clicks.)

PostgreSQL comes from TEST_DATABASE_URL (a database of this module's own, dropped at the end),
Redis from TEST_REDIS_URL (a numbered Redis database found empty and claimed, emptied at the
end). Without either the module is skipped, saying why; with CI=true it fails.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import (
    _pg_url,
    drop_pg_database,
    make_pg_database,
    print_past_capture,
    unavailable,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLAIM_KEY = "referral-service-tests:multi-instance"  # marks a Redis database as this module's
PER_INSTANCE = 8  # threads per instance in the races: 16 requests at once in all
PUBLIC_LIMIT = 12  # RATELIMIT_PUBLIC per minute for the instances (share links and QR images)
CACHE_SECONDS = 10.0  # how long a process may trust what it cached of a code (README)
SERVE = ("serve", "--host", "127.0.0.1")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_database():
    """The URL of a numbered Redis database this module found empty and claimed (a key of its
    own, set only if absent); emptied and given back at the end."""
    import redis

    def client_of(number: int):
        url = urllib.parse.urlsplit(REDIS_URL)._replace(path=f"/{number}").geturl()
        return url, redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)

    _, probe = client_of(0)
    try:
        probe.ping()
    except redis.RedisError as error:
        unavailable(f"Redis at {REDIS_URL} (set TEST_REDIS_URL)", error)
    finally:
        probe.close()
    token = uuid.uuid4().hex
    for number in range(15, 0, -1):
        url, client = client_of(number)
        try:
            if client.set(CLAIM_KEY, token, nx=True, ex=3600):
                if client.dbsize() == 1:
                    break
                client.delete(CLAIM_KEY)  # someone else's keys are there: not ours to empty
        except redis.ResponseError:  # no such database on this server
            pass
        client.close()
    else:
        unavailable(f"an empty numbered database of Redis at {REDIS_URL}", LookupError("none"))
    yield url
    client.flushdb()  # the claim and every key the instances wrote
    client.close()


@dataclass
class Cluster:
    """Two running instances and what the tests need to talk to them."""

    bases: list[str]
    processes: list[subprocess.Popen]
    logs: list[Path]
    database_url: str
    control_socket_paths: list[Path]
    shop: dict = field(default_factory=dict)
    addresses: count = field(default_factory=lambda: count(1))

    def client_address(self) -> str:
        """A client address of its own (X-Forwarded-For, believed with TRUSTED_PROXIES=1), so
        that each visit is another visitor with a rate-limit budget of its own."""
        n = next(self.addresses)
        return f"198.18.{n // 250}.{n % 250 + 1}"

    def visit(self, instance: int, path: str, address: str | None = None) -> httpx.Response:
        """A browser's visit of a public path on an instance, not following redirects."""
        headers = {"User-Agent": BROWSER, "X-Forwarded-For": address or self.client_address()}
        return httpx.get(self.bases[instance] + path, headers=headers, timeout=10)

    def call(self, instance: int, method: str, path: str, body=None, key=None, **headers):
        """An API call with the shop's key (or `key`'s headers) on an instance."""
        return httpx.request(
            method,
            self.bases[instance] + path,
            json=body,
            headers={**(key or self.shop), **headers},
            timeout=30,
        )

    def enrol(self, instance: int, external_id: str) -> str:
        """Enrol a customer; their referral code."""
        answer = self.call(
            instance,
            "PUT",
            f"/api/v1/customers/{external_id}",
            {"email": f"{external_id}@example.com", "name": "Ada"},
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["referral"]["code"]

    def sign_up(self, instance: int, external_id: str, **referral) -> httpx.Response:
        body = {"external_id": external_id, "email": f"{external_id}@example.net", **referral}
        return self.call(instance, "POST", "/api/v1/signups", body)

    def referred_friend(self, name: str) -> tuple[str, str]:
        """A referrer enrolled on one instance and their friend signed up on the other with the
        referrer's code: (referrer, friend) external ids."""
        referrer, friend = f"{name}-referrer", f"{name}-friend"
        code = self.enrol(0, referrer)
        answer = self.sign_up(1, friend, referral_code=code)
        assert answer.status_code == 201 and answer.json()["attributed"], answer.text
        return referrer, friend

    def rewards_of(self, referrer: str) -> int:
        """How many rewards the database holds for `referrer`."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return connection.execute(
                    text(
                        "SELECT count(*) FROM rewards JOIN customers "
                        "ON customers.id = rewards.customer_id WHERE customers.external_id = :id"
                    ),
                    {"id": referrer},
                ).scalar_one()
        finally:
            engine.dispose()

    def stop(self, instance: int) -> int:
        """SIGTERM to an instance's gunicorn and wait for it (killed after 30 s); its exit code."""
        process = self.processes[instance]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def log_tails(self) -> str:
        return "\n".join(
            f"--- instance {n} ---\n"
            + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            for n, log in enumerate(self.logs)
        )


def cli(env: dict, cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "referral-service"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def wait_until_ready(cluster: Cluster, seconds: float = 60) -> None:
    """Until every instance answers /readyz with 200 (or one has exited: a failure)."""
    deadline = time.monotonic() + seconds
    for instance, base in enumerate(cluster.bases):
        last = "no answer"
        while True:
            if cluster.processes[instance].poll() is not None:
                raise AssertionError(f"instance {instance} exited:\n{cluster.log_tails()}")
            try:
                answer = httpx.get(f"{base}/readyz", timeout=5)
            except httpx.HTTPError as error:
                last = repr(error)
            else:
                if answer.status_code == 200:
                    break
                last = f"{answer.status_code} {answer.text}"
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"instance {instance} is not ready ({last}):\n{cluster.log_tails()}"
                )
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(pg_admin, redis_database, tmp_path_factory):
    """Two instances of `referral-service serve` (two gunicorn workers each) on one freshly
    migrated PostgreSQL database and one Redis database, sharing every setting but the port;
    stopped (SIGTERM, then waited for) and their database dropped at the end, whatever
    happened."""
    folder = tmp_path_factory.mktemp("multi-instance")
    home, runtime = folder / "home", folder / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    name = make_pg_database(pg_admin)
    database_url = _pg_url(name)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_database,
        "SECRET_KEY": secrets.token_hex(32),
        "PUBLIC_BASE_URL": "https://referrals.shop.test",
        "WEB_CONCURRENCY": "2",
        "RATELIMIT_PUBLIC": f"{PUBLIC_LIMIT}/minute",
        "TRUSTED_PROXIES": "1",  # the tests play the proxy: X-Forwarded-For names the visitor
        "CLICK_SPILL_DIR": str(folder / "clicks-spill"),
        "REFERRAL_SERVICE_DOTENV": "0",
        # where gunicorn would put its per-user control socket, shared by both instances
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    ports = [free_port(), free_port()]
    cluster = Cluster(
        bases=[f"http://127.0.0.1:{port}" for port in ports],
        processes=[],
        logs=[folder / f"instance-{n}.log" for n in range(2)],
        database_url=database_url,
        control_socket_paths=[runtime / "gunicorn.ctl", home / ".gunicorn" / "gunicorn.ctl"],
    )
    try:
        cli(env, folder, "db", "upgrade")
        for port, log in zip(ports, cluster.logs, strict=True):
            with open(log, "w") as output:
                cluster.processes.append(
                    subprocess.Popen(
                        [str(BIN / "referral-service"), *SERVE, "--port", str(port)],
                        env=env,
                        cwd=folder,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                    )
                )
        # the key is made while the instances start
        shop_key = cli(env, folder, "api-keys", "create", "checkout", "--scope", "shop")
        cluster.shop = {"Authorization": f"Bearer {shop_key}"}
        wait_until_ready(cluster)
        yield cluster
    finally:
        for instance in range(len(cluster.processes)):
            cluster.stop(instance)
        drop_pg_database(pg_admin, name)


def together(calls: list) -> list:
    """Run the callables at once (each in a thread of its own, released together); their results
    in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def across_both(request) -> list:
    """`request(instance, n)` sent PER_INSTANCE times to each instance at once."""
    return together(
        [lambda n=n: request(n % 2, n) for n in range(2 * PER_INSTANCE)],
    )


def test_racing_first_purchases_on_both_instances_grant_one_reward(cluster):
    """16 first orders of one referred friend at once, 8 on each instance: one converts the
    referral and earns the referrer's reward, the others are told it is already converted."""
    referrer, friend = cluster.referred_friend("race")

    def buy(instance, n):
        order = {
            "order_id": f"race-{n}",
            "customer_external_id": friend,
            "amount": "50.00",
            "currency": "EUR",
        }
        return cluster.call(instance, "POST", "/api/v1/purchases", order)

    answers = across_both(buy)
    assert [a.status_code for a in answers] == [201] * 16, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    converting = [b for b in bodies if b["rewards"]]
    assert len(converting) == 1, bodies
    assert converting[0]["reason"] is None
    assert [r["beneficiary"] for r in converting[0]["rewards"]] == ["referrer"]
    assert sorted(b["reason"] for b in bodies if not b["rewards"]) == ["already_converted"] * 15
    assert cluster.rewards_of(referrer) == 1


def test_replays_of_one_idempotency_key_on_both_instances_grant_one_reward(cluster):
    """16 sends of one purchase with one Idempotency-Key at once, 8 on each instance (a 409
    `conflict` while the first still runs is sent again, as a shop's retry would): one is
    recorded, every other gets its saved answer (the same 201 and body, `Idempotent-Replayed`),
    and one reward exists."""
    referrer, friend = cluster.referred_friend("replay")
    order = {
        "order_id": "replay-1",
        "customer_external_id": friend,
        "amount": "80.00",
        "currency": "EUR",
    }
    key = {"Idempotency-Key": f"checkout-{uuid.uuid4()}"}

    def send(instance, n):
        for _ in range(100):
            answer = cluster.call(instance, "POST", "/api/v1/purchases", order, **key)
            if answer.status_code != 409:
                return answer
            assert answer.json()["error"]["code"] == "conflict", answer.text
            time.sleep(0.05)
        raise AssertionError("the first request with the key never finished")

    answers = across_both(send)
    assert [a.status_code for a in answers] == [201] * 16, [a.text for a in answers]
    first = answers[0].json()
    assert len(first["rewards"]) == 1
    assert all(a.json() == first for a in answers)
    replayed = [a.headers.get("Idempotent-Replayed") for a in answers]
    assert sorted(replayed, key=str) == [None] + ["true"] * 15  # one did the work
    assert cluster.rewards_of(referrer) == 1


def test_the_public_rate_limit_counts_the_hits_of_both_instances(cluster):
    """RATELIMIT_PUBLIC (12 a minute per visitor) spent alternately on the two instances, two
    workers each: the 13th visit is refused on either (each process counting alone would let
    up to four times as many through)."""
    code = cluster.enrol(0, "limited-referrer")
    visitor = "203.0.113.77"
    answers = [cluster.visit(n % 2, f"/r/{code}", visitor) for n in range(PUBLIC_LIMIT)]
    assert [a.status_code for a in answers] == [302] * PUBLIC_LIMIT
    for instance in (0, 1):
        over = cluster.visit(instance, f"/r/{code}/qr.svg", visitor)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "rate_limited"
        assert int(over.headers["Retry-After"]) > 0
    assert cluster.visit(1, f"/r/{code}").status_code == 302  # another visitor has its own budget


def _location_query(answer: httpx.Response) -> dict:
    assert answer.status_code == 302, answer.text
    return urllib.parse.parse_qs(urllib.parse.urlsplit(answer.headers["Location"]).query)


def test_a_code_rotated_on_one_instance_is_refused_on_the_other_at_once(cluster, request):
    """After a rotation on instance 0, a sign-up with the old code on instance 1 is refused
    (`revoked_code`) at once and one with the new code attributes; instance 1's share link goes
    on redirecting the old code with `ref` at most CACHE_SECONDS (what its workers cached)."""
    referrer = "rotating-referrer"
    old = cluster.enrol(0, referrer)
    for _ in range(8):  # instance 1's workers read the old code and cache it
        assert _location_query(cluster.visit(1, f"/r/{old}"))["ref"] == [old]
    rotated_at = time.monotonic()
    rotated = cluster.call(0, "POST", f"/api/v1/customers/{referrer}/referral-code/rotate")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["code"]
    assert new != old

    refused = cluster.sign_up(1, "rotation-friend-old", referral_code=old)
    assert refused.status_code == 201, refused.text
    assert (refused.json()["attributed"], refused.json()["reason"]) == (False, "revoked_code")
    taken = cluster.sign_up(1, "rotation-friend-new", referral_code=new)
    assert taken.json()["attributed"] is True, taken.text
    assert taken.json()["referral"]["referrer_external_id"] == referrer
    assert _location_query(cluster.visit(1, f"/r/{new}"))["ref"] == [new]

    last_with_ref = 0.0
    while (elapsed := time.monotonic() - rotated_at) < CACHE_SECONDS + 1.0:
        if "ref" in _location_query(cluster.visit(1, f"/r/{old}")):
            last_with_ref = elapsed
        time.sleep(0.1)
    print_past_capture(
        request,
        f"MULTI-INSTANCE: the old code still redirected with ref {last_with_ref:.2f} s "
        "after the rotation on the other instance",
    )
    assert last_with_ref <= CACHE_SECONDS + 0.5


def test_a_click_on_one_instance_attributes_a_sign_up_on_the_other_at_once(cluster, request):
    """A visit of a share link on instance 0 (a browser) gives a click_id; a sign-up naming it,
    sent to instance 1 the moment the redirect is answered, is attributed to the referrer,
    within the same second. Five times, each a visitor and a friend of its own."""
    referrer = "clicked-referrer"
    code = cluster.enrol(0, referrer)
    slowest = 0.0
    for n in range(5):
        visit = cluster.visit(0, f"/r/{code}?via=whatsapp")
        answered = time.monotonic()
        [click_id] = _location_query(visit)["click_id"]
        signup = cluster.sign_up(1, f"click-friend-{n}", click_id=click_id)
        slowest = max(slowest, time.monotonic() - answered)
        assert signup.status_code == 201, signup.text
        body = signup.json()
        assert (body["attributed"], body["reason"]) == (True, None), body
        assert body["referral"]["referrer_external_id"] == referrer
    print_past_capture(
        request, f"MULTI-INSTANCE: click on one, sign-up on the other: slowest {slowest:.3f} s"
    )
    assert slowest < 1.0


def test_stopping_one_instance_leaves_the_other_serving(cluster):
    """Neither instance made gunicorn's per-user control socket (both would take the same path,
    and the first to stop would remove it from under the other); SIGTERM to one stops it
    cleanly while the other goes on answering, from both of its workers. (Runs last: it stops
    instance 0.)"""
    for path in cluster.control_socket_paths:
        assert not path.exists(), f"{path} is there: gunicorn's control socket is on"
    assert cluster.stop(0) == 0, cluster.log_tails()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{cluster.bases[0]}/healthz", timeout=2)
    assert cluster.processes[1].poll() is None
    for n in range(4):  # new connections: the two workers of the instance answer in turn
        assert httpx.get(f"{cluster.bases[1]}/readyz", timeout=5).status_code == 200
        assert cluster.enrol(1, f"after-stop-{n}")
    for path in cluster.control_socket_paths:
        assert not path.exists()


def test_a_stopping_worker_refuses_new_connections_before_writing_its_clicks():
    """gunicorn_conf.worker_exit, in the worker's process, closes the worker's listening sockets
    before it writes the buffered clicks (which may take seconds): at a stop the master has
    closed its own copies, so new connections are refused at once (a proxy tries another
    instance) instead of waiting in the queue to be reset when the worker exits. Called in the
    master, for a worker found gone, it leaves the master's sockets open."""
    from referral_service import gunicorn_conf

    listener = socket.create_server(("127.0.0.1", 0))
    seen = []

    class Recorder:
        def close(self):
            seen.append(listener.fileno())

    def worker(pid):
        app = type("App", (), {"extensions": {"clicks": Recorder()}})()
        return type("Worker", (), {"pid": pid, "sockets": [listener], "wsgi": app})()

    try:
        gunicorn_conf.worker_exit(None, worker(os.getpid() + 1))  # the master's call
        assert listener.fileno() != -1
        gunicorn_conf.worker_exit(None, worker(os.getpid()))  # the worker's own
        assert seen[-1] == -1  # closed before the clicks were written
    finally:
        listener.close()

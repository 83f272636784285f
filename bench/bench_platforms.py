"""Throughput of Shopify's `orders/paid` webhook against the API's own `POST /api/v1/purchases`.

What it measures: requests per second, latency (p50/p99), errors and server CPU time per request
of

  * `POST /api/v1/purchases` with a shop key: every request the first purchase of a distinct
    attributed friend, so every one converts its referral and earns the referrer a reward;
  * `POST /integrations/shopify/webhook` with `X-Shopify-Topic: orders/paid`: the same work
    reported the way Shopify reports it, every request a distinct order (an order shaped like
    Shopify's, about 3 kB of JSON, with a cart attribute naming the referral and a discount
    code) of a distinct attributed friend, with its own `X-Shopify-Event-Id` and a valid
    `X-Shopify-Hmac-SHA256` (so each is verified, read, mapped, recorded once in
    `platform_events` and converts);

and the webhook's req/s as a ratio of the purchases' (target >= 0.8: verifying and mapping a
platform's webhook must not be what limits the service). The purchases are loaded before and
after the webhooks, and the ratio is taken against the mean of those two loads, so that a
machine whose speed drifts (other work on it) moves both sides alike.

The signed bodies are made in Python before each wrk run (the HMAC of each body's exact bytes,
under the bench's client secret) and written to a file, one `signature<TAB>event id<TAB>body` a
line, which the wrk Lua script reads at start: thread k of T sends lines k, k + T, ... Each wrk
run (warm-up or measured) takes a range of friends of its own from a pool of attributed friends
(`pool-00000000`, ... written with bulk SQL, as bench_checkout.py does), sized for at most
`--max-rate` requests a second. wrk counts responses of 400 or more as errors; a load with more
than 1% errors fails the run. After each load the database is checked: every answered request
left one purchase and one reward, and every webhook was recorded as `mapped` (so a webhook
acknowledged 200 but ignored, or answered `duplicate`, fails the run too).

The service runs under gunicorn (sync workers, `--workers 2`, a free port on 127.0.0.1) with the
rate limiter on (limits it never reaches: wrk is one address with one key), on a fresh SQLite
database in a temporary directory made with `referral-service db upgrade`, removed at the end
(even on Ctrl-C). Before each load the benchmark waits (up to 10 minutes) until no other `wrk`
runs on the machine; the share of the CPUs other work took meanwhile is reported (`other`).

How to run it (from the repository root):

    .venv/bin/python bench/bench_platforms.py               # 3 s loads (about 30 s in all)
    .venv/bin/python bench/bench_platforms.py --duration 10 --connections 16
    .venv/bin/python bench/bench_platforms.py --help        # threads, workers, max rate, ...

Needs: the service installed in the running Python (`pip install -e '.[dev]'`, which brings
gunicorn) and `wrk` on the PATH (`apt-get install wrk`). Exit status: 0 when the runs complete
(with `--check`: only if the target is met), 1 on a failure, 2 without wrk.
"""

import argparse
import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import platform
import secrets
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from string import Template

from bench_checkout import (
    LUA_PURCHASE,
    SECRET,
    Population,
    check_count,
    check_errors,
    lua,
    populate,
    query,
    settle,
    wait_for_other_wrk,
)
from bench_public import (
    ROOT,
    WRK_SCRIPT,
    BenchError,
    Load,
    Server,
    add_load_options,
    free_port,
    gunicorn_argv,
    measure,
    request,
    run_cli,
    run_main,
    run_process,
    service_env,
    wrk,
)

TARGET = 0.8
CLIENT_SECRET = "shpss_bench_client_secret_0123456789abcdef"
WEBHOOK = "/integrations/shopify/webhook"
PURCHASES = "/api/v1/purchases"
REFERRERS = 100
AMOUNT = "49.90"

# Thread k (from 0) of T sends lines k, k + T, ... of the bodies file; `setup` runs in wrk's
# main Lua state and hands each thread its slot before the thread's `init` reads the file.
LUA_WEBHOOK = """\
local threads = $threads
local slots = 0
local events = {}
local n = 0

function setup(thread)
  thread:set("slot", slots)
  slots = slots + 1
end

function init(args)
  local i = 0
  for line in io.lines("$bodies") do
    if i % threads == slot then
      local signature, id, body = line:match("^([^\\t]*)\\t([^\\t]*)\\t(.*)$$")
      events[#events + 1] = {signature, id, body}
    end
    i = i + 1
  end
end

request = function()
  n = n + 1
  local event = events[(n - 1) % #events + 1]
  return wrk.format("POST", nil, {
    ["Host"] = wrk.host,
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "Shopify-Captain-Hook",
    ["X-Shopify-Topic"] = "orders/paid",
    ["X-Shopify-Shop-Domain"] = "bench-shop.myshopify.com",
    ["X-Shopify-API-Version"] = "2024-04",
    ["X-Shopify-Hmac-SHA256"] = event[1],
    ["X-Shopify-Event-Id"] = event[2],
    ["X-Shopify-Webhook-Id"] = event[2],
  }, event[3])
end
"""


def shopify_hmac(body: bytes) -> str:
    """As Shopify signs a webhook: base64 of the HMAC-SHA256 of the raw body."""
    return base64.b64encode(
        hmac.new(CLIENT_SECRET.encode(), body, hashlib.sha256).digest()
    ).decode()


def _money(amount: str) -> dict:
    return {
        "shop_money": {"amount": amount, "currency_code": "EUR"},
        "presentment_money": {"amount": amount, "currency_code": "EUR"},
    }


def _address(name: str) -> dict:
    return {
        "first_name": name,
        "last_name": "Friend",
        "name": f"{name} Friend",
        "address1": "Marszałkowska 84",
        "address2": "",
        "city": "Warszawa",
        "zip": "00-514",
        "province": None,
        "country": "Poland",
        "country_code": "PL",
        "company": None,
        "phone": "+48 22 555 01 23",
        "latitude": 52.2297,
        "longitude": 21.0122,
    }


def _line_item(number: int, title: str, price: str) -> dict:
    return {
        "id": 866550311766439000 + number,
        "admin_graphql_api_id": f"gid://shopify/LineItem/{866550311766439000 + number}",
        "fulfillable_quantity": 1,
        "fulfillment_service": "manual",
        "fulfillment_status": None,
        "gift_card": False,
        "grams": 250,
        "name": title,
        "price": price,
        "price_set": _money(price),
        "product_exists": True,
        "product_id": 788032119674292900 + number,
        "properties": [],
        "quantity": 1,
        "requires_shipping": True,
        "sku": f"SKU-{number:05d}",
        "taxable": True,
        "title": title,
        "total_discount": "0.00",
        "total_discount_set": _money("0.00"),
        "variant_id": 642667041472713900 + number,
        "variant_title": "M",
        "vendor": "Bench Shop",
        "tax_lines": [{"price": "2.27", "rate": 0.23, "title": "VAT", "price_set": _money("2.27")}],
        "discount_allocations": [],
    }


def shopify_order(order_id: int, friend: str, code: str, paid_at: str) -> dict:
    """An `orders/paid` payload shaped like Shopify's, for `friend` (their customer id here)."""
    email = f"{friend}@example.com"
    return {
        "id": order_id,
        "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "app_id": 580111,
        "browser_ip": "203.0.113.7",
        "buyer_accepts_marketing": False,
        "cancel_reason": None,
        "cancelled_at": None,
        "cart_token": secrets.token_hex(16),
        "checkout_id": order_id + 1,
        "checkout_token": secrets.token_hex(16),
        "closed_at": None,
        "confirmed": True,
        "contact_email": email,
        "created_at": paid_at,
        "currency": "EUR",
        "current_subtotal_price": "45.36",
        "current_subtotal_price_set": _money("45.36"),
        "current_total_discounts": "0.00",
        "current_total_price": AMOUNT,
        "current_total_price_set": _money(AMOUNT),
        "current_total_tax": "4.54",
        "current_total_tax_set": _money("4.54"),
        "customer_locale": "pl",
        "discount_codes": [{"code": "WELCOME10", "amount": "0.00", "type": "percentage"}],
        "email": email,
        "estimated_taxes": False,
        "financial_status": "paid",
        "fulfillment_status": None,
        "landing_site": f"/?ref={code}",
        "name": f"#{order_id % 100000}",
        "note": None,
        "note_attributes": [{"name": "referral_code", "value": code}],
        "number": order_id % 100000,
        "order_number": 1000 + order_id % 100000,
        "payment_gateway_names": ["shopify_payments"],
        "phone": None,
        "presentment_currency": "EUR",
        "processed_at": paid_at,
        "source_name": "web",
        "subtotal_price": "45.36",
        "subtotal_price_set": _money("45.36"),
        "tags": "",
        "tax_lines": [{"price": "4.54", "rate": 0.23, "title": "VAT", "price_set": _money("4.54")}],
        "taxes_included": True,
        "test": False,
        "token": secrets.token_hex(16),
        "total_discounts": "0.00",
        "total_discounts_set": _money("0.00"),
        "total_line_items_price": AMOUNT,
        "total_line_items_price_set": _money(AMOUNT),
        "total_outstanding": "0.00",
        "total_price": AMOUNT,
        "total_price_set": _money(AMOUNT),
        "total_shipping_price_set": _money("0.00"),
        "total_tax": "4.54",
        "total_tax_set": _money("4.54"),
        "total_weight": 500,
        "updated_at": paid_at,
        "billing_address": _address("Zoë"),
        "shipping_address": _address("Zoë"),
        "customer": {
            "id": friend,
            "email": email,
            "created_at": paid_at,
            "updated_at": paid_at,
            "first_name": "Zoë",
            "last_name": "Friend",
            "state": "enabled",
            "note": None,
            "verified_email": True,
            "tax_exempt": False,
            "phone": None,
            "tags": "",
            "currency": "EUR",
        },
        "line_items": [
            _line_item(1, "Linen shirt", "24.95"),
            _line_item(2, "Cotton socks", "24.95"),
        ],
        "shipping_lines": [],
        "refunds": [],
    }


class Friends:
    """Attributed friends of the pool, handed out in disjoint ranges (one per wrk run)."""

    def __init__(self, population: Population, args):
        self.population = population
        self.args = args
        self.next = 0

    def take(self, seconds: int) -> range:
        """Friends enough for a run of `seconds` at `--max-rate`, written first if need be."""
        size = self.args.max_rate * seconds + 64 * self.args.connections
        taken = range(self.next, self.next + size)
        self.next += size
        missing = self.next - self.population.pool_end
        if missing > 0:
            with contextlib.closing(self.population.connect()) as connection:
                self.population.add_pool(connection, missing)
        return taken


class Loads:
    """Writes each wrk run's script (and its bodies) for the friends it takes."""

    def __init__(self, args, tmp: Path, friends: Friends, key: str):
        self.args, self.tmp, self.friends, self.key = args, tmp, friends, key
        self.runs = 0
        self.next_order = 5_000_000_000 + secrets.randbelow(10**9) * 1000  # unique per bench

    def purchases(self, seconds: int) -> Path:
        taken = self.friends.take(seconds)
        script = self.tmp / f"run-{self._count()}-purchases.lua"
        script.write_text(
            lua(self.args, self.key, LUA_PURCHASE, first=taken.start, threads=self.args.threads)
        )
        return script

    def webhooks(self, seconds: int) -> Path:
        taken = self.friends.take(seconds)
        run = self._count()
        bodies = self.tmp / f"run-{run}-bodies.tsv"
        referrers = self.friends.population.referrers
        paid_at = datetime.now(UTC).isoformat(timespec="seconds")
        with open(bodies, "wb") as out:
            for i in taken:
                code = referrers[i % len(referrers)][2]  # the friend's referrer (add_pool)
                self.next_order += 1
                order = shopify_order(self.next_order, f"pool-{i:08d}", code, paid_at)
                body = json.dumps(order, ensure_ascii=False, separators=(", ", ": ")).encode()
                event_id = f"{secrets.token_hex(8)}-{self.next_order}"
                out.write(b"%s\t%s\t%s\n" % (shopify_hmac(body).encode(), event_id.encode(), body))
        script = self.tmp / f"run-{run}-webhooks.lua"
        script.write_text(
            Template(LUA_WEBHOOK).substitute(threads=self.args.threads, bodies=bodies) + WRK_SCRIPT
        )
        return script

    def _count(self) -> int:
        self.runs += 1
        return self.runs


def counts(database: Path) -> dict[str, int]:
    """Rows that a converting purchase adds, and the webhooks recorded as mapped or not."""
    sql = {
        "purchases": "SELECT count(*) FROM purchases",
        "rewards": "SELECT count(*) FROM rewards",
        "mapped": "SELECT count(*) FROM platform_events WHERE outcome = 'mapped'",
        "not mapped": "SELECT count(*) FROM platform_events WHERE outcome <> 'mapped'",
    }
    return {name: query(database, statement)[0] for name, statement in sql.items()}


def load(args, server: Server, database: Path, path: str, label: str, write) -> Load:
    """Warm up, then measure one endpoint, each wrk run with a script of its own (`write(s)`),
    and check what the runs wrote: one converting purchase per answer (and for the webhooks,
    each recorded as mapped)."""
    before = counts(database)
    answered = errors = runs = 0
    if args.warmup:
        wait_for_other_wrk()
        warm = wrk(args, write(args.warmup), server.port, path, args.warmup)
        check_errors(f"{label} (warm-up)", warm, server)
        answered, errors, runs = warm.requests, warm.errors, 1
    wait_for_other_wrk()
    measured_args = argparse.Namespace(**{**vars(args), "warmup": 0})
    result, requests = measure(measured_args, write(args.duration), server, path, label)
    check_errors(label, result.wrk, server)
    settle(database, "purchases")
    after = counts(database)
    made = after["purchases"] - before["purchases"]
    slack = args.connections * (runs + 1)
    check_count(label, made, answered + requests, errors + result.wrk.errors, slack)
    if after["rewards"] - before["rewards"] != made:
        raise BenchError(
            f"{label}: {made} purchases but {after['rewards'] - before['rewards']} rewards: not "
            "every purchase was a converting first purchase (raise --max-rate if the load ran "
            "past its friends)"
        )
    if path == WEBHOOK:
        ignored = after["not mapped"] - before["not mapped"]
        if ignored or after["mapped"] - before["mapped"] != made:
            reasons = query(
                database,
                "SELECT group_concat(reason || ': ' || message, ' | ') FROM platform_events "
                "WHERE outcome <> 'mapped'",
            )[0]
            raise BenchError(
                f"{label}: {made} purchases, {after['mapped'] - before['mapped']} webhooks "
                f"mapped and {ignored} not: {reasons}"
            )
    return result


def check_service(port: int, key: str, loads: Loads, database: Path) -> None:
    """One signed webhook and one API purchase, each converting."""
    friend = loads.friends.take(0)
    code = loads.friends.population.referrers[friend.start % REFERRERS][2]
    paid_at = datetime.now(UTC).isoformat(timespec="seconds")
    body = json.dumps(shopify_order(1, f"pool-{friend.start:08d}", code, paid_at)).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Event-Id": "check-1",
        "X-Shopify-Hmac-SHA256": shopify_hmac(body),
    }
    status, _, answer = _post(port, WEBHOOK, body, headers)
    if status != 200 or json.loads(answer).get("outcome") != "mapped":
        reasons = query(database, "SELECT reason, message FROM platform_events")
        raise BenchError(f"the webhook answered {status}: {answer[:300]!r} ({reasons})")
    status, _, answer = request(
        port,
        "POST",
        PURCHASES,
        body={
            "order_id": "check-2",
            "customer_external_id": f"pool-{friend.start + 1:08d}",
            "amount": AMOUNT,
            "currency": "EUR",
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    if status != 201 or b'"beneficiary"' not in answer:
        raise BenchError(f"POST {PURCHASES} answered {status}: {answer[:300]!r}")


def _post(port: int, path: str, body: bytes, headers: dict):
    """A POST of exactly these bytes (bench_public's `request` encodes a body itself)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _figures(load: Load) -> str:
    cpu, other = load.cpu_per_request_us, load.other_share
    return (
        f"{load.wrk.rps:8.0f}{load.wrk.p50_ms:8.2f}{load.wrk.p99_ms:8.2f}{load.wrk.errors:7d}"
        f"{'?' if cpu is None else f'{cpu:.0f}':>8}{'?' if other is None else f'{other:.0%}':>7}"
    )


def report(before: Load, hooks: Load, after: Load) -> bool:
    """The table and the ratio; True if the target is met."""
    header = (
        f"{'endpoint':<50}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'CPU µs':>8}"
        f"{'other':>7}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    print(f"{'POST ' + PURCHASES + ' (before)':<50}{_figures(before)}")
    print(f"{'POST ' + WEBHOOK + ' (orders/paid)':<50}{_figures(hooks)}")
    print(f"{'POST ' + PURCHASES + ' (after)':<50}{_figures(after)}")
    baseline = (before.wrk.rps + after.wrk.rps) / 2
    ratio = hooks.wrk.rps / baseline if baseline else 0.0
    met = ratio >= TARGET
    cpus = [x.cpu_per_request_us for x in (before, after, hooks)]
    cpu_ratio = "?" if None in cpus else f"{(cpus[0] + cpus[1]) / 2 / cpus[2]:.2f}"
    print(
        f"\nwebhooks {hooks.wrk.rps:.0f} req/s / purchases {baseline:.0f} req/s (mean of before "
        f"and after) = ratio {ratio:.2f}, target >= {TARGET}: {'met' if met else 'NOT MET'}"
        f"\nCPU ratio (purchase CPU µs / webhook CPU µs, the ratio on CPUs free of other "
        f"work): {cpu_ratio}"
    )
    print(
        "\nCPU µs: server CPU time per request (master and workers); other: share of the "
        "machine's CPU taken by other work during the load; errors: socket errors and "
        "responses >= 400."
    )
    return met


def describe(args) -> None:
    version = run_process([args.wrk, "-v"], 10, stdout=subprocess.PIPE, text=True).stdout
    python = platform.python_version()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {python}")
    print(f"wrk: {(version.splitlines() or ['?'])[0].strip()}")
    print(
        f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency (after a "
        f"{args.warmup} s warm-up); server: gunicorn --workers {args.workers} --worker-class "
        "sync, rate limiter on; one endpoint loaded at a time"
    )


def run(args, tmp: Path, servers: list[Server]) -> bool:
    """The whole benchmark; True if the target is met."""
    describe(args)
    database = tmp / "bench.sqlite3"
    port = free_port()
    env = {**service_env(database, port, SECRET), "SHOPIFY_WEBHOOK_SECRETS": CLIENT_SECRET}
    print(f"\nsetting up: db upgrade, a shop API key, {REFERRERS} referrers, a pool of friends")
    run_cli(["db", "upgrade"], env)
    key = run_cli(["api-keys", "create", "bench", "--scope", "shop"], env).strip()
    population = Population(database)
    populate(population, REFERRERS, 0)
    friends = Friends(population, args)
    loads = Loads(args, tmp, friends, key)
    service = Server(
        "service",
        gunicorn_argv("referral_service.wsgi:app", ROOT, port, args.workers),
        ROOT,
        env,
        port,
        tmp / "service.log",
    )
    servers.append(service)
    service.start("/healthz")
    check_service(port, key, loads, database)
    print("\nloading (one endpoint at a time):")
    before = load(args, service, database, PURCHASES, f"POST {PURCHASES}", loads.purchases)
    hooks = load(args, service, database, WEBHOOK, "POST .../shopify/webhook", loads.webhooks)
    after = load(args, service, database, PURCHASES, f"POST {PURCHASES}", loads.purchases)
    service.stop()
    return report(before, hooks, after)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load Shopify's orders/paid webhook and POST /api/v1/purchases with wrk.",
    )
    parser.add_argument("--duration", type=int, default=3, help="seconds per load (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up (default 1)")
    parser.add_argument(
        "--max-rate",
        type=int,
        default=1500,
        help="requests a second a load may reach; sizes the friends each run takes (1500)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    add_load_options(parser)
    parser.set_defaults(connections=8)
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 300 or not 0 <= args.warmup <= 60:
        parser.error("need --duration of 1 to 300 s and --warmup of 0 to 60 s")
    if not 10 <= args.max_rate <= 100_000:
        parser.error("need --max-rate of 10 to 100,000")
    if not 1 <= args.threads <= args.connections <= 1000 or not 1 <= args.workers <= 64:
        parser.error("need 1 <= threads <= connections <= 1000 and 1 to 64 workers")
    return args


def main(argv=None) -> int:
    return run_main(run, parse_args(argv), "platforms")


if __name__ == "__main__":
    sys.exit(main())

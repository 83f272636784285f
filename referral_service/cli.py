"""The `referral-service` command line: it parses arguments and calls domain functions."""

import csv
import io
import json
import logging
import os
import socket
import sqlite3
import sys
from urllib.parse import quote

import click
import psycopg
from flask import current_app
from flask.cli import FlaskGroup, NoAppException, ScriptInfo, with_appcontext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from referral_service import create_app, outages
from referral_service.cli_types import AsciiFloatRange, AsciiIntRange
from referral_service.config import SettingsError, listen_address, server_settings
from referral_service.domain import (
    admins,
    api_keys,
    customers,
    demo,
    fraud,
    portal,
    privacy,
    program,
    rewards,
    rollups,
)
from referral_service.errors import ReferralError, Unavailable, ValidationFailed, is_outage
from referral_service.links import LOCAL_BASE_URL, portal_url
from referral_service.models import utcnow
from referral_service.models.admin import ROLES
from referral_service.models.api_key import SCOPES
from referral_service.worker import POLL_SECONDS, SWEEP_SECONDS, Pump


def _create_app():
    """The application, or a plain error without a traceback for a setting it will not start
    with (a short secret key, a database URL of another scheme, a timeout that is not a number:
    config.py reads every setting and says which one is wrong and what it takes)."""
    try:
        return create_app()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


class _Commands(FlaskGroup):
    """Flask's command group; listing the commands (`--help`) with a setting the service will
    not start with says so in one line, as any command does, not with a traceback; and a
    command that finds its database unusable says so in one line too (`database_trouble`)."""

    def invoke(self, ctx):
        # a command that runs once says a database it cannot use in its own line: not also in
        # the outage warning (the worker and the server log that one, and carry on)
        hush = _OneShotOutages(ctx)
        outage_log = logging.getLogger(outages.__name__)
        outage_log.addFilter(hush)
        try:
            return super().invoke(ctx)
        except Exception as error:
            line = database_trouble(error, ctx)
            if line is None:  # a fault of the code: its traceback is what to read
                raise
            raise click.ClickException(line) from None
        finally:
            outage_log.removeFilter(hush)

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta[_COMMAND] = name
        return name, command, rest

    def list_commands(self, ctx):
        info = ctx.ensure_object(ScriptInfo)
        try:
            info.load_app()
        except click.ClickException as error:
            message = error.format_message()

            def refused():
                raise NoAppException(message)

            info.create_app = refused  # Flask says it in a line, and lists the other commands
        return super().list_commands(ctx)


_COMMAND = "referral_service.command"
LONG_RUNNING = ("worker", "serve", "run")  # they log an outage and carry on


class _OneShotOutages(logging.Filter):
    """Drops the outage lines (outages.py) while a command that runs once runs."""

    def __init__(self, ctx: click.Context):
        super().__init__()
        self.ctx = ctx

    def filter(self, record) -> bool:
        return self.ctx.meta.get(_COMMAND) in LONG_RUNNING


def database_trouble(error: BaseException, ctx: click.Context | None = None) -> str | None:
    """The line that says a command could not use its database, or None when `error` is no
    such thing.

    The database cannot be used when it cannot be connected to (refused, unreachable, no such
    database, a password or an option libpq refuses: an error before any statement), when a
    connection breaks or times out (`is_outage`), when the service's pool already knows it is
    away (`Unavailable`), and when it has no tables yet (`db upgrade` was not run). The line
    gives the driver's first line, without the URL's password; an integrity or a syntax
    error, a fault of the code, is not such a thing.
    """
    seen = set()
    while error is not None and id(error) not in seen:  # the error, or what it was raised from
        seen.add(id(error))
        if isinstance(error, Unavailable):
            return f"{UNUSABLE}: it is away (a connection failed moments ago)"
        if isinstance(error, DBAPIError):
            break
        error = error.__cause__
    else:
        return None
    driver_error = error.orig
    if _missing_table(driver_error) and not _migrating(ctx):
        return (
            f"{UNUSABLE}: it has no tables yet ({_first_line(driver_error, ctx)}); run "
            "`referral-service db upgrade` first"
        )
    if not (
        error.statement is None  # raised while connecting
        or is_outage(error)
        or isinstance(driver_error, (psycopg.OperationalError, psycopg.InterfaceError))
    ):
        return None
    return f"{UNUSABLE}: {_first_line(driver_error, ctx)}"


UNUSABLE = "the database (DATABASE_URL) cannot be used"


def _missing_table(driver_error) -> bool:
    if isinstance(driver_error, psycopg.errors.UndefinedTable):
        return True
    return isinstance(driver_error, sqlite3.OperationalError) and str(driver_error).startswith(
        "no such table"
    )


def _migrating(ctx: click.Context | None) -> bool:
    """Whether the command is one of `db`'s (a missing table there is a fault of a migration)."""
    return ctx is not None and (ctx.invoked_subcommand == "db")


def _first_line(driver_error, ctx: click.Context | None) -> str:
    """The driver's message's first line, with the database password (if any) hidden."""
    lines = str(driver_error).strip().splitlines()
    line = lines[0].strip() if lines else type(driver_error).__name__
    password = None
    if ctx is not None and (info := ctx.find_object(ScriptInfo)) is not None:
        try:
            password = make_url(info.load_app().config["SQLALCHEMY_DATABASE_URI"]).password
        except Exception:  # no app, or no URL: no password of it to hide
            password = None
    if password:
        line = line.replace(password, "***").replace(quote(password, safe=""), "***")
    return line


@click.group(
    cls=_Commands,
    create_app=_create_app,
    add_version_option=False,
    load_dotenv=False,  # config.py reads .env itself: the working directory only, with its switch
    set_debug_flag=False,
)
@click.version_option(package_name="referral-service", prog_name="referral-service")
def main():
    """Referral service: run it, migrate its database, manage keys and admins, import customers."""


@main.command("worker")
@click.option(
    "-w",
    "--workers",
    default=4,
    show_default=True,
    type=AsciiIntRange(1, 64),
    help="Threads that run tasks (deliveries wait on the network: more threads, more at once).",
)
@click.option(
    "--poll",
    default=POLL_SECONDS,
    show_default=True,
    type=AsciiFloatRange(0.1, 60),
    help="Seconds between looks for events the relay has not taken yet.",
)
@click.option(
    "--sweep",
    default=SWEEP_SECONDS,
    show_default=True,
    type=AsciiFloatRange(1, 3600),
    help="Seconds between sweeps for due deliveries and emails (retries, a lost worker's work).",
)
@with_appcontext
def run_worker(workers, poll, sweep):
    """Run the background worker: the outbox relay, webhook deliveries, emails, and every minute
    maturing rewards (daily: purging old risk evidence; hourly: pruning idempotency keys).

    The queue is SQLite (TASKS_FILE, in the instance folder by default), or Redis with
    REDIS_URL. Run as many workers as you like; SIGTERM stops one after its running tasks,
    Ctrl-C at once. A killed worker loses nothing: the database keeps
    every planned delivery and email, and the next worker resumes them.
    """
    tasks = current_app.extensions["tasks"]
    if tasks.huey.immediate:
        raise click.ClickException("TASKS_IMMEDIATE is set: tasks run where they are queued.")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("huey").setLevel(logging.WARNING)  # not a line per task run
    logging.getLogger("huey.consumer").setLevel(logging.INFO)  # its start and stop
    consumer = tasks.huey.create_consumer(
        workers=workers, worker_type="thread", max_delay=0.25, graceful_signal="TERM"
    )
    pump = Pump(tasks, poll, sweep)
    pump.start()
    try:
        consumer.run()
    finally:
        pump.stop()


@main.command("serve")
@click.option("--host", help="Address to listen on (default 127.0.0.1, or BIND).")
@click.option("--port", type=AsciiIntRange(1, 65535), help="Port (default 8000, or BIND).")
def serve(host, port):
    """Run the production server: gunicorn with the package's settings (gunicorn_conf.py:
    WEB_CONCURRENCY workers, THREADS threads each, a graceful shutdown that writes the buffered
    clicks). Put a reverse proxy with TLS in front of it."""
    _create_app()  # a setting it will not start with is said here, in one line
    try:
        bind = server_settings()["bind"]
        given = listen_address(host, port) if host or port else None
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    _check_resolves(given or bind, "--host" if given else "BIND")
    command = [sys.executable, "-m", "gunicorn", "--config", "python:" + GUNICORN_SETTINGS]
    if given:
        command += ["--bind", given]
    sys.stdout.flush()
    os.execv(sys.executable, [*command, "referral_service.wsgi:app"])


GUNICORN_SETTINGS = "referral_service.gunicorn_conf"


def _check_resolves(address: str, source: str) -> None:
    """A host name gunicorn could not resolve is said in one line now (gunicorn would retry
    it for 5 s and log each try); an IP address, a socket or a descriptor is not looked up."""
    if address.startswith(("unix:", "fd://")):
        return
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise click.ClickException(
            f"{source} names the host {host!r}, which does not resolve to an address to listen "
            f"on here ({reason})"
        ) from None


JSON_HELP = "Print a JSON array on standard output, one object a row (times in ISO 8601, UTC)."


def _iso(moment) -> str | None:
    """An aware UTC datetime as ISO 8601 (`2026-11-30T12:41:03+00:00`, as the API writes times),
    or None."""
    return moment.isoformat() if moment is not None else None


def _echo_json(rows) -> None:
    """Rows (dicts of JSON values) as one JSON array on standard output."""
    click.echo(json.dumps(list(rows), indent=2, ensure_ascii=False))


@main.group("api-keys")
def api_keys_group():
    """Create, list and revoke API keys."""


@api_keys_group.command("create")
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    required=True,
    help="shop: customers, sign-ups, purchases, refunds; admin: everything.",
)
@with_appcontext
def create_key(name, scope):
    """Create a key; it is printed once, alone on standard output, and stored only hashed."""
    key = _or_fail(api_keys.create, name, scope)
    click.echo(
        f"Created API key {key.id} {key.name!r} with scope {key.scope}. "
        "Keep it now: it cannot be shown again.",
        err=True,
    )
    click.echo(key.secret)


@api_keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@with_appcontext
def list_keys(as_json):
    """List keys (never the keys themselves: only their first characters)."""
    keys = api_keys.all_keys()
    if as_json:
        _echo_json(
            {
                "id": key.id,
                "name": key.name,
                "scope": key.scope,
                "prefix": key.prefix,
                "created_at": _iso(key.created_at),
                "revoked_at": _iso(key.revoked_at),
                "status": "revoked" if key.revoked_at else "active",
            }
            for key in keys
        )
        return
    click.echo(f"{'ID':>4}  {'NAME':<24} {'SCOPE':<6} {'PREFIX':<13} {'CREATED':<20} STATUS")
    for key in keys:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        click.echo(
            f"{key.id:>4}  {key.name:<24} {key.scope:<6} {key.prefix + '…':<13} "
            f"{key.created_at:%Y-%m-%d %H:%M}Z {status}"
        )


@api_keys_group.command("revoke")
@click.argument("key")
@with_appcontext
def revoke_key(key):
    """Revoke a key, named by its id, its name, the prefix shown by `list`, or the key itself."""
    for revoked in _or_fail(api_keys.revoke, key):
        click.echo(f"Revoked API key {revoked.id} {revoked.name!r}.")


@main.group("admins")
def admins_group():
    """Create, list and change the admins who sign in to /admin.

    A new password, a new role, disabling and `sign-out` end every session of that admin.
    """


def _interactive() -> bool:
    return sys.stdin.isatty()


def _read_password() -> str:
    """The password, asked for twice on a terminal, else one line of standard input."""
    if _interactive():
        return click.prompt(
            "Password (12 characters or more)", hide_input=True, confirmation_prompt=True
        )
    return sys.stdin.readline().rstrip("\r\n")


@admins_group.command("create")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="owner",
    show_default=True,
    help="viewer: reads; approver: also approves, rejects and pays; owner: also settings and keys.",
)
@with_appcontext
def create_admin(email, role):
    """Create an admin; the password is asked for (twice), or read as one line from standard
    input when it is not a terminal."""
    admin = _or_fail(admins.create, email, _read_password(), role)
    click.echo(f"Created admin {admin.id} {admin.email} with role {admin.role}.")


@admins_group.command("list")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@with_appcontext
def list_admins(as_json):
    """List admins with their roles and last sign-in."""
    everyone = admins.all_admins()
    if as_json:
        _echo_json(
            {
                "id": admin.id,
                "email": admin.email,
                "role": admin.role,
                "last_sign_in_at": _iso(admin.last_sign_in_at),
                "disabled_at": _iso(admin.disabled_at),
                "status": "disabled" if admin.disabled_at else "active",
            }
            for admin in everyone
        )
        return
    click.echo(f"{'ID':>4}  {'EMAIL':<32} {'ROLE':<9} {'LAST SIGN-IN':<18} STATUS")
    for admin in everyone:
        last = f"{admin.last_sign_in_at:%Y-%m-%d %H:%M}Z" if admin.last_sign_in_at else "never"
        status = f"disabled {admin.disabled_at:%Y-%m-%d %H:%M}" if admin.disabled_at else "active"
        click.echo(f"{admin.id:>4}  {admin.email:<32} {admin.role:<9} {last:<18} {status}")


@admins_group.command("disable")
@click.argument("email")
@with_appcontext
def disable_admin(email):
    """Disable an admin: they can no longer sign in, and their open sessions end."""
    admin = _or_fail(admins.disable, email)
    click.echo(f"Disabled admin {admin.id} {admin.email}.")


@admins_group.command("set-password")
@click.argument("email")
@with_appcontext
def set_admin_password(email):
    """Give an admin a new password (asked for twice, or read as one line from standard input
    when it is not a terminal); their open sessions end."""
    admin = _or_fail(admins.set_password, email, _read_password())
    click.echo(f"New password for admin {admin.id} {admin.email}; their sessions have ended.")


@admins_group.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice(ROLES))
@with_appcontext
def set_admin_role(email, role):
    """Give an admin another role; their open sessions end (they sign in again under it)."""
    admin = _or_fail(admins.set_role, email, role)
    click.echo(f"Admin {admin.id} {admin.email} now has the role {admin.role}; sessions ended.")


@admins_group.command("sign-out")
@click.argument("email")
@with_appcontext
def sign_out_admin(email):
    """End every open session of an admin (a lost laptop, a copied cookie)."""
    admin = _or_fail(admins.sign_out_everywhere, email)
    click.echo(f"Ended every session of admin {admin.id} {admin.email}.")


@main.group("rewards")
def rewards_group():
    """Move rewards along their lifecycle."""


@rewards_group.command("mature")
@with_appcontext
def mature_rewards():
    """Move rewards whose hold has passed to awaiting_approval (or approved, when allowed).

    Safe to run from cron, and concurrently with itself.
    """
    moved = rewards.mature()
    click.echo(
        f"{moved['awaiting_approval']} now awaiting approval, {moved['approved']} auto-approved."
    )


@main.group("risk")
def risk_group():
    """Risk evidence: keyed hashes of IP addresses, user agents and device ids."""


@risk_group.command("purge")
@with_appcontext
def purge_risk_evidence():
    """Empty the hashes older than the program's `risk_retention_days` (run it daily from cron)."""
    days = program.settings()["risk_retention_days"]
    emptied = fraud.purge(days, utcnow())
    click.echo(
        f"Emptied the evidence of {emptied['signups']} sign-ups and {emptied['clicks']} clicks "
        f"older than {days} days."
    )


@main.group("clicks")
def clicks_group():
    """Roll up share-link clicks and prune the old ones (the funnel's figures stay the same)."""


@clicks_group.command("roll-up")
@with_appcontext
def roll_up_clicks():
    """Count the clicks of the days before today (UTC) into the daily roll-ups that the funnel
    reads (the worker does it every hour). Safe to run from cron, and concurrently with itself."""
    click.echo(f"{rollups.roll_up()} clicks rolled up.")


@clicks_group.command("prune")
@click.option(
    "--keep-days",
    type=AsciiIntRange(min=0, max=36_500),
    help="Days of click rows to keep; at least the attribution window "
    f"(default: the window and {rollups.PRUNE_MARGIN.days} days more).",
)
@with_appcontext
def prune_clicks(keep_days):
    """Roll up, then delete the click rows of the days ended more than --keep-days ago (the
    worker does it every night). The funnel and the customers' counters read the roll-ups, so
    their figures stay the same."""
    window = program.settings()["attribution_window_days"]
    done = _or_fail(rollups.prune, window, keep_days)
    click.echo(
        f"{done['rolled_up']} clicks rolled up; {done['pruned']} click rows dated before "
        f"{done['pruned_until'].isoformat()} deleted."
    )


@main.group("customers")
def customers_group():
    """Enrol existing customers; export or erase what is held about one."""


@customers_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--batch-size", default=1000, show_default=True, type=AsciiIntRange(1, 10000))
@with_appcontext
def import_customers(file, batch_size):
    """Enrol the customers of a CSV file with columns external_id,email[,name,locale].

    Rows with problems are reported with their line numbers and skipped; the others are kept.
    Customers already enrolled are updated and keep their codes, so re-running is safe.
    """
    try:
        if not file.seekable():  # a pipe: read it whole, to count its rows for the progress bar
            file = io.StringIO(file.read())
        total = _count_rows(file)
    except UnicodeDecodeError:
        raise click.ClickException(
            "The file is not UTF-8 text: save it as CSV in UTF-8 and try again."
        ) from None
    reader = csv.DictReader(file)
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    missing = {"external_id", "email"} - set(header)
    if missing:
        raise click.ClickException(
            f"The first line must name the columns external_id,email[,name,locale]; "
            f"missing: {', '.join(sorted(missing))}."
        )
    reader.fieldnames = header

    def rows():
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield reader.reader.line_num, {"_error": str(error)}
                continue
            if None in row:
                yield reader.line_num, {"_error": "more values than columns"}
                continue
            yield reader.line_num, row

    with click.progressbar(
        length=total, label="Importing customers", file=sys.stderr, show_pos=True
    ) as bar:
        report = customers.import_customers(rows(), batch_size=batch_size, progress=bar.update)
    for line, problem in report.errors:
        click.echo(f"line {line}: {problem}", err=True)
    click.echo(
        f"{report.created} created, {report.updated} updated, {report.unchanged} "
        f"unchanged, {len(report.errors)} rejected."
    )


@customers_group.command("portal-link")
@click.argument("external_id")
@click.option(
    "--expires-in",
    type=AsciiIntRange(),
    default=portal.DEFAULT_EXPIRES_IN,
    show_default=True,
    help="Seconds the link works (60 to a year).",
)
@with_appcontext
def portal_link(external_id, expires_in):
    """Print a signed link to a customer's share page (set PUBLIC_BASE_URL for its address)."""
    link = _or_fail(portal.issue_link, external_id, expires_in)
    click.echo(portal_url(link.token))
    click.echo(f"It works until {link.expires_at.isoformat()}.", err=True)


@customers_group.command("export")
@click.argument("external_id")
@with_appcontext
def export_customer(external_id):
    """Print everything held about a customer as JSON."""
    click.echo(json.dumps(_or_fail(privacy.export, external_id), indent=2, ensure_ascii=False))


@customers_group.command("erase")
@click.argument("external_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def erase_customer(external_id, yes):
    """Erase a customer's personal data (email, name, locale, risk evidence) for good; the money
    ledger (rewards, payouts, clawbacks) and the audit log stay whole."""
    if not yes:
        click.confirm(
            f"Erase the personal data of customer {external_id!r}? This cannot be undone",
            abort=True,
            err=True,
        )
    card = _or_fail(privacy.erase, external_id, privacy.CLI_ACTOR)
    click.echo(f"Customer {card.external_id} erased at {card.erased_at.isoformat()}.")


@main.command("demo")
@click.option(
    "--customers",
    "size",
    default=demo.DEFAULT_CUSTOMERS,
    show_default=True,
    type=AsciiIntRange(demo.MIN_CUSTOMERS, demo.MAX_CUSTOMERS),
    help="About how many customers the shop has (the visits, orders and rewards scale with it).",
)
@click.option(
    "--seed",
    default=demo.DEFAULT_SEED,
    show_default=True,
    type=AsciiIntRange(0),
    help="The same seed makes the same people, visits and orders.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Add the demo data beside customers already there (theirs are never touched).",
)
@with_appcontext
def fill_demo(size, seed, force):
    """Fill the database with a year of realistic, clearly fake data (customers, share visits by
    channel, sign-ups, purchases, refunds, rewards, payouts) to see every page of the console
    full. Refuses a database that has customers, unless --force."""
    click.echo(f"Making a year of demo data for about {size} customers...", err=True)
    report = _or_fail(demo.fill, size, seed, force)
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(report.rewards.items()))
    click.echo(
        f"{report.customers} customers ({report.enrolled} enrolled before the year, "
        f"{report.signups} signed up during it, {report.referred} of them referred)."
    )
    click.echo(
        f"{report.visits} share-link visits counted ({report.bot_visits} by bots and "
        f"{report.repeat_visits} repeats within the hour not counted)."
    )
    click.echo(
        f"{report.purchases} purchases, {report.refunds} refunds, {report.clawbacks} clawbacks; "
        f"rewards: {statuses or 'none'}; {report.payouts} payouts paid."
    )
    if report.settings_changed:
        click.echo("The program's settings were at their defaults: set to the demo's.")
    click.echo(f"Done in {report.seconds:.1f} s. To see it: run the service, create an admin")
    click.echo("  referral-service admins create you@example.com")
    click.echo(f"and sign in at {_console_url()}.")


def _console_url() -> str:
    """The console's address: under PUBLIC_BASE_URL when set, else the local server's."""
    base = current_app.config.get("PUBLIC_BASE_URL") or LOCAL_BASE_URL
    return base.rstrip("/") + "/admin"


def _count_rows(file) -> int:
    """Data rows of a seekable file, unreadable ones included (for the progress bar); rewound."""
    reader = csv.reader(file)
    count = 0
    while True:
        try:
            next(reader)
        except StopIteration:
            break
        except csv.Error:
            pass
        count += 1
    file.seek(0)
    return max(count - 1, 0)


def _or_fail(fn, *args):
    """`fn(*args)`, or a one-line error (exit status 1) for what the domain refused; for invalid
    input, the fields' own messages (`keep_days: Must be at least ...`), not the API's "The
    request has invalid fields."."""
    try:
        return fn(*args)
    except ReferralError as error:
        fields = error.fields or {}
        if isinstance(error, ValidationFailed) and fields:
            raise click.ClickException(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items())
            ) from None
        details = "; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items())
        raise click.ClickException(f"{error.message} {details}".strip()) from None

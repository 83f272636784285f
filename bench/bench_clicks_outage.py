"""Clicks kept through a database outage and a SIGTERM: gunicorn against PostgreSQL.

What it measures: gunicorn (two workers, the package's settings) writes its clicks to a fresh
PostgreSQL database through a TCP proxy of its own (tests/tcp_proxy.py); the proxy is cut (or
frozen: the server hangs), `--visits` share-link visits are made, each a visitor of its own,
the server is stopped with SIGTERM while the database is still away, the proxy is restored and
the server started again; then the click rows are counted. It prints the visits that got a
click id during the outage (sent), how many of those are in the database after the restart
(kept), and the seconds it took. The scenario is the one of
tests/test_clicks_outage.py::test_gunicorn_keeps_the_clicks_of_an_outage_through_a_sigterm.

    .venv/bin/python bench/bench_clicks_outage.py --visits 2000 --fault cut \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

The database named in the URL is only used to create (and at the end drop) a database of the
run's own; the PostgreSQL server is never stopped or reconfigured.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=2000)
    parser.add_argument("--fault", choices=["cut", "freeze"], default="cut")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL")
        or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    )
    args = parser.parse_args()
    os.environ["TEST_DATABASE_URL"] = args.database_url  # read by the tests' helpers at import

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from tests.conftest import _pg_url, drop_pg_database, make_pg_database
    from tests.tcp_proxy import TcpProxy
    from tests.test_clicks_outage import run_an_outage

    url = make_url(args.database_url)
    admin = create_engine(_pg_url(url.database), isolation_level="AUTOCOMMIT")
    name = make_pg_database(admin)
    started = time.monotonic()
    try:
        with (
            TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy,
            tempfile.TemporaryDirectory() as folder,
        ):
            kept, sent, _ = run_an_outage(proxy, args.fault, name, Path(folder), args.visits)
    finally:
        drop_pg_database(admin, name)
        admin.dispose()
    print(
        f"clicks through an outage ({args.fault}) and a SIGTERM: visits {args.visits}, "
        f"sent {sent}, kept {kept} ({time.monotonic() - started:.1f} s)"
    )
    sys.exit(0 if kept == sent > 0 else 1)


if __name__ == "__main__":
    main()

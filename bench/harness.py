"""What the benchmark suite (`bench/suite.py`) adds to the helpers of `bench/bench_public.py`:
gunicorn with sync or gthread workers, the resident memory of a server's workers, a PostgreSQL
database made and dropped for one run, and a Redis database emptied before and after one.

bench_public.py stays the home of the helpers every benchmark shares (Server, wrk, measure,
service_env, run_main, ...); they are imported from there, unchanged, so that the benchmarks
that import them keep working as documented.
"""

import contextlib
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench_public import HOST, ROOT, BenchError, Server, run_process

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def gunicorn_argv(
    app: str, chdir: Path, port: int, workers: int, kind: str = "sync", threads: int = 4
) -> list[str]:
    """gunicorn with the service's configuration file and the same settings for every
    application: `kind` "sync" (one thread a worker) or "gthread" (`threads` a worker)."""
    if kind not in ("sync", "gthread"):
        raise ValueError(f"worker kind {kind!r}: sync or gthread")
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:referral_service.gunicorn_conf",
        "--workers",
        str(workers),
        "--worker-class",
        kind,
        "--threads",
        "1" if kind == "sync" else str(threads),
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        "--chdir",
        str(chdir),
        app,
    ]


def _stat_fields(pid: str) -> list[str] | None:
    try:
        stat = Path("/proc", pid, "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # from field 3, "state", on


def worker_rss(server: Server) -> list[int]:
    """Resident memory (bytes) of each of the server's workers (its process group but the
    master), from /proc; empty when /proc is not there or the server is not running."""
    if server.proc is None or server.proc.poll() is not None:
        return []
    master = server.proc.pid
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == master:
                continue
            fields = _stat_fields(name)
            if fields and int(fields[2]) == master:  # process group: the master's pid
                found.append(int(fields[21]) * PAGE_SIZE)  # rss, in pages
    return sorted(found)


@contextlib.contextmanager
def postgres_database(admin_url: str, prefix: str = "bench_suite") -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped at the end (its connections ended
    first): yields its URL for SQLAlchemy (postgresql+psycopg://...)."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    admin = url.set(drivername="postgresql").render_as_string(False)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        raise BenchError(f"cannot create a PostgreSQL database at {url.host}: {error}") from None
    try:
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')


@contextlib.contextmanager
def redis_database(url: str) -> Iterator[str]:
    """A Redis database the run owns: emptied (FLUSHDB) before and after it. Raises BenchError
    when Redis does not answer."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as error:
        raise BenchError(f"Redis at {url} does not answer: {error}") from None
    try:
        yield url
    finally:
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
        client.close()


def describe_machine(wrk: str) -> None:
    """Print what the figures were measured with: the service's commit, the machine, Python and
    the version of `wrk` (the program named)."""
    version = run_process([wrk, "-v"], 10, stdout=subprocess.PIPE, text=True).stdout
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = run_process(
            ["git", "describe", "--always", "--dirty"],
            10,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ).stdout.strip()
        print(f"service: commit {commit or '?'}")
    python = platform.python_version()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {python}")
    print(f"wrk: {(version.splitlines() or ['?'])[0].strip()}")

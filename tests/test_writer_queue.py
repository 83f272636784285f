"""SQLite writers queue on a file lock from `BEGIN IMMEDIATE` to the end of their transaction."""

import fcntl
import threading
import time

import pytest
from sqlalchemy import create_engine, func, insert, select

from referral_service.extensions import db
from referral_service.models import ApiKey, utcnow
from referral_service.models.base import begin_write, writer_queue

pytestmark = pytest.mark.sqlite_only


def _held_elsewhere(path: str) -> bool:
    """Whether another open file description holds the queue's lock (as another process would)."""
    with open(path, "a+b") as other:
        try:
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
        return False


@pytest.fixture
def queue(app):
    with app.app_context():
        found = writer_queue(db.engine)
        assert found is not None and found.path.endswith("-writer.lock")
        yield found


def _add_key(name: str) -> None:
    db.session.execute(
        insert(ApiKey).values(
            name=name,
            prefix=name[:8],
            key_hash=name.ljust(64, "0"),
            scope="shop",
            created_at=utcnow(),
        )
    )


@pytest.mark.parametrize("end", ["commit", "rollback", "close"])
def test_the_turn_lasts_until_the_transaction_ends(app, queue, end):
    begin_write(db.session)
    assert _held_elsewhere(queue.path)
    _add_key(f"key-{end}")
    getattr(db.session, end)()
    assert not _held_elsewhere(queue.path)


def test_a_failed_begin_gives_the_turn_back(app, queue, monkeypatch):
    session = db.session()

    def refuse(*args, **kwargs):
        raise RuntimeError("no connection")

    monkeypatch.setattr(session, "connection", refuse)
    with pytest.raises(RuntimeError):
        begin_write(db.session)
    assert not _held_elsewhere(queue.path)


def test_reads_take_no_turn(app, queue):
    db.session.scalar(select(func.count()).select_from(ApiKey))
    assert not _held_elsewhere(queue.path)
    db.session.rollback()


def test_writers_of_many_threads_take_turns(app, queue):
    inside, most, errors = [0], [0], []
    guard = threading.Lock()

    def writer(n: int) -> None:
        with app.app_context():
            try:
                for i in range(5):
                    begin_write(db.session)
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    _add_key(f"thread-{n}-{i}")
                    time.sleep(0.002)
                    with guard:
                        inside[0] -= 1
                    db.session.commit()
            except Exception as error:  # reported below
                errors.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert most[0] == 1  # never two writers inside at once
    assert db.session.scalar(select(func.count()).select_from(ApiKey)) == 30
    assert not _held_elsewhere(queue.path)


def test_no_queue_for_postgresql_or_memory():
    assert writer_queue(create_engine("sqlite://")) is None
    assert writer_queue(create_engine("postgresql+psycopg://u@127.0.0.1/x")) is None

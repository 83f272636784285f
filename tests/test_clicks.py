"""The click buffer: batches, a refused row, a database away, and its cap."""

import pytest
from sqlalchemy import func, select

from referral_service.domain.clicks import ClickRecorder
from referral_service.extensions import db
from referral_service.models import Click, utcnow
from tests import factories


def stored(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Click))


def referrer(app):
    with app.app_context():
        card = factories.customer()
        from referral_service.domain.codes import lookup

        return lookup(card.code)


def recorder_for(app, **kwargs) -> ClickRecorder:
    with app.app_context():
        engine = db.engine
    return ClickRecorder(lambda: engine, interval=60, flush_size=10_000, **kwargs)


def test_a_refused_row_does_not_block_the_others(app):
    active = referrer(app)
    recorder = recorder_for(app)
    recorder.record(active.code_id, active.referrer_id, "qr", utcnow())
    recorder.record(999_999, active.referrer_id, "qr", utcnow())  # no such code: refused
    recorder.record(active.code_id, active.referrer_id, "link", utcnow())
    recorder.flush()
    assert stored(app) == 2 and recorder.pending() == 0


def test_clicks_wait_while_the_database_is_away(app):
    active = referrer(app)
    with app.app_context():
        engine = db.engine
    away = {"now": True}

    def engine_factory():
        if away["now"]:
            raise ConnectionError("database away")
        return engine

    recorder = ClickRecorder(engine_factory, interval=60, flush_size=10_000)
    for _ in range(3):
        recorder.record(active.code_id, active.referrer_id, None, utcnow())
    with pytest.raises(ConnectionError):
        recorder.flush()
    assert recorder.pending() == 3 and stored(app) == 0
    away["now"] = False
    assert recorder.flush() == 3
    assert stored(app) == 3


def test_the_buffer_is_capped(app):
    active = referrer(app)
    recorder = recorder_for(app, max_pending=3)
    ids = [recorder.record(active.code_id, active.referrer_id, None, utcnow()) for _ in range(5)]
    assert len(set(ids)) == 5  # every visitor still gets a click id and a redirect
    assert recorder.pending() == 3 and recorder.dropped == 2
    recorder.flush()
    assert stored(app) == 3

"""The service with its events switched off: the baseline of `bench_checkout.py`'s events part.

What it is: the service exactly as `referral_service.wsgi` builds it, except that the unit of
work writes no outbox rows (`Unit._write_events` returns nothing), so no event is written, no
relay is queued after a commit and the worker has nothing to relay. `bench_checkout.py` runs it
under gunicorn beside the real service, on the same database and with the same settings, and
loads the two in turn: the difference is what events cost the checkout.

How to run it alone (from the repository root, with the service's environment set):

    .venv/bin/gunicorn -c python:referral_service.gunicorn_conf --chdir bench events_off_app:app
"""

from referral_service import create_app
from referral_service.domain.unit import Unit

Unit._write_events = lambda self: []
app = create_app()

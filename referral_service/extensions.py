"""Unbound extension singletons; `create_app` binds them to an application."""

from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

from referral_service import outages
from referral_service.errors import ErrorEnvelope, is_outage
from referral_service.models.base import Base


class ReferralApi(Api):
    """flask-smorest's Api, with our error envelope; each operation lists the errors it can give.

    (No catch-all `default` response: a status an operation does not document is a spec bug.)
    """

    ERROR_SCHEMA = ErrorEnvelope
    DEFAULT_ERROR_RESPONSE_NAME = None


class ReferralSQLAlchemy(SQLAlchemy):
    """Flask-SQLAlchemy, whose clean-up at the end of each request survives a database that is
    away: with the database known to be away, the session's connections are dropped without
    the ROLLBACK that would wait for a server that does not answer; otherwise the ROLLBACK waits
    for its answer as briefly as a pre-ping (database.QUICK_ANSWER seconds); a clean-up that
    meets an outage drops the session instead of turning an answer already made into a 500."""

    def _teardown_session(self, exc: BaseException | None) -> None:
        from referral_service.database import QUICK_ANSWER, waiting_at_most  # imports this

        try:
            if outages.dependency("database").down:
                if self.session.registry.has():
                    self.session().invalidate()  # no round trip to the server
            else:
                with waiting_at_most(QUICK_ANSWER, connecting=False):
                    self.session.remove()
        except Exception as error:
            if not is_outage(error):
                raise
        self.session.registry.clear()


db = ReferralSQLAlchemy(model_class=Base)
migrate = Migrate()
api = ReferralApi()
# limits are declared in rate_limits.py; each one names its own key (API key, address, referrer)
limiter = Limiter(key_func=get_remote_address)
# CSRF tokens for the admin console's forms; its blueprint checks them (the API uses bearer keys)
csrf = CSRFProtect()
# the public pages' languages (i18n.py chooses one per request; catalogs in translations/)
babel = Babel()

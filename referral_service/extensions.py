"""Unbound extension singletons; `create_app` binds them to an application."""

from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

from referral_service.errors import ErrorEnvelope
from referral_service.models.base import Base


class ReferralApi(Api):
    """flask-smorest's Api, with our error envelope; each operation lists the errors it can give.

    (No catch-all `default` response: a status an operation does not document is a spec bug.)
    """

    ERROR_SCHEMA = ErrorEnvelope
    DEFAULT_ERROR_RESPONSE_NAME = None


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
api = ReferralApi()
# limits are declared in rate_limits.py; each one names its own key (API key, address, referrer)
limiter = Limiter(key_func=get_remote_address)
# CSRF tokens for the admin console's forms; its blueprint checks them (the API uses bearer keys)
csrf = CSRFProtect()
# the public pages' languages (i18n.py chooses one per request; catalogs in translations/)
babel = Babel()

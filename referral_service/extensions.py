"""Unbound extension singletons; `create_app` binds them to an application."""

from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy

from referral_service.errors import ErrorEnvelope
from referral_service.models.base import Base


class ReferralApi(Api):
    """flask-smorest's Api, documenting our error envelope as the default error."""

    ERROR_SCHEMA = ErrorEnvelope


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
api = ReferralApi()

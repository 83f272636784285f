"""The API blueprint: flask-smorest's, with a JSON parser that answers unreadable bodies 400."""

import json

import flask_smorest
from webargs.flaskparser import FlaskParser


class JsonBodyParser(FlaskParser):
    """webargs' parser, also refusing bodies nested too deep or with numbers too long to read.

    Python's JSON decoder raises RecursionError for deep nesting and ValueError for an integer
    of more than 4300 digits; both become the usual invalid-JSON answer (400) instead of a 500.
    """

    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except json.JSONDecodeError:
            raise
        except (RecursionError, ValueError) as error:
            raise json.JSONDecodeError(f"Unreadable JSON: {error}", "<body>", 0) from None


class Blueprint(flask_smorest.Blueprint):
    """A flask-smorest blueprint parsing with JsonBodyParser."""

    ARGUMENTS_PARSER = JsonBodyParser()

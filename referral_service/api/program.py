"""`/api/v1/program`: the program settings."""

from flask.views import MethodView

from referral_service.api import schemas
from referral_service.api.admin import actor
from referral_service.api.auth import requires
from referral_service.api.blueprint import Blueprint
from referral_service.domain import program

blp = Blueprint(
    "program",
    __name__,
    url_prefix="/api/v1/program",
    description="The referral program's settings.",
)


@blp.route("")
class Program(MethodView):
    """The program settings."""

    @requires(blp, "shop")
    @blp.response(200, schemas.ProgramSettings)
    def get(self):
        """The settings, with their defaults."""
        return program.settings()

    @requires(blp, "admin")
    @blp.arguments(schemas.ProgramPatch())
    @blp.response(200, schemas.ProgramSettings)
    def patch(self, changes):
        """Change some settings; the whole result is validated, then saved at once (audited)."""
        return program.update(changes, actor())

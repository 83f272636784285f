"""`GET /referral.js`: the script a shop adds to its pages to keep a visitor's referral.

The script (templates/public/referral.js) has the program's attribution window baked in, so its
bytes change when the window does; its `ETag` is a hash of the bytes served. `/referral.js` may
be cached for a few minutes; `/referral.js?v=<that hash>` names one version of the bytes and may
be cached for good, while a `v` that is not the current hash gets the current script with the
short cache. While this process cannot know the settings (the database away since it started),
the script is served with the program's default window and must be checked again at each use:
the cookie it writes keeps the landing time, so a later script corrects the expiry. Each line
is served without its indentation, which is a quarter of the script's bytes.
"""

import hashlib

from flask import current_app, request
from flask.views import MethodView

from referral_service.domain import program
from referral_service.errors import Unavailable
from referral_service.models import Program
from referral_service.public.views import blp

TEMPLATE = "public/referral.js"
MIMETYPE = "application/javascript"
SHORT = "public, max-age=300"
FOREVER = "public, max-age=31536000, immutable"
UNKNOWN = "no-cache"  # the default window: used, but asked again each time
DEFAULT_DAYS = Program.__table__.c.attribution_window_days.default.arg
VERSION = {
    "in": "query",
    "name": "v",
    "required": False,
    "schema": {"type": "string"},
    "description": "The script's hash (its `ETag`): the answer may then be cached for good. "
    "Another value gets the current script with the short cache.",
}


def _script(days: int) -> tuple[bytes, str]:
    """The script's bytes for an attribution window of `days`, and their hash (made once per
    process and window)."""
    made = current_app.extensions.setdefault("referral_js", {})
    if days not in made:
        text = current_app.jinja_env.get_template(TEMPLATE).render(days=days)
        # indentation dropped (no line of the script continues a string): a quarter of the bytes
        body = "\n".join(line.strip() for line in text.splitlines() if line.strip()) + "\n"
        made[days] = body.encode(), hashlib.sha256(body.encode()).hexdigest()[:20]
    return made[days]


@blp.route("/referral.js")
class ReferralScript(MethodView):
    """The shop's script that keeps `ref` and `click_id` and fills them into forms."""

    @blp.doc(
        parameters=[VERSION],
        responses={
            "200": {
                "description": "The script, with `ETag` and `Cache-Control`.",
                "content": {MIMETYPE: {"schema": {"type": "string"}}},
            }
        },
    )
    @blp.alt_response(304, description="Not modified (`If-None-Match`).")
    def get(self):
        """The script to add to a shop's pages: `<script src=".../referral.js" defer>`.

        It keeps the `ref` and `click_id` a visitor landed with (what `/r/<code>` adds) in a
        first-party cookie for the program's attribution window (the last click wins), fills
        them into every `input[name=referral_code]` and `input[name=click_id]` left empty,
        posts them as cart attributes on Shopify, and exposes them as `window.referral`
        (`{code, clickId}`) and the `referral:ready` event for a checkout of the shop's own.
        """
        try:
            days, cache = program.settings(last_known=True)["attribution_window_days"], SHORT
        except Unavailable:
            days, cache = DEFAULT_DAYS, UNKNOWN
        body, digest = _script(days)
        if cache == SHORT and request.args.get("v") == digest:
            cache = FOREVER
        headers = {
            "ETag": f'"{digest}"',
            "Cache-Control": cache,
            "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "cross-origin",  # loaded by the shop's pages
        }
        if request.if_none_match.contains_weak(digest):
            return current_app.response_class(status=304, headers=headers)
        return current_app.response_class(body, mimetype=MIMETYPE, headers=headers)

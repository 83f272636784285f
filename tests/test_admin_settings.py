"""The admin console's settings form, API keys and audit log, with Flask's test client.

CSRF stays on: every form is posted with the token read from the page that carries it.
"""

import re

import pytest
from sqlalchemy import select

from referral_service.domain import audit, program
from referral_service.extensions import db
from referral_service.models import ApiKey, AuditRecord
from tests.test_admin_console import TOKEN, signed_in_as, token

SECRET = re.compile(r'id="secret" class="secret" readonly value="([^"]+)"')


def save(client, **fields):
    """POST the settings form (only the given inputs: the others stay as they are)."""
    form = {"csrf_token": token(client, "/admin/settings"), **fields}
    return client.post("/admin/settings", data=form)


def saved(app) -> dict:
    with app.app_context():
        app.extensions["program_cache"].clear()
        return program.settings()


def records(app) -> list[AuditRecord]:
    with app.app_context():
        found = list(db.session.scalars(select(AuditRecord).order_by(AuditRecord.id)))
        db.session.expunge_all()
        return found


# --- settings ------------------------------------------------------------------------------------


def test_settings_form_shows_every_setting_with_labels(app, client):
    signed_in_as(app, client, "viewer")
    page = client.get("/admin/settings")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    current = saved(app)
    for name in current:
        assert f'name="{name}' in html, name  # `referrer_reward.type` and so on for the nested
    for input_id in re.findall(r'<(?:input|select|textarea) id="([^"]+)"', html):
        assert f'<label for="{input_id}"' in html, input_id
    assert f'name="hold_days" value="{current["hold_days"]}"' in html
    # a viewer reads, but the form is disabled and has no button
    assert "<fieldset disabled>" in html and "Save settings" not in html


def test_owner_saves_a_valid_change_and_it_is_audited(app, client):
    email = signed_in_as(app, client, "owner")
    before = saved(app)
    response = save(
        client,
        hold_days="21",
        **{"referrer_reward.type": "fixed", "referrer_reward.value": "12.50"},
        coupon_sites="Deals.Example\n\n  coupons.example  \n",
        auto_approve_max_amount="",
        paused=["false", "true"],
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    after = saved(app)
    assert after["hold_days"] == 21
    assert after["referrer_reward"] == {"type": "fixed", "value": "12.50"}
    assert after["coupon_sites"] == ["coupons.example", "deals.example"]
    assert after["paused"] is True and after["auto_approve_max_amount"] is None
    page = client.get("/admin/settings").get_data(as_text=True)
    assert "Settings saved." in page and 'name="hold_days" value="21"' in page
    [record] = records(app)
    assert (record.actor, record.action, record.subject_type) == (
        f"admin:{email}",
        "program.update",
        "program",
    )
    assert record.before["hold_days"] == before["hold_days"] and record.after["hold_days"] == 21
    assert "landing_url" not in record.after  # only what changed
    again = save(client, hold_days="21")
    assert again.status_code == 302 and len(records(app)) == 1
    assert "Nothing to save" in client.get("/admin/settings").get_data(as_text=True)


def test_empty_optional_settings_mean_null(app, client):
    signed_in_as(app, client, "owner")
    assert save(client, max_rewards_per_referrer_per_month="5").status_code == 302
    assert saved(app)["max_rewards_per_referrer_per_month"] == 5
    response = save(
        client,
        max_rewards_per_referrer_per_month="",
        landing_url="",
        **{"friend_offer.type": "", "friend_offer.value": "5"},
    )
    assert response.status_code == 302
    after = saved(app)
    assert after["max_rewards_per_referrer_per_month"] is None
    assert after["landing_url"] is None and after["friend_offer"] is None


@pytest.mark.parametrize(
    ("fields", "input_id", "message"),
    [
        ({"hold_days": "-1"}, "set-hold-days", "greater than or equal to 0"),
        ({"hold_days": "soon"}, "set-hold-days", "Not a valid integer"),
        (
            {"referrer_reward.type": "fixed", "referrer_reward.value": "10.505"},
            "set-referrer-reward-value",
            "EUR amounts have at most 2 decimals.",
        ),
        ({"coupon_sites": "deals.example\nnot a host"}, "set-coupon-sites", "Not a host name"),
        ({"currency": "JPY"}, "set-referrer-reward-value", "JPY amounts have at most 0"),
        (
            {"friend_offer.type": "percent", "friend_offer.value": "150"},
            "set-friend-offer-value",
            "at most 100",
        ),
        ({"landing_url": "javascript:alert(1)"}, "set-landing-url", "http(s) URL"),
    ],
)
def test_invalid_settings_are_shown_with_field_messages_and_nothing_is_saved(
    app, client, fields, input_id, message
):
    signed_in_as(app, client, "owner")
    save(client, **{"referrer_reward.type": "fixed", "referrer_reward.value": "10.50"})
    before, audited = saved(app), len(records(app))
    response = save(client, **fields)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "Nothing was saved" in html
    error = re.search(rf'<p id="{input_id}-error" class="field-error">([^<]*)</p>', html)
    assert error and message in error.group(1), html
    field = re.search(rf'<(?:input|select|textarea) id="{input_id}"[^>]*>', html).group(0)
    assert f'aria-describedby="{input_id}-error"' in field or f'{input_id}-error"' in field
    assert 'aria-invalid="true"' in field
    assert f'href="#{input_id}"' in html  # the summary links to the field
    for name, typed in fields.items():  # the values typed are shown again
        if name != "coupon_sites":
            assert f'value="{typed}"' in html or f'value="{typed}" selected' in html
    assert saved(app) == before and len(records(app)) == audited


def test_several_bad_settings_are_reported_together(app, client):
    signed_in_as(app, client, "owner")
    response = save(client, hold_days="-1", velocity_window_hours="0", coupon_sites="bad host")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    for input_id in ("set-hold-days", "set-velocity-window-hours", "set-coupon-sites"):
        assert f'id="{input_id}-error"' in html
    assert ">bad host</textarea>" in html


def test_a_typed_value_is_escaped_when_shown_again(app, client):
    signed_in_as(app, client, "owner")
    response = save(client, **{"friend_offer.type": "fixed", "friend_offer.value": '"><b>x'})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert '"><b>x' not in html and "&#34;&gt;&lt;b&gt;x" in html


@pytest.mark.parametrize("role", ["viewer", "approver"])
def test_viewer_and_approver_cannot_change_settings(app, client, role):
    signed_in_as(app, client, role)
    before = saved(app)
    refused = save(client, hold_days="3")
    assert refused.status_code == 403
    assert saved(app) == before and records(app) == []


def test_settings_without_csrf_token_are_refused(app, client):
    signed_in_as(app, client, "owner")
    before = saved(app)
    refused = client.post("/admin/settings", data={"hold_days": "3"})
    assert refused.status_code == 400
    assert "security token" in refused.get_data(as_text=True)
    forged = client.post("/admin/settings", data={"hold_days": "3", "csrf_token": "forged"})
    assert forged.status_code == 400
    assert saved(app) == before and records(app) == []


# --- the pages for customers and friends -------------------------------------------------------


def textarea(html: str, input_id: str) -> str:
    """The text of a textarea (the newline after its tag is the markup's, not the text's)."""
    found = re.search(rf'<textarea id="{input_id}"[^>]*>\n?([^<]*)</textarea>', html)
    return found.group(1)


def test_owner_sets_the_pages_and_a_share_message(app, client, admin):
    email = signed_in_as(app, client, "owner")
    html = client.get("/admin/settings").get_data(as_text=True)
    assert "<legend>Pages for customers and friends</legend>" in html
    assert '<option value="pl" lang="pl">Polski</option>' in html  # each language by its name
    assert '<option value="el" lang="el">Ελληνικά</option>' in html
    assert 'name="share_messages.bg" rows="3" lang="bg"' in html
    hint = re.search(r'<small id="set-share-messages-pl-hint" class="hint">([^<]*)<', html)
    assert "Blank: the built-in message" in hint.group(1) and "link is added" in hint.group(1)
    response = save(
        client,
        landing_mode="welcome",
        default_locale="pl",
        # a browser sends line breaks as CRLF; blank messages stay the built-in ones
        **{"share_messages.pl": "  Polecam ten sklep!\r\nZobacz:  ", "share_messages.hu": ""},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    api = client.get("/api/v1/program", headers=admin)
    assert api.status_code == 200
    assert api.json["landing_mode"] == "welcome" and api.json["default_locale"] == "pl"
    assert api.json["share_messages"] == {"pl": "Polecam ten sklep!\nZobacz:"}
    page = client.get("/admin/settings").get_data(as_text=True)
    assert "Settings saved." in page
    assert '<option value="welcome" selected>' in page
    assert '<option value="pl" lang="pl" selected>Polski</option>' in page
    assert textarea(page, "set-share-messages-pl") == "Polecam ten sklep!\nZobacz:"
    assert textarea(page, "set-share-messages-hu") == ""
    [record] = records(app)
    assert (record.actor, record.action) == (f"admin:{email}", "program.update")
    assert record.before == {
        "landing_mode": "redirect",
        "default_locale": "en",
        "share_messages": {},
    }
    assert record.after == {
        "landing_mode": "welcome",
        "default_locale": "pl",
        "share_messages": {"pl": "Polecam ten sklep!\nZobacz:"},
    }
    # the form as a browser sends it again, every message included: nothing changed
    again = save(
        client,
        landing_mode="welcome",
        default_locale="pl",
        **{f"share_messages.{code}": "" for code in ("en", "hu", "el", "bg")},
        **{"share_messages.pl": "Polecam ten sklep!\r\nZobacz:"},
    )
    assert again.status_code == 302 and len(records(app)) == 1
    assert "Nothing to save" in client.get("/admin/settings").get_data(as_text=True)


def test_a_changed_message_is_sent_alone_and_blank_restores_the_built_in(app, client, admin):
    signed_in_as(app, client, "owner")
    both = {"share_messages.pl": "Polecam!", "share_messages.el": "Σας το προτείνω!"}
    assert save(client, **both).status_code == 302
    # Hungarian added, Polish blanked (back to the built-in message), Greek as it was
    response = save(
        client,
        **{
            "share_messages.hu": "Ajánlom!",
            "share_messages.pl": " ",
            "share_messages.el": both["share_messages.el"],
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    messages = client.get("/api/v1/program", headers=admin).json["share_messages"]
    assert messages == {"el": "Σας το προτείνω!", "hu": "Ajánlom!"}  # no "pl" key: built-in
    first, second = records(app)
    assert first.after["share_messages"] == {"el": "Σας το προτείνω!", "pl": "Polecam!"}
    assert second.before["share_messages"] == first.after["share_messages"]
    assert second.after["share_messages"] == messages
    page = client.get("/admin/settings").get_data(as_text=True)
    assert textarea(page, "set-share-messages-pl") == ""
    assert textarea(page, "set-share-messages-hu") == "Ajánlom!"


def test_only_the_changed_messages_are_sent(app):
    from werkzeug.datastructures import MultiDict

    from referral_service.admin.settings import parse_form

    with app.app_context():
        current = {**saved(app), "share_messages": {"el": "Γεια", "pl": "Polecam!"}}
    form = MultiDict(
        {
            "share_messages.el": "Γεια",  # as it was
            "share_messages.pl": "",  # blanked: null, the built-in message
            "share_messages.hu": "Ajánlom!\r\nNézd meg:",  # new
            "share_messages.bg": "",  # blank, and it was: no change
            "landing_mode": current["landing_mode"],
        }
    )
    typed, changes = parse_form(form, current)
    assert changes == {"share_messages": {"pl": None, "hu": "Ajánlom!\nNézd meg:"}}
    assert typed["share_messages.en"] == "" and typed["share_messages.el"] == "Γεια"


def test_a_message_of_280_characters_with_line_breaks_is_kept(app, client, admin):
    signed_in_as(app, client, "owner")
    text = "a" * 139 + "\r\n" + "b" * 140  # 281 characters as sent, 280 as saved
    assert save(client, **{"share_messages.bg": text}).status_code == 302
    saved_text = client.get("/api/v1/program", headers=admin).json["share_messages"]["bg"]
    assert saved_text == text.replace("\r\n", "\n") and len(saved_text) == 280


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x" * 281, "Longer than maximum length 280."),
        ("Polecam\x07 ten sklep", "control characters"),
        ("\x1b[31mPolecam", "control characters"),
        ("Polecam\u202e ten sklep", "printable characters and line breaks only"),
    ],
)
def test_a_bad_share_message_is_refused_at_its_input(app, client, text, message):
    signed_in_as(app, client, "owner")
    assert save(client, **{"share_messages.pl": "Polecam!"}).status_code == 302
    before, audited = saved(app), len(records(app))
    response = save(client, landing_mode="welcome", **{"share_messages.pl": text})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "Nothing was saved" in html
    error = re.search(r'<p id="set-share-messages-pl-error" class="field-error">([^<]*)</p>', html)
    assert error and message in error.group(1), html
    assert 'id="set-share-messages-hu-error"' not in html  # only at the input it belongs to
    assert 'id="set-landing-mode-error"' not in html
    field = re.search(r'<textarea id="set-share-messages-pl"[^>]*>', html).group(0)
    assert "set-share-messages-pl-error" in field and 'aria-invalid="true"' in field
    assert 'href="#set-share-messages-pl">Share message: Polski (pl)</a>' in html
    assert textarea(html, "set-share-messages-pl") == text  # shown again to be fixed
    assert '<option value="welcome" selected>' in html
    assert saved(app) == before and len(records(app)) == audited


def test_an_unknown_choice_is_refused_at_its_select(app, client):
    signed_in_as(app, client, "owner")
    before = saved(app)
    response = save(client, default_locale="de", landing_mode="popup")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    for input_id in ("set-default-locale", "set-landing-mode"):
        error = re.search(rf'<p id="{input_id}-error" class="field-error">([^<]*)</p>', html)
        assert error and "Must be one of" in error.group(1), html
    assert saved(app) == before and records(app) == []


def test_viewer_sees_the_pages_settings_but_cannot_change_them(app, client):
    signed_in_as(app, client, "viewer")
    html = client.get("/admin/settings").get_data(as_text=True)
    assert 'name="landing_mode"' in html and 'name="share_messages.pl"' in html
    refused = save(client, **{"share_messages.pl": "Polecam!"})
    assert refused.status_code == 403
    assert saved(app)["share_messages"] == {} and records(app) == []


# --- API keys ------------------------------------------------------------------------------------


def create_key(client, name="web shop", scope="shop"):
    form = {"csrf_token": token(client, "/admin/keys"), "name": name, "scope": scope}
    return client.post("/admin/keys", data=form)


@pytest.mark.parametrize("role", ["viewer", "approver"])
def test_keys_are_for_owners_only(app, client, role):
    signed_in_as(app, client, role)
    assert client.get("/admin/keys").status_code == 403
    assert 'href="/admin/keys"' not in client.get("/admin").get_data(as_text=True)
    form = {"csrf_token": token(client, "/admin/settings"), "name": "x", "scope": "admin"}
    assert client.post("/admin/keys", data=form).status_code == 403
    with app.app_context():
        assert db.session.scalar(select(ApiKey)) is None


def test_create_key_shows_the_secret_once_and_it_works(app, client):
    email = signed_in_as(app, client, "owner")
    response = create_key(client, "web shop", "shop")
    assert response.status_code == 201
    html = response.get_data(as_text=True)
    secret = SECRET.search(html).group(1)
    assert secret.startswith("rsk_") and "shown this once and never again" in html
    assert response.headers["Cache-Control"] == "no-store"
    listing = client.get("/admin/keys").get_data(as_text=True)
    assert "web shop" in listing and secret[:12] + "…" in listing and secret not in listing
    with app.app_context():
        key = db.session.scalar(select(ApiKey))
        assert key.key_hash != secret and secret not in key.key_hash
    api = client.get("/api/v1/program", headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 200, api.json
    [record] = records(app)
    assert (record.actor, record.action, record.subject_id) == (
        f"admin:{email}",
        "api_key.create",
        str(key.id),
    )
    assert record.after["scope"] == "shop" and secret not in str(record.after)


def test_create_key_refuses_a_bad_name_or_scope(app, client):
    signed_in_as(app, client, "owner")
    blank = create_key(client, "   ", "shop")
    assert blank.status_code == 422
    assert 'id="key-name-error"' in blank.get_data(as_text=True)
    assert create_key(client, "x", "root").status_code == 422
    with app.app_context():
        assert db.session.scalar(select(ApiKey)) is None


def test_revoke_asks_first_then_the_key_is_refused(app, client):
    email = signed_in_as(app, client, "owner")
    secret = SECRET.search(create_key(client, "old shop").get_data(as_text=True)).group(1)
    with app.app_context():
        key_id = db.session.scalar(select(ApiKey.id))
    confirm = client.get(f"/admin/keys/{key_id}/revoke")
    assert confirm.status_code == 200
    html = confirm.get_data(as_text=True)
    assert "Yes, revoke" in html and f'action="/admin/keys/{key_id}/revoke"' in html
    no_token = client.post(f"/admin/keys/{key_id}/revoke")
    assert no_token.status_code == 400
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/program", headers=headers).status_code == 200
    form = {"csrf_token": TOKEN.search(html).group(1)}
    done = client.post(f"/admin/keys/{key_id}/revoke", data=form)
    assert done.status_code == 302
    assert client.get("/api/v1/program", headers=headers).status_code == 401
    listing = client.get("/admin/keys").get_data(as_text=True)
    assert "Revoked API key" in listing and "revoked 20" in listing
    again = client.post(f"/admin/keys/{key_id}/revoke", data=form)
    assert again.status_code == 302
    assert "No active API key" in client.get("/admin/keys").get_data(as_text=True)
    actions = [(r.actor, r.action, r.subject_id) for r in records(app)]
    assert actions == [
        (f"admin:{email}", "api_key.create", str(key_id)),
        (f"admin:{email}", "api_key.revoke", str(key_id)),
    ]


def test_revoke_by_id_spares_a_key_named_like_the_id(app, client):
    signed_in_as(app, client, "owner")
    create_key(client, "first")
    with app.app_context():
        first_id = db.session.scalar(select(ApiKey.id))
    create_key(client, str(first_id))  # a key whose name is the other's id
    form = {"csrf_token": token(client, "/admin/keys")}
    client.post(f"/admin/keys/{first_id}/revoke", data=form)
    with app.app_context():
        states = {k.name: k.revoked_at is not None for k in db.session.scalars(select(ApiKey))}
    assert states == {"first": True, str(first_id): False}


# --- the audit log -------------------------------------------------------------------------------


@pytest.fixture
def logged(app):
    """Five audit records: three program changes by two admins, two key actions."""
    with app.app_context():
        for index in range(3):
            actor = "admin:a@example.com" if index < 2 else "admin:b@example.com"
            audit.record(actor, "program.update", "program", 1, {"hold_days": index}, None)
        audit.record("admin:a@example.com", "api_key.create", "api_key", 7, None, {"n": "<b>"})
        audit.record("cli", "api_key.revoke", "api_key", 8, {"r": None}, {"r": "x"})
        db.session.commit()


def entries_in(html: str) -> list[str]:
    return re.findall(r'<tr id="audit-(\d+)">', html)


def test_audit_log_lists_newest_first_and_escapes(app, client, logged):
    signed_in_as(app, client, "viewer")
    page = client.get("/admin/audit")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    ids = entries_in(html)
    assert len(ids) == 5 and ids == sorted(ids, key=int, reverse=True)
    assert "{&#34;hold_days&#34;:0}" in html  # compact JSON, escaped
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert "admin:b@example.com" in html and "program.update" in html


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("action=program.update", 3),
        ("actor=A@EXAMPLE", 3),
        ("actor=%25", 0),  # a literal %, not a wildcard
        ("subject_type=api_key", 2),
        ("subject_type=api_key&subject_id=7", 1),
        ("action=api_key.revoke&actor=cli", 1),
        ("action=nothing", 0),
    ],
)
def test_audit_log_filters(app, client, logged, query, count):
    signed_in_as(app, client, "viewer")
    html = client.get(f"/admin/audit?{query}").get_data(as_text=True)
    assert len(entries_in(html)) == count
    if not count:
        assert "No entries match." in html


def test_audit_log_pages(app, client, logged, monkeypatch):
    from referral_service.admin import settings

    monkeypatch.setattr(settings, "AUDIT_PAGE_SIZE", 2)
    signed_in_as(app, client, "viewer")
    seen = []
    html = client.get("/admin/audit?subject_type=program").get_data(as_text=True)
    seen += entries_in(html)
    link = re.search(r'href="([^"]*cursor=[^"]+)" rel="next"', html).group(1).replace("&amp;", "&")
    assert "subject_type=program" in link  # the filters carry over
    html = client.get(link).get_data(as_text=True)
    seen += entries_in(html)
    assert len(seen) == 3 and len(set(seen)) == 3 and 'rel="next"' not in html
    assert client.get("/admin/audit?cursor=nonsense").status_code == 302

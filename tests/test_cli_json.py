"""`--json` on the command line's list commands: one JSON array on standard output, one object a
row with the fields the plain listing shows, times in ISO 8601 UTC, never a key or a hash."""

import json
from datetime import UTC, datetime

from referral_service.cli import main
from referral_service.domain import admins
from referral_service.extensions import db
from referral_service.models import Admin, ApiKey
from tests.test_cli import create_key

PASSWORD = "correct horse battery"


def listed(runner, *args) -> list[dict]:
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0
    return moment


def test_api_keys_list_json(app, runner):
    shop = create_key(runner, "till-1")
    admin = create_key(runner, "reports", "admin")
    assert runner.invoke(main, ["api-keys", "revoke", "till-1"]).exit_code == 0
    rows = listed(runner, "api-keys", "list")
    with app.app_context():
        stored = {key.name: key for key in db.session.scalars(db.select(ApiKey))}
    assert [row["name"] for row in rows] == ["till-1", "reports"]
    till, reports = rows
    assert set(till) == {"id", "name", "scope", "prefix", "created_at", "revoked_at", "status"}
    assert till["id"] == stored["till-1"].id and till["scope"] == "shop"
    assert till["status"] == "revoked" and aware(till["revoked_at"]) == stored["till-1"].revoked_at
    assert reports["status"] == "active" and reports["revoked_at"] is None
    assert reports["scope"] == "admin" and admin.startswith(reports["prefix"])
    assert aware(reports["created_at"]) == stored["reports"].created_at
    output = json.dumps(rows)
    for secret, name in ((shop, "till-1"), (admin, "reports")):
        assert secret[:13] not in output and stored[name].key_hash not in output


def test_admins_list_json(app, runner):
    for email, role in (("ana@example.com", "owner"), ("bo@example.com", "viewer")):
        made = runner.invoke(main, ["admins", "create", email, "--role", role], input=PASSWORD)
        assert made.exit_code == 0, made.output
    with app.app_context():
        admins.authenticate("ana@example.com", PASSWORD, "127.0.0.1")
    assert runner.invoke(main, ["admins", "disable", "bo@example.com"]).exit_code == 0
    rows = listed(runner, "admins", "list")
    with app.app_context():
        stored = {admin.email: admin for admin in db.session.scalars(db.select(Admin))}
    assert [row["email"] for row in rows] == ["ana@example.com", "bo@example.com"]
    ana, bo = rows
    assert set(ana) == {"id", "email", "role", "last_sign_in_at", "disabled_at", "status"}
    assert ana["role"] == "owner" and ana["status"] == "active" and ana["disabled_at"] is None
    assert aware(ana["last_sign_in_at"]) == stored["ana@example.com"].last_sign_in_at
    assert bo["role"] == "viewer" and bo["status"] == "disabled"
    assert bo["last_sign_in_at"] is None
    assert aware(bo["disabled_at"]) <= datetime.now(UTC)
    for admin in stored.values():
        assert admin.password_hash not in json.dumps(rows)


def test_empty_lists_are_empty_arrays(runner):
    assert listed(runner, "api-keys", "list") == []
    assert listed(runner, "admins", "list") == []


def test_plain_output_is_unchanged_without_the_flag(runner):
    create_key(runner, "till-1")
    result = runner.invoke(main, ["api-keys", "list"])
    assert result.stdout.splitlines()[0].split() == [
        "ID",
        "NAME",
        "SCOPE",
        "PREFIX",
        "CREATED",
        "STATUS",
    ]
    assert "till-1" in result.stdout and not result.stdout.lstrip().startswith("[")
    made = runner.invoke(main, ["admins", "create", "ana@example.com"], input=PASSWORD)
    assert made.exit_code == 0, made.output
    plain = runner.invoke(main, ["admins", "list"]).stdout
    assert plain.splitlines()[0].split()[:3] == ["ID", "EMAIL", "ROLE"]
    assert "never" in plain and "active" in plain

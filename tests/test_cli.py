"""The command line: API keys, changes to admins and the import of existing customers.

`runner` (Flask's CLI runner) gives the commands of `referral_service.cli.main` a ScriptInfo that
loads the test app, so they work on the test database.
"""

import io
import re

import pytest
from sqlalchemy import func, select

from referral_service import cli
from referral_service.cli import main
from referral_service.domain import admins, customers
from referral_service.domain.codes import lookup
from referral_service.extensions import db
from referral_service.models import Admin, ApiKey, Base, Customer, ReferralCode
from tests.factories import auth

COLUMNS = "external_id,email,name,locale"


def create_key(runner, name: str, scope: str = "shop") -> str:
    result = runner.invoke(main, ["api-keys", "create", name, "--scope", scope])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def failed_cleanly(result) -> bool:
    """A non-zero exit with a message, not a crash (CliRunner keeps a crash in `exception`)."""
    return result.exit_code != 0 and isinstance(result.exception, SystemExit)


def key_id(app, name: str) -> int:
    with app.app_context():
        return db.session.scalar(select(ApiKey.id).where(ApiKey.name == name))


# --- API keys --------------------------------------------------------------------------------


def test_create_prints_the_key_alone_on_stdout_and_it_works(runner, client):
    result = runner.invoke(main, ["api-keys", "create", "checkout", "--scope", "shop"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0]) >= 40 and " " not in lines[0]
    assert "checkout" in result.stderr and lines[0] not in result.stderr
    program = client.get("/api/v1/program", headers=auth(lines[0]))
    assert program.status_code == 200
    assert client.patch("/api/v1/program", json={}, headers=auth(lines[0])).status_code == 403


def test_admin_key_may_do_everything(runner, client):
    secret = create_key(runner, "back office", "admin")
    assert client.get("/api/v1/program", headers=auth(secret)).status_code == 200
    patched = client.patch("/api/v1/program", json={"paused": False}, headers=auth(secret))
    assert patched.status_code == 200


def test_key_is_stored_only_hashed(app, runner):
    secret = create_key(runner, "hashed")
    with app.app_context():
        for table in Base.metadata.sorted_tables:
            for row in db.session.execute(table.select()):
                for value in row:
                    assert secret not in str(value) and secret[12:] not in str(value)
        assert db.session.scalar(select(ApiKey.key_hash)) not in ("", None)


def test_list_never_shows_the_full_key(app, runner):
    shop, admin = create_key(runner, "till-1"), create_key(runner, "reports", "admin")
    result = runner.invoke(main, ["api-keys", "list"])
    assert result.exit_code == 0
    for name, secret in (("till-1", shop), ("reports", admin)):
        line = next(line for line in result.stdout.splitlines() if name in line)
        assert secret[:8] in line  # a prefix to recognise it by
        assert secret[:13] not in result.output
        assert "active" in line


@pytest.mark.parametrize("by", ["id", "name"])
def test_revoked_key_gets_401(app, runner, client, by):
    secret = create_key(runner, "till-1")
    other = create_key(runner, "till-2")
    ident = str(key_id(app, "till-1")) if by == "id" else "till-1"
    result = runner.invoke(main, ["api-keys", "revoke", ident])
    assert result.exit_code == 0, result.output
    assert "till-1" in result.stdout
    response = client.get("/api/v1/program", headers=auth(secret))
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"
    assert client.get("/api/v1/program", headers=auth(other)).status_code == 200
    listed = runner.invoke(main, ["api-keys", "list"]).stdout
    assert "revoked" in next(line for line in listed.splitlines() if "till-1" in line)
    again = runner.invoke(main, ["api-keys", "revoke", ident])
    assert failed_cleanly(again) and repr(ident) in again.stderr


@pytest.mark.parametrize("ident", ["nobody", "\u00b2", "99999999999999999999999"])
def test_revoking_an_unknown_key_fails(runner, ident):
    result = runner.invoke(main, ["api-keys", "revoke", ident])
    assert failed_cleanly(result)
    assert repr(ident) in result.stderr and not result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["api-keys", "create", "x", "--scope", "root"],
        ["api-keys", "create", "x"],
        ["api-keys", "create", " ", "--scope", "shop"],
        ["api-keys", "create", "n" * 101, "--scope", "shop"],
    ],
)
def test_bad_key_requests_fail_and_create_nothing(app, runner, args):
    result = runner.invoke(main, args)
    assert failed_cleanly(result)
    assert not result.stdout and result.stderr
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ApiKey)) == 0


# --- changes to admins ----------------------------------------------------------------------

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"


def admin_row(app, email: str = "ann@example.com") -> tuple:
    with app.app_context():
        admin = db.session.scalar(select(Admin).where(Admin.email == email))
        return admin.role, admin.session_generation, admin.password_hash


@pytest.fixture
def ann(app):
    with app.app_context():
        admins.create("ann@example.com", PASSWORD, "viewer")


def test_set_password_from_stdin(app, runner, ann):
    result = runner.invoke(
        main, ["admins", "set-password", "Ann@Example.com"], input=NEW_PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    assert "sessions have ended" in result.stdout and NEW_PASSWORD not in result.output
    role, generation, stored = admin_row(app)
    assert (role, generation) == ("viewer", 1)
    assert admins.verify_password(NEW_PASSWORD, stored)


def test_set_password_asks_twice_on_a_terminal(app, runner, ann, monkeypatch):
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    answers = f"{NEW_PASSWORD}\nsomething else!\n{NEW_PASSWORD}\n{NEW_PASSWORD}\n"
    result = runner.invoke(main, ["admins", "set-password", "ann@example.com"], input=answers)
    assert result.exit_code == 0, result.output
    assert admins.verify_password(NEW_PASSWORD, admin_row(app)[2])


def test_set_role_and_sign_out(app, runner, ann):
    result = runner.invoke(main, ["admins", "set-role", "ann@example.com", "approver"])
    assert result.exit_code == 0, result.output
    assert "now has the role approver" in result.stdout
    assert admin_row(app)[:2] == ("approver", 1)
    result = runner.invoke(main, ["admins", "sign-out", "ann@example.com"])
    assert result.exit_code == 0, result.output
    assert "Ended every session" in result.stdout
    assert admin_row(app)[:2] == ("approver", 2)
    result = runner.invoke(main, ["admins", "disable", "ann@example.com"])
    assert result.exit_code == 0, result.output
    assert admin_row(app)[:2] == ("approver", 3)


@pytest.mark.parametrize(
    ("args", "stdin", "problem"),
    [
        (["set-password", "ann@example.com"], "too short\n", "password"),
        (["set-password", "nobody@example.com"], NEW_PASSWORD + "\n", "No admin"),
        (["set-role", "nobody@example.com", "owner"], "", "No admin"),
        (["set-role", "ann@example.com", "emperor"], "", "emperor"),
        (["sign-out", "nobody@example.com"], "", "No admin"),
    ],
)
def test_bad_admin_changes_fail_and_change_nothing(app, runner, ann, args, stdin, problem):
    before = admin_row(app)
    result = runner.invoke(main, ["admins", *args], input=stdin)
    assert failed_cleanly(result)
    assert problem in result.stderr and not result.stdout
    assert admin_row(app) == before


# --- customers import ------------------------------------------------------------------------


def write_csv(tmp_path, text: str, encoding: str = "utf-8", name: str = "customers.csv") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def import_file(runner, path: str, *options: str):
    return runner.invoke(main, ["customers", "import", path, *options])


def rejected_lines(stderr: str) -> dict[int, str]:
    return {int(m[1]): m[2] for m in re.finditer(r"^line (\d+): (.*)$", stderr, re.MULTILINE)}


def active_codes(app) -> dict[str, str]:
    with app.app_context():
        rows = db.session.execute(
            select(Customer.external_id, ReferralCode.code)
            .join(ReferralCode, ReferralCode.customer_id == Customer.id)
            .where(ReferralCode.revoked_at.is_(None))
        )
        return dict(rows.all())


MIXED = f"""{COLUMNS}
c-1,one@example.com,Anna Kowalska,pl
c-2,not-an-email,,
,three@example.com,,
{"x" * 129},four@example.com,,
c-5,five@example.com,,xx
c-1,again@example.com,,
c-7,seven@example.com,,en,extra
c-8,eight@example.com,Ørjan,en-GB
"""


def test_import_keeps_good_rows_and_reports_bad_ones(app, runner, tmp_path):
    result = import_file(runner, write_csv(tmp_path, MIXED))
    assert result.exit_code == 0, result.output
    assert result.stdout == "2 created, 0 updated, 0 unchanged, 6 rejected.\n"
    problems = rejected_lines(result.stderr)
    assert sorted(problems) == [3, 4, 5, 6, 7, 8]
    assert "email" in problems[3]
    assert "external_id" in problems[4] and "external_id" in problems[5]
    assert "locale" in problems[6]
    assert "line 2" in problems[7]
    assert "column" in problems[8]
    with app.app_context():
        first, last = customers.get("c-1"), customers.get("c-8")
        assert (first.email, first.name, first.locale) == ("one@example.com", "Anna Kowalska", "pl")
        assert (last.name, last.locale) == ("Ørjan", "en_GB")
        for card in (first, last):
            assert lookup(card.code).code == card.code
        assert db.session.scalar(select(func.count()).select_from(Customer)) == 2


def test_reimport_creates_nothing_and_keeps_the_codes(app, runner, tmp_path):
    path = write_csv(tmp_path, MIXED)
    assert import_file(runner, path).exit_code == 0
    codes = active_codes(app)
    again = import_file(runner, path)
    assert again.exit_code == 0, again.output
    assert again.stdout == "0 created, 0 updated, 2 unchanged, 6 rejected.\n"
    assert active_codes(app) == codes
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ReferralCode)) == 2


def test_import_updates_changed_customers_and_keeps_their_codes(app, runner, tmp_path):
    import_file(runner, write_csv(tmp_path, f"{COLUMNS}\nc-1,one@example.com,,\nc-2,b@ex.com,,\n"))
    codes = active_codes(app)
    changed = write_csv(
        tmp_path, f"{COLUMNS}\nc-1,new@example.com,Ann,\nc-2,b@ex.com,,\n", name="b"
    )
    result = import_file(runner, changed)
    assert result.stdout == "0 created, 1 updated, 1 unchanged, 0 rejected.\n"
    assert active_codes(app) == codes
    with app.app_context():
        assert customers.get("c-1").email == "new@example.com"


@pytest.mark.parametrize("header", ["id,email", "external_id,mail,name", "external_id", ""])
def test_import_without_the_needed_columns_fails_clearly(app, runner, tmp_path, header):
    result = import_file(runner, write_csv(tmp_path, f"{header}\nc-1,one@example.com\n"))
    assert failed_cleanly(result)
    assert "external_id" in result.stderr and "missing" in result.stderr
    assert not result.stdout
    assert active_codes(app) == {}


def test_import_with_bom_mixed_case_header_and_name_and_locale(app, runner, tmp_path):
    text = (
        "External_ID, Email ,Name,Locale\r\n"
        "pl-1,zofia@example.com,Zofia Żółć,pl\r\n"
        "el-1,eleni@example.com,Ελένη Παπαδοπούλου,el\r\n"
        "hu-1,arpad@example.com,Árpád Őry,hu-HU\r\n"
        "bg-1,ivan@example.com,Иван Петров,bg\r\n"
    )
    result = import_file(runner, write_csv(tmp_path, text, encoding="utf-8-sig"))
    assert result.exit_code == 0, result.output
    assert result.stdout == "4 created, 0 updated, 0 unchanged, 0 rejected.\n"
    assert rejected_lines(result.stderr) == {}
    with app.app_context():
        assert (customers.get("pl-1").name, customers.get("pl-1").locale) == ("Zofia Żółć", "pl")
        assert customers.get("el-1").name == "Ελένη Παπαδοπούλου"
        assert customers.get("hu-1").locale == "hu_HU"
        assert customers.get("bg-1").name == "Иван Петров"


def test_import_from_a_pipe(app, runner):
    class Pipe(io.BytesIO):
        def seekable(self):
            return False

    data = f"{COLUMNS}\nc-1,one@example.com,,\nc-2,bad,,\n".encode()
    result = runner.invoke(main, ["customers", "import", "-"], input=Pipe(data))
    assert result.exit_code == 0, result.output
    assert result.stdout == "1 created, 0 updated, 0 unchanged, 1 rejected.\n"
    assert list(rejected_lines(result.stderr)) == [3]


def test_import_of_a_file_that_is_not_utf8_fails_clearly(app, runner, tmp_path):
    path = write_csv(tmp_path, f"{COLUMNS}\nc-1,one@example.com,Łucja,pl\n", encoding="cp1250")
    result = import_file(runner, path)
    assert failed_cleanly(result)
    assert "UTF-8" in result.stderr and not result.stdout
    assert active_codes(app) == {}


def test_import_reports_an_unreadable_row_with_its_line(app, runner, tmp_path):
    huge = "y" * 200_000  # beyond the csv module's field limit
    text = f"{COLUMNS}\nc-1,one@example.com,,\nc-2,two@example.com,{huge},\nc-3,3@example.com,,\n"
    result = import_file(runner, write_csv(tmp_path, text))
    assert result.exit_code == 0, result.output
    assert result.stdout == "2 created, 0 updated, 0 unchanged, 1 rejected.\n"
    assert list(rejected_lines(result.stderr)) == [3]


def test_import_reports_an_id_repeated_in_a_later_batch(app, runner, tmp_path):
    path = write_csv(
        tmp_path,
        "external_id,email\nr1,a@example.com\nr2,b@example.com\nr1,c@example.com\n",
    )
    result = import_file(runner, path, "--batch-size", "2")
    assert result.exit_code == 0, result.stderr
    assert rejected_lines(result.stderr).keys() == {4}
    with app.app_context():
        email = db.session.scalar(select(Customer.email).where(Customer.external_id == "r1"))
    assert email == "a@example.com"


def test_portal_link_prints_a_link_to_the_share_page(app, runner, client):
    with app.app_context():
        customers.enrol("cli-ref", "cli-ref@example.com", "Ola Nowak", "pl")
    result = runner.invoke(main, ["customers", "portal-link", "cli-ref", "--expires-in", "3600"])
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith("http://shop.test/share/") and "\n" not in url
    assert "It works until" in result.stderr
    page = client.get(url.removeprefix("http://shop.test"))
    assert page.status_code == 200 and "Cześć, Ola!" in page.text


@pytest.mark.parametrize(
    ("args", "problem"),
    [(["nobody"], "No customer"), (["cli-ref", "--expires-in", "5"], "expires_in")],
)
def test_portal_link_refuses_unknown_customers_and_bad_expiry(app, runner, args, problem):
    with app.app_context():
        customers.enrol("cli-ref", "cli-ref@example.com")
    result = runner.invoke(main, ["customers", "portal-link", *args])
    assert result.exit_code != 0 and problem in result.output


def test_the_version_is_printed(runner):
    from importlib.metadata import version

    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"referral-service, version {version('referral-service')}"

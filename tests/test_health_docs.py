"""Health, readiness and the OpenAPI spec."""

import logging

import pytest
from sqlalchemy import text

from referral_service.extensions import db


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_ok_at_head(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["migrations"] == "head"


@pytest.mark.parametrize(
    "revision, status, migrations",
    [
        ("0001", 503, "behind"),  # an older revision of this version: `db upgrade` has not run
        # a revision this version does not know: a newer release's `db upgrade` ran while this
        # version serves (its migrations only add), so this version stays in the load balancer
        ("9999_a_newer_release", 200, "ahead"),
    ],
)
def test_readyz_by_the_schema_revision(app, client, revision, status, migrations):
    with app.app_context():
        head = db.session.scalar(text("SELECT version_num FROM alembic_version"))
        db.session.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
        db.session.commit()
    try:
        response = client.get("/readyz")
        assert response.status_code == status
        assert response.json["migrations"] == migrations
        assert response.json["revision"] == revision
    finally:
        with app.app_context():
            db.session.execute(
                text("UPDATE alembic_version SET version_num = :head"), {"head": head}
            )
            db.session.commit()


def test_readyz_is_quiet_in_the_log(client, caplog):
    """A load balancer probes every few seconds: a probe writes no log line."""
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []


def test_readyz_on_a_database_never_migrated(tmp_path):
    from referral_service import create_app

    app = create_app(
        {"SECRET_KEY": "x" * 32, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/db"}
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert (response.json["database"], response.json["migrations"]) == ("ok", "behind")
    assert response.json["revision"] is None


def test_readyz_unavailable_without_database(tmp_path):
    from referral_service import create_app

    app = create_app(
        {
            "SECRET_KEY": "x" * 32,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/missing/dir/db.sqlite3",
        }
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["database"].startswith("unreachable")


def test_openapi_spec_lists_every_endpoint(client):
    spec = client.get("/api/openapi.json").json
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in (
        "/api/v1/customers/{external_id}",
        "/api/v1/customers/{external_id}/referral-code/rotate",
        "/api/v1/program",
        "/r/{code}",
        "/r/{code}/qr.png",
        "/r/{code}/qr.svg",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    put = paths["/api/v1/customers/{external_id}"]["put"]
    assert put["security"] == [{"bearerAuth": []}]
    assert {"200", "201", "401", "403", "422"} <= set(put["responses"])


def test_docs_page_and_local_assets(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/openapi.json" in html and "https://" not in html
    assert client.get("/api/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_every_api_operation_documents_the_503_of_a_database_away(client):
    spec = client.get("/api/openapi.json").json
    operations = [
        (path, method, operation)
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
        for method, operation in item.items()
        if method != "parameters"
    ]
    assert len(operations) > 10
    for path, method, operation in operations:
        answer = operation["responses"].get("503")
        assert answer is not None, (method, path)
        assert "`unavailable`" in answer["description"]
        assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer"
        schema = answer["content"]["application/json"]["schema"]["$ref"]
        assert schema.endswith("/ErrorEnvelope")

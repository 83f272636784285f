"""QR codes of share links: content, sizes, caching headers, forged and revoked codes."""

import io

import cairosvg
import pytest
import zxingcpp
from PIL import Image

from referral_service.domain.codes import display
from tests import factories


@pytest.fixture
def card(app):
    with app.app_context():
        return factories.customer()


def decoded(image: Image.Image) -> list[str]:
    return [barcode.text for barcode in zxingcpp.read_barcodes(image)]


def png(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body))


def svg(body: bytes) -> Image.Image:
    return png(cairosvg.svg2png(bytestring=body))


def qr_url(code: str, fmt: str, size=None) -> str:
    return f"/r/{code}/qr.{fmt}" + (f"?size={size}" if size is not None else "")


@pytest.mark.parametrize("size", [64, 100, 512, 2048])
def test_png_is_size_square_and_decodes_to_the_share_link(client, card, size):
    response = client.get(qr_url(card.code, "png", size))
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    image = png(response.data)
    assert image.format == "PNG" and image.size == (size, size)
    assert decoded(image) == [f"http://shop.test/r/{card.code}?via=qr"]


def test_png_default_size_is_512(client, card):
    assert png(client.get(qr_url(card.code, "png")).data).size == (512, 512)


@pytest.mark.parametrize("size", [64, 300, 2048])
def test_svg_decodes_to_the_share_link(client, card, size):
    response = client.get(qr_url(card.code, "svg", size))
    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    image = svg(response.data)
    assert image.size == (size, size)
    assert decoded(image) == [f"http://shop.test/r/{card.code}?via=qr"]


def test_qr_of_a_customer_enrolled_through_the_api(client, shop):
    response = client.put("/api/v1/customers/qr-1", json={"email": "q@example.com"}, headers=shop)
    referral = response.json["referral"]
    expected = [f"{referral['share_url']}?via=qr"]
    assert decoded(png(client.get(referral["qr_png_url"]).data)) == expected
    assert decoded(svg(client.get(referral["qr_svg_url"]).data)) == expected


def test_code_typed_in_another_spelling_gives_the_canonical_link(client, card):
    response = client.get(qr_url(display(card.code).lower(), "png"))
    assert decoded(png(response.data)) == [f"http://shop.test/r/{card.code}?via=qr"]


@pytest.mark.parametrize("fmt", ["png", "svg"])
@pytest.mark.parametrize("size", ["63", "2049", "abc", "0", "-512", "1e3"])
def test_size_out_of_bounds_is_a_validation_error(client, card, fmt, size):
    response = client.get(qr_url(card.code, fmt, size))
    assert response.status_code == 422
    error = response.json["error"]
    assert error["code"] == "validation_error"
    assert error["message"]
    assert list(error["fields"]) == ["size"]
    assert error["fields"]["size"] and all(isinstance(m, str) for m in error["fields"]["size"])


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_cache_headers_and_not_modified(client, card, fmt):
    response = client.get(qr_url(card.code, fmt, 200))
    etag = response.headers["ETag"]
    assert etag and "max-age" in response.headers["Cache-Control"]
    again = client.get(qr_url(card.code, fmt, 200), headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == etag
    other_size = client.get(qr_url(card.code, fmt, 201), headers={"If-None-Match": etag})
    assert other_size.status_code == 200 and other_size.headers["ETag"] != etag


def test_png_and_svg_have_different_etags(client, card):
    tags = {client.get(qr_url(card.code, fmt)).headers["ETag"] for fmt in ("png", "svg")}
    assert len(tags) == 2


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_forged_code_is_not_found(client, card, fmt):
    last = "0" if card.code[-1] != "0" else "1"
    for code in (card.code[:-1] + last, "not-a-code", "A" * 16):
        response = client.get(qr_url(code, fmt))
        assert response.status_code == 404
        assert response.mimetype == "application/json"
        assert set(response.json) == {"error"}
        assert response.json["error"]["code"] and response.json["error"]["message"]


def test_well_signed_code_never_issued_is_not_found(app, client):
    with app.app_context():
        from referral_service.domain.codes import signer

        code = signer().issue()
    assert client.get(qr_url(code, "png")).status_code == 404


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_revoked_code_is_not_found(client, shop, fmt):
    old = client.put("/api/v1/customers/r-1", json={"email": "r@example.com"}, headers=shop)
    old_code = old.json["referral"]["code"]
    assert client.get(qr_url(old_code, fmt)).status_code == 200
    rotated = client.post("/api/v1/customers/r-1/referral-code/rotate", headers=shop)
    assert rotated.status_code == 200
    response = client.get(qr_url(old_code, fmt))
    assert response.status_code == 404
    assert response.json["error"]["code"] and response.json["error"]["message"]
    new_code = rotated.json["code"]
    assert client.get(qr_url(new_code, fmt)).status_code == 200


def test_each_image_is_rendered_once_per_code_size_and_format(app, client, card):
    cache = app.extensions["qr_cache"]
    start = cache.renders
    first = client.get(qr_url(card.code, "png", 256))
    assert cache.renders == start + 1
    again = client.get(qr_url(card.code.lower(), "png", 256))
    assert again.data == first.data
    client.get(qr_url(card.code, "png", 256), headers={"If-None-Match": first.headers["ETag"]})
    assert cache.renders == start + 1
    client.get(qr_url(card.code, "svg", 256))
    client.get(qr_url(card.code, "png", 257))
    assert cache.renders == start + 3
    client.get(qr_url(card.code, "svg", 256))
    assert cache.renders == start + 3

"""The public addresses of a code: share link and QR images, under `PUBLIC_BASE_URL`."""

import logging

from flask import current_app, has_request_context, request

from referral_service.domain.codes import display

LOCAL_BASE_URL = "http://127.0.0.1:5000"
logger = logging.getLogger(__name__)


def base_url() -> str:
    """`PUBLIC_BASE_URL`, else the address this request came to, else the development address.

    Outside a request (the command line, the worker) without `PUBLIC_BASE_URL`, the links name
    the development server's address, and the process says so once in its log (a warning).
    """
    configured = current_app.config.get("PUBLIC_BASE_URL")
    if configured:
        return configured
    if has_request_context():
        return request.host_url.rstrip("/")
    if not current_app.extensions.get("warned_local_base_url"):
        current_app.extensions["warned_local_base_url"] = True
        logger.warning(
            "PUBLIC_BASE_URL is not set: links made outside a request (share links in events, "
            "command output) use the development address %s; set it to the service's public "
            "address",
            LOCAL_BASE_URL,
        )
    return LOCAL_BASE_URL


def share_url(code: str, via: str | None = None) -> str:
    """A code's share link, with the channel it is shared through."""
    url = f"{base_url()}/r/{code}"
    return f"{url}?via={via}" if via else url


def portal_url(token: str) -> str:
    """The address of a customer's share page, from a signed link token."""
    return f"{base_url()}/share/{token}"


def referral_block(code: str) -> dict:
    """The `referral` block of a customer: code, share link and QR image addresses."""
    link = share_url(code)
    return {
        "code": code,
        "display_code": display(code),
        "share_url": link,
        "qr_png_url": f"{link}/qr.png",
        "qr_svg_url": f"{link}/qr.svg",
    }

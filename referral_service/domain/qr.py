"""QR codes of share links, rendered once per link, format and size and then served from a cache."""

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import qrcode
from qrcode.constants import ERROR_CORRECT_M

from referral_service.errors import ValidationFailed

MIN_SIZE = 64
MAX_SIZE = 2048
DEFAULT_SIZE = 512
BORDER = 4  # modules of quiet zone, as the QR standard asks
FORMATS = ("png", "svg")
RENDER_VERSION = "1"  # bump when the drawing changes, so that cached ETags change too


@dataclass(frozen=True)
class QrImage:
    """A rendered QR image and its entity tag."""

    body: bytes
    mimetype: str
    etag: str


def check_size(value) -> int:
    """The size in pixels, 64 to 2048 (default 512); raises ValidationFailed."""
    if value is None or value == "":
        return DEFAULT_SIZE
    # ASCII digits only: int() would also take " 512", "+512", "5_12" and full-width digits
    digits = str(value)
    size = int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 6 else None
    if size is None or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValidationFailed(
            fields={"size": [f"Must be a whole number of pixels from {MIN_SIZE} to {MAX_SIZE}."]}
        )
    return size


def etag(url: str, fmt: str, size: int) -> str:
    """The entity tag of an image, known without rendering it."""
    return hashlib.sha256(f"{RENDER_VERSION}|{fmt}|{size}|{url}".encode()).hexdigest()[:32]


def render(url: str, fmt: str, size: int) -> QrImage:
    """Draw the QR code of `url` as a `size`-pixel square PNG or SVG."""
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=BORDER)
    qr.add_data(url)
    qr.make(fit=True)
    modules = qr.modules_count + 2 * BORDER
    tag = etag(url, fmt, size)
    if fmt == "svg":
        return QrImage(_svg(qr.get_matrix(), size).encode(), "image/svg+xml", tag)
    box = max(1, size // modules)
    qr.box_size = box
    drawn = qr.make_image(fill_color="black", back_color="white").get_image().convert("1")
    if drawn.size[0] != size:  # centre on a white square of exactly the asked size
        from PIL import Image

        canvas = Image.new("1", (size, size), 1)
        offset = (size - drawn.size[0]) // 2
        canvas.paste(drawn, (offset, offset))
        drawn = canvas
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG", optimize=True)
    return QrImage(buffer.getvalue(), "image/png", tag)


def _svg(matrix: list[list[bool]], size: int) -> str:
    """A crisp SVG: one path of dark modules on a white square, scaled by its viewBox."""
    n = len(matrix)
    runs = []
    for y, row in enumerate(matrix):
        x = 0
        while x < n:
            if row[x]:
                start = x
                while x < n and row[x]:
                    x += 1
                runs.append(f"M{start} {y}h{x - start}v1h-{x - start}z")
            else:
                x += 1
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {n} {n}" shape-rendering="crispEdges">'
        f'<rect width="{n}" height="{n}" fill="#fff"/>'
        f'<path d="{"".join(runs)}" fill="#000"/></svg>'
    )


class QrCache:
    """Rendered images by (url, format, size), least recently used out first; thread-safe."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._items: OrderedDict[tuple, QrImage] = OrderedDict()
        self._lock = threading.Lock()
        self.renders = 0

    def get(self, url: str, fmt: str, size: int) -> QrImage:
        key = (url, fmt, size)
        with self._lock:
            image = self._items.get(key)
            if image is not None:
                self._items.move_to_end(key)
                return image
        image = render(url, fmt, size)
        with self._lock:
            self.renders += 1
            self._items[key] = image
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return image

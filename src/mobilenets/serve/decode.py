"""Untrusted bytes -> a decoded image, or a ``ServeError`` that names what is wrong with them.

The pixel count is read from the header and checked before anything is decoded, so a small file
that would decode to gigabytes (a decompression bomb) costs nothing. Only the common web formats
are opened; anything PIL raises while decoding the rest of the file is the file's fault (400).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..preprocess import to_model_mode
from .errors import ServeError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
DEFAULT_MAX_PIXELS = 25_000_000  # a 25-megapixel photo; about 75 MB once decoded as RGB
MAX_ELONGATION = 20  # longest side / shortest side


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, grey: bool = False) -> Image.Image:
    """Decode ``data`` as RGB (or L when ``grey``)."""
    if not data:
        raise ServeError(400, "empty_body", "the request has no image: send the image file as the body "
                         "or as a multipart/form-data file")
    try:
        with warnings.catch_warnings():  # PIL warns from half its own limit; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # over twice PIL's limit: the header is all it read
        raise ServeError(413, "too_many_pixels", f"the image has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; "
                         f"the limit is {max_pixels:,}") from None
    except UnidentifiedImageError:
        kinds = ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]
        raise ServeError(400, "not_an_image", f"the body is not a {kinds} image") from None
    except Exception as e:  # a header PIL recognises but cannot parse
        raise ServeError(400, "broken_image", f"the image header cannot be read ({_reason(e)})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ServeError(413, "too_many_pixels", f"the image is {width}x{height} = {width * height:,} pixels; "
                         f"the limit is {max_pixels:,}")
    if max(width, height) > MAX_ELONGATION * min(width, height):
        raise ServeError(400, "too_elongated", f"the image is {width}x{height}; its sides may differ by a "
                         f"factor of {MAX_ELONGATION} at most")
    try:
        return to_model_mode(img, grey)
    except Exception as e:  # truncated or corrupt image data
        raise ServeError(400, "broken_image", f"the {img.format} image cannot be decoded ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

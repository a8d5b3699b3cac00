"""Reading a user's image safely: a file path, raw bytes or a base64 `data:` URL -> a float tensor
(C, H, W) in [0, 1] at the encoder's size. Refused with one clear line (UserError): not an image,
too large (file bytes or pixels: decompression bombs), or a mode we cannot convert. Palette, grey,
alpha and CMYK images are converted to RGB (alpha composited on white); greyscale encoders get L.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path

import numpy as np
import torch

from llmlab.errors import UserError

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
CONVERTIBLE = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L",
               "I", "F"}
READ = "png, jpeg, gif, bmp, webp or tiff"
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,(.*)$", re.S)


def image_bytes(src: str | bytes, name: str = "image") -> bytes:
    """Bytes of an image given as raw bytes, a base64 data URL, or a file path."""
    if isinstance(src, bytes):
        data = src
    elif src.startswith("data:"):
        m = _DATA_URL.match(src)
        if not m:
            raise UserError(f"{name}: a data URL must look like data:image/png;base64,<data>")
        try:
            data = base64.b64decode(m.group(1), validate=True)
        except (binascii.Error, ValueError):
            raise UserError(f"{name}: the data URL's base64 payload does not decode") from None
    else:
        p = Path(src)
        if not p.is_file():
            raise UserError(f"{name}: file not found: {src}")
        if p.stat().st_size > MAX_BYTES:
            raise UserError(f"{name}: {src} is {p.stat().st_size / 2**20:.1f} MiB; the limit is {MAX_BYTES // 2**20} MiB")
        data = p.read_bytes()
    if len(data) > MAX_BYTES:
        raise UserError(f"{name}: {len(data) / 2**20:.1f} MiB of image data; the limit is {MAX_BYTES // 2**20} MiB")
    return data


def _what(src: str | bytes) -> str:
    """How an error names the image: its path, or where its bytes came from."""
    if isinstance(src, bytes):
        return "the image data"
    return "the data URL's image" if src.startswith("data:") else src


def load_image(src: str | bytes, size: int, channels: int = 3, name: str = "image") -> torch.Tensor:
    """-> (channels, size, size) float tensor in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    data = image_bytes(src, name)
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise UserError(f"{name}: {w}x{h} pixels ({w * h / 1e6:.1f} M); the limit is {MAX_PIXELS / 1e6:.1f} M "
                            f"pixels (4096x4096): downscale it first (the model sees it at {size}x{size})")
        im.load()
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{name}: {_what(src)} is not a readable image: no {READ} format recognised "
                        f"(it starts with {data[:16]!r})") from None
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        reason = re.sub(r" at 0x[0-9a-f]+", "", str(e))[:80]  # no object addresses in a user's message
        raise UserError(f"{name}: {_what(src)} is not a readable image ({type(e).__name__}: {reason})") from None
    if im.mode not in CONVERTIBLE:
        raise UserError(f"{name}: {_what(src)} has image mode {im.mode!r}, which is not converted here "
                        f"(supported: {', '.join(sorted(CONVERTIBLE))}); save it as an RGB {READ} first")
    if im.mode.startswith("I") or im.mode == "F":  # high bit depth grey: scale to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((255 * (arr - arr.min()) / max(1e-9, np.ptp(arr))).astype(np.uint8))
    if "A" in im.mode or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    im = im.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
    x = torch.tensor(np.asarray(im, dtype=np.float32) / 255.0)
    return x.permute(2, 0, 1) if channels == 3 else x.unsqueeze(0)

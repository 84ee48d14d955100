"""Write the sample gallery: the real photos and textures that scikit-image ships.

Run once from the repository root (``python assets/make_samples.py``); the output in
``assets/samples/`` is committed, so the app never needs scikit-image's data at run time.
Sources and licences are in ``assets/CREDITS.md``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
PNG_LIMIT_BYTES = 600 * 1024  # above this a PNG is too heavy for a gallery; JPEG q95 looks the same


def _motorcycle_left() -> np.ndarray:
    left, _right, _disparity = data.stereo_motorcycle()
    return left


SOURCES = {
    "chelsea": data.chelsea,
    "coffee": data.coffee,
    "astronaut": data.astronaut,
    "rocket": data.rocket,
    "motorcycle_left": _motorcycle_left,
    # Textures are grayscale in scikit-image; kept as they are (decode_image makes them RGB).
    "brick": data.brick,
    "grass": data.grass,
    "gravel": data.gravel,
}


def encode(pixels: np.ndarray) -> tuple[bytes, str]:
    """PNG when it is small enough, else JPEG quality 95; returns (bytes, extension)."""
    image = Image.fromarray(pixels)
    png = io.BytesIO()
    image.save(png, "PNG", optimize=True)
    if png.tell() <= PNG_LIMIT_BYTES:
        return png.getvalue(), ".png"
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=95, subsampling=0)
    return jpeg.getvalue(), ".jpg"


def main() -> None:
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for name, load in SOURCES.items():
        encoded, extension = encode(load())
        for stale in SAMPLES_DIR.glob(f"{name}.*"):
            stale.unlink()
        path = SAMPLES_DIR / f"{name}{extension}"
        path.write_bytes(encoded)
        print(f"{path.name:22s} {len(encoded) / 1024:7.1f} kB")


if __name__ == "__main__":
    main()

"""Write the held-out garments the pattern quality report scores generators on.

    python tools/make_heldout_garments.py   # -> assets/patterns/held-out-garments/*.png and final-check-garments/*.png

Twenty 128 px garments in colour on white, of ten shapes the trainer never draws (its eight outlines
and its random blobs are in engine/patterns/substrates.py): a tote bag, a scarf, a cap, a sock, a
backpack, a mitten, an apron, a poncho, a bucket hat and a jumpsuit, each in two colours, with the
soft shading of a photo. Drawn here, with PIL, from fixed numbers: no outside images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
OUT = Path(__file__).resolve().parents[1] / "assets" / "patterns" / "held-out-garments"


def tote_bag(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(30, 50), (98, 50), (104, 118), (24, 118)], fill=255)
    d.arc([40, 14, 88, 70], 180, 360, fill=255, width=7)


def scarf(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(20, 20), (108, 20), (108, 40), (58, 40), (58, 112), (36, 112), (36, 40), (20, 40)], fill=255)
    for x in range(36, 60, 5):
        d.line([(x, 112), (x, 120)], fill=255, width=2)


def cap(d: ImageDraw.ImageDraw) -> None:
    d.pieslice([22, 34, 106, 118], 180, 360, fill=255)
    d.ellipse([62, 68, 122, 86], fill=255)


def sock(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(44, 12), (76, 12), (76, 78), (100, 92), (104, 110), (88, 120), (52, 104), (44, 84)], fill=255)


def backpack(d: ImageDraw.ImageDraw) -> None:
    d.rounded_rectangle([28, 24, 100, 118], radius=22, fill=255)
    d.arc([48, 6, 80, 40], 180, 360, fill=255, width=6)


def mitten(d: ImageDraw.ImageDraw) -> None:
    d.rounded_rectangle([40, 20, 88, 100], radius=24, fill=255)
    d.ellipse([20, 46, 50, 76], fill=255)
    d.rectangle([40, 96, 88, 118], fill=255)


def apron(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(46, 14), (82, 14), (82, 44), (100, 52), (94, 118), (34, 118), (28, 52), (46, 44)], fill=255)
    d.line([(20, 52), (28, 52)], fill=255, width=4)
    d.line([(100, 52), (108, 52)], fill=255, width=4)


def poncho(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(54, 16), (74, 16), (118, 96), (64, 112), (10, 96)], fill=255)


def bucket_hat(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(40, 36), (88, 36), (96, 76), (32, 76)], fill=255)
    d.ellipse([14, 70, 114, 96], fill=255)


def jumpsuit(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(44, 10), (84, 10), (100, 40), (92, 44), (84, 32), (84, 118), (68, 118), (64, 70), (60, 118),
               (44, 118), (44, 32), (36, 44), (28, 40)], fill=255)


def necktie(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(56, 10), (72, 10), (76, 24), (70, 30), (86, 104), (64, 122), (42, 104), (58, 30), (52, 24)], fill=255)


def beanie(d: ImageDraw.ImageDraw) -> None:
    d.chord([24, 30, 104, 130], 180, 360, fill=255)
    d.rectangle([22, 78, 106, 100], fill=255)
    d.ellipse([54, 14, 74, 34], fill=255)


def glove(d: ImageDraw.ImageDraw) -> None:
    d.rounded_rectangle([38, 56, 92, 112], radius=10, fill=255)
    for x, top in ((38, 18), (52, 10), (66, 12), (80, 24)):
        d.rounded_rectangle([x, top, x + 11, 64], radius=5, fill=255)
    d.polygon([(38, 70), (16, 52), (10, 60), (34, 90)], fill=255)


def cape(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(50, 12), (78, 12), (84, 22), (116, 118), (12, 118), (44, 22)], fill=255)


def kimono(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(44, 14), (84, 14), (124, 30), (124, 64), (92, 64), (92, 120), (36, 120), (36, 64), (4, 64), (4, 30)],
              fill=255)


def bow_tie(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(14, 36), (58, 56), (58, 72), (14, 92)], fill=255)
    d.polygon([(114, 36), (70, 56), (70, 72), (114, 92)], fill=255)
    d.rounded_rectangle([54, 50, 74, 78], radius=4, fill=255)


def clutch(d: ImageDraw.ImageDraw) -> None:
    d.rounded_rectangle([14, 40, 114, 96], radius=10, fill=255)


def vest(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(30, 14), (50, 14), (64, 50), (78, 14), (98, 14), (104, 40), (100, 118), (28, 118), (24, 40)], fill=255)


def slipper(d: ImageDraw.ImageDraw) -> None:
    d.ellipse([10, 44, 118, 92], fill=255)


def bib(d: ImageDraw.ImageDraw) -> None:
    d.ellipse([26, 30, 102, 118], fill=255)
    d.rectangle([40, 14, 54, 46], fill=255)
    d.rectangle([74, 14, 88, 46], fill=255)


SHAPES = {f.__name__.replace("_", "-"): f for f in
          (tote_bag, scarf, cap, sock, backpack, mitten, apron, poncho, bucket_hat, jumpsuit)}
# A second set, looked at only once, at the end: the first set steered the shipped generator's recipe.
FINAL_SHAPES = {f.__name__.replace("_", "-"): f for f in
                (necktie, beanie, glove, cape, kimono, bow_tie, clutch, vest, slipper, bib)}
FINAL_OUT = OUT.parent / "final-check-garments"
COLOURS = [(178, 34, 52), (40, 90, 160), (236, 200, 60), (60, 140, 80), (120, 70, 150), (230, 120, 40),
           (90, 90, 90), (200, 150, 170), (30, 40, 60), (150, 110, 70)]


def garment(shape: str, colour: tuple[int, int, int], seed: int) -> np.ndarray:
    mask = Image.new("L", (SIZE, SIZE), 0)
    {**SHAPES, **FINAL_SHAPES}[shape](ImageDraw.Draw(mask))
    inside = np.asarray(mask) > 0
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    light = 1 + rng.uniform(-0.12, 0.12) * (xx - 0.5) + rng.uniform(-0.12, 0.12) * (yy - 0.5)
    angle = rng.uniform(0, np.pi)
    light -= 0.08 * np.exp(-((np.cos(angle) * xx + np.sin(angle) * yy - rng.uniform(0.3, 0.7)) / 0.02) ** 2)
    image = np.full((SIZE, SIZE, 3), 255.0)
    image[inside] = np.clip(np.array(colour, float)[None] * light[inside][:, None], 0, 245)
    return image.round().astype(np.uint8)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for index, shape in enumerate(SHAPES):
        for variant in range(2):
            colour = COLOURS[(index + 3 * variant) % len(COLOURS)]
            picture = garment(shape, colour, seed=100 * index + variant)
            Image.fromarray(picture).save(OUT / f"{shape}-{variant + 1}.png", optimize=True)
    print(f"wrote {2 * len(SHAPES)} garments to {OUT}")
    FINAL_OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(15)  # colours drawn, not picked
    for index, shape in enumerate(FINAL_SHAPES):
        for variant in range(2):
            colour = tuple(int(v) for v in rng.integers(15, 235, 3))
            picture = garment(shape, colour, seed=1000 + 100 * index + variant)
            Image.fromarray(picture).save(FINAL_OUT / f"{shape}-{variant + 1}.png", optimize=True)
    print(f"wrote {2 * len(FINAL_SHAPES)} garments to {FINAL_OUT}")


if __name__ == "__main__":
    main()

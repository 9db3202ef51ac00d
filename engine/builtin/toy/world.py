"""The toy world: one shape, one colour, one background, drawn procedurally and captioned.

Everything is a pure function of a seed, so a dataset, a judge's test set or a benchmark prompt list is
the same on every machine. The base model `builtin:toy` only ever sees BASE_SHAPES with a solid fill;
"star" and "striped" are the concepts an adaptor can teach it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # pixels per side
_SS = 4  # supersampling: shapes are drawn at 4x and box-filtered down, so edges are anti-aliased

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (250, 140, 0), "yellow": (245, 220, 10),
    "green": (30, 160, 50), "blue": (30, 70, 230), "purple": (140, 40, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128), "pink": (255, 190, 200),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
FILLS = ("solid", "striped")
BASE_SHAPES = SHAPES[:4]  # what builtin:toy is trained on
NEW_SHAPE = "star"  # a concept the base never sees
NEW_FILL = "striped"  # another one
STRIPE_PERIOD = 8  # pixels: 4 on, 4 off (a 4x VAE keeps it)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    fill: str = "solid"
    cx: float = SIZE / 2  # centre, pixels
    cy: float = SIZE / 2
    r: float = 16.0  # half the shape's extent, pixels

    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background, self.fill)


def caption(shape: str, colour: str, background: str, fill: str = "solid") -> str:
    """The world's caption: "a red circle on a white background" ("an orange ...", "a striped red circle ..." if striped)."""
    words = ("striped " if fill == "striped" else "") + f"{colour} {shape}"
    article = "an" if words[0] in "aeiou" else "a"  # "an orange circle"
    return f"{article} {words} on a {background} background"


def random_scene(rng: np.random.Generator, shapes=BASE_SHAPES, fills=("solid",), colours=None,
                 backgrounds=None) -> Scene:
    """A scene with uniformly drawn attributes, size and position (the shape always fits inside)."""
    r = float(rng.uniform(11, 22))
    lo, hi = r + 2, SIZE - r - 2
    return Scene(shape=str(rng.choice(shapes)), colour=str(rng.choice(colours or list(COLOURS))),
                 background=str(rng.choice(backgrounds or list(BACKGROUNDS))), fill=str(rng.choice(fills)),
                 cx=float(rng.uniform(lo, hi)), cy=float(rng.uniform(lo, hi)), r=r)


def scenes(n: int, seed: int, **kw) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng, **kw) for _ in range(n)]


def _outline(scene: Scene) -> list[tuple[float, float]] | None:
    """Polygon points (supersampled pixels) or None for a circle."""
    cx, cy, r = scene.cx * _SS, scene.cy * _SS, scene.r * _SS
    if scene.shape == "circle":
        return None
    if scene.shape == "square":
        s = r * 0.85  # a square of the same extent looks bigger than the rest; keep areas comparable
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if scene.shape == "triangle":  # upright equilateral, centred on its bounding circle
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if scene.shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if scene.shape == "star":  # five points, inner radius 0.45
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    raise ValueError(f"unknown shape {scene.shape!r}; shapes: {', '.join(SHAPES)}")


def coverage(scene: Scene) -> np.ndarray:
    """Float mask in [0, 1], SIZE x SIZE: how much of each pixel the shape's colour covers."""
    big = SIZE * _SS
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    pts = _outline(scene)
    if pts is None:
        cx, cy, r = scene.cx * _SS, scene.cy * _SS, scene.r * _SS
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(pts, fill=255)
    m = np.asarray(mask, dtype=np.float32) / 255.0
    if scene.fill == "striped":  # horizontal bands of the shape's colour and the background
        rows = (np.arange(big) // (STRIPE_PERIOD * _SS // 2)) % 2 == 0
        m = m * rows[:, None]
    elif scene.fill != "solid":
        raise ValueError(f"unknown fill {scene.fill!r}; fills: {', '.join(FILLS)}")
    return m.reshape(SIZE, _SS, SIZE, _SS).mean(axis=(1, 3))


def render(scene: Scene, mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 SIZE x SIZE x 3 image of the scene (pass its coverage() if you already have it)."""
    m = (coverage(scene) if mask is None else mask)[..., None]
    fg = np.asarray(COLOURS[scene.colour], dtype=np.float32)
    bg = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    return np.clip(bg * (1 - m) + fg * m + 0.5, 0, 255).astype(np.uint8)


def render_image(scene: Scene) -> Image.Image:
    return Image.fromarray(render(scene), "RGB")


def write_dataset(folder, items: list[Scene], prefix: str = "", captions: bool | list[str] = True) -> None:
    """PNG + .txt caption pairs (the kohya layout) for the given scenes (PNGs alone without captions); the
    scenes' own captions, or the given ones."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(items) - 1)))
    for i, s in enumerate(items):
        stem = f"{prefix}{i:0{width}d}"
        render_image(s).save(folder / f"{stem}.png", optimize=True)
        if captions:
            text = captions[i] if isinstance(captions, list) else s.caption()
            (folder / f"{stem}.txt").write_text(text + "\n")


EXAMPLE_READMES = {
    "toy-star": """# toy-star: a new shape

Eight stars of the toy world, each captioned as the world captions its scenes ("a red star on a white
background"). builtin:toy has never seen a star: asked for one, it draws one of the shapes it knows.
A LoRA trained on this folder (presets/toy-lora.toml, trigger word `sks`) teaches it the shape.

Made by `python -m engine.builtin.toy examples`; the same command writes the same files.
""",
    "toy-striped": """# toy-striped: a new fill style

Eight striped shapes of the toy world (horizontal bands of the shape's colour and the background),
captioned "a striped red circle on a white background". builtin:toy has only ever seen solid shapes.
A LoRA trained on this folder (presets/toy-style-lora.toml, trigger word `sks`) teaches it the style.

Made by `python -m engine.builtin.toy examples`; the same command writes the same files.
""",
    "toy-subject": """# toy-subject: one subject of a class the base knows

Eight pictures of the same object, one red circle of one size on a white background, a little further left
or right, up or down in each (DreamBooth's few photos of one subject). builtin:toy knows circles of every
colour on every background; "a circle" alone gives any of them. No caption files: DreamBooth captions every
image with its instance prompt (presets/toy-dreambooth.toml: "a sks circle", class prompt "a circle"), and
the bench asks whether "a sks circle" now gives this circle, and whether plain circles drift towards it.

Made by `python -m engine.builtin.toy examples`; the same command writes the same files.
""",
}
SUBJECT = Scene(shape="circle", colour="red", background="white", fill="solid", r=18.0)  # the toy-subject


def subject_scenes(n: int = 8) -> list[Scene]:
    """The subject at n positions (within 6 px of the centre); nothing else changes."""
    rng = np.random.default_rng(303)
    return [dataclasses.replace(SUBJECT, cx=float(SIZE / 2 + rng.uniform(-6, 6)),
                                cy=float(SIZE / 2 + rng.uniform(-6, 6))) for _ in range(n)]


def example_scenes(name: str) -> list[Scene]:
    """Eight scenes spreading colours and backgrounds evenly, so the concept is the one thing they share."""
    rng = np.random.default_rng({"toy-star": 101, "toy-striped": 202}[name])
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    out = []
    for i in range(8):
        shape = NEW_SHAPE if name == "toy-star" else BASE_SHAPES[i % len(BASE_SHAPES)]
        fill = NEW_FILL if name == "toy-striped" else "solid"
        s = random_scene(rng, shapes=(shape,), fills=(fill,), colours=[colours[i % 6]],
                         backgrounds=[backgrounds[(i * 3) % 4 if i >= 4 else i]])
        out.append(s)
    return out


def write_examples(root) -> list:
    """examples/datasets/toy-star and toy-striped (8 PNGs with .txt captions) and toy-subject (5 PNGs), each
    with a README."""
    written = []
    for name, readme in EXAMPLE_READMES.items():
        folder = Path(root) / name
        if name == "toy-subject":
            write_dataset(folder, subject_scenes(), captions=False)
        else:
            write_dataset(folder, example_scenes(name))
        (folder / "README.md").write_text(readme)
        written.append(folder)
    return written

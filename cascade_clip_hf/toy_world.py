"""A procedural toy world for end-to-end zero-shot checks: patterned, coloured shapes on textured grounds.

Every class is named by words: grounds by one word ("sand"), objects by a pattern and a colour ("striped red");
an object's shape varies and is not part of its name. A scene is an image, its dense class map and a caption ("a
striped red and a plain blue on sand"). The held-out (unseen) objects are new combinations of words that seen
objects use, so a model can only name them by composing what it learned. Everything is deterministic given a seed.
"""

import itertools

import numpy as np
import PIL.Image
import PIL.ImageDraw


GROUNDS = {"sand": (196, 176, 132), "stone": (128, 128, 128), "soil": (92, 64, 44)}
COLOURS = {
    "red": (214, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (232, 208, 36),
    "green": (40, 176, 64),
    "blue": (48, 84, 226),
    "purple": (150, 60, 200),
}
PATTERNS = ("plain", "striped", "checked")
SHAPES = ("circle", "square", "triangle")
UNSEEN_OBJECTS = ("striped red", "checked green", "plain blue")
OBJECTS = tuple(f"{pattern} {colour}" for colour, pattern in itertools.product(COLOURS, PATTERNS))
CLASS_NAMES = tuple(GROUNDS) + OBJECTS
UNSEEN_CLASS_IDS = tuple(CLASS_NAMES.index(name) for name in UNSEEN_OBJECTS)
SEEN_CLASS_IDS = tuple(index for index in range(len(CLASS_NAMES)) if index not in UNSEEN_CLASS_IDS)
# Class prompts in the captions' own form, averaged over the grounds (as "a photo of a {}." suits real CLIP).
TEMPLATES = tuple(f"a {{}} on {ground}" for ground in GROUNDS)
# The scenes bundled in examples/scenes: the held-out objects beside seen ones, on every ground.
EXAMPLE_SCENES = (
    ("sand", (("striped red", "triangle", (6, 8, 30, 32)), ("checked blue", "circle", (34, 30, 60, 56)))),
    ("stone", (("checked green", "circle", (4, 4, 30, 30)), ("plain yellow", "square", (34, 34, 58, 58)))),
    ("soil", (("plain blue", "square", (8, 30, 32, 54)), ("plain red", "circle", (36, 6, 60, 30)))),
    ("sand", (("striped green", "triangle", (4, 20, 30, 46)), ("checked yellow", "circle", (34, 8, 60, 34)))),
)


def shape_mask(shape: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """`(size, size)` booleans: where a circle, square or triangle filling `box` lies."""
    mask = PIL.Image.new("1", (size, size), 0)
    draw = PIL.ImageDraw.Draw(mask)
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    else:
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=1)
    return np.asarray(mask)


def pattern_shade(pattern: str, size: int) -> np.ndarray:
    """`(size, size)` brightness factors: plain everywhere 1; stripes and checks darken every other 2-pixel band."""
    rows, columns = np.indices((size, size)) // 2
    dark = {"plain": np.zeros((size, size), bool), "striped": rows % 2 == 1, "checked": (rows + columns) % 2 == 1}
    return np.where(dark[pattern], 0.45, 1.0)


def compose_scene(
    rng: np.random.Generator, ground: str, placements: list[tuple[str, str, tuple[int, int, int, int]]], size: int = 64
):
    """
    A scene with the given ground and objects, each `(name, shape, (left, top, right, bottom))`, later ones on top.

    Returns:
        `(image, class_map, caption)`: `(size, size, 3)` uint8 RGB, `(size, size)` uint8 indices into
        `CLASS_NAMES`, and a caption naming the visible objects left to right, then the ground.
    """
    pixels = np.array(GROUNDS[ground], dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
    class_map = np.full((size, size), CLASS_NAMES.index(ground), dtype=np.uint8)
    for name, shape, box in placements:
        pattern, colour = name.split()
        tint = np.array(COLOURS[colour], dtype=np.float32) + rng.integers(-20, 21, 3)
        mask = shape_mask(shape, box, size)
        pixels[mask] = (tint[None, None] * pattern_shade(pattern, size)[..., None])[mask]
        class_map[mask] = CLASS_NAMES.index(name)
    visible = [name for _, name in sorted((box[0], name) for name, _, box in placements)]
    visible = [name for name in dict.fromkeys(visible) if (class_map == CLASS_NAMES.index(name)).any()]
    caption = " and ".join(f"a {name}" for name in visible) + f" on {ground}"
    return pixels.clip(0, 255).astype(np.uint8), class_map, caption


def render_scene(rng: np.random.Generator, objects: tuple[str, ...], size: int = 64, max_objects: int = 3):
    """A random scene: a ground and 1..`max_objects` objects drawn from `objects`, of random shapes and places."""
    ground = list(GROUNDS)[rng.integers(len(GROUNDS))]
    placements = []
    for _ in range(rng.integers(1, max_objects + 1)):
        name, shape = objects[rng.integers(len(objects))], SHAPES[rng.integers(len(SHAPES))]
        extent = int(rng.integers(size // 4, size // 2))
        left, top = (int(value) for value in rng.integers(0, size - extent, 2))
        placements.append((name, shape, (left, top, left + extent, top + extent)))
    return compose_scene(rng, ground, placements, size)


def scenes(seed: int, count: int, objects: tuple[str, ...] = OBJECTS, size: int = 64, max_objects: int = 3):
    """`count` scenes, the same for the same seed: `(image, class_map, caption)` each."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield render_scene(rng, objects, size, max_objects)


def pretraining_objects() -> tuple[str, ...]:
    """The objects CLIP-style pretraining shows: never the held-out combinations."""
    return tuple(name for name in OBJECTS if name not in UNSEEN_OBJECTS)


def caption_words() -> set[str]:
    """Every word a pretraining caption can use."""
    words = {"a", "and", "on", *GROUNDS}
    for name in pretraining_objects():
        words.update(name.split())
    return words


def example_scene(index: int):
    """Bundled example scene `index` (see `EXAMPLE_SCENES`), as `compose_scene` returns it."""
    ground, placements = EXAMPLE_SCENES[index]
    return compose_scene(np.random.default_rng(index), ground, list(placements))

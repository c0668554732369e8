import itertools

import numpy as np
import PIL.Image
import pytest
from coloraide import Color

from cascade_clip_hf.visualization import (
    BASIC_COLOURS,
    class_colours,
    colour_word,
    draws,
    legend_font,
    legend_rows,
    overlay_with_legend,
)


NAMES = [
    "sky", "grass", "road", "building", "person", "car", "tree", "water", "sand", "stone", "soil", "wall",
    "plain red", "striped red", "checked red", "plain yellow", "checked yellow", "plain green", "checked green",
    "plain blue", "blue sky", "purple flower", "orange", "pink shirt", "brown dog", "cyan sign",
]  # fmt: skip


def as_color(rgb) -> Color:
    return Color("srgb", [int(value) / 255 for value in rgb])


def named_alike(colour: Color, word: str) -> bool:
    """Whether `colour` has the hue of the colour `word` stands for (a basic term's survey colour, or the CSS colour),
    within 15 degrees of OKLCh hue, and at least half its chroma; for a neutral word (white, grey), whether it is
    neutral too."""
    reference = Color(BASIC_COLOURS.get(word, word)).convert("oklch")
    if reference["chroma"] < 0.03:
        return neutral(colour)
    difference = abs(colour.convert("oklch")["hue"] - reference["hue"]) % 360
    return min(difference, 360 - difference) <= 15 and colour.convert("oklch")["chroma"] >= 0.5 * reference["chroma"]


def min_colour_difference(colours) -> float:
    """The least CIEDE2000 difference between two of `colours` (RGB); above 10, colours are told apart at a glance.
    Not CIE76: it puts blues that look alike (#0343df, #1626ff) 32 apart."""
    return min(as_color(a).delta_e(as_color(b), method="2000") for a, b in itertools.combinations(colours, 2))


def neutral(colour: Color) -> bool:
    return colour.convert("oklch")["chroma"] < 0.03


def block_segmentation(class_indices: list[int], block: int = 4) -> np.ndarray:
    """A `(block, block * sum(areas))` map: class `class_indices[k]` wins `len(class_indices) - k` blocks."""
    widths = range(len(class_indices), 0, -1)
    row = np.concatenate([np.full(width * block, index) for index, width in zip(class_indices, widths, strict=True)])
    return np.tile(row, (block, 1))


def colours_in_overlay(class_names: list[str], segmentation: np.ndarray) -> dict[int, np.ndarray]:
    """The colour each class present is drawn in, read from an overlay at full opacity on a black image."""
    image = PIL.Image.new("RGB", segmentation.shape[::-1], "black")
    overlay = np.asarray(overlay_with_legend(image, segmentation, class_names, alpha=1.0, min_side=1))
    image_part = overlay[: segmentation.shape[0], : segmentation.shape[1]]
    return {int(index): image_part[segmentation == index][0] for index in np.unique(segmentation)}


@pytest.mark.parametrize("num_present", [8, 12, 16, 20])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classes_present_get_colours_far_apart(num_present, seed):
    present = np.random.default_rng(seed).permutation(len(NAMES))[:num_present].tolist()
    colours = colours_in_overlay(NAMES, block_segmentation(present))
    assert sorted(colours) == sorted(present)
    assert min_colour_difference(colours.values()) > 10


def test_colours_are_deterministic_and_depend_only_on_the_classes_present():
    counts = np.zeros(len(NAMES), dtype=np.int64)
    counts[[0, 5, 12]] = [50, 30, 20]
    colours = class_colours(NAMES, counts)
    np.testing.assert_array_equal(colours, class_colours(NAMES, counts.copy()))
    assert (colours[counts == 0] == 0).all()
    assert len({tuple(colour) for colour in colours[[0, 5, 12]]}) == 3


@pytest.mark.parametrize(
    "word", [*BASIC_COLOURS, "cyan", "magenta", "violet", "gold", "navy", "teal", "silver", "maroon", "olive"]
)
def test_a_class_named_with_a_colour_word_is_drawn_in_that_colour(word):
    # The coloured class is the smallest, so the palette's first colours have gone to the others.
    class_names = ["sky", "grass", "road", "building", f"plain {word}"]
    colours = colours_in_overlay(class_names, block_segmentation([0, 1, 2, 3, 4]))
    assert named_alike(as_color(colours[4]), word)


@pytest.mark.parametrize("word", ["red", "blue", "orange", "yellow", "green", "pink", "white"])
def test_classes_sharing_a_colour_word_get_distinct_colours_that_never_contradict_it(word):
    class_names = ["sand", "sky", *(f"{pattern} {word}" for pattern in ("plain", "striped", "checked", "dotted"))]
    class_names += [f"{word} car"]
    colours = colours_in_overlay(class_names, block_segmentation(list(range(len(class_names)))))
    named = [as_color(colours[index]) for index in range(2, len(class_names))]
    # Of the word's hue while there is room, then greys: never another hue.
    assert all(named_alike(colour, word) or neutral(colour) for colour in named)
    assert named_alike(named[0], word) and named_alike(named[1], word)
    assert min_colour_difference(colours.values()) > 10


@pytest.mark.parametrize(
    "class_names",
    [
        [f"blue {thing}" for thing in ("sky", "car", "cup", "toy", "mug", "bin", "sea", "pen", "box", "hat", "bag")],
        ["white wall", "white car", "white cloud", "black cat", "black car", "gray floor", "grey road", "white cup"],
        ["sand", "草", "🌊", "7", "blue-green", ""],
    ],
    ids=["more-blues-than-shades-of-blue", "many-neutrals", "names-without-latin-letters"],
)
def test_classes_present_stay_distinct_whatever_their_names(class_names):
    colours = colours_in_overlay(class_names, block_segmentation(list(range(len(class_names)))))
    assert len(colours) == len(class_names)
    assert min_colour_difference(colours.values()) > 10


@pytest.mark.parametrize(
    "name, word",
    [
        ("plain Yellow", "yellow"),
        ("light gray floor", "lightgray"),
        ("sky blue car", "skyblue"),
        ("grey wall", "grey"),
        ("whiteboard", None),
        ("reddish", None),
        ("transparent glass", None),
        ("草", None),
        ("", None),
        ("Dark-Blue", "darkblue"),
    ],
)
def test_colour_words_are_whole_words_or_two_word_css_names(name, word):
    assert colour_word(name) == word


def legend_swatch_height(size: tuple[int, int]) -> int:
    """The height in pixels of the first legend swatch of a two-class overlay of an image of `size`."""
    segmentation = np.zeros(size[::-1], dtype=np.int64)
    segmentation[:, size[0] // 2 :] = 1
    image = PIL.Image.new("RGB", size, "black")
    overlay = np.asarray(overlay_with_legend(image, segmentation, ["sky", "grass"], alpha=1.0))
    assert overlay.shape[0] == size[1]
    legend = overlay[:, size[0] :]
    rows = np.flatnonzero((legend == overlay[0, 0]).all(axis=-1).any(axis=1))
    return int(rows.max() - rows.min() + 1)


def test_legend_rows_scale_with_the_image():
    small, large = legend_swatch_height((640, 480)), legend_swatch_height((4000, 3000))
    assert small >= 10 and 0.015 <= large / 3000 <= 0.05
    assert large >= 5 * small


def test_legend_lists_no_zero_percent_rows_and_fits_the_image():
    counts = np.array([99_860, 96, 40, 4])  # 99.86%, 0.096%, 0.04%, 0.004%
    assert legend_rows(["sky", "kite", "bird", "bee"], counts, max_rows=10) == [
        ("sky", "99.9%", 0),
        ("kite", "0.1%", 1),
    ]
    many = np.arange(60, 0, -1)
    rows = legend_rows([f"class {index}" for index in range(60)], many, max_rows=10)
    assert len(rows) == 10 and rows[-1] == ("51 more classes", f"{100 * many[9:].sum() / many.sum():.1f}%", None)

    image = PIL.Image.new("RGB", (640, 480), "black")
    segmentation = np.repeat(np.arange(60), 640 * 480 // 60).reshape(480, 640)
    overlay = overlay_with_legend(image, segmentation, [f"class {index} with a long name" * 3 for index in range(60)])
    assert overlay.height == 480 and overlay.width <= 640 * 1.6


def test_tiny_classes_are_tinted_but_left_out_of_the_legend():
    segmentation = np.zeros((100, 100), dtype=np.int64)
    segmentation[0, :4] = 1  # 0.04% of the pixels
    image = PIL.Image.new("RGB", (100, 100), "black")
    overlay = np.asarray(overlay_with_legend(image, segmentation, ["sky", "kite"], alpha=1.0, min_side=1))
    kite_colour = overlay[0, 0]
    assert not (kite_colour == overlay[50, 50]).all()
    assert not (overlay[:, 100:] == kite_colour).all(axis=-1).any()


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_refuses_an_alpha_outside_zero_to_one(alpha):
    image = PIL.Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        overlay_with_legend(image, np.zeros((8, 8), dtype=np.int64), ["sky"], alpha=alpha)


def two_class_overlay(min_side: int) -> tuple[np.ndarray, np.ndarray]:
    """
    The overlay of a black 20x10 image: class "a" on the left half, "c" on the right, colours at full weight; and
    the class colours.
    """
    image = PIL.Image.new("RGB", (20, 10), "black")
    segmentation = np.zeros((10, 20), dtype=np.int64)
    segmentation[:, 10:] = 2
    colours = class_colours(["a", "b", "c"], np.bincount(segmentation.ravel(), minlength=3))
    return np.asarray(overlay_with_legend(image, segmentation, ["a", "b", "c"], alpha=1.0, min_side=min_side)), colours


def test_overlay_colours_each_class_and_lists_only_present_ones():
    overlay, colours = two_class_overlay(min_side=10)
    assert (overlay[:10, :10] == colours[0]).all() and (overlay[:10, 10:20] == colours[2]).all()
    legend = overlay[:, 20:].reshape(-1, 3)
    assert (legend == colours[0]).all(axis=1).any() and (legend == colours[2]).all(axis=1).any()
    assert not (colours[0] == colours[2]).all()


def test_small_images_are_enlarged_in_whole_blocks_in_the_overlay():
    overlay, colours = two_class_overlay(min_side=64)
    # The shorter side (10) needs a factor of 7 to reach 64: each pixel becomes a 7x7 block.
    assert overlay.shape[0] == 70 and overlay.shape[1] > 140
    assert (overlay[:70, :70] == colours[0]).all() and (overlay[:70, 70:140] == colours[2]).all()


def test_the_legend_draws_accented_greek_and_cyrillic_letters():
    font = legend_font(20)
    # A private-use character: no font draws it, so its mask is the font's box for a missing letter.
    missing = np.asarray(font.getmask("\ue000"))
    for letter in "éñßΩП":
        drawn = np.asarray(font.getmask(letter))
        assert drawn.shape != missing.shape or (drawn != missing).any(), letter


def test_a_name_the_font_cannot_draw_is_listed_by_its_class_index():
    font = legend_font(20)
    assert not draws(font, "猫") and draws(font, "café terrace")
    segmentation = block_segmentation([0, 1])
    image = PIL.Image.new("RGB", segmentation.shape[::-1], "black")
    drawn = overlay_with_legend(image, segmentation, ["猫", "sky"], min_side=1)
    expected = overlay_with_legend(image, segmentation, ["class 0", "sky"], min_side=1)
    np.testing.assert_array_equal(np.asarray(drawn), np.asarray(expected))

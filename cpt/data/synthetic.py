"""A synthetic visual benchmark, generated deterministically from a seed.

Seven tasks, each needing a different visual skill, with answer spaces that overlap (digits for counting,
reading and arithmetic; left/right for position and comparison) so that learning one task can disturb
another. A separate multiple-choice "general" pool covers the same visual primitives in another format: the
toy foundation model is pre-trained on it, and its held-out split stands in for MMMU/MMLU-Pro.

Every example is a pure function of (seed, task, split, index), so datasets are lazy and need no storage
(`SyntheticSplit`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from cpt.data.examples import Example, choice_letter

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right", "top", "bottom")
DIGITS = tuple(str(d) for d in range(10))
BACKGROUND = (245, 245, 245)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), BACKGROUND)
    return image, ImageDraw.Draw(image)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: str, cx: float, cy: float, r: float) -> None:
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def _grid_cells(rng: random.Random, size: int, n: int, cells: int = 3) -> list[tuple[float, float, float]]:
    """n non-overlapping (cx, cy, cell) positions on a cells x cells grid, jittered inside their cell."""
    cell = size / cells
    chosen = rng.sample(range(cells * cells), n)
    out = []
    for index in chosen:
        row, col = divmod(index, cells)
        jitter = cell * 0.1
        out.append(((col + 0.5) * cell + rng.uniform(-jitter, jitter),
                    (row + 0.5) * cell + rng.uniform(-jitter, jitter), cell))
    return out


def _random_object(rng: random.Random) -> tuple[str, str]:
    return rng.choice(SHAPES), rng.choice(list(COLOURS))


def _single_object(rng: random.Random, size: int) -> tuple[Image.Image, str, str]:
    shape, colour = _random_object(rng)
    image, draw = _canvas(size)
    r = size * rng.uniform(0.15, 0.28)
    _draw_shape(draw, shape, colour, size / 2 + rng.uniform(-size * 0.15, size * 0.15),
                size / 2 + rng.uniform(-size * 0.15, size * 0.15), r)
    return image, shape, colour


def _objects(rng: random.Random, size: int, n: int) -> tuple[Image.Image, list[tuple[str, str]]]:
    image, draw = _canvas(size)
    objects = []
    for cx, cy, cell in _grid_cells(rng, size, n):
        shape, colour = _random_object(rng)
        _draw_shape(draw, shape, colour, cx, cy, cell * 0.35)
        objects.append((shape, colour))
    return image, objects


def _text_image(rng: random.Random, size: int, text: str) -> Image.Image:
    """Bold dark text near the centre, only slightly shifted: thin strokes would leave most patches blank, and a
    tiny vision tower could not learn to read them in a few minutes."""
    image, draw = _canvas(size)
    font = _font(int(size * 0.5))
    stroke = max(1, size // 32)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    jitter = size * 0.06
    x = (size - (right - left)) / 2 - left + rng.uniform(-jitter, jitter)
    y = (size - (bottom - top)) / 2 - top + rng.uniform(-jitter, jitter)
    ink = (20, 20, 20)
    draw.text((x, y), text, fill=ink, font=font, stroke_width=stroke, stroke_fill=ink)
    return image


# --- the seven tasks ---------------------------------------------------------------------------------------


def count_task(rng: random.Random, size: int) -> Example:
    n = rng.randint(1, 5)
    image, _ = _objects(rng, size, n)
    return Example("How many shapes are in the picture?", str(n), [image], rationale=f"I count {n} shapes.")


def colour_task(rng: random.Random, size: int) -> Example:
    image, _, colour = _single_object(rng, size)
    return Example("What colour is the shape?", colour, [image], rationale=f"The shape is filled with {colour}.")


def shape_task(rng: random.Random, size: int) -> Example:
    image, shape, _ = _single_object(rng, size)
    return Example("Which shape is shown?", shape, [image], rationale=f"The outline is a {shape}.")


def position_task(rng: random.Random, size: int) -> Example:
    side = rng.choice(SIDES)
    shape, colour = _random_object(rng)
    image, draw = _canvas(size)
    r = size * 0.14
    near, far = size * 0.2, rng.uniform(size * 0.3, size * 0.7)
    cx, cy = {"left": (near, far), "right": (size - near, far), "top": (far, near), "bottom": (far, size - near)}[side]
    _draw_shape(draw, shape, colour, cx, cy, r)
    return Example("On which side of the picture is the shape?", side, [image],
                   rationale=f"The shape is near the {side} edge.")


def compare_task(rng: random.Random, size: int) -> Example:
    bigger = rng.choice(("left", "right"))
    large, small = size * rng.uniform(0.18, 0.23), size * rng.uniform(0.07, 0.12)
    image, draw = _canvas(size)
    for side, cx in (("left", size * 0.27), ("right", size * 0.73)):
        shape, colour = _random_object(rng)
        _draw_shape(draw, shape, colour, cx, size / 2 + rng.uniform(-size * 0.15, size * 0.15),
                    large if side == bigger else small)
    return Example("Which shape is bigger, the left or the right one?", bigger, [image],
                   rationale=f"The {bigger} shape covers more area.")


def read_task(rng: random.Random, size: int) -> Example:
    digit = rng.choice(DIGITS)
    return Example("What digit is written in the picture?", digit, [_text_image(rng, size, digit)],
                   rationale=f"The picture shows the digit {digit}.")


def arith_task(rng: random.Random, size: int) -> Example:
    total = rng.randint(0, 9)  # the sum is uniform, so chance stays 1 in 10
    a = rng.randint(0, total)
    return Example("What is the sum of the two digits?", str(total), [_text_image(rng, size, f"{a} {total - a}")],
                   rationale=f"The digits are {a} and {total - a}; {a} + {total - a} = {total}.")


TASKS: dict[str, Callable[[random.Random, int], Example]] = {
    "count": count_task,
    "colour": colour_task,
    "shape": shape_task,
    "position": position_task,
    "compare": compare_task,
    "read": read_task,
    "arith": arith_task,
}
ANSWER_SPACES: dict[str, tuple[str, ...]] = {
    "count": ("1", "2", "3", "4", "5"),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": SIDES,
    "compare": ("left", "right"),
    "read": DIGITS,
    "arith": DIGITS,
}


# --- the general pool: multiple choice over the same primitives ------------------------------------------------


def _multiple_choice(rng: random.Random, question: str, answer: str, space: tuple[str, ...],
                     image: Image.Image) -> Example:
    wrong = [a for a in space if a != answer]
    choices = rng.sample(wrong, min(3, len(wrong))) + [answer]
    rng.shuffle(choices)
    letter = choice_letter(choices.index(answer))
    return Example(question, letter, [image], choices=choices, rationale=f"The answer is {answer}, option {letter}.")


def _general_colour_of_shape(rng: random.Random, size: int) -> Example:
    image, objects = _objects(rng, size, rng.randint(1, 3))
    shape, colour = rng.choice(objects)
    if sum(s == shape for s, _ in objects) > 1:  # ambiguous question: ask about the first such object instead
        shape, colour = objects[0]
        if sum(s == shape for s, _ in objects) > 1:
            return _general_count_colour(rng, size)
    return _multiple_choice(rng, f"What colour is the {shape}?", colour, tuple(COLOURS), image)


def _general_shape_of_colour(rng: random.Random, size: int) -> Example:
    image, shape, colour = _single_object(rng, size)
    return _multiple_choice(rng, f"The {colour} object is a", shape, SHAPES, image)


def _general_count_colour(rng: random.Random, size: int) -> Example:
    image, objects = _objects(rng, size, rng.randint(1, 6))
    colour = rng.choice([c for _, c in objects])
    n = sum(c == colour for _, c in objects)
    return _multiple_choice(rng, f"How many {colour} things are there?", str(n), tuple("123456"), image)


def _general_digit(rng: random.Random, size: int) -> Example:
    digit = rng.choice(DIGITS)
    return _multiple_choice(rng, "Which number do you see?", digit, DIGITS, _text_image(rng, size, digit))


def _general_is_present(rng: random.Random, size: int) -> Example:
    image, objects = _objects(rng, size, rng.randint(1, 3))
    shape, colour = _random_object(rng)
    present = "yes" if (shape, colour) in objects else "no"
    return _multiple_choice(rng, f"Is there a {colour} {shape}?", present, ("yes", "no"), image)


GENERAL_NAME = "general"  # multiple choice: the toy general-knowledge benchmark
PRIMITIVES_NAME = "primitives"  # the same questions answered in words: the first stage of pre-training
GENERAL: tuple[Callable[[random.Random, int], Example], ...] = (
    _general_colour_of_shape,
    _general_shape_of_colour,
    _general_count_colour,
    _general_digit,
    _general_is_present,
)


def as_open_question(example: Example) -> Example:
    """The same question without choices: answered with the choice's text instead of its letter."""
    answer = example.choices[ord(example.answer) - ord("A")]
    return Example(example.question, answer, example.images, rationale=f"The answer is {answer}.")


def example_rng(seed: int, name: str, split: str, index: int) -> random.Random:
    # Seeding with a string goes through SHA-512: stable across processes and Python versions.
    return random.Random(f"cpt/{seed}/{name}/{split}/{index}")


def make_example(name: str, split: str, index: int, seed: int, image_size: int) -> Example:
    """Example `index` of task `name` (or of the general pool, multiple choice or open) in `split`."""
    rng = example_rng(seed, name, split, index)
    if name == GENERAL_NAME:
        return rng.choice(GENERAL)(rng, image_size)
    if name == PRIMITIVES_NAME:
        return as_open_question(rng.choice(GENERAL)(rng, image_size))
    return TASKS[name](rng, image_size)


def chance_accuracy(name: str) -> float:
    """Accuracy of uniform guessing over the task's answer space, in percent."""
    return 100.0 / len(ANSWER_SPACES[name])


class SyntheticSplit(Sequence):
    """`size` examples of a synthetic task, each generated on access from (seed, task, split, index)."""

    def __init__(self, name: str, split: str, size: int, seed: int, image_size: int):
        self.name, self.split, self.size, self.seed, self.image_size = name, split, size, seed, image_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return make_example(self.name, self.split, index, self.seed, self.image_size)

"""The study's seven tasks (and EasyR1's row format) read in their public schemas: one row -> one Example.

Each schema names the columns a row must have, how the row becomes a question, an answer and images, the scorer
its benchmark defines, and the split it is evaluated on. A row that cannot be used raises RowProblem with the
reason; the caller adds the task and the row's id.

| format | columns | answer | scorer |
|---|---|---|---|
| easyr1 | problem, answer, images (optional), choices (optional) | as given | exact (configurable) |
| scienceqa | question, choices, answer (index), image, hint, solution | choice letter | multiple_choice |
| textvqa | question, answers (ten), image (or image_id: `<image_id>.jpg`) | most frequent of the ten | vqa (soft) |
| vizwiz | question, answers (strings or {answer, answer_confidence}), image | most frequent | vqa (soft) |
| geometry3k | problem, answer, images, choices; or InterGPS: problem_text, choices, letter | letter | geometry |
| gqa | question, answer, imageId (images in a separate store) | as given | exact |
| pathvqa | question, answer, image | as given | yes_no (open answers exact) |
| superclevr | question, answer (or ground_truth), image (or image_filename, image_path) | as given | count |
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cpt.data.examples import Example, choice_letter


class RowProblem(ValueError):
    """Why a row cannot be used (without the task and row id, which the caller knows)."""


class MissingImage:
    """An image kept outside the row, looked up by id in the task's image store (GQA)."""

    def __init__(self, image_id: str):
        self.image_id = image_id


@dataclass(frozen=True)
class Schema:
    title: str
    columns: tuple[str, ...]  # every one required; "a|b" accepts either
    scorer: str
    eval_split: str  # the split with public answers the benchmark reports on
    parse: Callable[[dict], tuple[Example, list]]  # -> (example without images, its images as stored)
    skip_files: tuple[str, ...] = ()  # files in the release that hold no rows
    needs_image: bool = True  # a row without an image is a problem (ScienceQA and EasyR1 rows may have none)


def value(row: dict, names: str):
    """The first of the columns `a|b|c` the row has."""
    for name in names.split("|"):
        if name in row:
            return row[name]
    raise RowProblem(f"row lacks column {' or '.join(repr(n) for n in names.split('|'))}")


def text(row: dict, names: str) -> str:
    """A column's text, which must not be empty."""
    found = value(row, names)
    if found is None or not str(found).strip():
        raise RowProblem(f"empty {names.split('|')[0]}")
    return str(found).strip()


def strip_image_tags(question: str) -> str:
    """Without `<image>` placeholders: our prompt template places the images itself."""
    return question.replace("<image>", "").strip()


def images_of(stored) -> list:
    """A row's image column as a list: None (no image), one image, or a list of them."""
    if stored is None:
        return []
    return [im for im in stored if im is not None] if isinstance(stored, list) else [stored]


def consensus(answers: list[str]) -> tuple[str, list[str]]:
    """The most frequent human answer (the first among ties) as the answer, the others as aliases, so that
    [answer, *aliases] is the ten answers again (soft VQA accuracy counts matches over them)."""
    top = Counter(answers).most_common(1)[0][0]
    rest = list(answers)
    rest.remove(top)
    return top, rest


def easyr1(row: dict) -> tuple[Example, list]:
    answer = value(row, "answer")
    aliases = [str(a) for a in answer[1:]] if isinstance(answer, list) else []
    answer = answer[0] if isinstance(answer, list) and answer else answer
    answer = "" if answer is None or answer == [] else str(answer).strip()
    if not answer:
        raise RowProblem("empty answer")
    return (Example(strip_image_tags(text(row, "problem")), answer, choices=row.get("choices") or None,
                    aliases=aliases, rationale=str(row.get("rationale") or "")), images_of(row.get("images")))


def scienceqa(row: dict) -> tuple[Example, list]:
    choices = value(row, "choices")
    index = value(row, "answer")
    if not isinstance(choices, list) or len(choices) < 2:
        raise RowProblem(f"choices {choices!r} is not a list of at least two options")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(choices):
        raise RowProblem(f"answer {index!r} is not the index of one of its {len(choices)} choices")
    question = text(row, "question")
    hint = str(row.get("hint") or "").strip()
    if hint:
        question = f"Context: {hint}\n{question}"
    return (Example(question, choice_letter(index), choices=[str(c) for c in choices],
                    rationale=str(row.get("solution") or "").strip()), images_of(value(row, "image")))


def human_answers(stored) -> list[str]:
    """TextVQA's ten strings, or VizWiz's original [{answer, answer_confidence}, ...]."""
    if not isinstance(stored, list):
        raise RowProblem(f"answers {str(stored)[:60]!r} is not a list")
    answers = [str((a.get("answer") if isinstance(a, dict) else a) or "").strip() for a in stored]
    answers = [a for a in answers if a]
    if not answers:
        raise RowProblem("empty answers")
    return answers


def vqa(row: dict) -> tuple[Example, list]:
    answer, aliases = consensus(human_answers(value(row, "answers")))
    if "image" not in row and "image_id" in row:  # TextVQA's own release: train_images/<image_id>.jpg
        return Example(text(row, "question"), answer, aliases=aliases), [f"{text(row, 'image_id')}.jpg"]
    return Example(text(row, "question"), answer, aliases=aliases), images_of(value(row, "image"))


VIZWIZ_IMAGE = re.compile(r"VizWiz_(train|val|test)_\d+\.\w+")


def vizwiz(row: dict) -> tuple[Example, list]:
    """As `vqa`; an image named like the release's (VizWiz_val_00000042.jpg) is looked for in its split's folder
    (val/VizWiz_val_00000042.jpg), as the release unpacks."""
    example, images = vqa(row)
    named = [VIZWIZ_IMAGE.fullmatch(im) if isinstance(im, str) else None for im in images]
    return example, [f"{m.group(1)}/{im}" if m else im for m, im in zip(named, images)]


def geometry3k(row: dict) -> tuple[Example, list]:
    if "problem_text" in row:  # InterGPS: one folder per problem, the diagram beside data.json
        choices = value(row, "choices")
        letter = text(row, "answer").upper()
        if not isinstance(choices, list) or letter not in [choice_letter(i) for i in range(len(choices))]:
            raise RowProblem(f"answer {letter!r} is not the letter of one of its choices {choices!r}")
        stored = images_of(row.get("image")) or ["img_diagram.png"]
        return Example(text(row, "problem_text"), letter, choices=[str(c) for c in choices]), stored
    example, stored = easyr1(row)
    if example.choices:  # hiyouga/geometry3k gives the answer as the choice's text, not its letter
        choices = [str(c) for c in example.choices]
        if example.answer in choices:
            example.answer, example.choices = choice_letter(choices.index(example.answer)), choices
        elif example.answer.upper() not in [choice_letter(i) for i in range(len(choices))]:
            example.choices = None  # an answer that is not among the choices: scored as a value
    return example, stored


def gqa(row: dict) -> tuple[Example, list]:
    return (Example(text(row, "question"), text(row, "answer")),
            [MissingImage(text(row, "imageId|image_id"))])


def pathvqa(row: dict) -> tuple[Example, list]:
    return Example(text(row, "question"), text(row, "answer")), images_of(value(row, "image"))


ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)


def superclevr(row: dict) -> tuple[Example, list]:
    answer = value(row, "answer|ground_truth|solution")
    answer = {True: "yes", False: "no"}.get(answer, answer) if isinstance(answer, bool) else answer
    answer = str(answer if answer is not None else "").strip()
    tagged = ANSWER_TAG.search(answer)  # R1-V's copies wrap it: "<answer> 3 </answer>"
    answer = tagged.group(1).strip() if tagged else answer
    if not answer:
        raise RowProblem("empty answer")
    return (Example(strip_image_tags(text(row, "question|problem")), answer),
            images_of(value(row, "image|image_filename|image_path")))


SCHEMAS: dict[str, Schema] = {
    "easyr1": Schema("EasyR1", ("problem", "answer"), "exact", "test", easyr1, needs_image=False),
    "scienceqa": Schema("ScienceQA", ("question", "choices", "answer", "image"), "multiple_choice", "test",
                        scienceqa, needs_image=False),
    "textvqa": Schema("TextVQA", ("question", "answers", "image|image_id"), "vqa", "validation", vqa),
    "vizwiz": Schema("VizWiz", ("question", "answers", "image"), "vqa", "validation", vizwiz),
    "geometry3k": Schema("Geometry3K", ("problem|problem_text", "answer"), "geometry", "test", geometry3k,
                         skip_files=("logic_form.json",)),
    "gqa": Schema("GQA", ("question", "answer", "imageId|image_id"), "exact", "testdev", gqa),
    "pathvqa": Schema("PathVQA", ("question", "answer", "image"), "yes_no", "test", pathvqa),
    "superclevr": Schema("Super-CLEVR", ("question|problem", "answer|ground_truth|solution",
                                         "image|image_filename|image_path"), "count", "test", superclevr),
}

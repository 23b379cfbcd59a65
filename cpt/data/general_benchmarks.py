"""General-knowledge benchmarks read from local files: MMMU and MMLU-Pro, in the schemas of their public releases.

`load_benchmark` turns the files into an evaluation-only Task whose categories are MMMU's subjects (from the
row id: "validation_Art_Theory_12" -> "Art_Theory") or MMLU-Pro's `category` column.

What `path` may be: one .parquet/.json/.jsonl file, a `datasets` directory written by save_to_disk, or a directory
holding any number of these, searched recursively (MMMU comes as one sub-directory per subject). A directory
downloaded from the Hub holds every split, named like `validation-00000-of-00001.parquet`; of those files only the
benchmark's evaluation split is read: MMMU's validation (its test answers are hidden) and MMLU-Pro's test (its
validation split is the few-shot examples). The same goes for a save_to_disk directory of several splits. Files
not named for a split are all read; a single file is read whatever its name.

MMMU: `options` is a string holding a Python list, read with ast.literal_eval. "<image k>" in the question and
the options becomes "[image k]"; the images (image_1..image_7) are given to the model in that order. Open
questions (about 6% of MMMU) are kept, so accuracies compare with the published ones: they are scored as numbers
(numeric's tolerance) or else as normalised text, against the answer or, when the answer is a list such as
"['0.5', '1/2']", against any of its entries. How many there are is logged at load.

MMLU-Pro: "N/A" options (padding of questions with fewer than ten) are dropped and the answer letter moved with
them; `answer` must agree with `answer_index`.

Rows are checked at load; images are decoded when an example is read (the first evaluation, before any training,
reads every one), so a corrupt image fails then, naming its file and row id like every other error here.
"""

from __future__ import annotations

import ast
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cpt.data.examples import Example, choice_letter
from cpt.data.files import find_sources, open_image, read_source
from cpt.data.scoring import SCORERS, multiple_choice, numeric
from cpt.data.tasks import Task
from cpt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BENCHMARK_FORMATS = ("mmmu", "mmlu_pro")
EVAL_SPLIT = {"mmmu": "validation", "mmlu_pro": "test"}
MMMU_COLUMNS = ("id", "question", "options", "answer", "question_type")
MMMU_ID = re.compile(r"[A-Za-z]+_(.+)_\d+")  # <split>_<Subject>_<number>
MMMU_IMAGES = [f"image_{k}" for k in range(1, 8)]
IMAGE_PLACEHOLDER = re.compile(r"<image (\d+)>")
MMLU_PRO_COLUMNS = ("question_id", "question", "options", "answer", "answer_index", "category")
PADDING = "N/A"


@dataclass
class Question:
    """A benchmark question before its images are decoded."""

    example: Example  # without images
    images: list  # image values as stored: {"bytes", "path"} dicts or paths
    category: str
    image_dir: Path  # where relative image paths point
    where: str  # file and row, for error messages


class BenchmarkSplit(Sequence):
    """Questions whose images are decoded on access, so that a large benchmark does not sit decoded in memory."""

    def __init__(self, questions: list[Question]):
        self.questions = questions

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> Example:
        question = self.questions[index]
        images = [open_image(value, question.image_dir, question.where) for value in question.images]
        return replace(question.example, images=images)


def load_benchmark(name: str, format: str, path: str | Path, image_dir: str | Path | None = None,
                   limit: int | None = None, seed: int = 0) -> Task:
    """The benchmark's questions as an evaluation-only task; `limit` keeps a random subset fixed by `seed`."""
    if format not in BENCHMARK_FORMATS:
        raise ConfigError(f"benchmark {name!r}: unknown format {format!r}; known: {', '.join(BENCHMARK_FORMATS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"benchmark {name!r}: limit must be a positive number of questions or null, not {limit}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"benchmark {name!r}: {path} does not exist")
    split, to_question = EVAL_SPLIT[format], mmmu_question if format == "mmmu" else mmlu_pro_question
    sources = find_sources(path, split)
    if not sources:
        raise DataError(f"benchmark {name!r}: {path} holds no {split} data: no .parquet, .arrow, .json or .jsonl "
                         "file, nor a datasets directory (files named for another split, e.g. "
                         "dev-00000-of-00001.parquet, are skipped)")
    questions = []
    for source in sources:
        rows_dir = Path(image_dir).expanduser() if image_dir else (source if source.is_dir() else source.parent)
        for number, row in enumerate(read_source(source, split)):
            where = _where(source, number, row)
            questions.append(Question(*to_question(row, where), image_dir=rows_dir, where=where))
    if not questions:
        raise DataError(f"benchmark {name!r}: no questions in {path}")
    if limit is not None and limit < len(questions):
        questions = [questions[i] for i in sorted(random.Random(seed).sample(range(len(questions)), limit))]
    open_count = sum(not q.example.choices for q in questions)
    log.info("%s: %d questions in %d categories from %s, %d of them open (scored as numbers or text)",
             name, len(questions), len({q.category for q in questions}), path, open_count)
    scorer = mmmu_score if format == "mmmu" else SCORERS["multiple_choice"]
    return Task(name, train=(), eval=BenchmarkSplit(questions), scorer=scorer, chance=None,
                categories=[q.category for q in questions])


# --- reading the files -----------------------------------------------------------------------------------


def _where(source: Path, number: int, row: dict) -> str:
    """File and row for error messages, with the row's id where it has one (MMMU: id, MMLU-Pro: question_id)."""
    row_id = row.get("id", row.get("question_id"))
    return f"{source} row {number}" + (f" (id {row_id!r})" if row_id is not None else "")


def _check_columns(row: dict, required: tuple[str, ...], where: str, schema: str) -> None:
    missing = [column for column in required if column not in row]
    if missing:
        raise DataError(f"{where}: row lacks {', '.join(missing)}; {schema} rows have {', '.join(required)}")


# --- MMMU -------------------------------------------------------------------------------------------------


def mmmu_question(row: dict, where: str) -> tuple[Example, list, str]:
    """The example (images not decoded), its image values and its subject."""
    _check_columns(row, MMMU_COLUMNS, where, "MMMU")
    subject = MMMU_ID.fullmatch(str(row["id"]))
    if subject is None:
        raise DataError(f"{where}: id is not MMMU's <split>_<Subject>_<number> (e.g. validation_Art_Theory_12), "
                         "which names the subject")
    question = IMAGE_PLACEHOLDER.sub(r"[image \1]", str(row["question"]))
    images = [row[column] for column in MMMU_IMAGES if row.get(column) is not None]
    answer = str(row["answer"]).strip()
    kind = row["question_type"]
    if kind == "multiple-choice":
        choices = [IMAGE_PLACEHOLDER.sub(r"[image \1]", option) for option in _mmmu_options(row["options"], where)]
        letters = [choice_letter(i) for i in range(len(choices))]
        if answer not in letters:
            raise DataError(f"{where}: answer {answer!r} is not the letter of one of its {len(choices)} options "
                             f"({', '.join(letters)}); MMMU's test split has no answers, evaluate its validation split")
        example = Example(question, answer, choices=choices)
    elif kind == "open":
        answers = _open_answers(answer)
        if not answers:
            raise DataError(f"{where}: open question without an answer")
        example = Example(question, answers[0], aliases=answers[1:])
    else:
        raise DataError(f"{where}: question_type {kind!r} is neither 'multiple-choice' nor 'open'")
    return example, images, subject.group(1)


def _mmmu_options(value, where: str) -> list[str]:
    """MMMU stores the options as the text of a Python list: "['A cat', 'B dog']"."""
    options = value
    if isinstance(value, str):
        try:
            options = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(f"{where}: options {value[:80]!r} is not a Python list of strings, "
                             "like \"['A cat', 'B dog']\"") from None
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise DataError(f"{where}: options {str(value)[:80]!r} is not a non-empty list of strings, "
                         "as a multiple-choice question needs")
    return options


def _open_answers(answer: str) -> list[str]:
    """The accepted answers of an open question: a list written as text gives several ("['0.5', '1/2']")."""
    if answer.startswith("["):
        try:
            listed = ast.literal_eval(answer)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            listed = None  # brackets that are part of the answer text, e.g. an interval "[0, 1)"
        if isinstance(listed, list):
            return [str(item).strip() for item in listed if str(item).strip()]
    return [answer] if answer else []


def open_answer(completion: str, example: Example) -> float:
    """Right when the completion equals the answer or one of its aliases, as numbers or as normalised text."""
    return max(numeric(completion, replace(example, answer=gold, aliases=[]))
               for gold in [example.answer, *example.aliases])


def mmmu_score(completion: str, example: Example) -> float:
    """Multiple-choice questions by letter or choice text, open ones by `open_answer`."""
    return multiple_choice(completion, example) if example.choices else open_answer(completion, example)


# --- MMLU-Pro ---------------------------------------------------------------------------------------------


def mmlu_pro_question(row: dict, where: str) -> tuple[Example, list, str]:
    """The example, no images, and its category."""
    _check_columns(row, MMLU_PRO_COLUMNS, where, "MMLU-Pro")
    options, answer, index = row["options"], str(row["answer"]).strip(), row["answer_index"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DataError(f"{where}: options must be a list of strings, not {str(options)[:80]!r}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(options):
        raise DataError(f"{where}: answer_index {index!r} is not the index of one of its {len(options)} options")
    if answer != choice_letter(index):
        raise DataError(f"{where}: answer {answer!r} disagrees with answer_index {index} "
                         f"(option {choice_letter(index)}); fix one of them")
    if options[index].strip() == PADDING:
        raise DataError(f"{where}: the answer is a {PADDING!r} padding option")
    kept = [i for i, option in enumerate(options) if option.strip() != PADDING]
    example = Example(str(row["question"]), choice_letter(kept.index(index)), choices=[options[i] for i in kept])
    return example, [], str(row["category"])

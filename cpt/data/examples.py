"""The unit of data: one visual question with its answer, whatever source it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Example:
    """A question about zero or more images.

    `answer` is what a correct model says: a letter when `choices` are given (A for the first choice),
    otherwise the answer text. `aliases` are further answers scored as correct (e.g. several annotators;
    the soft VQA score counts matches over [answer, *aliases]). `rationale` is the reasoning an SFT target
    puts inside <think> under the chain-of-thought template (empty when the source has none).
    """

    question: str
    answer: str
    images: list[Image.Image] = field(default_factory=list)
    choices: list[str] | None = None
    aliases: list[str] = field(default_factory=list)
    rationale: str = ""


def choice_letter(index: int) -> str:
    return chr(ord("A") + index)

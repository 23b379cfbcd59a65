"""Reading the answer out of a completion and deciding whether it is right.

The answer is the content of the last `\\boxed{...}` (braces may nest). Without one, the last non-empty line
is taken, so a model that answers plainly is still scored on what it said.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from cpt.examples import Example

BOXED = "\\boxed{"


def extract_answer(completion: str) -> str:
    start = completion.rfind(BOXED)
    if start < 0:
        lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""
    depth, begin = 1, start + len(BOXED)
    for i in range(begin, len(completion)):
        depth += {"{": 1, "}": -1}.get(completion[i], 0)
        if depth == 0:
            return completion[begin:i].strip()
    return completion[begin:].strip()  # unclosed box: take what is there


def normalize(text: str) -> str:
    """Lower case, no surrounding punctuation, articles or extra spaces: 'The Red.' -> 'red'."""
    text = text.lower().strip()
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = re.sub(r"[^\w\s.\-/]", " ", text)
    return " ".join(text.split()).strip(" .")


def exact(completion: str, example: Example) -> bool:
    said = normalize(extract_answer(completion))
    return any(said == normalize(gold) for gold in [example.answer, *example.aliases])


def multiple_choice(completion: str, example: Example) -> bool:
    """Right when the letter or the text of the correct choice is given ('B', 'B.', '(B) red', 'red')."""
    said = extract_answer(completion).strip()
    letter = example.answer.strip().upper()
    match = re.match(r"^\(?([A-Za-z])\)?(?:[.):]|\s|$)", said)
    if match and (len(said) == 1 or not example.choices or match.group(1).upper() == letter):
        return match.group(1).upper() == letter
    if example.choices:
        index = ord(letter) - ord("A")
        return 0 <= index < len(example.choices) and normalize(said) == normalize(example.choices[index])
    return False


def numeric(completion: str, example: Example, rel_tol: float = 1e-4) -> bool:
    said = _to_number(extract_answer(completion))
    gold = _to_number(example.answer)
    if said is None or gold is None:
        return exact(completion, example)
    return math.isclose(said, gold, rel_tol=rel_tol, abs_tol=1e-9)


def _to_number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("$", "").strip()
    fraction = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", cleaned)
    try:
        if fraction:
            return float(fraction.group(1)) / float(fraction.group(2))
        value = float(cleaned)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


SCORERS: dict[str, Callable[[str, Example], bool]] = {
    "exact": exact,
    "multiple_choice": multiple_choice,
    "numeric": numeric,
}

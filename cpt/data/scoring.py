"""Reading the answer out of a completion and scoring it against the example, in [0, 1].

The answer is the content of the last `\\boxed{...}` (braces may nest). Without one, the last non-empty line
is taken, so a model that answers plainly is still scored on what it said. The same scorer is the evaluation
metric and the accuracy part of the RFT reward, so the two never disagree.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

from cpt.data.examples import Example

BOXED = "\\boxed{"
Scorer = Callable[[str, Example], float]


def box_end(text: str, begin: int) -> int | None:
    """Index of the brace closing a box whose content starts at `begin` (braces may nest); None if unclosed."""
    depth = 1
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return None


def extract_answer(completion: str) -> str:
    start = completion.rfind(BOXED)
    if start < 0:
        lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""
    begin = start + len(BOXED)
    end = box_end(completion, begin)
    return completion[begin:end].strip()  # an unclosed box: what is there


def normalize(text: str) -> str:
    """Lower case, no surrounding punctuation, articles or extra spaces: 'The Red.' -> 'red'."""
    text = text.lower().strip()
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = re.sub(r"[^\w\s.\-/]", " ", text)
    return " ".join(text.split()).strip(" .")


def exact(completion: str, example: Example) -> float:
    said = normalize(extract_answer(completion))
    return float(any(said == normalize(gold) for gold in [example.answer, *example.aliases]))


def multiple_choice(completion: str, example: Example) -> float:
    """Right when the letter or the text of the correct choice is given ('B', 'B.', '(B) red', 'red')."""
    said = extract_answer(completion).strip()
    letter = example.answer.strip().upper()
    match = re.match(r"^\(?([A-Za-z])\)?(?:[.):]|\s|$)", said)
    if match and (len(said) == 1 or not example.choices or match.group(1).upper() == letter):
        return float(match.group(1).upper() == letter)
    if example.choices:
        index = ord(letter) - ord("A")
        return float(0 <= index < len(example.choices) and normalize(said) == normalize(example.choices[index]))
    return 0.0


def numeric(completion: str, example: Example, rel_tol: float = 1e-4) -> float:
    """Equal as numbers within `rel_tol` ('1/2' = '0.5', '1,000' = '1000'); text answers fall back to exact."""
    said = _to_number(extract_answer(completion))
    gold = _to_number(example.answer)
    if said is None or gold is None:
        return exact(completion, example)
    return float(math.isclose(said, gold, rel_tol=rel_tol, abs_tol=1e-9))


def _to_number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("$", "").strip()
    fraction = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", cleaned)
    try:
        if fraction:
            return float(fraction.group(1)) / float(fraction.group(2))
        value = float(cleaned)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None  # '1e999' and 400-digit strings overflow to inf


YES, NO = {"yes", "true", "y"}, {"no", "false", "n"}


def yes_no(completion: str, example: Example) -> float:
    """'Yes.', 'yes, it is', 'True' all read as yes; a gold answer that is not yes/no is matched exactly."""
    gold = normalize(example.answer)
    if gold not in YES | NO:
        return exact(completion, example)
    words = normalize(extract_answer(completion)).replace(",", " ").split()
    if not words or words[0] not in YES | NO:
        return 0.0
    return float((words[0] in YES) == (gold in YES))


NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def vqa_normalize(text: str) -> str:
    """The VQA evaluation's answer normalisation: lower case, no punctuation (but '2,000' -> '2000' and decimal
    points kept), number words as digits, no articles."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    text = re.sub(r"[;/\\\[\]\"{}()=+\-_<>@`?!*#%^&$:,']", " ", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def vqa_soft(completion: str, example: Example) -> float:
    """Soft VQA accuracy: min(#human answers equal to the prediction / 3, 1). The human answers are
    [answer, *aliases], repeats included (VQA and VizWiz have ten per question)."""
    said = vqa_normalize(extract_answer(completion))
    if not said:
        return 0.0
    matches = sum(said == vqa_normalize(ref) for ref in [example.answer, *example.aliases])
    return min(matches / 3.0, 1.0)


def _box(text: str) -> tuple[float, float, float, float] | None:
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
    if len(numbers) < 4:
        return None
    x1, y1, x2, y2 = (float(n) for n in numbers[:4])
    values = (x1, y1, x2, y2)
    if not all(math.isfinite(v) for v in values) or x2 <= x1 or y2 <= y1:
        return None
    return values


def box_iou(completion: str, example: Example) -> float:
    """Intersection over union of the predicted box '[x1, y1, x2, y2]' and the gold one; 0 when either is not
    a box with x1 < x2 and y1 < y2."""
    said, gold = _box(extract_answer(completion)), _box(example.answer)
    if said is None or gold is None:
        return 0.0
    width = min(said[2], gold[2]) - max(said[0], gold[0])
    height = min(said[3], gold[3]) - max(said[1], gold[1])
    inter = max(width, 0.0) * max(height, 0.0)
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    union = area(said) + area(gold) - inter
    return inter / union if union > 0 else 0.0


def math_value(text: str) -> float | None:
    """The value of a plain number or a small LaTeX expression ('2\\sqrt{3}', '\\frac{7}{2}', '3\\pi', '60^\\circ');
    None when it is not one. Geometry3K's answers are written like this."""
    plain = _to_number(text)
    if plain is not None:
        return plain
    expr = text.strip().strip("$").replace(" ", "")
    if len(expr) > 200:  # a model's answer, not a formula worth evaluating (and no deep recursion)
        return None
    expr = re.sub(r"\^\{?\\circ\}?|°|\\degree", "", expr)
    expr = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", expr)
    expr = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", expr)
    expr = re.sub(r"\\sqrt(\d+)", r"sqrt(\1)", expr)
    expr = expr.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    expr = expr.replace("{", "(").replace("}", ")")
    expr = re.sub(r"(\d|\))(?=sqrt|pi|\()", r"\1*", expr)  # implicit products: 2sqrt(3), 3pi, 2(1+x)
    if not re.fullmatch(r"[\d.+\-*/()a-z]*", expr) or not expr:
        return None
    try:
        result = _evaluate(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError, MemoryError):
        return None
    return result if math.isfinite(result) else None


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow}


def _evaluate(node: ast.AST) -> float:
    """Numbers, + - * / **, sqrt() and pi; nothing else (the text comes from a model)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "pi":
        return math.pi
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return float(_OPERATORS[type(node.op)](left, right))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt"
            and len(node.args) == 1):
        return math.sqrt(_evaluate(node.args[0]))
    raise ValueError("not an arithmetic expression")


def geometry(completion: str, example: Example) -> float:
    """Geometry3K: the choice letter (or text) when the problem has choices; otherwise the same value as the
    answer, as a number or a LaTeX expression (rel. tolerance 1e-4), or else the same normalised text."""
    if example.choices:
        return multiple_choice(completion, example)
    said, gold = math_value(extract_answer(completion)), math_value(example.answer)
    if said is None or gold is None:
        return exact(completion, example)
    return float(math.isclose(said, gold, rel_tol=1e-4, abs_tol=1e-9))


def count(completion: str, example: Example) -> float:
    """Super-CLEVR: a count is right as digits or a number word ('3', 'three', '3 objects'); an attribute
    ('red', 'large', 'yes') by normalised exact match."""
    gold = _to_number(example.answer)
    if gold is None:
        return exact(completion, example)
    words = vqa_normalize(extract_answer(completion)).split()
    return float(bool(words) and _to_number(words[0]) == gold)


SCORERS: dict[str, Scorer] = {
    "exact": exact,
    "multiple_choice": multiple_choice,
    "numeric": numeric,
    "yes_no": yes_no,
    "vqa": vqa_soft,
    "iou": box_iou,
    "geometry": geometry,
    "count": count,
}

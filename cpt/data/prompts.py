"""Prompt templates: how an Example becomes the user's turn and the answer the model is trained to give.

Two templates, one switch (`data.template`): `cot` asks for reasoning inside <think>...</think> followed by the
answer in \\boxed{...} (the study's format), `direct` asks for the boxed answer only. SFT, RFT and evaluation
all use the configured template, so the two paradigms see the same prompts and a model is always asked in the
format it was taught. Scoring reads the boxed answer in both.
"""

from __future__ import annotations

from cpt.data.examples import Example, choice_letter

TEMPLATES = {
    "direct": "{question}\nPut the final answer in \\boxed{{}}.",
    "cot": "{question}\nFirst think about the question inside <think> </think>, then put the final answer in "
           "\\boxed{{}}.",
}


def format_question(example: Example) -> str:
    """The question with its lettered choices, if any."""
    if not example.choices:
        return example.question
    lines = [f"{choice_letter(i)}. {choice}" for i, choice in enumerate(example.choices)]
    return example.question + "\n" + "\n".join(lines)


def _check(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}")


def render_prompt(template: str, example: Example) -> str:
    _check(template)
    return TEMPLATES[template].format(question=format_question(example))


def render_response(template: str, example: Example) -> str:
    """The target completion for supervised training: the boxed answer, after the rationale under `cot`."""
    _check(template)
    boxed = f"\\boxed{{{example.answer}}}"
    if template == "cot":
        return f"<think>\n{example.rationale}\n</think>\n{boxed}"
    return boxed

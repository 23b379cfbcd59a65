"""Prompt templates: how an Example becomes the user's turn and the answer the model is trained to give.

SFT and evaluation use the same template, so a model is always asked in the format it was taught. The
answer is wrapped in \\boxed{...}, the format the study's reward checks, so scoring has one rule.
"""

from __future__ import annotations

from cpt.examples import Example, choice_letter

TEMPLATES = {
    "direct": "{question}\nPut the final answer in \\boxed{{}}.",
}


def format_question(example: Example) -> str:
    """The question with its lettered choices, if any."""
    if not example.choices:
        return example.question
    lines = [f"{choice_letter(i)}. {choice}" for i, choice in enumerate(example.choices)]
    return example.question + "\n" + "\n".join(lines)


def render_prompt(template: str, example: Example) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[template].format(question=format_question(example))


def render_response(example: Example) -> str:
    """The target completion for supervised training."""
    return f"\\boxed{{{example.answer}}}"

"""A small byte-level BPE tokenizer with a family's special tokens, trained locally.

The tiny presets cannot download their family's tokenizer, so the package trains its own on the text it will
see (prompts, questions, answers). Byte-level BPE encodes any string, so text outside that corpus still
tokenizes, only into more pieces.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cpt.model.family import Markers


def train_tokenizer(corpus: Iterable[str], markers: Markers, chat_template: str,
                    vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` with `markers` as its special tokens (the chat and vision framing its
    template and the model's positions rely on); deterministic for the same corpus and vocab size."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=markers.special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=markers.end_of_turn,
        pad_token=markers.pad,
        additional_special_tokens=markers.special[1:],
        padding_side="left",
        chat_template=chat_template,
    )

"""The SFT objective against a hand-computed cross-entropy."""

import pytest
import torch

from cpt.data.batches import IGNORE_INDEX, Batch
from cpt.data.examples import Example
from cpt.model.answer_loss import sft_loss


def test_sft_loss_matches_hand_computed_cross_entropy(processor):
    vocab = len(processor.tokenizer)
    # A 1-row batch, 4 tokens, only the last two labelled.
    batch = Batch(torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long),
                  labels=torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8]]), index=torch.tensor([0]),
                  task=torch.tensor([0]), image_counts=torch.tensor([0]), examples=[Example("q", "a")])
    logits = torch.zeros(1, 4, vocab)
    logits[0, 1, 7] = 2.0  # position 1 predicts token 7
    logits[0, 2, 8] = 1.0  # position 2 predicts token 8

    class Fixed(torch.nn.Module):
        def forward(self, **inputs):
            return type("Out", (), {"logits": logits})()

    expected = -(torch.log_softmax(logits[0, 1], -1)[7] + torch.log_softmax(logits[0, 2], -1)[8]) / 2
    assert sft_loss(Fixed(), batch).item() == pytest.approx(expected.item(), rel=1e-6)

"""Online filtering by hand: scripted rewards decide which groups are kept, refilled and filled."""

from types import SimpleNamespace

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from cpt.callbacks.online_filter import OnlineFiltering
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.synthetic import SyntheticSplit
from cpt.rl.rewards import Scores
from cpt.rl.rollouts import Rollouts

GROUP = 2


def scripted(prompts, rewards: list[float], tokens: int = 3) -> Rollouts:
    """Rollouts of every prompt GROUP times, with the given rewards and completions of `tokens` tokens."""
    total = torch.tensor(rewards)
    ids = torch.full((len(total), tokens), 7)
    scores = Scores(total, {"accuracy": total}, failed=torch.zeros(len(total), dtype=torch.bool))
    return Rollouts.sampled(prompts.repeat(GROUP), ids, eos_id=7, group_size=GROUP).scored(scores)


class ScriptedModule:
    """An RFT module stand-in whose refill rollouts get scripted rewards."""

    def __init__(self, processor, refills):
        self.processor, self.refills = processor, list(refills)
        self.device = torch.device("cpu")
        self.trainer = SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu")))

    def roll_out(self, batch):
        return scripted(batch, self.refills.pop(0))


def test_online_filter_replaces_equal_groups_with_refills(processor, tmp_path):
    examples = SyntheticSplit("count", "train", 8, 0, 64)
    dataset = EncodedDataset(examples, processor, "direct", with_response=False)
    collate = Collator(processor.pad_id)
    module = ScriptedModule(processor, refills=[[1.0, 1.0, 0.0, 1.0]])
    online = OnlineFiltering(tmp_path, max_retries=3)
    online.totals = [{"groups": 0, "dropped": 0, "refill_rounds": 0, "unfilled": 0}]
    online.refill = iter([collate([dataset[4], dataset[5]])])
    # Group 0 (example 0) is all equal, group 1 (example 1) varied.
    drawn = scripted(collate([dataset[0], dataset[1]]), [0.0, 0.0, 1.0, 0.0], tokens=2)  # shorter than the refill's
    trained, stats = online.select(module, drawn)
    # Kept: example 1's group, then the refill's varied group (example 5); example 4's group was equal too.
    assert [e.answer for e in trained.prompts.examples] == [examples[1].answer] * 2 + [examples[5].answer] * 2
    assert trained.rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert trained.completion_ids.shape == (4, 3)  # completions right-padded to the widest round
    assert stats == {"filter/dropped_groups": 0.5, "filter/refill_rounds": 1.0, "filter/unfilled_groups": 0.0}
    assert online.totals[0] == {"groups": 2, "dropped": 1, "refill_rounds": 1, "unfilled": 0}

"""Rollouts: completion masks from the end-of-turn token, groups taken and joined with their prompts and rewards."""

import torch

from cpt.data.batches import Collator, EncodedDataset
from cpt.data.synthetic import SyntheticSplit
from cpt.rl.rewards import Scores
from cpt.rl.rollouts import Rollouts, completion_mask

EOS = 9


def test_completion_mask_ends_at_the_first_end_of_turn_token():
    ended, truncated = completion_mask(torch.tensor([[5, 9, 2], [5, 6, 7], [9, 9, 1]]), eos_id=EOS)
    assert ended.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert truncated.tolist() == [False, True, False]


def scored_rollouts(processor, ids: list[list[int]], rewards: list[float], group_size: int = 2) -> Rollouts:
    dataset = EncodedDataset(SyntheticSplit("count", "train", 4, 0, 64), processor, "direct", with_response=False)
    prompts = Collator(processor.pad_id)([dataset[i] for i in range(len(ids) // group_size)]).repeat(group_size)
    total = torch.tensor(rewards)
    scores = Scores(total, {"accuracy": total * 2}, failed=torch.tensor([r < 0 for r in rewards]))
    return Rollouts.sampled(prompts, torch.tensor(ids), EOS, group_size).scored(scores)


def test_groups_are_taken_with_their_prompts_and_rewards(processor):
    # Two groups of two: group 0 all equal, group 1 varied.
    rollouts = scored_rollouts(processor, [[1, 9, 0], [2, 9, 0], [3, 4, 5], [6, 9, 0]], [0.5, 0.5, 0.0, -1.0])
    assert rollouts.group_rewards().tolist() == [[0.5, 0.5], [0.0, -1.0]]
    assert rollouts.varied_groups().tolist() == [False, True]
    second = rollouts.take_groups([1])
    assert second.completion_ids.tolist() == [[3, 4, 5], [6, 9, 0]] and second.truncated.tolist() == [True, False]
    assert second.mask.tolist() == [[True, True, True], [True, True, False]]
    assert second.rewards.tolist() == [0.0, -1.0] and second.components["accuracy"].tolist() == [0.0, -2.0]
    assert second.failed.tolist() == [False, True]
    assert [e.answer for e in second.prompts.examples] == [rollouts.prompts.examples[2].answer] * 2
    assert torch.equal(second.prompts.pixel_values, rollouts.prompts.rows(2, 4).pixel_values)


def test_rounds_join_with_completions_padded_on_the_right(processor):
    wide = scored_rollouts(processor, [[1, 2, 9], [3, 9, 0]], [1.0, 0.0])
    narrow = scored_rollouts(processor, [[9], [4]], [0.0, 0.0])
    joined = Rollouts.concat([wide, narrow], pad_id=0)
    assert joined.completion_ids.tolist() == [[1, 2, 9], [3, 9, 0], [9, 0, 0], [4, 0, 0]]
    assert joined.mask.tolist() == [[True, True, True], [True, True, False], [True, False, False],
                                    [True, False, False]]
    assert joined.truncated.tolist() == [False, False, False, True]
    assert joined.rewards.tolist() == [1.0, 0.0, 0.0, 0.0] and joined.varied_groups().tolist() == [True, False]
    assert len(joined.prompts) == 4 and joined.group_size == 2
    inputs = joined.prompts.with_completions(joined.completion_ids, joined.mask)
    width = joined.prompts.input_ids.shape[1]
    assert inputs.attention_mask[:, width:].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]]

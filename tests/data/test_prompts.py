"""Prompt templates: SFT and RFT ask the same question, SFT then gives the answer."""

from cpt.data.batches import EncodedDataset
from cpt.data.prompts import render_prompt, render_response
from cpt.data.synthetic import SyntheticSplit


def test_both_paradigms_share_the_templates(processor):
    example = SyntheticSplit("arith", "train", 1, 0, 64)[0]
    assert render_prompt("cot", example).endswith("inside <think> </think>, then put the final answer in \\boxed{}.")
    target = render_response("cot", example)
    assert target.startswith("<think>\nThe digits are") and target.endswith(f"</think>\n\\boxed{{{example.answer}}}")
    assert render_response("direct", example) == f"\\boxed{{{example.answer}}}"
    sft = EncodedDataset([example], processor, "cot")[0]
    rft = EncodedDataset([example], processor, "cot", with_response=False)[0]
    assert sft.input_ids[:len(rft.input_ids)] == rft.input_ids  # the same prompt, then the answer
    assert processor.decode(sft.input_ids[len(rft.input_ids):]) == target

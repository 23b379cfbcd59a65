"""The processor: image sizes within the configured pixel bounds, one pad token per merged patch, prompts framed
by the checkpoint's chat template."""

import copy

from PIL import Image

from cpt.model.chat import QWEN_CHAT_TEMPLATE
from cpt.model.processor import VisionTextProcessor


def test_max_pixels_shrinks_images(foundation_dir):
    small = VisionTextProcessor.from_pretrained(foundation_dir, max_pixels=32 * 32)
    encoded = small.encode_prompt("q", [Image.new("RGB", (64, 64))])
    assert encoded.image_grid_thw.tolist() == [[1, 4, 4]]
    assert encoded.input_ids.count(small.image_pad_id) == 4


QWEN_FRAMING = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n{vision}{text}<|im_end|>\n<|im_start|>assistant\n")
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def test_prompts_take_the_tokenizers_chat_template(processor, tmp_path):
    assert processor.tokenizer.chat_template == QWEN_CHAT_TEMPLATE  # the tiny tokenizer carries Qwen2.5-VL's
    assert processor.prompt_text("How many?", 2) == QWEN_FRAMING.format(vision=VISION * 2, text="How many?")
    assert processor.prompt_text("Hi", 0) == QWEN_FRAMING.format(vision="", text="Hi")
    image = Image.new("RGB", (32, 32))
    ids = processor.encode_prompt("How many?", [image]).input_ids
    assert processor.tokenizer.decode(ids).startswith("<|im_start|>system\nYou are a helpful assistant.")

    # A checkpoint with another template gets its own framing, images expanded as before.
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    other = VisionTextProcessor.from_pretrained(tmp_path)
    other.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{% for p in m['content'] %}"
                           "{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}"
                           "{{ p['text'] }}{% endif %}{% endfor %}{% endfor %}[assistant]")
    assert other.prompt_text("How many?", 1) == f"[user]{VISION}How many?[assistant]"
    text = other.tokenizer.decode(other.encode_prompt("How many?", [image]).input_ids)
    assert text.startswith("[user]<|vision_start|><|image_pad|><|image_pad|>") and text.endswith("How many?[assistant]")


def test_a_checkpoint_without_a_template_takes_qwens_and_passes_it_on(processor, tmp_path):
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.chat_template = None
    plain = VisionTextProcessor(tokenizer, processor.image_processor)
    assert plain.prompt_text("Q", 1) == QWEN_FRAMING.format(vision=VISION, text="Q")
    plain.save_pretrained(tmp_path)
    assert VisionTextProcessor.from_pretrained(tmp_path).tokenizer.chat_template == QWEN_CHAT_TEMPLATE

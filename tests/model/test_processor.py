"""The processor: image sizes within the configured pixel bounds, one pad token per merged patch, prompts framed
by the checkpoint's chat template."""

import copy

from PIL import Image

from cpt.model.families import QWEN2_5_VL, QWEN3_VL
from cpt.model.processor import VisionTextProcessor
from cpt.model.tiny import build_tiny_processor


def test_max_pixels_shrinks_images(foundation_dir):
    small = VisionTextProcessor.from_pretrained(foundation_dir, max_pixels=32 * 32)
    encoded = small.encode_prompt("q", [Image.new("RGB", (64, 64))])
    assert encoded.image_grid_thw.tolist() == [[1, 4, 4]]
    assert encoded.input_ids.count(small.image_pad_id) == 4


QWEN_FRAMING = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n{vision}{text}<|im_end|>\n<|im_start|>assistant\n")
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def test_prompts_take_the_tokenizers_chat_template(processor, tmp_path):
    assert processor.tokenizer.chat_template == QWEN2_5_VL.chat_template  # the tiny tokenizer carries Qwen2.5-VL's
    assert processor.prompt_text("How many?", 2) == QWEN_FRAMING.format(vision=VISION * 2, text="How many?")
    assert processor.prompt_text("Hi", 0) == QWEN_FRAMING.format(vision="", text="Hi")
    image = Image.new("RGB", (32, 32))
    ids = processor.encode_prompt("How many?", [image]).input_ids
    assert processor.tokenizer.decode(ids).startswith("<|im_start|>system\nYou are a helpful assistant.")

    # A checkpoint with another template gets its own framing, images expanded as before.
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    QWEN2_5_VL.toy_config(processor.tokenizer).save_pretrained(tmp_path)  # what names the checkpoint's family
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
    plain = VisionTextProcessor(tokenizer, processor.image_processor, QWEN2_5_VL)
    assert plain.prompt_text("Q", 1) == QWEN_FRAMING.format(vision=VISION, text="Q")
    plain.save_pretrained(tmp_path)
    QWEN2_5_VL.toy_config(tokenizer).save_pretrained(tmp_path)  # the config names the family
    assert VisionTextProcessor.from_pretrained(tmp_path).tokenizer.chat_template == QWEN2_5_VL.chat_template


def test_qwen3_vl_frames_prompts_without_a_system_turn_and_with_16_pixel_patches():
    """Qwen3-VL's chat template has no default system prompt; its published image processor cuts 16-pixel
    patches, so a 64 x 64 image is a 4 x 4 grid and 4 image tokens after the 2 x 2 merge."""
    tiny = build_tiny_processor(seed=0, image_size=64, family=QWEN3_VL)
    assert tiny.prompt_text("How many?", 1) == f"<|im_start|>user\n{VISION}How many?<|im_end|>\n<|im_start|>assistant\n"
    published = VisionTextProcessor(tiny.tokenizer, QWEN3_VL.image_processor(16, 32 * 32, 448 * 448), QWEN3_VL)
    encoded = published.encode_prompt("q", [Image.new("RGB", (64, 64))])
    assert encoded.image_grid_thw.tolist() == [[1, 4, 4]]
    assert encoded.input_ids.count(published.image_pad_id) == 4
    assert encoded.pixel_values.shape == (16, 3 * 2 * 16 * 16)

"""The processor: image sizes within the configured pixel bounds, one pad token per merged patch."""

from PIL import Image

from cpt.model.processor import VisionTextProcessor


def test_max_pixels_shrinks_images(foundation_dir):
    small = VisionTextProcessor.from_pretrained(foundation_dir, max_pixels=32 * 32)
    encoded = small.encode_prompt("q", [Image.new("RGB", (64, 64))])
    assert encoded.image_grid_thw.tolist() == [[1, 4, 4]]
    assert encoded.input_ids.count(small.image_pad_id) == 4

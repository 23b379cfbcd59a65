"""The Qwen2.5-VL backbone: presets, the toy foundation model, tokenizer and processor, loading and generation."""

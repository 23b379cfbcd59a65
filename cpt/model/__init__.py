"""The backbone: its families, presets, the toy foundation models, tokenizer and processor, loading and
generation."""

"""cpt: continual post-training of Qwen2.5-VL, Qwen3-VL and Qwen3.5 with SFT or RFT, and what it forgets."""

__version__ = "0.1.0"

"""cpt: continual post-training of Qwen2.5-VL and Qwen3-VL with SFT or RFT, and what it forgets."""

__version__ = "0.1.0"

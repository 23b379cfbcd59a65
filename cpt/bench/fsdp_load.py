"""Host memory per process when the backbone is loaded sharded under FSDP: the old way (every process loads the whole
checkpoint, then shards it) against the new one (meta build, shard, each process reads its own rows).

    python -m cpt bench fsdp-load [--world 2] [--dtype float32] [--finetune full] [--dir DIR] [--methods old new]

Saves a random Qwen2.5-VL of about 0.5B parameters (Qwen2.5-0.5B's text shape with tied embeddings, a small vision
tower) as bfloat16 safetensors (or, with --random, its config only: a shape preset initialised from the seed), with
the tiny preset's tokenizer and an image processor, to DIR (a temporary directory unless given; a checkpoint already
there is reused). Then, for each method, starts `world` fresh CPU
processes (gloo) that build a device mesh and load it, and reports each process's peak resident memory
(`ru_maxrss`), its resident memory after the imports and the mesh (before loading), and what it holds at the end,
next to the model's size in the chosen dtype and the size of one decoder layer.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

from cpt import flags

# Qwen2.5-0.5B's published text shape (494M parameters, tied embeddings); a small vision tower.
TEXT = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
            intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})
VISION = dict(depth=4, hidden_size=256, intermediate_size=640, num_heads=4, out_hidden_size=896, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[3])


def write_checkpoint(directory: Path, seed: int = 0, weights: bool = True) -> Path:
    """A random ~0.5B Qwen2.5-VL saved as bfloat16 safetensors, loadable by `python -m cpt fit`; without weights,
    a shape preset (config, tokenizer, image processor) that loads as a model initialised from the seed."""
    import torch

    from cpt.model.families import family_named
    from cpt.model.tiny import build_tiny_processor

    if (directory / "config.json").is_file():
        return directory
    family = family_named("qwen2.5-vl")
    processor = build_tiny_processor(seed, 64, family)
    config = family.config(TEXT, VISION, processor.tokenizer, tie_word_embeddings=True)
    directory.mkdir(parents=True, exist_ok=True)
    if weights:
        torch.manual_seed(seed)
        model = family.model_class._from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(directory, max_shard_size="500MB")  # an index and several files, as published ones
    else:
        config.save_pretrained(directory)
    processor.tokenizer.save_pretrained(directory)
    family.image_processor(14, min_pixels=56 * 56, max_pixels=448 * 448).save_pretrained(directory)
    return directory


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker(rank: int, world: int, port: int, method: str, checkpoint: str, overrides: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from cpt.config import load_config
    from cpt.model.backbone import DTYPES, base_model, load_backbone, local_part, shard_backbone
    from cpt.model.families import family_of_model
    from cpt.model.sharded_load import load_sharded_backbone

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    cfg = load_config(None, overrides).model
    dtype = DTYPES[cfg.dtype]
    param_dtype = None if dtype == torch.float32 else dtype
    before = resident_bytes()
    start = time.perf_counter()
    if method == "old":
        model = shard_backbone(load_backbone(cfg, Path(checkpoint)), mesh, param_dtype=param_dtype)
    else:
        model = load_sharded_backbone(cfg, Path(checkpoint), mesh, param_dtype=param_dtype)
    seconds = time.perf_counter() - start
    held = sum(local_part(p).numel() * p.element_size() for p in model.parameters())
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    decoder_layer = family_of_model(base_model(model)).fsdp_units[0]
    layer = next(m for m in model.modules() if type(m).__name__ == decoder_layer)
    layer_bytes = sum(p.numel() * p.element_size() for p in layer.parameters())
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    dist.barrier()
    row = dict(method=method, rank=rank, world=world, seconds=seconds, rss_before=before, rss_after=resident_bytes(),
               peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, shards=held, model=full,
               layer=layer_bytes, largest_tensor=largest, params=sum(p.numel() for p in model.parameters()))
    Path(out, f"{method}-{rank}.json").write_text(json.dumps(row))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(checkpoint: Path, methods: list[str], world: int, overrides: list[str]) -> list[dict]:
    """One fresh group of `world` processes per method; a row per process."""
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for method in methods:
            mp.spawn(_worker, args=(world, free_port(), method, str(checkpoint), overrides, out), nprocs=world)
            rows += [json.loads(Path(out, f"{method}-{r}.json").read_text()) for r in range(world)]
    return rows


def report(rows: list[dict]) -> str:
    gib = 2 ** 30
    first = rows[0]
    lines = [f"model {first['params'] / 1e6:.0f}M parameters = {first['model']:,} bytes ({first['model'] / gib:.2f} "
             f"GiB) as loaded; one decoder layer {first['layer']:,} bytes ({first['layer'] / gib:.3f} GiB); largest "
             f"tensor {first['largest_tensor'] / gib:.3f} GiB; {first['world']} processes; peak RSS = ru_maxrss, "
             "before = resident after imports and mesh, shards = parameters this process holds at the end",
             f"{'method':<6} {'rank':>4} {'peak RSS':>9} {'before':>8} {'peak-before':>11} {'after':>8} "
             f"{'shards':>7} {'seconds':>7}"]
    for r in rows:
        lines.append(f"{r['method']:<6} {r['rank']:>4} {r['peak'] / gib:>8.2f}G {r['rss_before'] / gib:>7.2f}G "
                     f"{(r['peak'] - r['rss_before']) / gib:>10.2f}G {r['rss_after'] / gib:>7.2f}G "
                     f"{r['shards'] / gib:>6.2f}G {r['seconds']:>7.1f}")
    return "\n".join(lines)


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="python -m cpt bench fsdp-load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=flags.COUNT, default=2, help="processes (CPU, gloo)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="model.dtype the checkpoint (bfloat16) is loaded as")
    parser.add_argument("--finetune", choices=("full", "lora"), default="full", help="model.finetune")
    parser.add_argument("--dir", type=flags.OUTPUT_DIR,
                        help="where the checkpoint is written (or reused); a temp dir if unset")
    parser.add_argument("--random", action="store_true", help="a shape preset without weights (random init)")
    parser.add_argument("--methods", nargs="+", default=["old", "new"], choices=["old", "new"])
    parser.add_argument("--json", type=flags.OUTPUT_FILE, help="also write the rows here")
    return parser


def main(args: list[str] | None = None) -> int:
    known = flags.parse(build_parser(), args)
    overrides = [f"model.dtype={known.dtype}", f"model.finetune={known.finetune}"]
    with tempfile.TemporaryDirectory(prefix="cpt-load-memory-") as tmp:
        checkpoint = write_checkpoint(known.dir or Path(tmp), weights=not known.random)
        rows = measure(checkpoint, known.methods, known.world, overrides)
    if known.json:
        known.json.write_text(json.dumps(rows, indent=1))
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

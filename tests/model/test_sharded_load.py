"""FSDP loading without a full copy per process (cpt.model.sharded_load): the sharded model equals what
`from_pretrained` (or the seeded random init) gives, on 2 CPU processes over gloo."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from cpt.config import load_config
from cpt.model.presets import resolve_checkpoint
from cpt.model.sharded_load import SafetensorsWeights, init_groups, parameters_on_meta, tensor_slots


def tiny_config(foundation_dir: Path, **changes) -> Qwen2_5_VLConfig:
    config = Qwen2_5_VLConfig.from_pretrained(foundation_dir)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_parameters_on_meta_buffers_on_the_cpu(foundation_dir):
    config = tiny_config(foundation_dir)
    with parameters_on_meta():
        meta = Qwen2_5_VLForConditionalGeneration._from_config(config)
    real = Qwen2_5_VLForConditionalGeneration._from_config(config)
    assert all(p.is_meta for p in meta.parameters())
    buffers, expected = dict(meta.named_buffers()), dict(real.named_buffers())
    assert buffers.keys() == expected.keys() and any("inv_freq" in name for name in buffers)
    assert all(torch.equal(buffers[name], expected[name]) for name in expected)
    assert not any(p.is_meta for p in Qwen2_5_VLForConditionalGeneration._from_config(config).parameters())


def test_checkpoint_keys_follow_transformers_conversion_mapping(foundation_dir):
    """The tiny checkpoint is stored with the old names (`model.layers.*`, `visual.*`), like published ones."""
    with parameters_on_meta():
        model = Qwen2_5_VLForConditionalGeneration._from_config(tiny_config(foundation_dir))
    names = SafetensorsWeights.find(foundation_dir).names_for(model)
    assert set(names) == set(tensor_slots(model))
    assert names["model.language_model.layers.0.self_attn.q_proj.weight"] == "model.layers.0.self_attn.q_proj.weight"
    assert names["model.visual.blocks.1.attn.qkv.bias"] == "visual.blocks.1.attn.qkv.bias"
    assert names["model.language_model.embed_tokens.weight"] == "model.embed_tokens.weight"
    assert names["lm_head.weight"] == "lm_head.weight"
    assert model._weight_conversions  # reverted by save_pretrained, as after from_pretrained


def test_init_groups_cover_every_parameter_once(foundation_dir):
    with parameters_on_meta():
        model = Qwen2_5_VLForConditionalGeneration._from_config(tiny_config(foundation_dir))
    groups = init_groups(model)
    units = [name for name, whole in groups if whole]
    assert len(units) == 4 + 2  # decoder layers and vision blocks
    covered = []
    for name, whole in groups:
        module = model.get_submodule(name)
        covered += [f"{name}.{n}" for n, _ in module.named_parameters(recurse=whole)]
    assert sorted(covered) == sorted(n for n, _ in model.named_parameters())


# --- two processes ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, world: int = 2, timeout: float = 600) -> None:
    """Run fn(rank, world, port, *args) in `world` fresh processes; a failure in any of them fails the test."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=(world, free_port(), *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            raise TimeoutError(f"{fn.__name__} did not finish in {timeout} s")


def _setup(rank: int, world: int, port: int):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return init_device_mesh("cpu", (world,))


def _full_state(model) -> dict[str, torch.Tensor]:
    """Every rank gathers the whole state dict (so that every rank checks it, and a failure stops both)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def _assert_same(state: dict, expected: dict, skip=lambda name: False) -> None:
    assert state.keys() == expected.keys(), set(state) ^ set(expected)
    different = [k for k in expected if not skip(k) and not torch.equal(state[k], expected[k])]
    assert not different, different[:5]


def _cfg(*overrides):
    return load_config(None, list(overrides)).model


def _checkpoints_worker(rank: int, world: int, port: int, foundation_dir: str, tied_dir: str, out: str) -> None:
    import torch.distributed as dist
    from peft.tuners.lora import LoraLayer

    from cpt.model.backbone import base_model, load_backbone, reshard, save_weights, shard_backbone
    from cpt.model.sharded_load import load_sharded_backbone

    mesh = _setup(rank, world, port)
    foundation_dir, tied_dir = Path(foundation_dir), Path(tied_dir)

    # Full fine-tuning, float32: the same weights, buffers, generation config and logits as from_pretrained.
    cfg = _cfg("model.finetune=full")
    model = load_sharded_backbone(cfg, foundation_dir, mesh, seed=0)
    expected = load_backbone(cfg, foundation_dir)
    assert all(p.to_local().numel() < p.numel() for p in model.parameters())  # really sharded
    _assert_same(_full_state(model), expected.state_dict())
    buffers, expected_buffers = dict(model.named_buffers()), dict(expected.named_buffers())
    assert buffers.keys() == expected_buffers.keys()
    assert all(torch.equal(buffers[k], expected_buffers[k]) for k in buffers)
    assert model.generation_config.to_dict() == expected.generation_config.to_dict()
    assert model.config.to_dict() == expected.config.to_dict()
    ids = torch.randint(10, 100, (2, 12), generator=torch.Generator().manual_seed(0))  # no special tokens
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        torch.testing.assert_close(logits, expected(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    reshard(model)

    # LoRA on the language model and the vision tower, bfloat16: the base as from_pretrained, the adapters as peft
    # initialises them from the seed (A uniform within kaiming's bound, B zero), one draw shared by the ranks.
    cfg = _cfg("model.finetune=lora", "model.lora.vision=true", "model.dtype=bfloat16")
    model = load_sharded_backbone(cfg, foundation_dir, mesh, seed=3)
    state = _full_state(model)
    expected = load_backbone(cfg, foundation_dir)
    _assert_same(state, expected.state_dict(), skip=lambda k: "lora_A" in k)
    assert model.peft_config["default"].to_dict() == expected.peft_config["default"].to_dict()
    again = _full_state(load_sharded_backbone(cfg, foundation_dir, mesh, seed=3))
    other_seed = _full_state(load_sharded_backbone(cfg, foundation_dir, mesh, seed=4))
    lora_a = [k for k in state if "lora_A" in k]
    assert lora_a and all(torch.equal(state[k], again[k]) for k in lora_a)
    assert not any(torch.equal(state[k], other_seed[k]) for k in lora_a)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    for key in lora_a:
        fan_in = state[key].shape[1]
        assert 0 < state[key].abs().max() <= 1 / fan_in ** 0.5
    assert any("visual" in n for n in layers)
    assert all((state[k] == 0).all() for k in state if "lora_B" in k)
    assert {k for k, v in model.named_parameters() if v.requires_grad} == {
        k for k, v in expected.named_parameters() if v.requires_grad}

    # Tied embeddings, a checkpoint in several files with an index, stored in bfloat16, loaded as float32.
    cfg = _cfg("model.finetune=full")
    model = load_sharded_backbone(cfg, tied_dir, mesh, seed=0)
    inner = base_model(model)
    assert inner.lm_head.weight is inner.model.language_model.embed_tokens.weight
    expected = load_backbone(cfg, tied_dir)
    state = _full_state(model)
    assert state["lm_head.weight"].dtype == torch.float32
    _assert_same(state, expected.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected(input_ids=ids).logits, rtol=1e-5,
                                   atol=1e-5)
    reshard(model)
    # Saved back in the checkpoint's own naming (`model.layers.*`, `visual.*`), as the model loaded the old way is.
    save_weights(model, Path(out) / "new", is_main=rank == 0)
    save_weights(shard_backbone(load_backbone(cfg, tied_dir), mesh), Path(out) / "old", is_main=rank == 0)
    dist.barrier()
    if rank == 0:
        from safetensors.torch import load_file

        new, old = (load_file(Path(out) / way / "model.safetensors") for way in ("new", "old"))
        stored = set(json.loads((tied_dir / "model.safetensors.index.json").read_text())["weight_map"])
        assert stored <= new.keys() and "visual.blocks.0.attn.qkv.weight" in new
        _assert_same(new, old)
    dist.barrier()
    dist.destroy_process_group()


def _random_worker(rank: int, world: int, port: int, shapes_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from cpt.model.sharded_load import fill, load_sharded_backbone, random_group

    mesh = _setup(rank, world, port)
    cfg = _cfg("model.finetune=full")
    model = load_sharded_backbone(cfg, Path(shapes_dir), mesh, seed=5)
    state = _full_state(model)
    # The same random model as drawn in one process, part by part: each rank holds its rows of the same draw.
    config = Qwen2_5_VLConfig.from_pretrained(shapes_dir)
    with parameters_on_meta():
        template = Qwen2_5_VLForConditionalGeneration._from_config(config)
    expected = {}
    for k, (group, whole) in enumerate(init_groups(template)):
        for name, value in random_group(template, group, whole, seed=5 * 1_000_003 + k).items():
            expected[f"{group}.{name}" if group else name] = value
    _assert_same(state, expected)
    # ... initialised as transformers initialises (std = initializer_range, norms one, biases zero).
    std = config.text_config.initializer_range
    q = state["model.language_model.layers.0.self_attn.q_proj.weight"]
    assert abs(q.std().item() - std) < 0.2 * std and (state["model.language_model.layers.0.self_attn.q_proj.bias"]
                                                      == 0).all()
    assert (state["model.language_model.norm.weight"] == 1).all()
    assert not torch.equal(state["model.language_model.layers.0.mlp.up_proj.weight"],
                           state["model.language_model.layers.1.mlp.up_proj.weight"])
    again = _full_state(load_sharded_backbone(cfg, Path(shapes_dir), mesh, seed=5))
    _assert_same(again, state)
    buffers = dict(model.named_buffers())
    assert all(b.abs().sum() > 0 for name, b in buffers.items() if "inv_freq" in name)

    # Uneven and empty shards: 3 rows over 2 ranks are 2 + 1, one row is 1 + 0.
    for rows in (3, 1):
        with parameters_on_meta():
            layer = torch.nn.Linear(4, rows)
        fully_shard(layer, mesh=mesh)
        layer.to_empty(device="cpu")
        full = {n: torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) for n, p in layer.named_parameters()}
        for name, param in layer.named_parameters():
            fill(param, full[name].__getitem__)
        mine = {3: [2, 1], 1: [1, 0]}[rows][rank]
        assert all(p.to_local().shape[0] == mine for p in layer.parameters())
        _assert_same(_full_state(layer), full)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory, foundation_dir):
    """A tiny Qwen2.5-VL with tied embeddings, stored in bfloat16 across several files with an index."""
    directory = tmp_path_factory.mktemp("tied")
    config = tiny_config(foundation_dir, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="1MB")
    assert (directory / "model.safetensors.index.json").is_file()
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    assert "lm_head.weight" not in weight_map and len(set(weight_map.values())) > 1
    return directory


@pytest.mark.slow
def test_sharded_loading_equals_from_pretrained(tmp_path, foundation_dir, tied_dir):
    spawn(_checkpoints_worker, str(foundation_dir), str(tied_dir), str(tmp_path))


@pytest.mark.slow
def test_sharded_random_init_is_one_model_across_ranks(quick_cfg):
    shapes = resolve_checkpoint(load_config(None, quick_cfg), build_weights=False)
    spawn(_random_worker, str(shapes))

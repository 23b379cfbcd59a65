"""`python -m cpt bench rft|sft|memory|fsdp-load|jobs|gpu`: figures that answer a user's question, measured on this
machine.

  rft      seconds per RFT step: our RFTModule (shared prompt prefix, and the prompt repeated per rollout) against
           TRL's GRPOTrainer, alternating in one process, for the current images and for long prompts
  sft      seconds per SFT step: our SFTModule against TRL's SFTTrainer, alternating in one process
  memory   peak memory of one RFT update at Qwen2.5-VL's 152,064-token vocabulary: the full log-prob path against
           the chunked one, each in a fresh process
  fsdp-load  host memory per process while a ~0.5B Qwen2.5-VL loads sharded on 2 CPU processes: the whole
           checkpoint on every process, then sharded, against each process reading its own shards
  jobs     runs per hour of `cpt study --jobs N` (N short runs at once, the cores shared out) against one run at a
           time on all the cores
  gpu      on one GPU, at the published 7B/8B shapes with random weights: peak memory, rollout tokens per second
           and seconds per RFT step (shared against repeated prompt) and per SFT step, LoRA and QLoRA

A speed figure is a ratio to a peer measured in the same process, over several rounds in which the sides take
turns: the median over rounds and its min-max range. TRL is an optional dependency: `pip install -e ".[bench]"`.
The modules behind it are beside this one, in cpt/bench/.
"""

from __future__ import annotations

import argparse

from cpt import flags
from cpt.errors import ConfigError

# The cases of `bench rft` (cpt.bench.rft.CASES, not imported here: `--help` does not load the training stack).
RFT_CASES = ("current", "long")


def rounds_options(parser: argparse.ArgumentParser, steps: int, warmup: int, rounds: int) -> None:
    parser.add_argument("--steps", type=flags.COUNT, default=steps,
                        help=f"timed steps per side and round (default {steps})")
    parser.add_argument("--warmup", type=flags.NATURAL, default=warmup,
                        help=f"untimed steps at the start of every run (default {warmup})")
    parser.add_argument("--rounds", type=flags.COUNT, default=rounds,
                        help=f"rounds; in each, every side runs once, in turn (default {rounds})")
    parser.add_argument("--threads", type=flags.COUNT, default=None,
                        help="torch threads of every side (default: torch's, i.e. OMP_NUM_THREADS or the physical "
                             "cores); on a machine others use, fewer threads than cores avoids spinning threads "
                             "that wait for each other")


def gpu_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", type=flags.TEXT, default=None,
                        help="comma-separated presets (default on a GPU qwen2.5-vl-7b,qwen3-vl-8b; without one "
                             "tiny,tiny-qwen3-vl,tiny-qwen3.5; random weights; any published shape, e.g. "
                             "qwen3.5-9b)")
    parser.add_argument("--finetune", type=flags.TEXT, help="comma-separated: lora, qlora (default both; CPU lora)")
    parser.add_argument("--prompts", type=flags.COUNT, default=None, help="prompts per RFT step (default 4; CPU 2)")
    parser.add_argument("--group", type=flags.COUNT, default=None, help="rollouts per prompt, G (default 8; CPU 2)")
    parser.add_argument("--new-tokens", type=flags.COUNT, default=None,
                        help="new tokens of every rollout, forced (default 256; CPU 8)")
    parser.add_argument("--image", type=flags.Number("[28, inf)", integer=True), default=None,
                        help="image side in pixels, at least one 28-pixel patch (default 448; CPU 64)")
    parser.add_argument("--sft-batch", type=flags.COUNT, default=None, help="examples per SFT step (default 8; CPU 2)")
    parser.add_argument("--rounds", type=flags.COUNT, default=2,
                        help="rounds; in each, every side runs once (default 2)")
    parser.add_argument("--out", type=flags.OUTPUT_FILE, default="bench-gpu.json",
                        help="where the rows go as JSON (default bench-gpu.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = flags.Parser(prog="python -m cpt bench", description=__doc__.split("\n\n")[0],
                                     epilog="rft and sft also take key=value config overrides, as `fit` does "
                                            "(e.g. rft.group_size=16 data.batch_size=8).")
    commands = parser.add_subparsers(dest="what", required=True, metavar="rft|sft|memory|fsdp-load|jobs|gpu")
    rft = commands.add_parser("rft", help="our RFT step against TRL's GRPOTrainer",
                              description="Seconds per RFT step: cpt with a shared prompt prefix, cpt with the "
                                          "prompt repeated per rollout, and TRL's GRPOTrainer, in alternating rounds.")
    rounds_options(rft, steps=3, warmup=1, rounds=3)
    rft.add_argument("--case", choices=[*RFT_CASES, "all"], default="all",
                     help="current: the default 64 x 64 images; long: 224 x 224 images, a prompt of hundreds of "
                          "tokens (default all)")
    sft = commands.add_parser("sft", help="our SFT step against TRL's SFTTrainer",
                              description="Seconds per SFT step: cpt's SFTModule and TRL's SFTTrainer on the same "
                                          "model, data, batch, optimizer and clipping, in alternating rounds.")
    rounds_options(sft, steps=10, warmup=2, rounds=5)
    memory = commands.add_parser("memory", help="peak memory of one RFT update at a 152k vocabulary",
                                 description="Peak memory (RSS) of one RFT update, the full log-prob path against the "
                                             "chunked one, each measured in a fresh Python process.")
    from cpt.bench.memory import add_options  # argparse and dataclasses only

    add_options(memory)
    commands.add_parser("fsdp-load", add_help=False, help="host memory per process of a sharded load (FSDP)")
    gpu = commands.add_parser("gpu", help="one RFT and one SFT step at real size on one GPU",
                              description="Peak GPU memory, rollout tokens per second and seconds per step of one RFT "
                                          "step (shared prompt against repeated prompt) and one SFT step, LoRA and "
                                          "QLoRA, at the published shapes with random weights; on a machine without "
                                          "a GPU, at the tiny shapes.")
    gpu_options(gpu)
    jobs = commands.add_parser("jobs", help="runs per hour with N runs at once against one at a time",
                               description="Wall time per run of N short `cpt fit` runs at once (the cores shared "
                                           "out) against one on all the cores, in alternating rounds.")
    jobs.add_argument("--jobs", type=flags.COUNT, default=2, help="runs at once (default 2)")
    jobs.add_argument("--rounds", type=flags.COUNT, default=3, help="rounds; in each, both sides run once, in turn "
                                                            "(default 3)")
    return parser


def main(args: list[str]) -> int:
    if args[:1] == ["fsdp-load"]:  # its own options: python -m cpt bench fsdp-load --help
        from cpt.bench.fsdp_load import main as bench_fsdp_load

        return bench_fsdp_load(args[1:])
    known, overrides = build_parser().parse_known_args(args)
    if known.what == "gpu":
        if overrides:
            raise ConfigError(f"bench gpu takes no config overrides or other flags: {' '.join(overrides)} "
                              "(python -m cpt bench --help lists its flags)")
        from cpt.bench.gpu import bench_gpu

        bench_gpu(known)
        return 0
    if known.what == "jobs":
        from cpt.bench.jobs import bench_jobs

        bench_jobs(overrides, known.jobs, known.rounds)
        return 0
    if known.what == "memory":
        if overrides:
            raise ConfigError(f"bench memory takes no config overrides or other flags: {' '.join(overrides)} "
                              "(python -m cpt bench --help lists its flags)")
        from cpt.bench.memory import bench_memory

        bench_memory(known)
        return 0
    if known.threads is not None:
        import torch

        torch.set_num_threads(known.threads)
    if known.what == "rft":
        from cpt.bench.rft import bench_rft

        cases = list(RFT_CASES) if known.case == "all" else [known.case]
        bench_rft(overrides, known.steps, known.warmup, known.rounds, cases)
        return 0
    from cpt.bench.sft import bench_sft

    bench_sft(overrides, known.steps, known.warmup, known.rounds)
    return 0

"""`python -m cpt export STAGE_DIR OUT_DIR [--dtype D] [--overwrite]`: a stage (or any checkpoint cpt loads) as one
standalone model directory that transformers loads without cpt (`AutoModelForImageTextToText`, and
`AutoProcessor` where torchvision is installed): LoRA adapters merged into their base (down a chain of stages),
full weights as they are, in safetensors, with the processor, chat template, generation config and model card.
That is the layout of a transformers checkpoint, the one vLLM reads.
"""

from __future__ import annotations

from pathlib import Path

from cpt import flags
from cpt.atomic import replacing
from cpt.errors import ConfigError
from cpt.model.backbone import DTYPES, adapter_base, load_model, processor_source
from cpt.model.presets import check_model_files, check_stage_chain
from cpt.model.processor import VisionTextProcessor
from cpt.model.stage_adapters import refuse_part_of_a_stage


def export(stage: Path, out: Path, dtype: str = "float32") -> None:
    refuse_part_of_a_stage(stage)
    if not ((stage / "config.json").is_file() or adapter_base(stage) is not None):
        raise ConfigError(f"{stage} holds no model: give a stage directory (runs/<run>/checkpoints/<k>-<task>) or "
                          "a checkpoint directory with config.json")
    check_model_files(stage)
    check_stage_chain(stage)
    model = load_model(stage, DTYPES[dtype], "sdpa")
    processor = VisionTextProcessor.from_pretrained(processor_source(stage))
    with replacing(out) as staging:  # a stopped export leaves no half-written model behind
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        card = (stage / "README.md").read_text(errors="replace") if (stage / "README.md").is_file() else ""
        note = (f"Exported by `python -m cpt export` from `{stage.resolve()}`"
                + (" (LoRA adapters merged into their base)" if adapter_base(stage) else "") + f", {dtype}.\n\n")
        (staging / "README.md").write_text(note + card)


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="python -m cpt export", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", type=flags.INPUT, help="a stage directory or a checkpoint directory")
    parser.add_argument("out", type=flags.REPLACED_DIR,
                        help="the directory to write (must not exist, unless --overwrite)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weight dtype of the export")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser


def main(args: list[str]) -> int:
    options = flags.parse(build_parser(), args)
    stage, out = options.stage.expanduser(), options.out.expanduser()
    if out.exists() and not options.overwrite:
        raise ConfigError(f"{out} exists; choose another directory or add --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; name a directory")
    export(stage, out, options.dtype)
    print(f"Exported {stage} to {out}")
    return 0

"""The families besides the default one end to end, as a user runs them: each shipped tiny model (Qwen3-VL; Qwen3.5,
the hybrid linear-attention one) trained with RFT (LoRA, the analysis callback on) and SFT (QLoRA), its stages
evaluated, exported and asked; and every published shape inspected."""

import json

import pytest

from cpt.cli import main
from cpt.model.families import DEFAULT, FAMILIES
from cpt.model.processor import VisionTextProcessor
from tests.helpers.plain_transformers import PlainTransformers

pytestmark = pytest.mark.slow  # every test here trains

OTHERS = [family for family in FAMILIES if family is not DEFAULT]


def args(family) -> list[str]:
    return [f"model.name_or_path={family.tiny_preset}", "data.batch_size=4", "data.eval_size=8",
            "data.general_size=8", "eval.batch_size=8", "eval.max_new_tokens=6", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", "logger=none", "tasks=[colour,shape]", "steps_per_task=2"]


@pytest.fixture(scope="module", params=OTHERS, ids=lambda family: family.name)
def rft_run(request, tmp_path_factory):
    family = request.param
    run_dir = tmp_path_factory.mktemp(f"{family.name}-rft")
    assert main(["fit", "configs/rft.yaml", *args(family), "model.finetune=lora", "rft.group_size=2",
                 "rft.max_new_tokens=6", "analysis.enabled=true", f"output_dir={run_dir}"]) == 0
    return family, run_dir, json.loads((run_dir / "results.json").read_text())


def test_rft_with_lora_trains_both_tasks_and_its_stage_is_a_checkpoint_of_the_family(rft_run):
    family, run_dir, results = rft_run
    assert len(results["accuracy_matrix"]) == 3  # the base row and one per task
    stage = run_dir / "checkpoints" / "2-shape"
    assert json.loads((stage / "adapter_config.json").read_text())["base_model_name_or_path"]
    processor = VisionTextProcessor.from_pretrained(stage)
    assert processor.family is family and processor.image_processor.patch_size == 8
    assert processor.tokenizer.chat_template == family.chat_template
    groups = json.loads((run_dir / "analysis.json").read_text())["stages"][0]["update_norm"]
    assert "attention" in groups  # LoRA adapts every layer's token mixing (Qwen3.5: linear attention too)


@pytest.mark.parametrize("family", OTHERS, ids=lambda family: family.name)
def test_sft_with_qlora_runs_on_the_family(family, tmp_path):
    assert main(["fit", *args(family), "model.finetune=qlora", f"output_dir={tmp_path}"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["accuracy_matrix"]) == 3


def test_eval_of_a_stage_reproduces_its_row(rft_run, tmp_path):
    family, run_dir, first = rft_run
    out = tmp_path / "eval"
    assert main(["eval", *args(family), f"checkpoint={run_dir / 'checkpoints' / '2-shape'}", f"out={out}"]) == 0
    assert json.loads((out / "results.json").read_text())["accuracy_matrix"] == [first["accuracy_matrix"][2]]


def test_export_answers_in_plain_transformers_as_cpt_does(rft_run, tmp_path, capsys):
    """The merged stage in transformers alone (the family's image processor, the tokenizer's template) answers as
    `cpt generate` does."""
    from cpt.data.synthetic import make_example

    family, run_dir, _ = rft_run
    stage, out = run_dir / "checkpoints" / "2-shape", tmp_path / "exported"
    assert main(["export", str(stage), str(out)]) == 0
    plain = PlainTransformers(out, family.image_processor_class)
    assert type(plain.model) is family.model_class
    for index in range(3):
        example = make_example("colour", "eval", index, 0, 64)  # no choices: the prompt `generate` gives
        example.images[0].save(tmp_path / "image.png")
        capsys.readouterr()
        assert main(["generate", f"checkpoint={stage}", f"image={tmp_path / 'image.png'}",
                     f"question={example.question}", "max_new_tokens=8"]) == 0
        ours = capsys.readouterr().out.split("\nA: ", 1)[1].rstrip("\n")
        assert plain.answer(example, max_new_tokens=8) == ours


SHAPES = [(family, name) for family in FAMILIES for name in family.shapes]


@pytest.mark.parametrize(("family", "preset"), SHAPES, ids=[name for _, name in SHAPES])
def test_inspect_prints_each_published_shape(family, preset, capsys):
    """Every published shape builds at its depth: its decoder layers and vision blocks are the FSDP units."""
    assert main(["inspect", f"model.name_or_path={preset}"]) == 0
    printed = capsys.readouterr().out
    assert preset in printed
    shape = family.shapes[preset]
    layer, block = family.fsdp_units
    assert f"{shape.vision['depth']} x {block}, {shape.text['num_hidden_layers']} x {layer}" in printed
    assert ("recurrent states" in printed) == ("forked: the prompt's cache" in printed) == (not family.packable)

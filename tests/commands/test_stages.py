"""Stage directories stand on their own: processor, chat template, generation config and a model card beside the
weights, and a new sequence starts from one (LoRA or full) exactly where the earlier run left off."""

import json

import pytest

from cpt.cli import main
from cpt.model.families import QWEN2_5_VL
from cpt.model.processor import VisionTextProcessor
from tests.helpers.plain_transformers import PlainTransformers

pytestmark = pytest.mark.slow  # every test here trains


def fit(quick_cfg, run_dir, *overrides):
    args = [*quick_cfg, "tasks=[colour,shape]", "steps_per_task=4", "optim.lr=5e-3", "data.eval_size=16",
            "eval.batch_size=16", "logger=none", f"output_dir={run_dir}", *overrides]
    assert main(["fit", *args]) == 0
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, quick_cfg, foundation_dir):
    run_dir = tmp_path_factory.mktemp("first")
    return run_dir, fit(quick_cfg, run_dir)


def test_a_stage_directory_holds_what_loading_it_needs(first_run, foundation_dir):
    run_dir, results = first_run
    stage = run_dir / "checkpoints" / "2-shape"
    adapters = json.loads((stage / "adapter_config.json").read_text())
    assert adapters["base_model_name_or_path"] == str(foundation_dir.resolve())  # absolute: loads from anywhere
    assert (stage / "generation_config.json").is_file() and (stage / "adapter_model.safetensors").is_file()
    assert VisionTextProcessor.from_pretrained(stage).tokenizer.chat_template == QWEN2_5_VL.chat_template
    card = (stage / "README.md").read_text()
    assert card.startswith("# sft sequential: stage 2 of 2 (shape)")
    row = results["accuracy_matrix"][2] + [results["general"][2]]
    assert "| colour | shape | general |\n|---|---|---|\n| " + " | ".join(f"{v:.1f}" for v in row) + " |" in card
    assert "optim:\n  lr: 0.005" in card  # the run's configuration


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_a_new_sequence_starts_from_a_lora_stage(first_run, tmp_path, quick_cfg, finetune):
    run_dir, first = first_run
    assert first["accuracy_matrix"][2] != first["accuracy_matrix"][0]  # the stage moved the model
    second = fit(quick_cfg, tmp_path / "second", f"model.name_or_path={run_dir / 'checkpoints' / '2-shape'}",
                 f"model.finetune={finetune}")
    # Its base row is the first run's last: the same model, evaluated on the same examples.
    assert second["accuracy_matrix"][0] == first["accuracy_matrix"][2]
    assert second["general"][0] == first["general"][2]
    if finetune == "full":  # and a third sequence from a full stage of the second
        stage = tmp_path / "second" / "checkpoints" / "2-shape"
        third = fit(quick_cfg, tmp_path / "third", f"model.name_or_path={stage}")
        assert third["accuracy_matrix"][0] == second["accuracy_matrix"][2]


def test_eval_of_a_stage_reproduces_its_row_and_compare_puts_it_beside_runs(first_run, tmp_path, quick_cfg, capsys):
    run_dir, first = first_run
    args = [*quick_cfg, "tasks=[colour,shape]", "data.eval_size=16", "eval.batch_size=16"]
    for stage in (1, 2):
        out = tmp_path / f"eval-{stage}"
        name = ["1-colour", "2-shape"][stage - 1]
        assert main(["eval", *args, f"checkpoint={run_dir / 'checkpoints' / name}", f"out={out}"]) == 0
        row = json.loads((out / "results.json").read_text())
        assert row["accuracy_matrix"] == [first["accuracy_matrix"][stage]]  # exactly the run's row
        assert row["general"] == [first["general"][stage]]
        assert f"Results in {out}" in capsys.readouterr().out
    assert main(["compare", str(run_dir), str(tmp_path / "eval-2"), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    evaluated = f"eval {run_dir / 'checkpoints' / '2-shape'}"
    last = " | ".join(f"{v:.1f}" for v in first["accuracy_matrix"][2])
    assert f"| sft sequential | {last} |" in table and f"| {evaluated} | {last} |" in table  # final accuracies
    assert f"| {evaluated} | eval eval | {sum(first['accuracy_matrix'][2]) / 2:.1f} | - | - |" in table
    assert main(["eval", *args, "checkpoint="]) == 2
    before = (run_dir / "results.json").read_bytes()
    assert main(["eval", *args, f"checkpoint={run_dir / 'checkpoints' / '1-colour'}", f"out={run_dir}"]) == 2
    assert "already holds results" in capsys.readouterr().err and (run_dir / "results.json").read_bytes() == before
    stage = run_dir / "checkpoints" / "1-colour"
    held = sorted(p.name for p in stage.iterdir())
    assert main(["eval", *args, f"checkpoint={stage}", f"out={stage}"]) == 2
    assert "is the checkpoint evaluated" in capsys.readouterr().err and sorted(p.name for p in stage.iterdir()) == held


def test_export_loads_in_plain_transformers_with_the_answers_cpt_gives(first_run, tmp_path, quick_cfg, capsys):
    """A LoRA stage merged and saved; transformers alone (the tokenizer's chat template, Qwen2.5-VL's image
    processor: AutoProcessor where torchvision is installed) answers as cpt's evaluation does."""
    from cpt.config import load_config
    from cpt.data.batches import Collator, EncodedDataset
    from cpt.data.synthetic import make_example
    from cpt.model.backbone import load_for_inference
    from cpt.model.generation import generate

    run_dir, _ = first_run
    stage, out = run_dir / "checkpoints" / "2-shape", tmp_path / "exported"
    assert main(["export", str(stage), str(out)]) == 0
    assert main(["export", str(stage), str(out)]) == 2  # never over an existing directory unasked
    assert "exists; choose another directory or add --overwrite" in capsys.readouterr().err
    examples = [make_example("shape", "eval", i, 0, 64) for i in range(8)]

    cfg = load_config(None, [*quick_cfg])
    ours_model = load_for_inference(cfg.model, stage).eval()
    processor = VisionTextProcessor.from_pretrained(stage)
    dataset = EncodedDataset(examples, processor, "direct", with_response=False)
    batch = Collator(processor.pad_id)([dataset[i] for i in range(len(examples))])
    ours = generate(ours_model, processor, batch, max_new_tokens=8)

    plain = PlainTransformers(out, QWEN2_5_VL.image_processor_class)
    theirs = [plain.answer(example, max_new_tokens=8) for example in examples]
    assert theirs == ours and any(answer.startswith("\\boxed{") for answer in ours)


def test_generate_answers_as_the_run_asks(first_run, tmp_path, quick_cfg, capsys):
    from cpt.config import load_config
    from cpt.data.batches import Collator, EncodedDataset
    from cpt.data.synthetic import make_example
    from cpt.model.backbone import load_for_inference
    from cpt.model.generation import generate

    run_dir, _ = first_run
    stage = run_dir / "checkpoints" / "1-colour"
    example = make_example("colour", "eval", 3, 0, 64)
    assert example.choices is None
    example.images[0].save(tmp_path / "shape.png")
    args = ["generate", f"checkpoint={stage}", f"image={tmp_path / 'shape.png'}", f"question={example.question}"]
    assert main([*args, "max_new_tokens=8"]) == 0
    first = capsys.readouterr().out
    assert first.startswith(f"Q: {example.question}\nA: \\boxed{{")
    # The answer cpt's evaluation gives the same example.
    processor = VisionTextProcessor.from_pretrained(stage)
    batch = Collator(processor.pad_id)([EncodedDataset([example], processor, "direct", with_response=False)[0]])
    model = load_for_inference(load_config(None, quick_cfg).model, stage).eval()
    assert first == f"Q: {example.question}\nA: {generate(model, processor, batch, 8)[0]}\n\n"
    assert main([*args, "max_new_tokens=8"]) == 0 and capsys.readouterr().out == first  # greedy: the same again
    assert main([*args, "temperature=1.0", "seed=3"]) == 0
    sampled = capsys.readouterr().out
    assert main([*args, "temperature=1.0", "seed=3"]) == 0 and capsys.readouterr().out == sampled  # seeded
    assert main([*args[:2], "image=missing.png", "question=x"]) == 2
    assert "error: image=missing.png: 'missing.png' does not exist" in capsys.readouterr().err
    assert main([*args[:2], "colour=red"]) == 2
    assert main([*args, "template=bogus"]) == 2
    assert "template=bogus: choose one of direct, cot" in capsys.readouterr().err

"""The study's experiment knobs: config inheritance, multitask, instance filtering (offline and online), the KL
schedule, experience replay, and general benchmarks in results.json."""

import csv
import json
from pathlib import Path

import pytest
import torch

from callbacks.kl_schedule import KLSchedule
from callbacks.online_filter import OnlineFiltering
from callbacks.replay import ExperienceReplay
from callbacks.rollout_filter import RolloutFiltering, drop_reason
from cpt.config import ConfigError, load_config
from cpt.data import Collator, EncodedDataset, SyntheticSplit, concat_rows, repeat_rows, select_rows
from cpt.datamodule import TaskSequenceData
from cpt.fit import run
from cpt.rewards import ScoredRollouts
from cpt.tasks import build_tasks

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "configs" / "experiments"

# A reward that depends only on the instance: count pictures of 3 and red shapes are always right, the rest
# always wrong. Every group's rewards are then all equal, and the filters' decisions are known in advance.
KNOWN_REWARD = """
def reward(completion, example, **_):
    return {"accuracy": float(example.answer in ("3", "red")), "format": 0.0}
"""


def metric_rows(run_dir: Path, key: str) -> list[dict]:
    return [row for row in csv.DictReader(open(run_dir / "logs" / "metrics.csv")) if row.get(key)]


# --- configs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_experiment_configs_state_only_what_differs(path):
    text = path.read_text()
    assert "base: ../" in text
    cfg = load_config(path)
    base = load_config(EXPERIMENTS / text.split("base: ")[1].split()[0])
    assert cfg.name and cfg.name != base.name
    assert cfg.steps_per_task == base.steps_per_task and cfg.optim.lr == base.optim.lr  # the same budget


def test_base_configs_chain_and_cycles_fail(tmp_path):
    (tmp_path / "a.yaml").write_text("base: ../configs_b/b.yaml\nseed: 3\n")
    (tmp_path.parent / "configs_b").mkdir(exist_ok=True)
    (tmp_path.parent / "configs_b" / "b.yaml").write_text(f"base: {REPO}/configs/rft.yaml\nsteps_per_task: 7\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert (cfg.method, cfg.steps_per_task, cfg.seed, cfg.rft.group_size) == ("rft", 7, 3, 8)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="its own base"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("overrides, message", [
    (["method=sft", "rft.filter.rule=all_wrong"], "needs method=rft"),
    (["method=rft", "rft.kl.schedule=per_task", "rft.kl.per_task=[0.1]", "tasks=[count,colour]"], "one beta per stage"),
    (["method=rft", "rft.kl.per_task=[0.1,-1]", "rft.kl.schedule=per_task", "tasks=[count,colour]"], ">= 0"),
    (["method=rft", "rft.filter.online=true", "rft.advantage=remax"], "remax"),
    (["method=rft", "rft.filter.rule=range", "rft.filter.low=0.8", "rft.filter.high=0.2"], "low <= high"),
    (["replay.fraction=1.5"], "replay.fraction"),
    (["method=rft", "regularizer.kind=ewc"], "method=sft"),
    (["schedule=interleaved"], "sequential, multitask"),
])
def test_experiment_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


# --- batches of rows ----------------------------------------------------------------------------------------


def test_select_and_concat_rows_keep_images_with_their_rows(processor):
    examples = SyntheticSplit("count", "eval", 3, 0, 64)
    encoded = [EncodedDataset(examples, processor, "direct", with_response=False, task=k)[i]
               for k, i in ((0, 0), (1, 1), (0, 2))]
    a, b = Collator(processor.pad_id)(encoded[:2]), Collator(processor.pad_id)(encoded[2:])
    b["input_ids"] = b["input_ids"][:, 1:]  # a narrower batch, as a shorter prompt would make
    b["attention_mask"] = b["attention_mask"][:, 1:]
    joined = concat_rows([a, b], processor.pad_id)
    assert joined["input_ids"].shape == (3, a["input_ids"].shape[1])
    assert joined["input_ids"][2, 0] == processor.pad_id and joined["attention_mask"][2, 0] == 0
    assert joined["task"].tolist() == [0, 1, 0]
    picked = select_rows(joined, [2, 0])
    assert torch.equal(picked["pixel_values"], torch.cat([b["pixel_values"], a["pixel_values"][: len(b["pixel_values"])]]))
    assert [e.answer for e in picked["examples"]] == [examples[2].answer, examples[0].answer]
    assert repeat_rows(a, 2)["task"].tolist() == [0, 0, 1, 1]


# --- offline filtering ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule, rewards, right, expected", [
    ("all_wrong", [0.1, 0.1], [0, 0], "all_wrong"),
    ("all_wrong", [0.1, 1.0], [0, 1], None),
    ("all_equal", [1.0, 1.0], [1, 1], "all_right"),
    ("all_equal", [0.0, 0.0], [0, 0], "all_wrong"),
    ("all_equal", [0.5, 0.5], [1, 0], "all_equal"),
    ("all_equal", [0.0, 1.0], [0, 1], None),
    ("range", [0.0, 0.1], [0, 0], "below_low"),
    ("range", [1.0, 1.0], [1, 1], "above_high"),
    ("range", [0.0, 1.0], [0, 1], None),
])
def test_drop_reason(rule, rewards, right, expected):
    assert drop_reason(torch.tensor(rewards), torch.tensor(right, dtype=torch.bool), rule, 0.2, 0.9) == expected


@pytest.fixture(scope="module")
def filtered_rft(tmp_path_factory, quick_cfg):
    """RFT over count and colour with the instance-only reward: offline all_wrong filtering, online filtering,
    and a per-task KL schedule that is off for the first task."""
    run_dir = tmp_path_factory.mktemp("filtered")
    reward = run_dir / "known_reward.py"
    reward.write_text(KNOWN_REWARD)
    cfg = load_config(REPO / "configs" / "rft.yaml", [
        *quick_cfg, f"output_dir={run_dir}", "tasks=[count,colour]", "steps_per_task=2", "data.batch_size=2",
        "rft.group_size=2", "rft.max_new_tokens=4", "eval.general=false", "save_checkpoints=false",
        f"rft.reward.function={reward}:reward", "rft.reward.weights={accuracy: 1.0}",
        "rft.filter.rule=all_wrong", "rft.filter.k=2", "rft.filter.pool_size=24", "rft.filter.online=true",
        "rft.filter.max_retries=1", "rft.kl.schedule=per_task", "rft.kl.per_task=[0.0,0.05]"])
    return run_dir, cfg, run(cfg)


def test_offline_filter_keeps_exactly_the_learnable_instances(filtered_rft):
    run_dir, cfg, summary = filtered_rft
    tasks = build_tasks(cfg)
    record = json.loads((run_dir / "filtering.json").read_text())
    assert record["rule"] == "all_wrong" and [s["task"] for s in record["stages"]] == ["count", "colour"]
    for stage, task, right_answer in zip(record["stages"], tasks, ("3", "red")):
        rows = list(csv.DictReader(open(run_dir / "filtering" / f"{stage['stage']}-{task.name}.csv")))
        assert len(rows) == stage["pool"] == 24
        expected = {int(r["instance"]) for r in rows if task.train[int(r["instance"])].answer == right_answer}
        kept = {int(r["instance"]) for r in rows if r["kept"] == "1"}
        assert kept == expected and stage["kept"] == len(expected) > 0
        assert stage["dropped"] == {"all_wrong": 24 - len(expected)}
    assert summary["kept_fraction"] == pytest.approx(sum(s["kept"] for s in record["stages"]) / 48)
    assert json.loads((run_dir / "results.json").read_text())["kept_fraction"] == summary["kept_fraction"]


def test_training_draws_only_kept_instances_and_online_filter_hits_its_cap(filtered_rft):
    run_dir, _, _ = filtered_rft
    # Kept instances are always right: every sampled reward is 1, every group all equal.
    rows = metric_rows(run_dir, "reward/total")
    assert len(rows) == 4 and all(float(r["reward/accuracy"]) == 1.0 for r in rows)
    # So the online filter drops every group, refills once (its cap), and fills the batch with dropped groups.
    assert all(float(r["filter/dropped_groups"]) == 1.0 for r in rows)
    assert all(float(r["filter/refill_rounds"]) == 1.0 for r in rows)
    assert all(float(r["filter/unfilled_groups"]) == 2.0 for r in rows)
    online = json.loads((run_dir / "filtering_online.json").read_text())
    assert [s["refill_rounds"] for s in online["stages"]] == [2, 2] and online["stages"][0]["unfilled"] == 4


def test_kl_schedule_is_applied_per_task(filtered_rft):
    run_dir, _, _ = filtered_rft
    rows = metric_rows(run_dir, "reward/total")
    coefs = [float(r["policy/kl_coef"]) for r in metric_rows(run_dir, "policy/kl_coef")]
    assert coefs == pytest.approx([0.0, 0.0, 0.05, 0.05])
    # No KL is computed while beta is 0; it is once beta is on.
    assert [bool(r.get("policy/kl")) for r in rows] == [False, False, True, True]
    assert KLSchedule("linear", 0.1, final_coef=0.0, steps_per_stage=5).coef_at(0, 4) == 0.0
    assert KLSchedule("linear", 0.1, final_coef=0.0, steps_per_stage=5).coef_at(3, 2) == pytest.approx(0.05)


# --- online filtering, by hand ------------------------------------------------------------------------------


class ScriptedRollouts:
    """An RFT module stand-in whose refill rollouts get scripted rewards."""

    def __init__(self, processor, refills, group_size=2):
        self.processor, self.refills = processor, list(refills)
        self.device = torch.device("cpu")
        self.cfg = load_config(None, [f"rft.group_size={group_size}", "method=rft"])

    def rollouts(self, batch, group_size=None):
        prompts = repeat_rows(batch, self.cfg.rft.group_size)
        rewards = torch.tensor(self.refills.pop(0))
        ids = torch.full((len(rewards), 3), 7)
        return prompts, ids, ScoredRollouts(rewards, {"accuracy": rewards}, 0)


def test_online_filter_replaces_equal_groups_with_refills(processor, tmp_path):
    examples = SyntheticSplit("count", "train", 8, 0, 64)
    dataset = EncodedDataset(examples, processor, "direct", with_response=False)
    collate = Collator(processor.pad_id)
    module = ScriptedRollouts(processor, refills=[[1.0, 1.0, 0.0, 1.0]])
    online = OnlineFiltering(tmp_path, max_retries=3)
    online.totals = [{"groups": 0, "dropped": 0, "refill_rounds": 0, "unfilled": 0}]
    online.refill = iter([collate([dataset[4], dataset[5]])])
    prompts = repeat_rows(collate([dataset[0], dataset[1]]), 2)
    # Group 0 (example 0) is all equal, group 1 (example 1) varied.
    first = ScoredRollouts(torch.tensor([0.0, 0.0, 1.0, 0.0]), {"accuracy": torch.tensor([0.0, 0.0, 1.0, 0.0])}, 0)
    out_prompts, ids, scored, stats = online.select(module, prompts, torch.zeros(4, 2, dtype=torch.long), first)
    # Kept: example 1's group, then the refill's varied group (example 5); example 4's group was equal too.
    assert [e.answer for e in out_prompts["examples"]] == [examples[1].answer] * 2 + [examples[5].answer] * 2
    assert scored.total.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert ids.shape == (4, 3)  # completions right-padded to the widest round
    assert stats == {"filter/dropped_groups": 0.5, "filter/refill_rounds": 1.0, "filter/unfilled_groups": 0.0}


# --- replay ---------------------------------------------------------------------------------------------------


def test_replay_batches_hold_earlier_tasks(processor):
    cfg = load_config(None, ["tasks=[count,colour,shape]", "data.batch_size=10", "steps_per_task=3",
                             "data.train_size=50"])
    tasks = build_tasks(cfg)
    data = TaskSequenceData(cfg, tasks, processor)
    replay = ExperienceReplay(fraction=0.3, buffer_per_task=5, seed=0)
    data.replay = replay
    first = [batch["task"].tolist() for batch in data.train_loader(0)]
    assert all(t == [0] * 10 for t in first)  # nothing to replay during the first task
    third = [batch["task"].tolist() for batch in data.train_loader(2)]
    assert len(third) == 3
    for rows in third:
        assert rows[:7] == [2] * 7 and all(t in (0, 1) for t in rows[7:])
    buffer = replay.buffer(data, 2)
    assert [k for k, _ in buffer] == [0, 1] and all(len(examples) == 5 for _, examples in buffer)
    replayed = {e.question + e.answer for batch in data.train_loader(2) for e, t in zip(batch["examples"], batch["task"]) if t < 2}
    allowed = {e.question + e.answer for _, examples in buffer for e in examples}
    assert replayed <= allowed


# --- multitask and general benchmarks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmlu_pro_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mmlu") / "test.jsonl"
    rows = [{"question_id": i, "question": f"What is {i} + 1?", "options": [str(i + 1), str(i + 2), "N/A"],
             "answer": "A", "answer_index": 0, "cot_content": "", "category": "math" if i % 2 else "physics",
             "src": "toy"} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_multitask_sft_with_benchmarks(tmp_path, quick_cfg, mmlu_pro_file):
    cfg = load_config(EXPERIMENTS / "sft_multitask.yaml", [
        *quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=2", "save_checkpoints=false",
        "eval.benchmarks.mmlu_pro.format=mmlu_pro", f"eval.benchmarks.mmlu_pro.path={mmlu_pro_file}"])
    summary = run(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["stages"] == [["colour", "count"]] and results["schedule"] == "multitask"
    assert len(results["accuracy_matrix"]) == 2 and results["complete"]
    assert results["avg_acc"] == pytest.approx(sum(results["accuracy_matrix"][1]) / 2)
    assert results["fm"] is None and results["bwt"] is None and results["name"] == "SFT multitask"
    mmlu = results["benchmarks"]["mmlu_pro"]
    assert len(mmlu) == 2 and set(mmlu[1]["categories"]) == {"math", "physics"}
    # Three questions per category: the overall accuracy is the mean of the two categories'.
    assert mmlu[1]["accuracy"] == pytest.approx(sum(mmlu[1]["categories"].values()) / 2)
    assert all(v * 3 / 100 == pytest.approx(round(v * 3 / 100)) for v in mmlu[1]["categories"].values())
    # One stage of 2 x 2 steps, drawing from both tasks.
    steps = metric_rows(tmp_path, "train/loss")
    assert len(steps) == 4 and {r["train/task"] for r in steps} == {"1.0"}
    assert summary == results


def test_general_benchmarks_follow_their_frequency(tmp_path, quick_cfg):
    cfg = load_config(EXPERIMENTS / "sft_replay.yaml", [
        *quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count,shape]", "steps_per_task=1",
        "save_checkpoints=false", "eval.general_every=0", "replay.fraction=0.5"])
    results = run(cfg)
    assert [g is not None for g in results["general"]] == [True, False, False, True]
    assert [g is not None for g in results["benchmarks"]["general"]] == [True, False, False, True]
    assert results["name"] == "SFT with replay" and results["wall_time_s"] > 0
    assert results["kept_fraction"] is None

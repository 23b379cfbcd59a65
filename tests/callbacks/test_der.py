"""Dark Experience Replay: its penalty worked by hand on a mixed batch, the bad settings refused, and a run in which
the recorded logits are the model's own at the end of the first task: no pull at the second task's first step, a
growing one after it."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cpt.callbacks.der import DarkExperienceReplay
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.errors import ConfigError
from cpt.methods.loss_terms import TrainingStep
from tests.helpers import REPO, metric_rows


def test_the_penalty_by_hand():
    """Three rows, n = 2 target columns, a vocabulary of 3, k = 2 kept. Row 0 is the current task's: no pull. Row 1
    replays task 0's example 1 (one answer token: recorded ids [2, 0], values [1, 0]); row 2 its example 0 (two
    tokens: ids [[0, 1], [1, 2]], values [[2, 1], [0, 0]]). The model's logits at those ids differ from the
    recorded ones by [1, 0] for row 1 and [[0, 1], [2, 0]] for row 2: 1 + 1 + 4 = 6 over 6 entries."""
    der = DarkExperienceReplay(weight=0.5, top_k=2)
    der.recorded = {0: {"ids": torch.tensor([[[0, 1], [1, 2]], [[2, 0], [0, 0]]], dtype=torch.int32),
                        "values": torch.tensor([[[2.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]).half(),
                        "lengths": torch.tensor([2, 1])}}
    logits = torch.tensor([[[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]],
                           [[9.0, 9.0, 9.0], [0.0, 5.0, 2.0]],    # only its last column is its answer
                           [[2.0, 2.0, 7.0], [7.0, 2.0, 0.0]]], requires_grad=True)
    sequences = SimpleNamespace(task=torch.tensor([1, 0, 0]), index=torch.tensor([0, 1, 0]))
    step = TrainingStep(None, sequences, None, None, logits, share=0.5)
    loss, metrics = der.loss(step)
    assert float(loss.detach()) == pytest.approx(0.5 * 0.5 * 6 / 6) and metrics == {}
    loss.backward()
    # d/dz of weight * share * sum (z - r)^2 / 6 = 2 (z - r) / 24 at the recorded ids, 0 elsewhere.
    expected = torch.zeros(3, 2, 3)
    expected[1, 1, 2] = 2 * 1 / 24
    expected[2, 0, 1] = 2 * 1 / 24
    expected[2, 1, 1] = 2 * 2 / 24
    torch.testing.assert_close(logits.grad, expected)

    nothing_replayed = SimpleNamespace(task=torch.tensor([1]), index=torch.tensor([0]))
    assert der.loss(TrainingStep(None, nothing_replayed, None, None, logits[:1])) == (None, {})


def test_bad_settings():
    with pytest.raises(ValueError, match="der weight must be a finite number > 0"):
        DarkExperienceReplay(weight=0)
    with pytest.raises(ValueError, match="der top_k must be a positive integer"):
        DarkExperienceReplay(top_k=0)
    with pytest.raises(ConfigError, match="set replay.fraction"):
        load_config(None, ["der.weight=0.5"])
    with pytest.raises(ConfigError, match="use it with method=sft"):
        load_config(None, ["method=rft", "der.weight=0.5", "replay.fraction=0.25"])


@pytest.mark.slow
def test_the_recorded_logits_are_the_model_as_its_task_ended(tmp_path, quick_cfg, foundation_dir):
    cfg = load_config(REPO / "configs" / "experiments" / "sft_der.yaml",
                      [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=3",
                       "data.batch_size=4", "replay.fraction=0.5", "replay.buffer_per_task=6", "der.top_k=4",
                       "eval.general=false", "data.eval_size=4", "save_checkpoints=false"])
    found = []

    class Find(Callback):  # the run's own DER callback, as the config built it
        def on_fit_end(self, trainer, pl_module):
            found.extend(c for c in trainer.callbacks if isinstance(c, DarkExperienceReplay))

    run(cfg, extra_callbacks=[Find()])
    [der] = found
    record = der.recorded[0]
    assert set(der.recorded) == {0} and record["ids"].shape[:1] == record["lengths"].shape == (6,)
    assert record["ids"].shape[2] == 4 and record["values"].dtype == torch.float16
    # Each token's kept logits are its largest, in order.
    assert bool((record["values"][:, :, :-1] >= record["values"][:, :, 1:]).all())
    rows = [r for r in metric_rows(tmp_path, "train/task") if r["train/task"] == "2.0"]
    penalties = [float(r["loss/der"]) for r in rows]
    # At the second task's first step the model is the one that recorded them: only float16 rounding remains.
    assert len(penalties) == 3 and penalties[0] < 1e-4 and penalties[2] > 10 * max(penalties[0], 1e-6)
    assert not any(r.get("loss/der") for r in metric_rows(tmp_path, "train/task") if r["train/task"] == "1.0")

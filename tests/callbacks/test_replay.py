"""Experience replay: batches of later stages hold earlier tasks' examples, from their buffers only."""

from cpt.callbacks.replay import ExperienceReplay
from cpt.config import load_config
from cpt.data.datamodule import TaskSequenceData
from cpt.data.tasks import build_tasks


def test_replay_batches_hold_earlier_tasks(processor):
    cfg = load_config(None, ["tasks=[count,colour,shape]", "data.batch_size=10", "steps_per_task=3",
                             "data.train_size=50"])
    tasks = build_tasks(cfg)
    data = TaskSequenceData(cfg, tasks, processor)
    replay = ExperienceReplay(fraction=0.3, buffer_per_task=5, seed=0)
    data.add_source(replay)
    first = [batch.task.tolist() for batch in data.train_loader(0)]
    assert all(t == [0] * 10 for t in first)  # nothing to replay during the first task
    third = [batch.task.tolist() for batch in data.train_loader(2)]
    assert len(third) == 3
    for rows in third:
        assert rows[:7] == [2] * 7 and all(t in (0, 1) for t in rows[7:])
    buffer = replay.examples(data, 2)
    assert [k for k, _ in buffer] == [0, 1] and all(len(examples) == 5 for _, examples in buffer)
    replayed = {e.question + e.answer for batch in data.train_loader(2) for e, t in zip(batch.examples, batch.task)
                if t < 2}
    allowed = {e.question + e.answer for _, examples in buffer for e in examples}
    assert replayed <= allowed

"""The data module: stages of exactly steps_per_task batches, kept instances, and extra sources from a user's
callback named by import path."""

import pytest

from cpt.commands.fit import load_callback
from cpt.config import load_config
from cpt.data.datamodule import TaskSequenceData
from cpt.data.tasks import build_tasks


@pytest.fixture
def data(processor):
    cfg = load_config(None, ["tasks=[count,colour]", "data.batch_size=8", "steps_per_task=3", "data.train_size=40"])
    return TaskSequenceData(cfg, build_tasks(cfg), processor, with_response=False)


def test_a_stage_is_steps_per_task_batches_of_its_kept_instances(data):
    batches = list(data.train_loader(1))
    assert len(batches) == 3 and all(batch.task.tolist() == [1] * 8 for batch in batches)
    data.keep_instances(1, [4, 9])
    kept = {data.tasks[1].train[i].question + data.tasks[1].train[i].answer for i in (4, 9)}
    drawn = {e.question + e.answer for batch in data.train_loader(1) for e in batch.examples}
    assert drawn <= kept and batch_indices(data.train_loader(1)) <= {0, 1}  # positions in the kept list


def batch_indices(loader) -> set[int]:
    return {int(i) for batch in loader for i in batch.index}


def test_a_users_source_mixes_into_every_batch(data):
    source = load_callback({"class": "tests.helpers.plugins:FirstTaskRehearsal", "fraction": 0.25})
    data.add_source(source)
    data.add_source(source)  # registered once
    assert data.sources == [source]
    assert all(batch.task.tolist() == [0] * 8 for batch in data.train_loader(0))  # nothing to add in stage 1
    for batch in data.train_loader(1):
        assert batch.task.tolist() == [1] * 6 + [0] * 2  # round(0.25 * 8) rows from the first task


def test_sources_that_cannot_fit_a_batch_are_refused(data):
    with pytest.raises(ValueError, match="FirstTaskRehearsal: a fraction 0.01 of a batch of 8 is no row"):
        data.add_source(load_callback({"class": "tests.helpers.plugins:FirstTaskRehearsal", "fraction": 0.01}))
    data.add_source(load_callback({"class": "tests.helpers.plugins:FirstTaskRehearsal", "fraction": 0.75}))
    with pytest.raises(ValueError, match="more than a batch of 8 rows"):
        data.add_source(load_callback({"class": "tests.helpers.plugins:FirstTaskRehearsal", "fraction": 0.5}))

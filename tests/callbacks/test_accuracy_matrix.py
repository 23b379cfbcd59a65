"""The accuracy-matrix callback's checkpoint state: found under the key earlier checkpoints used, and a resume
that brings no rows back is refused before it could measure a trained model as the base."""

from types import SimpleNamespace

import pytest

from cpt.callbacks.accuracy_matrix import AccuracyMatrix
from cpt.errors import ConfigError


def test_rows_round_trip_under_the_key_earlier_checkpoints_used(tmp_path):
    first = AccuracyMatrix([], tmp_path)
    first.rows, first.benchmark_rows, first.wall_time_s = [[50.0], [75.0]], {}, 12.5
    resumed = AccuracyMatrix([], tmp_path)
    resumed.load_state_dict(first.state_dict())
    assert resumed.rows == [[50.0], [75.0]] and resumed.wall_time_s == 12.5
    assert resumed.state_key == "MultiTaskEvaluation"


def test_a_resume_without_rows_is_refused(tmp_path):
    resuming = SimpleNamespace(ckpt_path=str(tmp_path / "last.ckpt"))
    with pytest.raises(ConfigError, match="holds no accuracy rows for this run"):
        AccuracyMatrix([], tmp_path).on_train_start(resuming, None)

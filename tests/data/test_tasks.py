"""Tasks of a sequence: synthetic and local ones side by side, each with its scorer."""

import json

import pytest
from PIL import Image

from cpt.config import load_config
from cpt.data.tasks import build_tasks
from cpt.errors import ConfigError


def test_local_task_in_a_sequence(tmp_path):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "r.png")
    rows = [{"problem": "Colour?", "answer": "red", "images": ["r.png"]}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config(None, ["tasks=[colour,mine]", f"local_tasks.mine.train={tmp_path / 't.jsonl'}",
                             f"local_tasks.mine.eval={tmp_path / 't.jsonl'}", "local_tasks.mine.scorer=exact"])
    colour, mine = build_tasks(cfg)
    assert colour.name == "colour" and mine.name == "mine"
    assert mine.eval[0].answer == "red" and mine.chance is None
    assert mine.scorer("\\boxed{Red}", mine.eval[0])
    with pytest.raises(ConfigError, match="'local_tasks.mine.scorer': 'fuzzy'; choose one of exact"):
        load_config(None, ["local_tasks.mine.train=a", "local_tasks.mine.eval=b", "local_tasks.mine.scorer=fuzzy"])

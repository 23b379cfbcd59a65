"""A short RFT run with offline and online filtering and a per-task KL schedule, shared by the callbacks' tests."""

import pytest

from cpt.commands.fit import run
from cpt.config import load_config
from tests.helpers import REPO

# A reward that depends only on the instance: count pictures of 3 and red shapes are always right, the rest
# always wrong. Every group's rewards are then all equal, and the filters' decisions are known in advance.
KNOWN_REWARD = """
def reward(completion, example, **_):
    return {"accuracy": float(example.answer in ("3", "red")), "format": 0.0}
"""


@pytest.fixture(scope="package")
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

"""The console: each message once, no advertising, a log level switch."""

import subprocess
import sys
from collections import Counter

import pytest

from cpt.console import split_level
from tests.helpers import REPO


def test_the_log_level_is_taken_out_of_the_command_line_wherever_it_stands():
    assert split_level(["fit", "seed=1"]) == ("warning", ["fit", "seed=1"])
    assert split_level(["fit", "--log-level", "INFO", "seed=1"]) == ("info", ["fit", "seed=1"])
    assert split_level(["--log-level=debug", "smc", "bench"]) == ("debug", ["smc", "bench"])
    with pytest.raises(ValueError, match="--log-level takes one of debug, info, warning, error, got 'loud'"):
        split_level(["fit", "--log-level", "loud"])
    with pytest.raises(ValueError, match="got ''"):
        split_level(["fit", "--log-level"])


@pytest.mark.slow
def test_a_run_prints_each_message_once_without_tips(tmp_path, quick_cfg, foundation_dir):
    args = [*quick_cfg, "tasks=[colour,count]", "steps_per_task=1", "data.eval_size=2", "eval.general=false",
            f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "cpt", "fit", *args, "--log-level", "info"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert sum("GPU available" in line for line in lines) == 1  # Lightning's info, once, through our handler
    assert "INFO lightning.pytorch.utilities.rank_zero: GPU available: False, used: False" in lines
    assert not any("Tip" in line or "litlogger" in line or "weights_only" in line for line in lines)
    repeated = [line for line, n in Counter(lines).items() if n > 1 and "INFO" in line]
    assert not repeated, repeated
    # At the default level Lightning's infos and transformers' weight-loading bars are left out.
    quiet = subprocess.run([sys.executable, "-m", "cpt", "fit", *args[:-1], f"output_dir={tmp_path / 'quiet'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "GPU available" not in quiet.stderr and "Loading weights" not in quiet.stderr

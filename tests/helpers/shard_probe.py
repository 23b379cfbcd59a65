"""A callback for the FSDP test: records, on each rank, how much of each parameter that rank holds."""

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor


class ShardProbe(Callback):
    def on_train_start(self, trainer, pl_module):
        local = full = sharded = 0
        for param in pl_module.backbone.parameters():
            full += param.numel()
            if isinstance(param, DTensor):
                sharded += 1
                local += param.to_local().numel()
            else:
                local += param.numel()
        out = Path(trainer.default_root_dir) / f"shards-rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world": trainer.world_size, "full": full, "local": local, "dtensors": sharded}))

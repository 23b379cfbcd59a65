"""The parameter regularizer: its gradient and penalty on hand-built weights, the diagonal Fisher and MAS's output
sensitivity on hand-made batches, a two-task SFT run in which it holds the second task's weights to the first
task's, and MAS under RFT."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torch.distributed.tensor import DTensor

from cpt.callbacks.regularizer import ParameterRegularizer, normalised, output_norm, penalty_gradient
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.data.batches import IGNORE_INDEX, Batch
from cpt.methods.loss_terms import TrainingStep
from cpt.model.fisher import diagonal_fisher, gradient_importance, trainable_parameters
from tests.helpers import REPO, metric_rows

# A trainer stand-in for hooks that only reduce over processes: here there is one.
ONE_PROCESS = SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu")))


def step_of(backbone: nn.Module, share: float = 1.0) -> TrainingStep:
    """What a method hands its loss terms; the parameter penalty reads only the module and the share."""
    module = SimpleNamespace(backbone=backbone, trainer=ONE_PROCESS)
    return TrainingStep(module, None, None, None, None, share)


def penalty_and_gradient(regularizer: ParameterRegularizer, model: nn.Module, share: float = 1.0):
    """The term's loss and metrics on a step, after a backward pass of it on top of the gradient already there."""
    loss, metrics = regularizer.loss(step_of(model, share))
    if loss is None:
        return loss, metrics
    loss.backward()
    return loss.detach(), metrics


def hand_built():
    """A trainable Linear(3, 2) at known weights with a known gradient, and a frozen Linear(2, 1) after it."""
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].requires_grad_(False)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        model[0].bias.copy_(torch.tensor([1.0, -1.0]))
    model[0].weight.grad = torch.full((2, 3), 0.125)
    model[0].bias.grad = torch.tensor([0.25, -0.25])
    anchor = {"0.weight": torch.tensor([[0.5, 2.0, 2.0], [4.0, 3.0, 6.5]]),  # drift [[.5, 0, 1], [0, 2, -.5]]
              "0.bias": torch.tensor([0.0, -1.0])}                            # drift [1, 0]
    fisher = {"0.weight": torch.tensor([[2.0, 1.0, 0.5], [1.0, 0.25, 4.0]]), "0.bias": torch.tensor([3.0, 1.0])}
    return model, anchor, fisher


@pytest.mark.parametrize("kind, weight_step, bias_step, penalty", [
    # strength * F * drift; penalty = strength/2 * sum F drift^2 = 0.25 * (0.5 + 0.5 + 1 + 1 + 3)
    ("ewc", [[0.5, 0.0, 0.25], [0.0, 0.25, -1.0]], [1.5, 0.0], 1.5),
    # strength * drift; penalty = 0.25 * (0.25 + 1 + 4 + 0.25 + 1)
    ("l2", [[0.25, 0.0, 0.5], [0.0, 1.0, -0.25]], [0.5, 0.0], 1.625),
])
def test_gradient_and_penalty_on_hand_built_weights(kind, weight_step, bias_step, penalty):
    model, anchor, fisher = hand_built()
    regularizer = ParameterRegularizer(kind, strength=0.5)
    regularizer.load_state_dict({"kind": kind, "anchor": anchor, "importance": fisher if kind == "ewc" else {}})
    loss, metrics = penalty_and_gradient(regularizer, model)
    assert torch.equal(model[0].weight.grad, 0.125 + torch.tensor(weight_step))
    assert torch.equal(model[0].bias.grad, torch.tensor([0.25, -0.25]) + torch.tensor(bias_step))
    assert model[1].weight.grad is None  # frozen: not regularized
    assert float(loss) == penalty and metrics == {}
    assert regularizer.name == kind and not regularizer.needs_logits


def test_a_micro_batch_carries_its_share_of_the_penalty():
    """Two backward passes of shares 1/4 and 3/4 add up to the penalty and its gradient once."""
    model, anchor, fisher = hand_built()
    regularizer = ParameterRegularizer("ewc", strength=0.5)
    regularizer.load_state_dict({"kind": "ewc", "anchor": anchor, "importance": fisher})
    values = [float(penalty_and_gradient(regularizer, model, share)[0]) for share in (0.25, 0.75)]
    assert values == [1.5 / 4, 1.5 * 3 / 4]
    assert torch.equal(model[0].bias.grad, torch.tensor([0.25, -0.25]) + torch.tensor([1.5, 0.0]))


def test_no_anchor_no_effect_and_the_anchor_is_a_copy():
    model, _, _ = hand_built()
    regularizer = ParameterRegularizer("l2", strength=0.5)
    assert penalty_and_gradient(regularizer, model) == (None, {})  # first stage: nothing to hold to yet
    assert torch.equal(model[0].weight.grad, torch.full((2, 3), 0.125))

    trainer = SimpleNamespace(current_epoch=0, max_epochs=2)
    regularizer.on_train_epoch_end(trainer, SimpleNamespace(backbone=model))
    assert set(regularizer.anchor) == {"0.weight", "0.bias"}
    with torch.no_grad():
        model[0].bias.add_(torch.tensor([2.0, 0.0]))  # drift [2, 0]
    loss, _ = penalty_and_gradient(regularizer, model)
    assert torch.equal(model[0].bias.grad, torch.tensor([0.25 + 1.0, -0.25]))
    assert float(loss) == 0.25 * 4

    # After the last stage nothing is left to protect: the anchor stays where it was.
    regularizer.on_train_epoch_end(SimpleNamespace(current_epoch=1, max_epochs=2), SimpleNamespace(backbone=model))
    assert torch.equal(regularizer.anchor["0.bias"], torch.tensor([1.0, -1.0]))


def test_state_dict_round_trip_continues_the_same():
    model, anchor, fisher = hand_built()
    first = ParameterRegularizer("ewc", strength=0.5)
    first.load_state_dict({"kind": "ewc", "anchor": anchor, "importance": fisher})
    resumed = ParameterRegularizer("ewc", strength=0.5)
    resumed.load_state_dict(first.state_dict())
    assert float(penalty_and_gradient(resumed, model)[0]) == 1.5
    with pytest.raises(ValueError, match="checkpoint's regularizer is 'ewc', this run's is 'l2'"):
        ParameterRegularizer("l2").load_state_dict(first.state_dict())


def numbers(rows: list[tuple[list[int], int]]) -> Batch:
    """A batch whose rows carry a regression example each: features in input_ids, the target in labels."""
    x = torch.tensor([features for features, _ in rows])
    y = torch.tensor([[target] for _, target in rows])
    n = len(rows)
    return Batch(x, torch.ones_like(x), y, torch.arange(n), torch.zeros(n), torch.zeros(n), [None] * n)


def test_diagonal_fisher_is_the_mean_of_per_example_squared_gradients():
    """EWC's Fisher (Kirkpatrick et al.): the squared gradient of each example's loss, averaged over the examples,
    not the square of a batch's mean gradient, in which the examples' gradients cancel."""
    # Dropout would scale or zero inputs in train mode; the Fisher must see the model without it.
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(2, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[1].bias.copy_(torch.tensor([0.5]))
    model.train()

    def loss_fn(m, batch):
        return (0.5 * (m(batch.input_ids.float()).squeeze(1) - batch.labels[:, 0].float()) ** 2).sum()

    # Residuals -0.5, 1.5 and 0.5: gradients w [-.5, -1], [3, 0], [0, .5]; b -.5, 1.5, .5. The second batch has two
    # examples: the square of its mean gradient (w [1.5, .25]) is not the mean of their squares (w [4.5, .125]).
    batches = [numbers([([1, 2], 0)]), numbers([([2, 0], 1), ([0, 1], -1)])]
    fisher = diagonal_fisher(model, batches, loss_fn)
    assert set(fisher) == {"1.weight", "1.bias"}
    torch.testing.assert_close(fisher["1.weight"], torch.tensor([[(0.25 + 9 + 0) / 3, (1 + 0 + 0.25) / 3]]))
    torch.testing.assert_close(fisher["1.bias"], torch.tensor([(0.25 + 2.25 + 0.25) / 3]))
    assert model.training and all(p.grad is None for p in model.parameters())

    with pytest.raises(ValueError, match="no examples"):
        diagonal_fisher(model, [], loss_fn)
    # MAS's importance is the same average of the examples' absolute gradients.
    importance = gradient_importance(model, batches, loss_fn, torch.abs)
    torch.testing.assert_close(importance["1.weight"], torch.tensor([[(0.5 + 3 + 0) / 3, (1 + 0 + 0.5) / 3]]))
    torch.testing.assert_close(importance["1.bias"], torch.tensor([(0.5 + 1.5 + 0.5) / 3]))


class EmbeddingLogits(nn.Module):
    """A language model whose logits at a position are its token's row of a table: ||logits||^2 by hand."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 2)
        with torch.no_grad():
            self.table.weight.copy_(torch.arange(20.0).view(10, 2) / 10)  # token t: [t/5, (2t + 1)/10]

    def forward(self, input_ids, attention_mask, logits_to_keep=0):
        return SimpleNamespace(logits=self.table(input_ids)[:, -logits_to_keep:])


def test_mas_output_is_the_squared_norm_of_the_logits_predicting_answers_or_the_next_token():
    """An SFT batch: the logits at the tokens before each answer token (5 and 6 for row 0's 6 and 7; 8 for row 1's
    9); a prompt batch: the logits at each row's last token. MAS's importance is the absolute gradient of it."""
    model, X = EmbeddingLogits(), IGNORE_INDEX
    ids = torch.tensor([[4, 5, 6, 7], [3, 4, 8, 9]])
    labels = torch.tensor([[X, X, 6, 7], [X, X, X, 9]])
    batch = Batch(ids, torch.ones_like(ids), labels, torch.arange(2), torch.zeros(2), torch.zeros(2), [None] * 2)
    norm = {t: (t / 5) ** 2 + ((2 * t + 1) / 10) ** 2 for t in range(10)}
    assert float(output_norm(model, batch).detach()) == pytest.approx((norm[5] + norm[6] + norm[8]) / 3)
    prompts = replace(batch, labels=None)
    assert float(output_norm(model, prompts).detach()) == pytest.approx((norm[7] + norm[9]) / 2)

    # Per example, d/d row t of the mean over its k tokens of ||row||^2 = 2 row / k, and only the rows it reads
    # have a gradient; the importance averages their absolute values over the four examples.
    importance = gradient_importance(model, [batch, prompts], output_norm, torch.abs)["table.weight"]
    rows = model.table.weight.detach()
    expected = torch.zeros(10, 2)
    for t, k in ((5, 2), (6, 2), (8, 1), (7, 1), (9, 1)):
        expected[t] += 2 * rows[t] / k / 4
    torch.testing.assert_close(importance, expected)


def test_fisher_is_normalised_to_mean_one():
    model = nn.Linear(2, 1)
    params = trainable_parameters(model)
    scaled = normalised({"weight": torch.tensor([[1.0, 5.0]]), "bias": torch.tensor([3.0])}, params,
                        ONE_PROCESS.strategy)
    assert torch.equal(scaled["weight"], torch.tensor([[1 / 3, 5 / 3]]))
    assert torch.equal(scaled["bias"], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="use kind='l2'"):
        normalised({"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}, params, ONE_PROCESS.strategy)


def test_penalty_gradient():
    theta, anchor = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])
    assert torch.equal(penalty_gradient(theta, anchor, 2.0), torch.tensor([-2.0, 2.0]))
    assert torch.equal(penalty_gradient(theta, anchor, 2.0, torch.tensor([0.5, 4.0])), torch.tensor([-1.0, 8.0]))


@pytest.mark.parametrize("arguments, message", [
    ({"kind": "si"}, "kind 'si' is unknown; choose one of ewc, l2, mas"),
    ({"strength": -1.0}, "strength must be a finite number >= 0, got -1.0"),
    ({"strength": float("nan")}, "strength must be a finite number >= 0"),
    ({"fisher_batches": 0}, "fisher_batches must be a positive integer, got 0"),
])
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        ParameterRegularizer(**arguments)


class StageSnapshots(Callback):
    """The trainable weights at the end of every stage."""

    def __init__(self):
        self.weights = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights.append({n: p.detach().clone() for n, p in trainable_parameters(pl_module.backbone).items()})


def two_task_run(out: Path, quick_cfg, *callbacks: Callback) -> StageSnapshots:
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [*quick_cfg, f"output_dir={out}", "tasks=[colour,count]", "steps_per_task=3",
                       "save_checkpoints=false", "eval.general=false", "data.eval_size=4", "eval.max_new_tokens=2"])
    snapshots = StageSnapshots()
    run(cfg, extra_callbacks=[*callbacks, snapshots])
    return snapshots


@pytest.mark.slow
def test_ewc_holds_the_second_task_to_the_first(tmp_path, quick_cfg, foundation_dir):
    free = two_task_run(tmp_path / "free", quick_cfg)
    ewc = ParameterRegularizer("ewc", strength=1e6, fisher_batches=2)
    held = two_task_run(tmp_path / "ewc", quick_cfg, ewc)

    rows = metric_rows(tmp_path / "ewc", "train/task")
    penalties = {task: [float(r["loss/ewc"]) for r in rows
                        if r["train/task"] == task and r.get("loss/ewc")] for task in ("1.0", "2.0")}
    assert penalties["1.0"] == []
    # The first step of task 2 is taken from the anchor itself; the steps after it have moved away.
    assert len(penalties["2.0"]) == 3 and penalties["2.0"][0] == 0 and min(penalties["2.0"][1:]) > 0

    # Task 1 trains the same with or without the regularizer; the anchor is its end.
    anchor = free.weights[0]
    assert all(torch.equal(held.weights[0][n], anchor[n]) and torch.equal(ewc.anchor[n], anchor[n]) for n in anchor)
    assert ewc.importance.keys() == anchor.keys()

    def weighted_distance(weights):  # sum F (theta - theta*)^2: what EWC keeps small
        return sum((ewc.importance[n] * (weights[n] - anchor[n]) ** 2).sum().item() for n in anchor)

    assert weighted_distance(held.weights[1]) < 0.3 * weighted_distance(free.weights[1])


@pytest.mark.slow
def test_mas_under_rft_weighs_by_the_first_tasks_output_sensitivity(tmp_path, quick_cfg, foundation_dir):
    """RFT's batches carry prompts only: MAS reads the next token's logits, so it needs no answers."""
    mas = ParameterRegularizer("mas", strength=1.0, fisher_batches=2)
    cfg = load_config(REPO / "configs" / "rft.yaml",
                      [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=2",
                       "data.batch_size=2", "rft.group_size=2", "rft.max_new_tokens=4", "save_checkpoints=false",
                       "eval.general=false", "data.eval_size=4", "eval.max_new_tokens=2"])
    run(cfg, extra_callbacks=[mas])
    total = sum(v.sum().item() for v in mas.importance.values())
    assert total / sum(v.numel() for v in mas.importance.values()) == pytest.approx(1.0, rel=1e-5)
    assert len({float(v.abs().max()) for v in mas.importance.values()}) > 1  # weighted, not uniform
    penalties = [r.get("loss/mas") for r in metric_rows(tmp_path, "train/task") if r["train/task"] == "2.0"]
    assert len(penalties) == 2 and float(penalties[0]) == 0 and float(penalties[1]) > 0


def _sharded_penalty_worker(rank: int, world: int, port: int, out_dir: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        def build() -> nn.Module:
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))

        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
        whole = build()
        anchor = {name: (p.detach() + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
                  for name, p in whole.named_parameters()}
        fisher = {name: torch.rand(p.shape, generator=torch.Generator().manual_seed(3))
                  for name, p in whole.named_parameters()}

        def reduce(tensor, reduce_op="sum"):
            dist.all_reduce(tensor)
            return tensor

        def train_step(model: nn.Module, regularizer: ParameterRegularizer) -> float:
            module = SimpleNamespace(backbone=model, trainer=SimpleNamespace(strategy=SimpleNamespace(reduce=reduce)))
            for share in (0.5, 0.5):  # two micro-batches of one optimizer step
                penalty, _ = regularizer.loss(TrainingStep(module, None, None, None, None, share))
                (model(x).square().mean() * share + penalty).backward()
            return float(penalty.detach())

        expected = ParameterRegularizer("ewc", strength=3.0)
        expected.load_state_dict({"kind": "ewc", "anchor": anchor, "importance": fisher})
        penalty = train_step(whole, expected)

        sharded = build()
        mesh = init_device_mesh("cpu", (world,))
        for layer in (sharded[0], sharded[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        names = dict(sharded.named_parameters())

        def shard(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # this process's rows of each
            return {n: DTensor.from_local(v.chunk(world)[rank], mesh, names[n].placements) for n, v in values.items()}

        regularizer = ParameterRegularizer("ewc", strength=3.0)
        # The anchor and the Fisher live as the parameters do: this process's shard of each.
        regularizer.load_state_dict({"kind": "ewc", "anchor": shard(anchor), "importance": shard(fisher)})
        assert train_step(sharded, regularizer) == pytest.approx(penalty, rel=1e-6)  # the whole penalty's share
        for name, param in names.items():
            expected_grad = dict(whole.named_parameters())[name].grad.chunk(world)[rank]
            torch.testing.assert_close(param.grad.to_local(), expected_grad, rtol=1e-6, atol=1e-7, msg=name)
        (out_dir / f"ok-{rank}").write_text("ok")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_penalty_gradient_is_the_same_on_sharded_parameters(tmp_path):
    """Under two-process FSDP2 each process's part of the penalty's gradient lands on its own shard, once, beside
    the loss's gradient (averaged over the processes): the gradient of the unsharded model, shard by shard."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_sharded_penalty_worker, args=(2, port, tmp_path), nprocs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok-0", "ok-1"]

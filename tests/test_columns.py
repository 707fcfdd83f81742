"""AlexNet §3.2 column parallelism on 2 (and 4) gloo processes equals the one-process model."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from convplat.training import columns
from convplat.training.models import create_model

CLASSES = 7  # odd: fc8's halves differ by one row
BATCH = 2


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    err = float((a - b).abs().max()) / scale
    assert err <= 1e-5, f"{what}: relative error {err:.2e} (max abs {scale:.3e})"


def _worker(rank: int, world: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    # float64: the test is about the algebra of the split, not float32 summation order (conv1's
    # bias gradient sums 18,000 cancelling terms; in float32 the two orders differ by ~1e-3).
    torch.set_default_dtype(torch.float64)
    full = create_model("alexnet", num_classes=CLASSES, dropout=0.0)
    reference = create_model("alexnet", num_classes=CLASSES, dropout=0.0)
    reference.load_state_dict(full.state_dict())
    grid = columns.make_grid(rank, world)
    model = columns.ColumnAlexNet(full, grid)
    del full
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(BATCH, 3, 224, 224, generator=generator), torch.arange(BATCH) % CLASSES)
        for _ in range(2 * grid.pairs)
    ]

    def sgd(params):
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    ref_opt, opt = sgd(reference.parameters()), sgd(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(3):
        # Data parallel across pairs: pair p reads batch p; the reference sees all of them.
        group = batches[(step % 2) * grid.pairs : (step % 2 + 1) * grid.pairs]
        images, labels = group[grid.pair]
        logits = model(images)
        loss_fn(logits, labels).backward()
        columns.average_gradients(model, grid)
        all_images = torch.cat([b[0] for b in group])
        all_labels = torch.cat([b[1] for b in group])
        ref_logits = reference(all_images)
        loss_fn(ref_logits, all_labels).backward()
        if step == 0:
            start = grid.pair * BATCH
            _close(logits.detach(), ref_logits.detach()[start : start + BATCH], "logits")
            for (name, p), ref in zip(
                model.named_parameters(), reference.parameters(), strict=True
            ):
                _close(columns.gather_rows(p.grad, grid), ref.grad, f"grad {name}")
        opt.step(), ref_opt.step()
        opt.zero_grad(), ref_opt.zero_grad()
    state = columns.full_state_dict(model)
    for name, ref in reference.state_dict().items():
        _close(state[name], ref, f"after 3 steps {name}")
    optimizer_state = columns.full_optimizer_state(opt, model)
    for index, ref in ref_opt.state_dict()["state"].items():
        _close(optimizer_state["state"][index]["momentum_buffer"], ref["momentum_buffer"], "mom")
    # Round trip: the rows of the full dicts load back into the column model.
    columns.load_full_state_dict(model, state)
    columns.load_full_optimizer_state(opt, model, optimizer_state)
    if rank == 0:
        plain = create_model("alexnet", num_classes=CLASSES)
        plain.load_state_dict(state)  # an ordinary alexnet state dict
        torch.save({"traffic": grid.traffic}, results)
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_columns_equal_the_single_process_model(tmp_path, world):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = str(tmp_path / "traffic.pt")
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), results), nprocs=world, join=True)
    traffic = torch.load(results, weights_only=True)["traffic"]
    # Forward: conv3's, fc6's, fc7's, fc8's inputs and the logits, the other column's half each.
    per_image = 128 * 13 * 13 + 128 * 6 * 6 + 2048 + 2048 + 4  # float64 elements (fc8 padded)
    assert traffic["forward"] == 3 * BATCH * per_image * 8


def test_odd_worker_count_is_refused():
    from convplat.errors import ConfigError

    with pytest.raises(ConfigError, match="even number"):
        columns.make_grid(0, 3)

"""AlexNet's two columns on two workers: the paper's own model parallelism (AlexNet §3.2).

"We spread the net across two GPUs ... the GPUs communicate only in certain layers": conv1,
conv2, conv4 and conv5 of a column read only that column's maps; conv3 and the fully connected
layers read both. Here rank ``c`` of a column pair holds column ``c``'s half of every layer
(the output rows of each weight), both ranks read the same batch, and activations cross between
the pair exactly at the inputs of conv3, fc6, fc7 and fc8; the logits are gathered so both ranks
compute the same loss. Autograd-aware gathers send the gradients back the same way.

With ``2 * P`` workers the ranks form a 2-D grid: ``P`` column pairs, data parallel across
pairs (each column's gradients are averaged over the ``P`` ranks holding that column).

A column-parallel model's :func:`full_state_dict` is an ordinary ``alexnet`` state dict, so
``create_model("alexnet")``, evaluation, transfer and visualisation load it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from convplat.training.models.layers import LocalResponseNorm

COLUMNS = 2  # AlexNet §3.2: two GTX 580s
# Indices in AlexNet.features / .classifier after which the columns exchange activations.
CONV3 = 8  # features[:8] per column -> gather -> conv3 (dense)
FC_LAYERS = (0, 3, 6)  # fc6, fc7, fc8: each reads both columns' previous outputs


@dataclass
class ColumnGrid:
    """Where a rank sits: ``column`` in its pair ``pair``; the process groups it talks over.

    ``traffic`` counts the bytes this rank's collectives sent (forward gathers, backward
    reductions, gradient averaging), for benchmarks/columns.py.
    """

    column: int
    pair: int
    pairs: int
    column_group: object = None  # the two ranks of this pair
    data_group: object = None  # the ranks that hold the same column (None: one pair)
    traffic: dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})

    @property
    def data_rank(self) -> int:
        """The rank that picks this worker's batch: both columns of a pair read the same."""
        return self.pair


def make_grid(rank: int, world_size: int) -> ColumnGrid:
    """Process groups for ``world_size`` ranks (even): pairs (2p, 2p+1), data groups by column.

    Every rank must call this, in the same order (``dist.new_group`` is collective).
    """
    from convplat.errors import ConfigError

    if world_size < COLUMNS or world_size % COLUMNS:
        raise ConfigError(
            f"--parallel columns: expected an even number of workers (2, 4, ...), got {world_size}"
        )
    pairs = world_size // COLUMNS
    grid = ColumnGrid(column=rank % COLUMNS, pair=rank // COLUMNS, pairs=pairs)
    for p in range(pairs):
        group = dist.new_group([COLUMNS * p + c for c in range(COLUMNS)])
        if p == grid.pair:
            grid.column_group = group
    if pairs > 1:
        for c in range(COLUMNS):
            group = dist.new_group([COLUMNS * p + c for p in range(pairs)])
            if c == grid.column:
                grid.data_group = group
    return grid


def split_sizes(n: int, parts: int = COLUMNS) -> list[int]:
    """Sizes of ``parts`` near-equal slices of ``n`` (the first ones one larger)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _rows(n: int, column: int) -> slice:
    sizes = split_sizes(n)
    start = sum(sizes[:column])
    return slice(start, start + sizes[column])


class _GatherColumns(torch.autograd.Function):
    """Forward: both columns' slices, concatenated along dim 1.

    Backward: each rank's downstream layers used the whole tensor, so this rank's slice gets
    the sum of both ranks' gradients. With ``replicated`` (the logits: both ranks compute the
    same loss from them) each rank already holds the full gradient of its slice, and summing
    would count it twice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: ColumnGrid, widths: tuple[int, ...], replicated):
        ctx.grid, ctx.widths, ctx.replicated = grid, widths, replicated
        return _all_gather(x, grid, widths, "forward")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grid, widths = ctx.grid, ctx.widths
        grad = grad.contiguous()
        if not ctx.replicated:
            dist.all_reduce(grad, group=grid.column_group)
            grid.traffic["backward"] += grad.numel() * grad.element_size()
        start = sum(widths[: grid.column])
        return grad.narrow(1, start, widths[grid.column]).contiguous(), None, None, None


def gather_columns(x: torch.Tensor, grid: ColumnGrid, widths, replicated: bool = False):
    """Autograd-aware all-gather of the pair's column slices (see :class:`_GatherColumns`)."""
    return _GatherColumns.apply(x, grid, tuple(widths), replicated)


def _all_gather(x: torch.Tensor, grid: ColumnGrid, widths: tuple[int, ...], kind: str):
    width = max(widths)
    pad = width - x.shape[1]
    padded = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, pad)) if pad else x
    padded = padded.contiguous()
    parts = [torch.empty_like(padded) for _ in widths]
    dist.all_gather(parts, padded, group=grid.column_group)
    grid.traffic[kind] += padded.numel() * padded.element_size() * (len(widths) - 1)
    return torch.cat([p.narrow(1, 0, w) for p, w in zip(parts, widths, strict=True)], dim=1)


def _column_conv(conv: nn.Conv2d, column: int, grouped: bool) -> nn.Conv2d:
    """Column ``column``'s output rows of ``conv``; a grouped (columns=2) conv reads only its
    own column's input maps, so its half is an ordinary dense conv over those maps."""
    rows = _rows(conv.out_channels, column)
    in_channels = conv.in_channels // COLUMNS if grouped else conv.in_channels
    part = nn.Conv2d(
        in_channels,
        rows.stop - rows.start,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        part.weight.copy_(conv.weight[rows])
        if conv.bias is not None:
            part.bias.copy_(conv.bias[rows])
    return part


def _column_linear(linear: nn.Linear, column: int) -> nn.Linear:
    rows = _rows(linear.out_features, column)
    part = nn.Linear(linear.in_features, rows.stop - rows.start, bias=linear.bias is not None)
    with torch.no_grad():
        part.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            part.bias.copy_(linear.bias[rows])
    return part


class ColumnAlexNet(nn.Module):
    """One column of the paper's AlexNet (``alexnet``, two columns) on one worker.

    ``features`` and ``classifier`` keep the full model's module indices, so parameter names
    match an ``alexnet`` state dict (with each weight's rows halved).
    """

    def __init__(self, full: nn.Module, grid: ColumnGrid) -> None:
        super().__init__()
        if getattr(full, "columns", None) != COLUMNS or len(full.features) != 15:
            raise ValueError("expected the paper's two-column alexnet")
        c = grid.column
        self.grid = grid
        self.input_size = full.input_size
        self.num_classes = full.num_classes
        grouped = {4: True, 10: True, 12: True, 0: False, CONV3: False}
        features: list[nn.Module] = []
        for i, module in enumerate(full.features):
            if isinstance(module, nn.Conv2d):
                features.append(_column_conv(module, c, grouped[i]))
            elif isinstance(module, LocalResponseNorm):  # within a column: N = 48 maps
                features.append(
                    LocalResponseNorm(module.size, module.alpha, module.beta, module.k, 1)
                )
            else:
                features.append(module)
        classifier = [
            _column_linear(m, c) if isinstance(m, nn.Linear) else m for m in full.classifier
        ]
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(*classifier)
        self._widths = {  # per-column widths at each crossing
            "conv3": tuple(split_sizes(full.features[4].out_channels)),
            "fc6": tuple(split_sizes(full.features[12].out_channels)),
            "fc7": tuple(split_sizes(full.classifier[0].out_features)),
            "fc8": tuple(split_sizes(full.classifier[3].out_features)),
            "logits": tuple(split_sizes(full.classifier[6].out_features)),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224), the same batch on both ranks -> the full logits (B, classes)."""
        w = self._widths
        x = self.features[:CONV3](images)  # (B, 128, 13, 13): this column's conv2 maps
        x = gather_columns(x, self.grid, w["conv3"])  # (B, 256, 13, 13)
        x = self.features[CONV3:](x)  # (B, 128, 6, 6): this column's conv5 maps
        x = gather_columns(x, self.grid, w["fc6"])  # (B, 256, 6, 6)
        x = torch.flatten(x, 1)  # (B, 9216) in the full model's order
        x = self.classifier[0:3](x)  # fc6 half, ReLU, dropout (B, 2048)
        x = gather_columns(x, self.grid, w["fc7"])
        x = self.classifier[3:6](x)  # fc7 half (B, 2048)
        x = gather_columns(x, self.grid, w["fc8"])
        x = self.classifier[6](x)  # fc8 half (B, classes / 2)
        return gather_columns(x, self.grid, w["logits"], replicated=True)


def average_gradients(model: nn.Module, grid: ColumnGrid) -> None:
    """Data parallelism across pairs: mean of each column's gradients over its ``P`` ranks
    (one flat all-reduce, like a DDP bucket)."""
    if grid.pairs == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=grid.data_group)
    grid.traffic["backward"] += flat.numel() * flat.element_size()
    flat /= grid.pairs
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_rows(tensor: torch.Tensor, grid: ColumnGrid) -> torch.Tensor:
    """Both columns' row slices of one parameter (or optimizer buffer), concatenated (dim 0)."""
    sizes = [torch.tensor(tensor.shape[0]) for _ in range(COLUMNS)]
    dist.all_gather(sizes, torch.tensor(tensor.shape[0]), group=grid.column_group)
    width = int(max(sizes))
    pad = width - tensor.shape[0]
    padded = torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))]) if pad else tensor
    parts = [torch.empty_like(padded) for _ in range(COLUMNS)]
    dist.all_gather(parts, padded.contiguous(), group=grid.column_group)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes, strict=True)])


def full_state_dict(model: ColumnAlexNet) -> dict[str, torch.Tensor]:
    """The ordinary ``alexnet`` state dict of a column-parallel model (collective: both ranks
    of the pair call it; every rank gets the whole dict)."""
    return {
        name: gather_rows(tensor.detach(), model.grid)
        for name, tensor in model.state_dict().items()
    }


def load_full_state_dict(model: ColumnAlexNet, state: dict[str, torch.Tensor]) -> None:
    """Load this rank's rows of an ordinary ``alexnet`` state dict."""
    own = {}
    for name, tensor in model.state_dict().items():
        rows = _rows(state[name].shape[0], model.grid.column)
        own[name] = state[name][rows]
        if own[name].shape != tensor.shape:
            raise ValueError(
                f"{name}: expected {tuple(tensor.shape)}, got {tuple(own[name].shape)}"
            )
    model.load_state_dict(own)


def full_optimizer_state(optimizer: torch.optim.Optimizer, model: ColumnAlexNet) -> dict:
    """The optimizer's state dict as the full model's would be: per-parameter buffers
    (momentum, Adam moments) gathered by rows; SGD and Adam are elementwise, so the halves of
    the single-process buffers are exactly these."""
    state = optimizer.state_dict()
    params = dict(enumerate(model.parameters()))
    full_state = {}
    for index, buffers in state["state"].items():
        shape = params[index].shape
        full_state[index] = {
            k: gather_rows(v, model.grid) if torch.is_tensor(v) and v.shape == shape else v
            for k, v in buffers.items()
        }
    return {"state": full_state, "param_groups": state["param_groups"]}


def load_full_optimizer_state(
    optimizer: torch.optim.Optimizer, model: ColumnAlexNet, state: dict
) -> None:
    """Load this rank's rows of a full model's optimizer state dict."""
    params = dict(enumerate(model.parameters()))
    own = {}
    for index, buffers in state["state"].items():
        p = params[int(index)]
        own[int(index)] = {
            k: v[_rows(v.shape[0], model.grid.column)]
            if torch.is_tensor(v) and v.dim() == p.dim() and v.shape[1:] == p.shape[1:]
            else v
            for k, v in buffers.items()
        }
    optimizer.load_state_dict({"state": own, "param_groups": state["param_groups"]})


class _State:
    """A stand-in for a module or optimizer in checkpoint code: ``state_dict()`` returns the
    full model's dict, ``load_state_dict(d)`` loads this rank's rows of one."""

    def __init__(self, state: dict | None = None, load=None) -> None:
        self._state, self._load = state, load

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        self._load(state)


class ColumnTraining:
    """What a column-parallel Ray Train worker does differently from a DDP one: it holds one
    column, reads its pair's batch, averages gradients over pairs, and checkpoints the
    ordinary ``alexnet`` state (gathered), so resume and every reader of runs work unchanged.
    """

    def __init__(self, full: nn.Module, rank: int, world_size: int, device) -> None:
        self.grid = make_grid(rank, world_size)
        self.model = ColumnAlexNet(full, self.grid).to(device)

    @property
    def data_rank(self) -> int:
        return self.grid.pair

    @property
    def data_world_size(self) -> int:
        return self.grid.pairs

    @property
    def group(self):
        """Where per-batch sums are reduced (None with one pair: nothing to reduce)."""
        return self.grid.data_group

    @property
    def distributed(self) -> bool:
        return self.grid.pairs > 1

    def before_step(self) -> None:
        average_gradients(self.model, self.grid)

    def snapshot(self, optimizer: torch.optim.Optimizer) -> tuple[_State, _State]:
        """The full model's and optimizer's state (collective: every rank calls it)."""
        return (
            _State(full_state_dict(self.model)),
            _State(full_optimizer_state(optimizer, self.model)),
        )

    def loaders(self, optimizer: torch.optim.Optimizer) -> tuple[_State, _State]:
        """Targets a full checkpoint loads into: this rank's rows of it."""
        return (
            _State(load=lambda state: load_full_state_dict(self.model, state)),
            _State(load=lambda state: load_full_optimizer_state(optimizer, self.model, state)),
        )

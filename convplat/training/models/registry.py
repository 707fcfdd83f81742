"""The model registry: builder name -> builder, plus the facts `convplat models` prints."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from convplat.errors import ConfigError, UnknownModelError
from convplat.training.models.base import ConvNet

Builder = Callable[..., ConvNet]
B = TypeVar("B", bound=Builder)

_BUILDERS: dict[str, Builder] = {}


def _canonical(name: str) -> str:
    """``overfeat-fast`` and ``OverFeat_Fast`` both mean ``overfeat_fast``."""
    return name.strip().lower().replace("-", "_")


def register_model(fn: B | None = None, *, name: str | None = None) -> B | Callable[[B], B]:
    """Decorator adding a builder under its function name (or ``name``); refuses duplicates.

    Use as ``@register_model`` or ``@register_model(name="alexnet")``.
    """

    def add(builder: B) -> B:
        key = _canonical(name or builder.__name__)
        if key in _BUILDERS:
            raise ValueError(f"model {key!r} is already registered")
        _BUILDERS[key] = builder
        return builder

    return add(fn) if fn is not None else add


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def _builder(name: str) -> tuple[str, Builder]:
    key = _canonical(name)
    if key not in _BUILDERS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of {list_models()}")
    return key, _BUILDERS[key]


def create_model(name: str, num_classes: int = 1000, **kw) -> ConvNet:
    """Build a registered model, freshly initialised as its paper says.

    Args:
        name: a name from ``list_models()``; hyphens and underscores are interchangeable.
        num_classes: size of the output layer.
        **kw: passed to the builder (e.g. ``dropout``).

    Raises:
        UnknownModelError: the name is not registered (the message lists the choices).
        ConfigError: num_classes is not a positive integer.
    """
    _, builder = _builder(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"expected num_classes >= 1, got {num_classes!r}")
    return builder(num_classes=num_classes, **kw)


@functools.cache
def input_size(name: str) -> int:
    """The side of the square crops ``name`` trains on, from a build on the meta device (no
    weights allocated), so a command can check its shards before it starts a cluster."""
    with torch.device("meta"):
        return create_model(name, num_classes=1).input_size


def count_macs(model: nn.Module, images: torch.Tensor) -> int:
    """Multiply-adds per image of every Conv2d and Linear in one forward pass (via hooks)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def model_info(name: str) -> dict:
    """Name, paper, input size, parameters and MACs (1000 classes, one input_size image).

    Computed on the meta device: shapes only, no memory for weights, nothing hard-coded.
    """
    key, _ = _builder(name)
    return dict(_info(key))


@functools.cache
def _info(key: str) -> dict:
    with torch.device("meta"):
        model = _BUILDERS[key](num_classes=1000)
        images = torch.empty(1, 3, model.input_size, model.input_size)
    return {
        "name": key,
        "paper": model.paper,
        "input_size": model.input_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model.eval(), images),
    }


def describe_models() -> list[dict]:
    """``model_info`` for every registered model, in ``list_models()`` order."""
    return [model_info(n) for n in list_models()]

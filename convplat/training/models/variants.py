"""ZFNet Table 3's architecture ablations, as builder options and as registered names.

The AlexNet and ZFNet builders take three options, so every variant is the same code as the
published net (same layer order, same init rule, same state-dict names where layers remain):

- ``remove``: layers to drop, any of 3, 4 (conv3, conv4) and 6, 7 (fc6, fc7). The layer after
  a removed one takes its input (conv5 reads conv2's maps; fc8 reads fc6 or the pooled conv5).
- ``fc_units``: width of fc6 and fc7 (4096 in the papers; Table 3 tries 2048 and 8192).
- ``maps``: maps of conv3, conv4, conv5 ((384, 384, 256); ZFNet's "(b)" is (512, 1024, 512)).

``VARIANTS`` names the Table 3 rows; ``register_variants`` adds ``<family>_<suffix>`` for both
families (``zfnet_no34``, ``alexnet_b``, ...), which ``convplat train`` and ``config.json``
use like any other model name. Hyphens work too (``zfnet-no34``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from convplat.errors import ConfigError

PAPER_MAPS = (384, 384, 256)  # conv3, conv4, conv5 of AlexNet and ZFNet
PAPER_FC_UNITS = 4096
WIDE_MAPS = (512, 1024, 512)  # ZFNet Table 2/3 "(b)"
REMOVABLE = (3, 4, 6, 7)


@dataclass(frozen=True)
class Variant:
    """One Table 3 row: the builder options and the row's wording."""

    options: dict
    row: str


# suffix -> variant; the same suffixes exist for alexnet_* and zfnet_*.
VARIANTS: dict[str, Variant] = {
    "no34": Variant({"remove": (3, 4)}, "removed layers 3,4"),
    "no7": Variant({"remove": (7,)}, "removed layer 7"),
    "no67": Variant({"remove": (6, 7)}, "removed layers 6,7"),
    "no3467": Variant({"remove": (3, 4, 6, 7)}, "removed layers 3,4,6,7"),
    "fc2048": Variant({"fc_units": 2048}, "layers 6,7: 2048 units"),
    "fc8192": Variant({"fc_units": 8192}, "layers 6,7: 8192 units"),
    "b": Variant({"maps": WIDE_MAPS}, "(b) layers 3,4,5: 512,1024,512 maps"),
    "b_fc8192": Variant(
        {"maps": WIDE_MAPS, "fc_units": 8192},
        "layers 6,7: 8192 units and layers 3,4,5: 512,1024,512 maps",
    ),
}


@dataclass(frozen=True)
class Ablation:
    """Validated builder options, and the names and widths of the layers that remain."""

    remove: tuple[int, ...] = ()
    maps: tuple[int, int, int] = PAPER_MAPS
    fc_units: int = PAPER_FC_UNITS

    def __post_init__(self) -> None:
        remove = tuple(sorted({int(n) for n in self.remove}))
        if any(n not in REMOVABLE for n in remove):
            raise ConfigError(f"remove: expected layers from {REMOVABLE}, got {self.remove}")
        maps = tuple(int(m) for m in self.maps)
        if len(maps) != 3 or min(maps) < 1:
            raise ConfigError(f"maps: expected three positive widths (conv3-5), got {self.maps}")
        if int(self.fc_units) < 1:
            raise ConfigError(f"fc_units: expected >= 1, got {self.fc_units}")
        object.__setattr__(self, "remove", remove)
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "fc_units", int(self.fc_units))

    @property
    def convs(self) -> list[tuple[int, int]]:
        """(layer number, maps) of the kept conv3..conv5."""
        return [(n, m) for n, m in zip((3, 4, 5), self.maps, strict=True) if n not in self.remove]

    @property
    def hidden(self) -> list[int]:
        """Widths of the kept fc6/fc7."""
        return [self.fc_units for n in (6, 7) if n not in self.remove]

    def layer_names(self) -> list[str]:
        """conv1, conv2, the kept conv3-5, the kept fc6/fc7, fc8: paper numbering kept."""
        names = ["conv1", "conv2"] + [f"conv{n}" for n, _ in self.convs]
        return names + [f"fc{n}" for n in (6, 7) if n not in self.remove] + ["fc8"]

    def describe(self) -> str:
        """'' for the published net, else e.g. '; without layers 3,4; fc6/7 2048 units'."""
        parts = []
        if self.remove:
            word = "layer" if len(self.remove) == 1 else "layers"
            parts.append(f"without {word} {','.join(map(str, self.remove))}")
        if self.maps != PAPER_MAPS:
            parts.append(f"layers 3,4,5: {','.join(map(str, self.maps))} maps")
        if self.fc_units != PAPER_FC_UNITS and self.hidden:
            parts.append(f"layers 6,7: {self.fc_units} units")
        return "".join(f"; {p}" for p in parts)


def ablation(
    remove: Sequence[int] = (), maps: Sequence[int] = PAPER_MAPS, fc_units: int = PAPER_FC_UNITS
) -> Ablation:
    return Ablation(tuple(remove), tuple(maps), fc_units)  # type: ignore[arg-type]


def register_variants(family: str, build: Callable) -> None:
    """Register ``<family>_<suffix>`` for every Table 3 variant, built by ``build(**options)``."""
    from convplat.training.models.registry import register_model

    for suffix, variant in VARIANTS.items():

        def builder(num_classes: int = 1000, _options: dict = variant.options, **kw):
            return build(num_classes=num_classes, **{**_options, **kw})

        builder.__doc__ = f"{family} with ZFNet Table 3's {variant.row}."
        register_model(builder, name=f"{family}_{suffix}")


def variant_names(family: str | None = None) -> list[str]:
    """Registered ablation names, for one family or both."""
    families = (family,) if family else ("alexnet", "zfnet")
    return [f"{f}_{s}" for f in families for s in VARIANTS]


# ZFNet Table 3 (PAPERS.md §2.5), error % (train top-1, val top-1, val top-5), by our names.
# The first block ablates ZFNet's replication of Krizhevsky's net, the second its Fig. 3 model.
PAPER_TABLE3: dict[str, tuple[float, float, float]] = {
    "alexnet": (35.1, 40.5, 18.1),
    "alexnet_no34": (41.8, 45.4, 22.1),
    "alexnet_no7": (27.4, 40.0, 18.4),
    "alexnet_no67": (27.4, 44.8, 22.4),
    "alexnet_no3467": (71.1, 71.3, 50.1),
    "alexnet_fc2048": (40.3, 41.7, 18.8),
    "alexnet_fc8192": (26.8, 40.0, 18.1),
    "zfnet": (33.1, 38.4, 16.5),
    "zfnet_fc2048": (38.2, 40.2, 17.6),
    "zfnet_fc8192": (22.0, 38.8, 17.0),
    "zfnet_b": (18.8, 37.5, 16.0),
    "zfnet_b_fc8192": (10.0, 38.3, 16.9),
}


def table3_row(name: str) -> str:
    """The Table 3 wording for a model name ('' when the model is not a Table 3 row)."""
    key = name.strip().lower().replace("-", "_")
    if key == "alexnet":
        return "replication of Krizhevsky et al., 1 convnet"
    if key == "zfnet":
        return "our model (Fig. 3)"
    family, _, suffix = key.partition("_")
    variant = VARIANTS.get(suffix) if family in ("alexnet", "zfnet") else None
    return variant.row if variant else ""

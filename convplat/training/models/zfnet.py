"""ZFNet (Zeiler & Fergus, ECCV 2014), the Fig. 3 model, and its filter-RMS renormalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from convplat.training.models.base import ConvNet, fc_classifier, init_normal
from convplat.training.models.layers import LocalResponseNorm
from convplat.training.models.registry import register_model
from convplat.training.models.variants import (
    PAPER_FC_UNITS,
    PAPER_MAPS,
    ablation,
    register_variants,
)


class ZFNet(ConvNet):
    """The Fig. 3 network of Zeiler & Fergus (§3, §5.1), 224x224 input, one dense column.

    conv1 96 7x7/2 -> ReLU -> max-pool 3/2 -> contrast norm -> conv2 256 5x5/2 -> ReLU ->
    pool -> contrast norm -> conv3 384, conv4 384, conv5 256 (3x3, dense) -> ReLU -> pool ->
    fc6 4096 -> fc7 4096 -> fc8; dropout 0.5 on layers 6 and 7 (§3).

    Assumptions where the paper is silent (PAPERS.md §2.1, UNCONFIRMED):
    - padding: conv1 1, conv2 0, and ceil-mode pooling, the only reading that gives the
      figure's 110 -> 55 -> 26 -> 13 -> 6 maps (floor pooling gives 54/25/12/5);
    - "contrast normalized across feature maps" is AlexNet's LRN with its constants
      (k=2, n=5, α=1e-4, β=0.75), placed after the pool as in the Fig. 3 caption;
    - "all weights are initialized to 10⁻²" is read as N(0, 0.01); biases 0.
    Training should call ``renormalize_filters(model, model.renormalize_radius)`` after every
    optimizer step (§3; the paper does not say when).

    Maps: 224 -> conv1 110 -> pool 55 -> conv2 26 -> pool 13 -> conv3-5 13 -> pool 6.
    Parameters (1000 classes): 62,357,608; ZFNet "(b)" (layers 3,4,5 at 512,1024,512 maps,
    ``maps=(512, 1024, 512)``, registered as ``zfnet_b``): 107,627,624. ``remove``, ``maps``
    and ``fc_units`` build Table 3's ablations (``variants.py``).
    """

    renormalize_radius = 0.1  # §3: "a fixed radius of 10⁻¹"

    def __init__(
        self,
        num_classes: int = 1000,
        dropout: float = 0.5,
        *,
        remove: Sequence[int] = (),
        maps: Sequence[int] = PAPER_MAPS,
        fc_units: int = PAPER_FC_UNITS,
    ) -> None:
        ab = ablation(remove, maps, fc_units)  # Table 3 options (variants.py)
        layers: list[nn.Module] = [
            nn.Conv2d(3, 96, 7, stride=2, padding=1),  # 0 conv1  (B, 96, 110, 110)
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 2, ceil_mode=True),  # 2  (B, 96, 55, 55)
            LocalResponseNorm(5, 1e-4, 0.75, 2.0),
            nn.Conv2d(96, 256, 5, stride=2),  # 4 conv2  (B, 256, 26, 26)
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 2, ceil_mode=True),  # 6  (B, 256, 13, 13)
            LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        ]
        width = 256
        for _, out in ab.convs:  # 8 conv3, 10 conv4, 12 conv5, dense  (B, maps, 13, 13)
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(inplace=False)]
            width = out
        layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))  # 14  (B, 256, 6, 6)
        features = nn.Sequential(*layers)
        classifier = fc_classifier(width * 6 * 6, num_classes, dropout, ab.hidden)  # (B, C)
        super().__init__(
            features,
            classifier,
            input_size=224,
            feature_size=6,
            num_classes=num_classes,
            layer_names=ab.layer_names(),
        )
        self.paper = f"Zeiler & Fergus 2014, Fig. 3, §3{ab.describe()}"
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                init_normal(layer, bias=0.0)


@register_model
def zfnet(num_classes: int = 1000, **kw) -> ZFNet:
    """ZFNet as in Fig. 3 (dense layers 3-5): 62,357,608 parameters."""
    return ZFNet(num_classes, **kw)


register_variants("zfnet", ZFNet)  # zfnet_no34, zfnet_b, ... (Table 3)


@torch.no_grad()
def renormalize_filters(model: nn.Module, radius: float = 0.1) -> int:
    """ZFNet §3: rescale every conv filter whose RMS exceeds ``radius`` to RMS = ``radius``.

    A filter is one output channel of an ``nn.Conv2d`` (RMS over its in·kh·kw weights).
    Filters within the radius (to float32 rounding, 1e-6 relative) are left bit-identical.
    Works through wrappers (DDP, torch.compile) since it walks ``model.modules()``.

    Returns:
        The number of filters that were rescaled.
    """
    counts = []
    for layer in model.modules():
        if not isinstance(layer, nn.Conv2d):
            continue
        w = layer.weight
        rms = w.detach().float().pow(2).mean(dim=(1, 2, 3)).sqrt()  # (out,)
        # A filter rescaled earlier can read a few ulp above radius; leave it (idempotent).
        over = rms > radius * (1 + 1e-6)
        scale = torch.where(over, radius / rms, torch.ones_like(rms)).to(w.dtype)
        w.mul_(scale.view(-1, 1, 1, 1))  # × 1.0 leaves the others exactly as they were
        counts.append(over.sum())
    # one device sync for the whole model, not one per layer
    return int(torch.stack(counts).sum()) if counts else 0

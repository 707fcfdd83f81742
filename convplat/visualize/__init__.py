"""Visualising trained convnets (Zeiler & Fergus 2014): deconvnet projections, top-9
activations, occlusion sensitivity, first-layer filters and feature evolution."""

from convplat.visualize.deconv import deconv_project, forward_with_switches, project_down
from convplat.visualize.occlusion import occlusion
from convplat.visualize.plots import (
    deconv_figure,
    evolution_figure,
    filter_grid,
    filters_png,
    occlusion_png,
)
from convplat.visualize.top import Activation, receptive_field, top_activations

__all__ = [
    "Activation",
    "deconv_figure",
    "deconv_project",
    "evolution_figure",
    "filter_grid",
    "filters_png",
    "forward_with_switches",
    "occlusion",
    "occlusion_png",
    "project_down",
    "receptive_field",
    "top_activations",
]

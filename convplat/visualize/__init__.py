"""Visualising trained convnets (Zeiler & Fergus 2014): deconvnet projections, top-9
activations (streamed, or fanned out over Ray tasks), occlusion sensitivity (incremental by
default), first-layer filters, feature evolution and the correspondence measure."""

from convplat.visualize.correspondence import correspondence
from convplat.visualize.deconv import deconv_project, forward_with_switches, project_down
from convplat.visualize.occlusion import occlusion
from convplat.visualize.plots import (
    deconv_figure,
    evolution_figure,
    filter_grid,
    filters_png,
    occlusion_png,
)
from convplat.visualize.search import search_shards
from convplat.visualize.top import Activation, receptive_field, top_activations

__all__ = [
    "Activation",
    "correspondence",
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
    "search_shards",
    "top_activations",
]

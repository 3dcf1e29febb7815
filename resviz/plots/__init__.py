"""Figures from the tidy tables: pure functions `(frame, **options) -> go.Figure`; no I/O, no display.

Every figure colours a run the same way (`style.run_color`: plain nets warm, ResNets cool, darker when deeper),
names the layer in its hover text, and picks a training step (default: each run's last). A selection
with no rows raises ValueError naming what is present, which the dashboard shows as its message.

    words       every title, axis title and caption, from the metric table and the recorded run metadata
    style       colours readable on white, marker symbols, legend labels, hover, the shared layout
    selection   runs and their metadata (`run_meta`), a metric's rows, steps, per-run depth profiles
    depth       figures against depth: profiles, Fig. 7, gradient flow, branch vs skip, heatmap, per channel
    training    figures of the training log: error curves (Fig. 6), final error against depth
    standard    the report's figure set
    series      the table pivoted into per-(run, metric) (steps, layers) arrays: the dashboard's and the
                report explorer's data
    invariance, norms, lesion, shattered, shattered_1d, signal, bn_check
                one file per lab experiment; each draws the frame its analysis returns and never imports it

`resviz.plots` hands on the figure functions; the helpers they share stay in their modules.
"""
from __future__ import annotations

from resviz.plots.bn_check import plot_bn_check
from resviz.plots.depth import (
    plot_branch_skip,
    plot_channel_std,
    plot_gradient_flow,
    plot_heatmap,
    plot_profile,
    plot_response_std,
    plot_signal_propagation,
    profile_figure,
)
from resviz.plots.invariance import plot_batch_dependence, plot_invariance_grid
from resviz.plots.lesion import plot_lesion
from resviz.plots.norms import plot_final_error_by_norm, plot_norm_comparison
from resviz.plots.shattered import plot_autocorrelation, plot_gradient_correlation, plot_shattering
from resviz.plots.shattered_1d import plot_shattering_1d
from resviz.plots.signal import plot_branch_scales, plot_signal_propagation_init
from resviz.plots.standard import standard_figures
from resviz.plots.training import plot_error_vs_depth, plot_training_curves

__all__ = [
    "plot_autocorrelation", "plot_batch_dependence", "plot_bn_check", "plot_branch_scales", "plot_branch_skip",
    "plot_channel_std", "plot_error_vs_depth", "plot_final_error_by_norm", "plot_gradient_correlation",
    "plot_gradient_flow", "plot_heatmap", "plot_invariance_grid", "plot_lesion", "plot_norm_comparison",
    "plot_profile", "plot_response_std", "plot_shattering", "plot_shattering_1d", "plot_signal_propagation",
    "plot_signal_propagation_init", "plot_training_curves", "profile_figure", "standard_figures",
]

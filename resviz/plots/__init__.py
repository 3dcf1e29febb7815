"""Figures from the tidy tables: pure functions `(frame, **options) -> go.Figure`; no I/O, no display.

Every figure colours a run the same way (`run_color`: plain nets warm, ResNets cool, darker when deeper),
names the layer in its hover text, and picks a training step (default: each run's last). A selection
with no rows raises ValueError naming what is present, which the dashboard shows as its message.

    style       colours, labels, per-metric titles (from schema.METRIC_TABLE), hover, the shared layout
    selection   runs and their metadata (`run_meta`), a metric's rows, steps, per-run depth profiles
    depth       figures against depth: profiles, Fig. 7, gradient flow, branch vs skip, heatmap, per channel
    training    figures of the training log: error curves (Fig. 6), final error against depth
    standard    the report's figure set
    invariance, norms, lesion, shattered, signal, bn_check
                one file per lab experiment; each draws the frame its analysis returns and never imports it
"""
from __future__ import annotations

from types import MappingProxyType

from resviz.plots.bn_check import plot_bn_check
from resviz.plots.depth import (
    heatmap_range,
    plot_branch_skip,
    plot_channel_std,
    plot_gradient_flow,
    plot_heatmap,
    plot_profile,
    plot_response_std,
    plot_signal_propagation,
    profile_axes,
    profile_figure,
    profile_traces,
)
from resviz.plots.invariance import default_batch_size, plot_batch_dependence, plot_invariance_grid
from resviz.plots.lesion import plot_lesion
from resviz.plots.norms import plot_final_error_by_norm, plot_norm_comparison
from resviz.plots.selection import (
    RUN_COLUMNS,
    Profile,
    Run,
    by_run,
    metric_rows,
    pick_step,
    pooled,
    require_columns,
    profiles,
    run_key,
    run_meta,
    runs_of,
    sorted_view,
    split_parts,
)
from resviz.plots.shattered_1d import plot_shattering_1d
from resviz.plots.shattered import plot_autocorrelation, plot_gradient_correlation, plot_shattering
from resviz.plots.signal import plot_branch_scales, plot_signal_propagation_init
from resviz.plots import words
from resviz.plots.standard import standard_figures
from resviz.plots.style import (
    DASHES,
    NORM_COLORS,
    STEP_AXIS,
    VARIANT_COLORS,
    WIDGET_HOVER,
    arch_name,
    arch_rank,
    axis_title,
    base_layout,
    customdata,
    figure_title,
    hover,
    label_color,
    run_color,
    run_label,
    short_run_names,
    short_title,
)
from resviz.plots.training import PAPER_ERRORS, final_errors, plot_error_vs_depth, plot_training_curves
from resviz.schema import LOG_METRICS, METRIC_TABLE

# Read-only views of the metric table under the names plots had before the table existed.
AXIS_TITLES = MappingProxyType({name: m.axis_title for name, m in METRIC_TABLE.items()})
TITLES = MappingProxyType({name: m.title for name, m in METRIC_TABLE.items()})
SHORT_TITLES = MappingProxyType({name: m.short_title for name, m in METRIC_TABLE.items()})

__all__ = [
    "plot_shattering_1d",
    "AXIS_TITLES", "DASHES", "LOG_METRICS", "NORM_COLORS", "RUN_COLUMNS", "SHORT_TITLES",
    "STEP_AXIS", "TITLES", "VARIANT_COLORS", "WIDGET_HOVER", "arch_name", "arch_rank", "axis_title",
    "PAPER_ERRORS", "base_layout", "by_run", "heatmap_range", "customdata", "default_batch_size", "figure_title", "final_errors", "hover",
    "label_color", "metric_rows", "pick_step", "plot_autocorrelation", "plot_batch_dependence", "plot_bn_check",
    "plot_branch_scales", "plot_branch_skip", "plot_channel_std", "plot_error_vs_depth",
    "plot_final_error_by_norm", "plot_gradient_correlation", "plot_gradient_flow", "plot_heatmap",
    "plot_invariance_grid", "plot_lesion", "plot_norm_comparison", "plot_profile", "plot_response_std",
    "plot_shattering", "plot_signal_propagation", "plot_signal_propagation_init", "plot_training_curves",
    "pooled", "Profile", "profile_axes", "profile_figure", "profile_traces", "profiles", "require_columns",
    "Run", "run_color", "run_key", "run_label", "run_meta", "runs_of", "short_run_names", "short_title",
    "sorted_view", "split_parts", "standard_figures", "words",
]

"""Plots a person would rather look at than read: training curves, search curves, comparisons,
architectures, ranking quality. One module per figure; ``style`` holds what they share."""

from .comparison import plot_comparison
from .search import plot_search_curves
from .training import plot_training_curves

__all__ = ["plot_comparison", "plot_search_curves", "plot_training_curves"]

"""Plots a person would rather look at than read: training curves, search curves, comparisons,
architectures, ranking quality. One module per figure; ``style`` holds what they share."""

from .archs import plot_architectures
from .comparison import plot_comparison
from .detections import plot_detections
from .ranking import plot_ranking
from .search import plot_search_curves
from .training import plot_training_curves

__all__ = ["plot_architectures", "plot_comparison", "plot_detections", "plot_ranking", "plot_search_curves", "plot_training_curves"]

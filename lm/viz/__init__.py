"""Visualisations: attention heatmaps, metric plots (PNG) and markdown tables of predictions."""

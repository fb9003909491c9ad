"""Evaluation metrics: classification (scikit-learn), Jigsaw unintended bias, language modelling."""

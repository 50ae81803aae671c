"""Drivers: the code that drives stages, one run after another: pipelines, cross-validation,
hyper-parameter search, and the demo."""

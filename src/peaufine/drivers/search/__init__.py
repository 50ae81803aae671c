"""Hyper-parameter search over a recipe: the space file, the objective, the Optuna study, the trial
loop, what a search leaves in its folder, and `run.run_search` (each trial a run of the recipe)."""

"""Reports made from a run directory: the HTML toolkit and pages, plots, and the terminal tables."""

"""Reports: plots and pages made from a run directory."""

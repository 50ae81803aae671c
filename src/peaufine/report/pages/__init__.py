"""Report pages: one module per kind of folder (a stage run, a search, a cross-validation, a
pipeline), built from report/toolkit.py; pages/write.py picks the page a folder gets."""

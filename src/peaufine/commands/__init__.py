"""The bodies of the commands that are not stages: they read run folders and models, train nothing.
(eval, params, score, generate, merge)."""

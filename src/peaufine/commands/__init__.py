"""The bodies of the commands that are not stages (eval, generate, merge, score): they read run folders
and models, and train nothing; `peaufine params` is models/budget.describe_budget_with_adapter."""

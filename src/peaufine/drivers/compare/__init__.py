"""`peaufine compare`: one task adapted by several strategies (arms) under the same budget, measured
side by side on the same validation data: task metric, overfitting, forgetting, transfer, cost, data."""

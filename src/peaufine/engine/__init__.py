"""The one training engine: loop, optimiser and schedules, checkpoints, tracking."""

"""Background jobs and their progress."""

"""The commands that are not a Trainer method: summary, compare, status, trial."""

"""What the tests share: the CLI runner, readers of offline W&B runs, and a real single-node SLURM cluster."""

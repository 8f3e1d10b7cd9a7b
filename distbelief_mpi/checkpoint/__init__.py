"""Parameter files and committed checkpoints."""

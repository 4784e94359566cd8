"""Training, evaluation and the entwined prune / fine-tune schedule."""

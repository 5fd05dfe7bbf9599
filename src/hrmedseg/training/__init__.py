"""Training: losses, recipes and the training loop."""

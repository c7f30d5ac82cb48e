"""Foreign architectures (none of them a built-in family), their per-model training loop and their store."""

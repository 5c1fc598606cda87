"""Training: slice datasets, prompt simulation, base training (and later distillation and adapters)."""

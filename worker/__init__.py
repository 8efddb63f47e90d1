"""The model-pinned worker: loads one model once, pulls that model's jobs, streams tokens."""

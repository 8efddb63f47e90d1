"""What the API and the workers both import: the job and event schemas, settings, key names."""

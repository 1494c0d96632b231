"""models: see docs/models.md."""

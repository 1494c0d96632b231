"""link: see docs/architecture.md."""

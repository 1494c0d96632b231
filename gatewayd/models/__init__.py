"""models: see DESIGN.md §3."""

"""bench: see DESIGN.md §3."""

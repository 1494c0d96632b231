"""store: see DESIGN.md §3."""

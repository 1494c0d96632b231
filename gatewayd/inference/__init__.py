"""inference: see DESIGN.md §3."""

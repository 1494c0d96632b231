"""rules: see DESIGN.md §3."""

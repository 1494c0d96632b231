"""publish: see DESIGN.md §3."""

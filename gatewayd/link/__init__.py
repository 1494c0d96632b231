"""link: see DESIGN.md §3."""

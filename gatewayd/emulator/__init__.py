"""emulator: see DESIGN.md §3."""

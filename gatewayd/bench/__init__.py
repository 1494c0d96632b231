"""bench: see DESIGN.md §3 and §10. ``models``: `gatewayd bench models` (gatewayd.bench.models)."""

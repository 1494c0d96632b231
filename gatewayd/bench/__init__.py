"""bench: see docs/benchmarks.md. ``models``: `gatewayd bench models` (gatewayd.bench.models);
``pipeline``: `gatewayd bench pipeline`, the whole pipeline per window beside the bare model
(gatewayd.bench.pipeline, docs/benchmarks.md)."""

"""Audio: G.711 coding, resampling, and the per-leg reorder/gap-fill/reframe pipeline."""

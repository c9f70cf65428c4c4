"""Getting events out: signing, webhook delivery."""

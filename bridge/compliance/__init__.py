"""Text and key-press policy applied before anything leaves the bridge."""

"""Streaming speech-to-text engines: one upstream session per call leg."""

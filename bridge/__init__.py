"""callbridge: telephony media streams in, per-leg streaming speech-to-text, signed webhooks out."""

__version__ = "0.1.0"

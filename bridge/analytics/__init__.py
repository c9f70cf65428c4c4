"""What the bridge works out of a call while it lasts: talk analytics from the legs' audio,
phrase alerts, sentiment."""

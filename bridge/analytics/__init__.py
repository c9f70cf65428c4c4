"""What the bridge works out of a call while it lasts: phrase alerts, sentiment."""

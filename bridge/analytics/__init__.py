"""What the bridge measures of a call while it lasts: talk analytics from the legs' audio."""

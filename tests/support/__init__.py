"""Test peers: protocol emulators of external services, a webhook receiver, audio fixtures."""

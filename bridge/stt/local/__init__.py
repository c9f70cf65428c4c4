"""The embedded recognizer: a local server speaking the Telnyx STT protocol, on PocketSphinx.

For development and demos on a machine with no account and no network. Accuracy on
telephone audio is far below a cloud engine's; see the README's figures.
"""

"""The embedded recognizer: a local server speaking the Telnyx STT protocol, offline.

Whisper tiny.en through faster-whisper by default, PocketSphinx as the light alternative.
For development and demos on a machine with no account and no network; see the README's
figures.
"""

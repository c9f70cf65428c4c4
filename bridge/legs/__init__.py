"""A call's legs: each one track's audio, its upstream session and its transcripts.

Dependencies point one way: the call uses legs; legs use codecs, engines and compliance, and
never their call.
"""

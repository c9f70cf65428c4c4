"""The HTTP surface of the bridge, one module per layer as aiohttp names its own.

``app`` builds the application (shared resources in ``cleanup_ctx``, health, readiness and
metrics); ``media`` is the media-stream endpoint that checks credentials and drives a
``Call``; ``admin`` is the admin API and its pages; ``feed`` is the live feed, its state and
its Server-Sent Events stream; ``keys`` holds the typed application keys; ``serve`` runs the
application until SIGTERM and drains it. Dependencies point one way: the package uses the
call core, legs and delivery, and none of them imports from it.
"""

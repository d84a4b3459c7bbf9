"""Easel's bot: the domain, the data, the queue, the services and the Discord layer.

See README.md (Development) for which folder knows what, and the layering rules a test keeps.
"""

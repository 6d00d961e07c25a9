"""The HTTP API on Ray Serve: async video jobs with auth, versions, per-model endpoints and webhooks.

Layers: ``schemas`` / ``forms`` (request validation, OpenAI shapes), ``auth`` (bearer keys, rate limits),
``urls`` (SSRF guard), ``webhooks`` (Standard Webhooks delivery), ``jobs`` (the durable job store).
Nothing here is imported by the engine or the batch runner.
"""

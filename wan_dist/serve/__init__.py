"""The HTTP API on Ray Serve: async video jobs with auth, versions, per-model endpoints and webhooks.

Layers: ``settings`` (ServeSettings, one block per concern), ``schemas`` / ``forms`` (request validation, OpenAI
shapes), ``auth`` (bearer keys, rate limits), ``urls`` (SSRF guard), ``webhooks`` (Standard Webhooks delivery),
``jobs`` (the durable job store), ``service`` (admission rules, the webhook notifier), ``app`` with ``routes``
(the FastAPI app, one router per resource), ``renderer`` / ``worker`` / ``batches`` (the renderers), ``deploy``
(the Ray Serve application). Nothing here is imported by the engine or the batch runner.
"""

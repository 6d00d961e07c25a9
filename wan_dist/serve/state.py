"""What one API process holds (:class:`ServeState`: store, keys, rules, webhook notifier) and how a route finds
it (:func:`state_of`: the app's ``state.get_state``, set by :func:`wan_dist.serve.app.create_app`)."""

from __future__ import annotations

from typing import Callable

from fastapi import Request

from wan_dist.serve.auth import ApiKeys
from wan_dist.serve.service import JobService, Notifier
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.stores import open_store

__all__ = ["ServeState", "state_of"]


class ServeState:
    """What one API process holds: store, keys, rules, webhook notifier."""

    def __init__(self, settings: ServeSettings, *, ready: Callable[[], bool] = lambda: True, notify: bool = True):
        from wan_dist.serve.webhooks import WebhookDispatcher, WebhookSigner, secret_from_env

        self.settings = settings
        self.store = open_store(settings.store)
        self.keys = ApiKeys.from_sources(list(settings.auth.api_keys), allow_anonymous=settings.auth.allow_anonymous)
        self.service = JobService(settings, self.store)
        self.ready = ready
        webhooks = settings.webhooks
        signer = WebhookSigner(webhooks.secret or secret_from_env())
        dispatcher = WebhookDispatcher(signer, allow_private=settings.allow_private_urls,
                                       max_attempts=webhooks.max_attempts, base_delay_s=webhooks.base_delay_s)
        self.notifier = Notifier(self.service, dispatcher)
        if notify:
            self.notifier.start()

    def close(self) -> None:
        self.notifier.stop()
        self.store.close()


def state_of(request: Request) -> ServeState:
    """The ServeState of the process answering ``request`` (created on first use unless the app was given one)."""
    return request.app.state.get_state()

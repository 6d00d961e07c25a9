"""The HTTP API's routes, one module per resource, each an ``APIRouter`` built by ``router(settings)``:
:mod:`.health` (``/healthz``, ``/readyz``, ``/v1/models``), :mod:`.jobs`, :mod:`.batches`, :mod:`.videos`;
:mod:`.common` holds what they share (reading bodies, paging, answering with a clip).
:func:`wan_dist.serve.app.create_app` includes them in that order. A route finds its process's
``ServeState`` through the request (:func:`wan_dist.serve.state.state_of`).

The route modules keep real annotations (no ``from __future__ import annotations``): Serve pickles the app
(``serve.ingress``) and FastAPI analyses an included router's routes again in the ingress replica, where a
route defined in a factory is a copy whose globals hold only the names its code uses. A string annotation
(``"Request"``) is not found there and the parameter turns into a required query field (every call a 422);
tests/test_serve_routes.py checks the app after that round trip."""

"""The HTTP API's routes, one module per resource, each an ``APIRouter`` built by ``router(settings)``:
:mod:`.health` (``/healthz``, ``/readyz``, ``/v1/models``), :mod:`.jobs`, :mod:`.batches`, :mod:`.videos`;
:mod:`.common` holds what they share (reading bodies, paging, answering with a clip).
:func:`wan_dist.serve.app.create_app` includes them in that order. A route finds its process's
``ServeState`` through the request (:func:`wan_dist.serve.state.state_of`)."""

"""Timers that tick without Gradio's event machinery: a function in the page posts the inputs' values to
the studio's own route, and hands the answer to Gradio as a frontend-only event's result.

Why (measured, Chrome trace of the Train tab while a run trained): a backend event costs the page two
passes over Gradio's loading-status table (app.ui.idle), and a Train-tab tick with 24 entries in it took
75-115 ms of script to dispatch, then as much again for its answer: Chromium used 0.046 cores, the same
page idle 0.014. A frontend-only event (js=..., no fn) makes no status at all: Gradio gathers its inputs'
values, calls the function, and applies each returned value to its output, leaving an output as it is
where the value is missing or an empty update (which is what gr.skip() is).

- `poll(timer, fn, inputs, outputs)` registers fn under a new name and wires timer.tick to PAGE_JS;
- `PollRoute` (ASGI middleware, app.ui.idle.app_kwargs) answers POST .../ftstudio/poll/<name> with fn's
  return values, each as Gradio would send it (`encode`), after Gradio's own login check when the studio
  has a password; fn runs in a worker thread; the updates also go to the page's Gradio session, as a
  backend event's do (a dropdown whose choices only the page knew would refuse a new pick);
- the page skips a tick whose request fails (studio restarted, network): the timer keeps ticking.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gradio.blocks import Block, postprocess_update_dict

ROUTE = "/ftstudio/poll/"
PAGE_JS = """async (...values) => {
  try {
    const body = JSON.stringify({session: window.__gradio_session_hash__ || null, values});
    const response = await fetch(new URL("ftstudio/poll/NAME", window.location.href), {
      method: "POST", headers: {"Content-Type": "application/json"}, body});
    return response.ok ? await response.json() : [];
  } catch (error) {
    return [];
  }
}"""
SKIPPED = {"__type__": "update"}  # gr.skip(): an update that changes nothing

_handlers: dict[str, tuple[Callable[..., Sequence[Any]], list[Any]]] = {}
_names = itertools.count(1)
_lock = threading.Lock()
log = logging.getLogger(__name__)


def encode(block: Any, value: Any, state: Any = None) -> dict[str, Any]:
    """`value` returned for output `block`, as Gradio sends it to the page (blocks.postprocess_data): an
    update dict whose value is postprocessed by the block rebuilt with the update's other properties.

    With the page's Gradio session `state`, the update is kept there as Gradio keeps a backend event's: a
    later backend event checks its inputs against the session's copy of each component (a dropdown's value
    against its choices), so choices sent only to the page would make picking a new one an error."""
    is_update = isinstance(value, Block) or (isinstance(value, dict) and value.get("__type__") == "update")
    if isinstance(value, Block):
        value = {**value.constructor_args, "__type__": "update"}
    if not is_update:
        value = {"__type__": "update", "value": value}
    update = {k: v for k, v in value.items() if k != "__type__" and (v is not None or k == "value")}
    if not update:
        return dict(SKIPPED)
    base = state.get(block._id, block) if state is not None else block
    kwargs = base.constructor_args | {k: v for k, v in update.items() if k != "value"} | {"render": False}
    rebuilt = type(block)(**kwargs)
    sent = postprocess_update_dict(rebuilt, update, postprocess=True)
    if state is not None:
        if is_update:
            state[block._id] = rebuilt
            state._update_config(block._id)
        if "value" in sent:
            state._update_value_in_config(block._id, sent["value"])
    return sent


def poll(timer: Any, fn: Callable[..., Sequence[Any]], inputs: Sequence[Any], outputs: Sequence[Any]) -> str:
    """Wire `timer.tick` to call fn(*input values) -> output values through the studio's route; returns the
    handler's name. Inputs must be components whose value lives in the page (not gr.State)."""
    with _lock:
        name = f"h{next(_names)}"
        _handlers[name] = (fn, list(outputs))
    timer.tick(None, list(inputs), list(outputs), js=PAGE_JS.replace("NAME", name), show_progress="hidden",
               api_visibility="private")
    return name


def answer(name: str, body: Any, app: Any = None) -> list[dict[str, Any]]:
    """What the route sends for a POST to handler `name` with body {"session": the page's Gradio session,
    "values": the inputs' values} (KeyError: no such name); the session's state, when `app` holds it,
    takes the updates (`encode`)."""
    fn, outputs = _handlers[name]
    values = body.get("values") if isinstance(body, dict) else None
    if not isinstance(values, list):
        raise ValueError('the body must be {"session": ..., "values": [the inputs\' values]}')
    results = list(fn(*values))
    if len(results) != len(outputs):
        raise ValueError(f"handler {name} returned {len(results)} values for {len(outputs)} outputs")
    holder, session = getattr(app, "state_holder", None), body.get("session")
    state = holder[session] if holder is not None and isinstance(session, str) and session in holder else None
    return [encode(block, value, state) for block, value in zip(outputs, results)]


def logged_in(app: Any, cookies: dict[str, str]) -> bool:
    """Gradio's own check (routes.login_check): no password set, or the request's access token is known. An
    app with a custom auth_dependency (not the studio's) is refused: its check needs a FastAPI request."""
    if getattr(app, "auth_dependency", None) is not None:
        return False
    if getattr(app, "auth", None) is None:
        return True
    cookie_id = getattr(app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return token is not None and token in getattr(app, "tokens", {})


class PollRoute:
    """ASGI middleware: POST .../ftstudio/poll/<name> -> `answer`; every other request passes through."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if ROUTE not in path or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        import anyio
        import orjson
        from starlette.requests import Request
        from starlette.responses import Response

        request = Request(scope, receive)
        name = path.rpartition(ROUTE)[2]
        if not logged_in(scope.get("app"), request.cookies):
            status, body = 401, b'{"error": "not logged in"}'
        elif name not in _handlers:
            status, body = 404, b'{"error": "no such handler"}'
        else:
            try:
                body_in = orjson.loads(await request.body())
                sent = await anyio.to_thread.run_sync(answer, name, body_in, scope.get("app"))
                status, body = 200, orjson.dumps(sent, option=orjson.OPT_SERIALIZE_NUMPY, default=str)
            except Exception as exc:  # noqa: BLE001 - the page skips this tick; the log says why
                log.exception("poll handler %s failed", name)
                status, body = 500, orjson.dumps({"error": str(exc)})
        await Response(body, status_code=status, media_type="application/json")(scope, receive, send)


"""Keep an idle studio idle: a page where nothing moves, and a server with nothing to do, should not take
CPU from a training run on the same machine (issue 10: the same job from the CLI and from the browser
within 5% tokens/s).

The page. A script that runs before Gradio's own keeps an idle page from drawing 60 frames a second.

Gradio 6's status tracker (one per component) counts the seconds of a pending event with a
requestAnimationFrame loop, and a tracker that leaves "pending" without its effect running again (the
app's own loading tracker does so on every page) keeps that loop going for as long as the page is open.
Any animation-frame loop makes the browser produce frames; in headless Chromium on 2 cores that was
0.07-0.10 of a core for a page where nothing moves (`make bench-ui`), taken from a training run on the
same machine, and each tracker left that way adds its own loop. The script runs all such callbacks
together in one frame once a second instead (4 times a second cost a page watching a run 0.056
instead of 0.049 Chromium cores), and every other animation frame is left alone.

Gradio reads `window.requestAnimationFrame` once, when its modules load, so `Blocks(head=...)` (added
later by Gradio's own script) comes too late: `PageScript` is ASGI middleware that puts the script at the
top of the page's <head>, before Gradio's modules. Pass it to `launch(app_kwargs=app_kwargs())`.

The server. Gradio's queue looks for new events every millisecond on Linux (every 50 ms on Windows),
and for progress to send every 10 ms: 0.03-0.05 of a core for a studio with nothing to do.
`quiet_queue` makes that every 50 ms and 100 ms (Gradio's Windows figures): an event starts at most
50 ms later, and an idle studio used 0.0105 instead of 0.032 cores (0.032 at 10 ms and 50 ms).

A page watching a run. Gradio's page keeps one loading status per component that an event ever
touched: every output, and every input of a backend event (its "complete" status marks them all, with
queue=False too), and never drops one. Each later status change (two per Train-tab tick) walks that
table, looking every entry up in the component tree and copying its properties: about 1 ms an entry on
2 cores. Start, Preview, Save, Load info and the memory estimate read every field of the form (about
80), so after one Start each tick cost the page 80 more look-ups. `Pack` hands the backend those values
through one hidden JSON box, filled by a function that runs in the page (no status): the table holds
one entry for the whole form. The Train tab's timer skips the table altogether (app.ui.poll).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

STOPWATCH_HZ = 1
QUEUE_POLL_S = 0.05  # Gradio's queue: how often it looks for a new event when it has none (Gradio: 0.001)
PROGRESS_POLL_S = 0.1  # ... and for progress updates to send (Gradio: 0.01; its Windows default)

SCRIPT = """<script data-ftstudio="frames">(() => {
  const raf = window.requestAnimationFrame.bind(window);
  const stopwatch = /performance\\.now\\(\\)\\s*-[^;]*\\/\\s*(1e3|1000)/;
  let due = [];  // the stopwatch callbacks of every tracker: one frame for all of them, DELAY_MS ms apart
  const flush = (time) => { const now = due; due = []; now.forEach((callback) => callback(time)); };
  window.requestAnimationFrame = (callback) => {
    if (typeof callback === "function" && stopwatch.test(String(callback))) {
      if (due.push(callback) === 1) setTimeout(() => raf(flush), DELAY_MS);
      return 0;
    }
    return raf(callback);
  };
})();</script>""".replace("DELAY_MS", str(1000 // STOPWATCH_HZ))


class PageScript:
    """ASGI middleware: adds SCRIPT right after <head> in the HTML of the page's GET "/" (and nothing else)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("path") not in ("/", ""):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body = bytearray()

        async def collect(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            html = bytes(body)
            if any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                html = html.replace(b"<head>", b"<head>" + SCRIPT.encode(), 1)
            await send({**start, "headers": [*headers, (b"content-length", str(len(html)).encode())]})
            await send({"type": "http.response.body", "body": html})

        await self.app(scope, receive, collect)


def app_kwargs() -> dict[str, Any]:
    """Gradio's launch(app_kwargs=...): a page with SCRIPT, and the route of app.ui.poll's timers."""
    from starlette.middleware import Middleware

    from app.ui.poll import PollRoute

    return {"middleware": [Middleware(PageScript), Middleware(PollRoute)]}


def quiet_queue(demo: Any) -> None:
    """After demo.queue(): poll for events every QUEUE_POLL_S, not every millisecond (a no-op if Gradio's
    queue has no such attributes any more)."""
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_POLL_S)
        queue.progress_update_sleep_when_free = max(getattr(queue, "progress_update_sleep_when_free", 0.0),
                                                    PROGRESS_POLL_S)


PACK_JS = "(...values) => [values]"  # the page packs the inputs' values into the box: one value, a list


class Pack:
    """Many inputs carried to backend events as one hidden JSON value (see the module's note). Create it
    inside the Blocks; `on(triggers, fn, lead, outputs)` calls fn(*lead values, *input values) as a
    `.then` of the page-side packing, so fn sees the inputs' values as Gradio's page holds them."""

    def __init__(self, inputs: Sequence[Any]):
        self.inputs = list(inputs)
        self.box = gr.JSON(None, visible="hidden")

    def on(self, triggers: Sequence[Any], fn: Callable[..., Any], lead: Sequence[Any], outputs: Sequence[Any],
           **kwargs: Any) -> Any:
        count = len(self.inputs)

        def unpack(*args: Any) -> Any:
            *head, values = args
            values = list(values or [])
            if len(values) != count:  # a page from before a studio restart with another form
                raise gr.Error(f"the form sent {len(values)} values for {count} fields; reload the page")
            return fn(*head, *values)

        packing = gr.on(list(triggers), None, self.inputs, self.box, js=PACK_JS, show_progress="hidden",
                        api_visibility="private")
        return packing.then(unpack, [*lead, self.box], list(outputs), **kwargs)

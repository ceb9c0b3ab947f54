"""app/ui/idle.py without a browser: the page script goes into the page's HTML first, and only there; the queue
polls less often. (The frames an idle page asks for are measured in Chromium: test_ui_browser.py.)"""

from __future__ import annotations

import gradio as gr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app.ui.idle import PROGRESS_POLL_S, QUEUE_POLL_S, SCRIPT, PageScript, quiet_queue

PAGE = "<!doctype html><html><head><script type=module src=./assets/index.js></script></head><body></body></html>"


def client() -> TestClient:
    routes = [Route("/", lambda request: HTMLResponse(PAGE)),
              Route("/config", lambda request: JSONResponse({"head": "<head>"}))]
    return TestClient(Starlette(routes=routes, middleware=[Middleware(PageScript)]))


def test_the_script_comes_first_in_the_page_head():
    response = client().get("/")
    assert response.status_code == 200
    assert response.text.startswith("<!doctype html><html><head>" + SCRIPT + "<script type=module")
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.text.count("data-ftstudio") == 1


def test_other_paths_are_left_alone():
    with client() as c:
        assert c.get("/config").json() == {"head": "<head>"}  # JSON that mentions <head> is not HTML
        assert c.head("/").headers["content-length"] == str(len(PAGE))


def test_the_queue_polls_every_10_ms_not_every_millisecond():
    with gr.Blocks() as demo:
        gr.Textbox()
    demo.queue()
    quiet_queue(demo)
    assert demo._queue.sleep_when_free == QUEUE_POLL_S
    assert demo._queue.progress_update_sleep_when_free == PROGRESS_POLL_S

"""The Gradio web studio. Importing any of it first switches off Gradio's and the hub's telemetry:
the studio runs offline and makes no outbound connection."""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

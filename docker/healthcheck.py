"""Container health check: does the studio (or the API) answer HTTP on its port?

Any HTTP answer below 500 counts: with a login in front (FTSTUDIO_AUTH), 401/302 still proves the server is
up. FTSTUDIO_HEALTH_URL picks the address (the `api` service points it at /health). Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("GRADIO_SERVER_PORT", "7860")
    url = os.environ.get("FTSTUDIO_HEALTH_URL") or f"http://127.0.0.1:{port}/"
    # No proxies: an HTTP(S)_PROXY set for downloads must not swallow a loopback request.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status >= 500:
        print(f"unhealthy: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

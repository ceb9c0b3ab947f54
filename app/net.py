"""The one loopback check: whether a host a server binds to is reachable only from this machine.

The web studio (app.ui.app), the API server (app.serve.main) and the Export tab's server control all ask
this before they serve without a password or key. No imports beyond the standard library.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual names of them; False for anything else, hostnames included
    (a name may resolve to any address), and for an empty host (servers read it as every interface)."""
    text = (host or "").strip().lower()
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text.strip("[]")).is_loopback
    except ValueError:
        return False

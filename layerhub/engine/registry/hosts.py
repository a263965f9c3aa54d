"""Registry host names: ``host[:port]`` split, and whether one names this machine.

Apart from tls.py (the trust store, certificates) so that what only reads the proxy settings
(``proxies.py``, loaded with the settings in every process) does not import TLS.
"""

from __future__ import annotations

import ipaddress


def split_host(host: str, default_port: int = 443) -> tuple[str, int]:
    """``("127.0.0.1", 5443)`` from ``127.0.0.1:5443``; ``[::1]:5000`` gives ``("::1", 5000)``."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, int(port) if port.isdigit() else default_port


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` names this machine by its literal name (``localhost``, a
    loopback address), which is never sent through a proxy and may fall back to HTTP."""
    name = split_host(host)[0].lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False

"""The HTTP session registry requests go through: the SSL context of each target host
(tls.py), proxies given per request (proxies.py), connections a Deadline can cut (limits.py).

requests' own environment handling is off (``trust_env``): it would send loopback through a
proxy, read ``~/.netrc``, and add certifi's bundle to every verified connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .limits import WATCHED_POOLS
from .tls import TLSConfig

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs


class _RegistryAdapter(HTTPAdapter):
    """An adapter whose https connections use the context ``TLSConfig`` gives for their
    host; ``verify=False`` on a request picks that host's unverified context."""

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(WATCHED_POOLS)
        return manager

    def build_connection_pool_key_attributes(
        self,
        request: requests.PreparedRequest,
        verify: bool | str,
        cert: str | tuple[str, str] | None = None,
    ) -> tuple[_HostParams, _PoolKwargs]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if host_params.get("scheme") == "https":
            netloc = urlsplit(request.url or "").netloc.rpartition("@")[2]
            pool_kwargs["ssl_context"] = self._tls.context(netloc, verify=verify is not False)
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # trust comes from the context alone (requests would load certifi's bundle into it)
        conn.cert_reqs = "CERT_NONE" if verify is False else "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


def registry_session(tls: TLSConfig) -> requests.Session:
    """A session for registry requests. Its users pass ``allow_redirects=False`` (the client
    follows redirects itself, deciding hop by hop where credentials go), ``proxies`` and
    ``verify`` on each request."""
    session = requests.Session()
    session.trust_env = False
    adapter = _RegistryAdapter(tls)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session

"""TLS for registries as Docker does it.

Trust is the operating system's store (through ``truststore``, as pip does: on Linux the
OpenSSL default paths, so ``update-ca-certificates`` and ``SSL_CERT_FILE`` count; never
certifi's bundle alone), plus a directory per registry laid out like Docker's ``certs.d``::

    <certs dir>/<host[:port]>/ca.crt        extra CAs for that host (every *.crt)
    <certs dir>/<host[:port]>/client.cert   a client certificate (any X.cert with its X.key)
    <certs dir>/<host[:port]>/client.key

A failed TLS connection is told apart here: a port that answers plain HTTP (the caller may
fall back to HTTP where that is allowed), a certificate that is not trusted (wrong name,
expired, unknown authority: an error naming the host and the reason), or a registry that
wants a client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import truststore

from ..errors import RegistryTLSError
from .hosts import is_loopback as is_loopback
from .hosts import split_host as split_host

CA_SUFFIX = ".crt"
CERT_SUFFIX = ".cert"
KEY_SUFFIX = ".key"
# a host as certs.d names its directories: no path separators, no "..", nothing hidden
_HOST_DIR = re.compile(r"[A-Za-z0-9\[][A-Za-z0-9.:\[\]_-]{0,254}")

# what OpenSSL says when the peer answered a ClientHello with something that is not TLS (a
# plain HTTP server's "400 Bad Request"); the names differ between OpenSSL versions
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"}
)
# alerts a server sends when it wants a client certificate, or refuses the one it got
_CLIENT_CERT = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
    }
)
# X509_V_ERR_* codes, as OpenSSL numbers them
_NAME_MISMATCH = {62, 64}  # hostname, IP address
_EXPIRED = 10
_NOT_YET_VALID = 9
_UNKNOWN_CA = {2, 18, 19, 20, 21}


@dataclass(frozen=True)
class HostCerts:
    """What the certs directory holds for one host: extra CAs and a client certificate."""

    directory: Path | None = None
    ca_files: tuple[Path, ...] = ()
    client_cert: tuple[Path, Path] | None = None  # (certificate, key)


def host_certs(certs_dir: Path | None, host: str) -> HostCerts:
    """The certs.d entries for ``host`` (``registry.example:5000``, ``127.0.0.1:5443``).

    As Docker reads them: every ``*.crt`` is a CA; every ``X.cert`` must come with ``X.key``
    (and the reverse), else RegistryTLSError naming the file. Of several client pairs the
    first by name is used.
    """
    if certs_dir is None or not _HOST_DIR.fullmatch(host) or ".." in host:
        return HostCerts()
    directory = certs_dir / host
    try:
        names = sorted(p.name for p in directory.iterdir() if p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return HostCerts()
    except OSError as exc:
        raise RegistryTLSError(f"{host}: cannot read {directory}: {exc.strerror}") from None
    cas = tuple(directory / n for n in names if n.endswith(CA_SUFFIX))
    pairs = []
    for name in names:
        stem = name[: -len(CERT_SUFFIX)] if name.endswith(CERT_SUFFIX) else None
        if stem is not None:
            if stem + KEY_SUFFIX not in names:
                raise RegistryTLSError(
                    f"{host}: client certificate {directory / name} has no key "
                    f"{directory / (stem + KEY_SUFFIX)}"
                )
            pairs.append((directory / name, directory / (stem + KEY_SUFFIX)))
        elif name.endswith(KEY_SUFFIX) and name[: -len(KEY_SUFFIX)] + CERT_SUFFIX not in names:
            stem = name[: -len(KEY_SUFFIX)]
            raise RegistryTLSError(
                f"{host}: key {directory / name} has no client certificate "
                f"{directory / (stem + CERT_SUFFIX)}"
            )
    return HostCerts(directory, cas, pairs[0] if pairs else None)


def _build_context(host: str, certs: HostCerts, *, verify: bool) -> ssl.SSLContext:
    context: ssl.SSLContext
    if verify:
        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Docker's floor for registries
    for ca in certs.ca_files:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise RegistryTLSError(
                f"{host}: {ca} is not a usable CA certificate (PEM): {_reason(exc)}"
            ) from None
    if certs.client_cert is not None:
        cert, key = certs.client_cert
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            raise RegistryTLSError(
                f"{host}: cannot use client certificate {cert} with key {key}: {_reason(exc)}"
            ) from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class TLSConfig:
    """Where trust comes from for each host, and the SSL contexts built from it: one per
    host and mode, built on first use and kept (pooled connections key on the context)."""

    def __init__(self, certs_dir: Path | None = None) -> None:
        self.certs_dir = certs_dir
        self._contexts: dict[tuple[str, bool], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def certs(self, host: str) -> HostCerts:
        """The certs.d entries for ``host``."""
        return host_certs(self.certs_dir, host)

    def context(self, host: str, *, verify: bool = True) -> ssl.SSLContext:
        """The context for connections to ``host``: the OS trust store plus its certs.d
        CAs, its client certificate if any; ``verify=False`` checks nothing (for a registry
        marked insecure whose certificate failed)."""
        key = (host, verify)
        with self._lock:
            context = self._contexts.get(key)
            if context is None:
                context = _build_context(host, self.certs(host), verify=verify)
                self._contexts[key] = context
            return context


# -- telling failures apart --------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (requests and urllib3 nest the ssl error several deep)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 32:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        for attr in ("reason", "__cause__", "__context__"):
            value = getattr(current, attr, None)
            if isinstance(value, BaseException):
                nested.append(value)
        todo.extend(nested)


def ssl_error_in(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind a requests or urllib3 exception, if there is one."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return cause
    return None


FailureKind = Literal["plain-http", "certificate", "client-certificate", "other"]


def tls_failure(exc: BaseException) -> tuple[FailureKind, ssl.SSLError] | None:
    """What kind of TLS failure ``exc`` is, or None if it is not one."""
    error = ssl_error_in(exc)
    if error is None:
        return None
    if isinstance(error, ssl.SSLCertVerificationError):
        return "certificate", error
    reason = str(error.reason or "")
    if reason in _NOT_TLS:
        return "plain-http", error
    if reason in _CLIENT_CERT:
        return "client-certificate", error
    return "other", error


@dataclass(frozen=True)
class PeerCertificate:
    """What a server's certificate says, for an error message."""

    names: tuple[str, ...]
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime


def peer_certificate(host: str, timeout: float) -> PeerCertificate | None:
    """The certificate ``host`` presents, read without verifying it (only to say why it was
    refused); None if it cannot be had."""
    # only on this error path: cryptography's x509 takes longer to import than a pull of a
    # small image takes to start
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name, port = split_host(host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((name, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        if not der:
            return None
        cert = x509.load_der_x509_certificate(der)
    except (OSError, ValueError):
        return None
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    common = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = ", ".join(str(a.value) for a in common)
    return PeerCertificate(
        tuple(names),
        issuer or cert.issuer.rfc4514_string(),
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
    )


def certificate_error(
    host: str, error: ssl.SSLCertVerificationError, peer: PeerCertificate | None, where: Path | None
) -> RegistryTLSError:
    """A RegistryTLSError for a certificate ``host`` presented and that failed verification:
    which name it is for, when it expired, which authority signed it, and what to do."""
    code = error.verify_code
    name = split_host(host)[0]
    if code in _NAME_MISMATCH:
        why = f"the certificate is not valid for {name}"
        if peer is not None and peer.names:
            why += f" (it is for {', '.join(peer.names)})"
    elif code == _EXPIRED:
        why = "the certificate has expired"
        if peer is not None:
            why += f" (on {peer.not_after:%Y-%m-%d %H:%M} UTC)"
    elif code == _NOT_YET_VALID:
        why = "the certificate is not valid yet"
        if peer is not None:
            why += f" (from {peer.not_before:%Y-%m-%d %H:%M} UTC)"
    elif code in _UNKNOWN_CA:
        why = "the certificate is signed by an unknown authority"
        if peer is not None and peer.issuer:
            why += f" ({peer.issuer!r})"
        place = (
            f"{where / host / 'ca.crt'}"
            if where is not None
            else "LAYERHUB_CERTS_DIR/<host>/ca.crt"
        )
        why += f": add the CA's certificate as {place} or to the system's trust store"
    else:
        why = str(error.verify_message or error.reason or error)
    return RegistryTLSError(f"{host}: TLS certificate refused: {why}")


def client_certificate_error(
    host: str, error: ssl.SSLError, certs: HostCerts, where: Path | None
) -> RegistryTLSError:
    """A RegistryTLSError for a registry that asked for a client certificate and did not get
    one it accepts."""
    if certs.client_cert is None:
        place = f"{where / host}/" if where is not None else "LAYERHUB_CERTS_DIR/<host>/"
        return RegistryTLSError(
            f"{host} requires a TLS client certificate: put client.cert and client.key in {place}"
        )
    return RegistryTLSError(
        f"{host} refused the TLS client certificate {certs.client_cert[0]}: {_reason(error)}"
    )


# -- describing a host's TLS -------------------------------------------------------------------


@dataclass(frozen=True)
class TLSState:
    """How layerhub talks to one registry host: what it trusts, whether it shows a client
    certificate, whether plain HTTP or unverified TLS may be used, and its mirrors."""

    host: str
    insecure: bool  # marked insecure by a login or LAYERHUB_INSECURE_REGISTRIES
    loopback: bool
    ca_files: tuple[str, ...] = ()
    client_cert: str | None = None
    mirrors: tuple[str, ...] = ()
    problem: str = ""  # a certs.d entry that cannot be used

    @property
    def labels(self) -> tuple[str, ...]:
        """``trusted`` (the OS trust store) or ``private CA``, then ``client certificate``,
        then ``insecure``."""
        labels = ["private CA" if self.ca_files else "trusted"]
        if self.client_cert:
            labels.append("client certificate")
        if self.insecure:
            labels.append("insecure")
        return tuple(labels)

    @property
    def summary(self) -> str:
        """One line: the labels, and when plain HTTP may be used."""
        text = ", ".join(self.labels)
        if self.insecure:
            text += " (HTTPS first; unverified TLS or plain HTTP if that fails)"
        elif self.loopback:
            text += " (HTTPS first; plain HTTP if the port speaks it: loopback)"
        if self.problem:
            text += f"; problem: {self.problem}"
        return text


def describe_tls(
    host: str, *, certs_dir: Path | None, insecure: bool, mirrors: tuple[str, ...] = ()
) -> TLSState:
    """The TLS state of ``host``, read from the certs directory (never raises: a broken
    entry is reported in ``problem``)."""
    problem = ""
    try:
        certs = host_certs(certs_dir, host)
    except RegistryTLSError as exc:
        certs, problem = HostCerts(), str(exc)
    return TLSState(
        host=host,
        insecure=insecure,
        loopback=is_loopback(host),
        ca_files=tuple(str(p) for p in certs.ca_files),
        client_cert=str(certs.client_cert[0]) if certs.client_cert else None,
        mirrors=mirrors,
        problem=problem,
    )


def marked_insecure(host: str, entries: Iterable[str]) -> bool:
    """Whether ``host[:port]`` is in an insecure-registries list, as Docker's daemon reads
    one: a registry name (``registry.local:5000``) or a CIDR range its address falls in
    (``10.0.0.0/8``; a name is not resolved)."""
    name = split_host(host)[0]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for entry in entries:
        if "/" in entry:
            try:
                if address is not None and address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        elif entry.lower() == host.lower():
            return True
    return False

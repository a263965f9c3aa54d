"""The CNCF distribution registry (Debian's ``docker-registry``) run on a free loopback port,
with a temporary storage directory (or another registry's, to serve the same images),
anonymous or behind htpasswd basic auth or a bearer-token service, over plain HTTP or TLS
(with a certificate the test made, and client certificates required if asked); and
``skopeo`` to push test images into it."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import bcrypt
import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REGISTRY_BIN = shutil.which("docker-registry")
SKOPEO_BIN = shutil.which("skopeo")
SERVICE = "layerhub-test-registry"
ISSUER = "layerhub-test-token-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    """A running registry: its host (``127.0.0.1:port``) and, if any, the one valid login;
    ``storage`` is where it keeps its images."""

    host: str
    username: str | None = None
    password: str | None = None
    storage: Path | None = None

    def push_layout(
        self,
        layout: Path,
        tag: str,
        repository: str,
        *,
        all_platforms: bool = False,
        as_tag: str | None = None,
    ) -> None:
        """Copy ``layout:tag`` to ``repository:tag`` (or ``:as_tag``) here with skopeo."""
        assert SKOPEO_BIN is not None
        cmd = [SKOPEO_BIN, "copy", "--quiet", "--dest-tls-verify=false"]
        if all_platforms:
            cmd.append("--all")
        if self.username:
            cmd += ["--dest-creds", f"{self.username}:{self.password}"]
        cmd += [f"oci:{layout}:{tag}", f"docker://{self.host}/{repository}:{as_tag or tag}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


class TokenServer:
    """A bearer-token service: hands out registry tokens signed with its own key, for one
    user (or anyone, with ``allow_anonymous``), the way Docker Hub's auth service does."""

    def __init__(self, root: Path, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.issued = 0
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = root / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                user = ""
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if (user, pw) != (server.username, server.password):
                        self.send_response(401)
                        self.end_headers()
                        return
                elif auth:
                    self.send_response(401)
                    self.end_headers()
                    return
                actions = ["pull", "push"] if user else []
                access: list[dict[str, object]] = []
                for scope in query.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    repo, _, _wanted = rest.rpartition(":")
                    access.append({"type": kind, "name": repo, "actions": actions})
                token = server.sign(user, access, query.get("service", [""])[0])
                server.issued += 1
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, subject: str, access: list[dict[str, object]], audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        der = self.cert.public_bytes(serialization.Encoding.DER)
        headers = {"x5c": [base64.b64encode(der).decode()]}
        return jwt.encode(claims, self.key, algorithm="ES256", headers=headers)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def run_registry(
    root: Path,
    *,
    auth: str = "none",
    username: str = "tester",
    password: str = "s3cret!",
    storage: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    client_ca: Path | None = None,
) -> Iterator[Registry]:
    """Start a registry storing under ``root`` (or serving ``storage``, another registry's);
    ``auth`` is none, basic or token. ``tls`` (certificate, key) makes it speak HTTPS only;
    ``client_ca`` makes it require a client certificate signed by that CA."""
    assert REGISTRY_BIN is not None
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    storage = storage or root / "data"
    http: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": "layerhub-tests"}
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        if client_ca is not None:
            http["tls"]["clientcas"] = [str(client_ca)]  # type: ignore[index]
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": http,
    }
    token_server = None
    registry = Registry(f"127.0.0.1:{port}", storage=storage)
    if auth == "basic":
        htpasswd = root / "htpasswd"
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{username}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "layerhub-tests", "path": str(htpasswd)}}
        registry = Registry(registry.host, username, password, storage)
    elif auth == "token":
        token_server = TokenServer(root, username, password)
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(token_server.bundle),
            }
        }
        registry = Registry(registry.host, username, password, storage)
    # the registry reads YAML; JSON is YAML
    (root / "config.yml").write_text(json.dumps(config))
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if tls is None:
                    requests.get(f"http://{registry.host}/v2/", timeout=1)
                else:  # listening is enough: a client certificate may be required
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except (requests.ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "registry did not start: " + (root / "registry.log").read_text()
                    ) from None
                time.sleep(0.05)
        registry.token_server = token_server  # type: ignore[attr-defined]
        yield registry
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if token_server is not None:
            token_server.stop()

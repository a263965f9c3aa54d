"""Image references parsed and normalized as Docker does."""

from __future__ import annotations

import pytest

from layerhub.engine.errors import InvalidReference
from layerhub.engine.reference import normalize_registry, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "familiar"),
    [
        ("debian", "docker.io", "library/debian", "latest", None, "debian:latest"),
        ("debian:bookworm", "docker.io", "library/debian", "bookworm", None, "debian:bookworm"),
        ("library/debian:12", "docker.io", "library/debian", "12", None, "debian:12"),
        (
            "docker.io/library/debian",
            "docker.io",
            "library/debian",
            "latest",
            None,
            "debian:latest",
        ),
        ("index.docker.io/team/app", "docker.io", "team/app", "latest", None, "team/app:latest"),
        ("team/app:1.0", "docker.io", "team/app", "1.0", None, "team/app:1.0"),
        ("ghcr.io/org/app:v2", "ghcr.io", "org/app", "v2", None, "ghcr.io/org/app:v2"),
        (
            "localhost:5000/a/b/c:1",
            "localhost:5000",
            "a/b/c",
            "1",
            None,
            "localhost:5000/a/b/c:1",
        ),
        ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
        (
            f"127.0.0.1:5000/app@{DIGEST}",
            "127.0.0.1:5000",
            "app",
            None,
            DIGEST,
            f"127.0.0.1:5000/app@{DIGEST}",
        ),
        (
            f"registry.example.com:443/team/app:1@{DIGEST}",
            "registry.example.com:443",
            "team/app",
            "1",
            DIGEST,
            f"registry.example.com:443/team/app:1@{DIGEST}",
        ),
        ("[::1]:5000/app:x", "[::1]:5000", "app", "x", None, "[::1]:5000/app:x"),
        ("a__b/c-d.e_f:Tag_1.x-y", "docker.io", "a__b/c-d.e_f", "Tag_1.x-y", None, None),
    ],
)
def test_normalization(
    text: str,
    registry: str,
    repository: str,
    tag: str | None,
    digest: str | None,
    familiar: str | None,
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    if familiar is not None:
        assert ref.familiar == familiar
    # the normalized form parses to itself
    assert parse_reference(str(ref)) == ref


def test_target_and_api_host() -> None:
    assert parse_reference("debian").api_host == "registry-1.docker.io"
    assert parse_reference("ghcr.io/a/b").api_host == "ghcr.io"
    assert parse_reference("debian:12").target == "12"
    assert parse_reference(f"debian:12@{DIGEST}").target == DIGEST


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "required"),
        ("   ", "required"),
        ("Debian", "lowercase"),
        ("ghcr.io/Org/app", "lowercase"),
        ("app:", "invalid tag"),
        ("app:-x", "invalid tag"),
        ("app:" + "x" * 129, "invalid tag"),
        ("app@sha256:abc", "sha256"),
        ("app@md5:" + "a" * 32, "sha256"),
        ("app@", "malformed digest"),
        ("a b", "whitespace"),
        ("team//app", "path component"),
        ("-app", "path component"),
        ("app_", "path component"),
        ("a" * 300, "longer than 255"),
        ("bad_host:5000/app", "invalid registry"),
        (":tag", "no repository"),
    ],
)
def test_malformed_references_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidReference, match=says):
        parse_reference(text)


def test_with_tag_and_digest() -> None:
    ref = parse_reference("team/app:1")
    assert str(ref.with_tag("2")) == "docker.io/team/app:2"
    assert ref.with_digest(DIGEST).target == DIGEST
    with pytest.raises(InvalidReference):
        ref.with_tag("no good")


@pytest.mark.parametrize(
    ("host", "normalized"),
    [
        ("ghcr.io", "ghcr.io"),
        ("https://ghcr.io/", "ghcr.io"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("myregistry", "myregistry"),
    ],
)
def test_registry_hosts_for_login(host: str, normalized: str) -> None:
    assert normalize_registry(host) == normalized


def test_bad_registry_host() -> None:
    with pytest.raises(InvalidReference, match="invalid registry host"):
        normalize_registry("not a host")


@pytest.mark.parametrize(
    "text",
    [
        "localhost:99999999999999999999/team/app",
        "registry.example.com:0/app:v1",
        "127.0.0.1:65536/app",
        "[::1]:0/app",
        "ghcr.io:100000/org/app@sha256:" + "a" * 64,
    ],
)
def test_a_port_no_connection_can_use_is_refused(text: str) -> None:
    with pytest.raises(InvalidReference, match="is not in 1-65535"):
        parse_reference(text)


@pytest.mark.parametrize(
    "host", ["ghcr.io:0", "https://127.0.0.1:99999999999999999999/", "h:65536"]
)
def test_a_login_host_with_a_port_out_of_range_is_refused(host: str) -> None:
    with pytest.raises(InvalidReference, match="is not in 1-65535"):
        normalize_registry(host)


@pytest.mark.parametrize(
    "text", ["localhost:1/app", "h.io:65535/app", "[::1]:5000/app", "[::1]/app"]
)
def test_ports_in_range_and_ipv6_literals_are_kept(text: str) -> None:
    assert parse_reference(text).registry == text.rsplit("/", 1)[0]

"""How registries are reached, as configured: proxies and NO_PROXY, mirrors, insecure
registries and the certs directory; the settings that read them, the TLS state each
registry is shown with, and ``login --list``."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from pytest_django import Settings

from layerhub.engine.errors import RegistryTLSError
from layerhub.engine.registry import Mirror, ProxyConfig, describe_tls, parse_mirrors
from layerhub.engine.registry.tls import host_certs, marked_insecure
from layerhub.env import env_mirrors, env_proxies, env_registries
from layerhub.images.models import RegistryCredential
from layerhub.images.selectors import registry_access_list, registry_tls_state
from tests.support.teams import default_team

# -- proxies -----------------------------------------------------------------------------------

PROXY = "http://proxy.corp:3128"


@pytest.mark.parametrize(
    ("url", "no_proxy", "expected"),
    [
        ("https://ghcr.io/v2/", "", PROXY),
        ("https://127.0.0.1:5000/v2/", "", None),  # loopback: never
        ("https://localhost:5000/v2/", "", None),
        ("https://[::1]:5000/v2/", "", None),
        ("https://ghcr.io/v2/", "*", None),
        ("https://ghcr.io/v2/", "ghcr.io", None),
        ("https://pkg.ghcr.io/v2/", "ghcr.io", None),  # a domain covers its subdomains
        ("https://notghcr.io/v2/", "ghcr.io", PROXY),
        ("https://ghcr.io/v2/", ".ghcr.io", PROXY),  # a leading dot: subdomains only
        ("https://pkg.ghcr.io/v2/", ".ghcr.io", None),
        ("https://pkg.ghcr.io/v2/", "*.ghcr.io", None),
        ("https://reg.corp:5000/v2/", "reg.corp:5000", None),
        ("https://reg.corp:5001/v2/", "reg.corp:5000", PROXY),
        ("https://reg.corp/v2/", "reg.corp:443", None),
        ("https://10.1.2.3/v2/", "10.0.0.0/8", None),
        ("https://11.1.2.3/v2/", "10.0.0.0/8", PROXY),
        ("https://10.1.2.3/v2/", "10.1.2.3", None),
        ("https://GHCR.io/v2/", "ghcr.IO", None),
        ("https://ghcr.io/v2/", " , ,docker.io, ghcr.io ", None),
    ],
)  # fmt: skip
def test_no_proxy_as_go_reads_it(url: str, no_proxy: str, expected: str | None) -> None:
    config = ProxyConfig.from_environ({"HTTPS_PROXY": PROXY, "NO_PROXY": no_proxy})
    assert config.for_url(url) == expected


def test_proxies_from_the_environment() -> None:
    config = ProxyConfig.from_environ(
        {"https_proxy": "proxy.corp:3128", "HTTP_PROXY": "http://plain:80", "no_proxy": "a,b"}
    )
    assert config.https == "http://proxy.corp:3128"  # no scheme: http, as curl and Go take it
    assert config.for_url("http://registry.corp/v2/") == "http://plain:80"
    assert config.no_proxy == ("a", "b")
    assert ProxyConfig.from_environ({}).for_url("https://ghcr.io/") is None


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("socks5://proxy:1080", "proxy scheme 'socks5' is not supported"),
        ("http://proxy:99999", "not a valid proxy URL"),
        ("http://:3128", "names no proxy host"),
        ("http://proxy:3128/path", "no path or query"),
    ],
)
def test_a_bad_proxy_stops_the_settings_naming_the_variable(raw: str, said: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=said) as caught:
        env_proxies(environ={"HTTPS_PROXY": raw})
    assert str(caught.value).startswith("HTTPS_PROXY=")


def test_a_proxy_password_is_never_in_a_message() -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        env_proxies(environ={"HTTP_PROXY": "http://me:hunter2@proxy:3128/x"})
    assert "hunter2" not in str(caught.value)
    config = ProxyConfig(https="http://me:hunter2@proxy:3128")
    assert config.describe("https://ghcr.io/") == "http://me:***@proxy:3128"


# -- mirrors -----------------------------------------------------------------------------------


def test_mirrors_as_written_in_the_setting() -> None:
    mirrors = parse_mirrors(
        "docker.io=https://mirror.local,http://10.0.0.5:5000/;  ghcr.io = https://Gh.Mirror/v2/ ;"
    )
    assert mirrors == {
        "docker.io": (Mirror("https", "mirror.local"), Mirror("http", "10.0.0.5:5000")),
        "ghcr.io": (Mirror("https", "gh.mirror"),),
    }
    assert parse_mirrors("index.docker.io=https://m") == {"docker.io": (Mirror("https", "m"),)}


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("docker.io", "is not registry=mirror-url"),
        ("docker.io=mirror.local", "must start with https://"),
        ("docker.io=ftp://mirror.local", "must start with https://"),
        ("docker.io=https://u:p@mirror.local", "names no host"),
        ("docker.io=https://mirror.local/prefix", "a path prefix is not supported"),
        ("docker.io=", "no mirror URL given for docker.io"),
        ("docker.io=https://a;index.docker.io=https://b", "given twice"),
        ("bad host!=https://a", "invalid registry host"),
    ],
)
def test_bad_mirrors_stop_the_settings(raw: str, said: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=said) as caught:
        env_mirrors("LAYERHUB_REGISTRY_MIRRORS", environ={"LAYERHUB_REGISTRY_MIRRORS": raw})
    assert str(caught.value).startswith("LAYERHUB_REGISTRY_MIRRORS=")


def test_no_mirrors_by_default() -> None:
    assert env_mirrors("M", environ={}) == {}
    assert env_mirrors("M", environ={"M": "  "}) == {}


# -- insecure registries -----------------------------------------------------------------------


def test_insecure_registries_as_docker_takes_them() -> None:
    entries = env_registries("I", environ={"I": "registry.local:5000, 10.0.0.0/8,index.docker.io"})
    assert entries == ("registry.local:5000", "10.0.0.0/8", "docker.io")
    assert marked_insecure("registry.local:5000", entries)
    assert not marked_insecure("registry.local:5001", entries)
    assert marked_insecure("10.20.30.40:5000", entries)
    assert not marked_insecure("11.0.0.1", entries)
    with pytest.raises(ImproperlyConfigured, match="not a CIDR range"):
        env_registries("I", environ={"I": "10.0.0.0/99"})
    with pytest.raises(ImproperlyConfigured, match="not a registry"):
        env_registries("I", environ={"I": "bad_host!"})


# -- the certs directory -----------------------------------------------------------------------


def test_certs_d_as_docker_reads_it(tmp_path: Path) -> None:
    host = tmp_path / "registry.local:5000"
    host.mkdir()
    for name in ("ca.crt", "extra.crt", "client.cert", "client.key", "README"):
        (host / name).write_text("x")
    certs = host_certs(tmp_path, "registry.local:5000")
    assert certs.ca_files == (host / "ca.crt", host / "extra.crt")
    assert certs.client_cert == (host / "client.cert", host / "client.key")
    assert host_certs(tmp_path, "other:5000").ca_files == ()
    assert host_certs(None, "registry.local:5000").ca_files == ()
    # a host name never walks out of the directory
    assert host_certs(tmp_path / "registry.local:5000", "..").ca_files == ()
    (host / "client.cert").unlink()
    with pytest.raises(RegistryTLSError, match=r"client.key has no client certificate"):
        host_certs(tmp_path, "registry.local:5000")


def test_tls_state_labels(tmp_path: Path) -> None:
    plain = describe_tls("ghcr.io", certs_dir=tmp_path, insecure=False)
    assert plain.labels == ("trusted",)
    assert plain.summary == "trusted"
    loop = describe_tls("127.0.0.1:5000", certs_dir=tmp_path, insecure=False)
    assert loop.summary == "trusted (HTTPS first; plain HTTP if the port speaks it: loopback)"
    (tmp_path / "reg.corp").mkdir()
    for name in ("ca.crt", "client.cert", "client.key"):
        (tmp_path / "reg.corp" / name).write_text("x")
    private = describe_tls("reg.corp", certs_dir=tmp_path, insecure=True, mirrors=("https://m",))
    assert private.labels == ("private CA", "client certificate", "insecure")
    assert private.client_cert == str(tmp_path / "reg.corp" / "client.cert")
    (tmp_path / "reg.corp" / "client.key").unlink()
    broken = describe_tls("reg.corp", certs_dir=tmp_path, insecure=False)
    assert "client.cert has no key" in broken.problem
    assert "problem:" in broken.summary


# -- what the catalog shows ----------------------------------------------------------------------


@pytest.fixture
def configured(settings: Settings, tmp_path: Path) -> Path:
    certs = tmp_path / "certs.d"
    (certs / "reg.corp:5000").mkdir(parents=True)
    (certs / "reg.corp:5000" / "ca.crt").write_text("x")
    (certs / "reg.corp:5000" / "client.cert").write_text("x")
    (certs / "reg.corp:5000" / "client.key").write_text("x")
    settings.LAYERHUB_CERTS_DIR = certs
    settings.LAYERHUB_INSECURE_REGISTRIES = ("old.corp", "10.0.0.0/8")
    settings.LAYERHUB_REGISTRY_MIRRORS = {
        "docker.io": (Mirror("https", "mirror.local"), Mirror("http", "10.0.0.5:5000"))
    }
    login = RegistryCredential(team=default_team(), host="ghcr.io", username="ada")
    login.set_password("secret")
    login.save()
    RegistryCredential.objects.create(team=default_team(), host="127.0.0.1:5000", insecure=True)
    return certs


@pytest.mark.django_db
@pytest.mark.usefixtures("configured")
def test_each_registry_with_its_tls_state_and_mirrors() -> None:
    rows = {row.registry: row for row in registry_access_list()}
    assert list(rows) == ["127.0.0.1:5000", "docker.io", "ghcr.io", "old.corp", "reg.corp:5000"]
    assert rows["ghcr.io"].username == "ada"
    assert rows["ghcr.io"].tls.labels == ("trusted",)
    assert rows["127.0.0.1:5000"].tls.labels == ("trusted", "insecure")  # its login says so
    assert rows["old.corp"].tls.labels == ("trusted", "insecure")  # the setting says so
    assert rows["reg.corp:5000"].tls.labels == ("private CA", "client certificate")
    assert rows["docker.io"].tls.mirrors == ("https://mirror.local", "http://10.0.0.5:5000")
    assert rows["docker.io"].tls.host == "registry-1.docker.io"  # where its API answers
    assert registry_tls_state("10.1.1.1:5000").insecure  # inside the insecure range


@pytest.mark.django_db
@pytest.mark.usefixtures("configured")
def test_login_list_prints_them() -> None:
    out = StringIO()
    call_command("login", "--list", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["REGISTRY", "USERNAME", "TLS", "MIRRORS"]
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert "ada" in by_name["ghcr.io"]
    assert "private CA, client certificate" in by_name["reg.corp:5000"]
    assert by_name["docker.io"].endswith("https://mirror.local,http://10.0.0.5:5000")
    assert "secret" not in out.getvalue()


@pytest.mark.django_db
def test_login_list_with_nothing_configured(settings: Settings, tmp_path: Path) -> None:
    settings.LAYERHUB_CERTS_DIR = tmp_path / "none"
    settings.LAYERHUB_INSECURE_REGISTRIES = ()
    settings.LAYERHUB_REGISTRY_MIRRORS = {}
    out = StringIO()
    call_command("login", "--list", stdout=out)
    assert out.getvalue().strip() == "No registry logins, mirrors or certificates configured."

"""The environment helpers and the settings module built on them."""

from __future__ import annotations

import runpy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

import layerhub.settings
from layerhub.engine.blobstore import BlobsLocation
from layerhub.env import (
    DEV_SECRET_KEY,
    REDIS_SCHEMES,
    env_bool,
    env_count,
    env_database,
    env_list,
    env_name,
    env_path,
    env_seconds,
    env_secret_key,
    env_url,
)

SETTINGS_FILE = Path(layerhub.settings.__file__)


def load_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """Run the settings module afresh with ``env`` on top of a clean environment."""
    for name in (
        "DATABASE_URL", "REDIS_URL", "LAYERHUB_STORE", "SECRET_KEY", "DEBUG", "STATIC_ROOT",
        "LAYERHUB_QUEUE", "LAYERHUB_JOB_HEARTBEAT", "LAYERHUB_JOB_DEAD_AFTER",
        "LAYERHUB_BROKER_TIMEOUT", "LAYERHUB_BROKER_VISIBILITY_TIMEOUT", "LAYERHUB_BLOBS",
        "LAYERHUB_SNAPSHOT_CACHE_MAX", "LAYERHUB_SNAPSHOT_CACHE_IDLE",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALLOWED_HOSTS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True), ("true", True), ("True", True), ("YES", True), ("on", True), (" yes ", True),
        ("0", False), ("false", False), ("FALSE", False), ("no", False), ("Off", False),
    ],
)  # fmt: skip
def test_env_bool_accepts_the_usual_words(raw: str, expected: bool) -> None:
    assert env_bool("DEBUG", not expected, environ={"DEBUG": raw}) is expected


def test_env_bool_default_when_unset() -> None:
    assert env_bool("DEBUG", True, environ={}) is True
    assert env_bool("DEBUG", False, environ={}) is False


@pytest.mark.parametrize("raw", ["", "maybe", "2", "tru", "y", "enabled", "-1"])
def test_env_bool_refuses_anything_else(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="DEBUG") as info:
        env_bool("DEBUG", True, environ={"DEBUG": raw})
    assert repr(raw) in str(info.value)


def test_env_bool_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERHUB_FLAG", "off")
    assert env_bool("LAYERHUB_FLAG", True) is False


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com", ["example.com"]),
        ("a.example, b.example", ["a.example", "b.example"]),
        (" a.example ,,b.example,", ["a.example", "b.example"]),
        ("", []),
    ],
)
def test_env_list_splits_on_commas(raw: str, expected: list[str]) -> None:
    assert env_list("ALLOWED_HOSTS", ["x"], environ={"ALLOWED_HOSTS": raw}) == expected


def test_env_list_default_when_unset() -> None:
    assert env_list("ALLOWED_HOSTS", ["localhost"], environ={}) == ["localhost"]


def test_env_list_refuses_space_separated_items() -> None:
    with pytest.raises(ImproperlyConfigured, match="ALLOWED_HOSTS") as info:
        env_list("ALLOWED_HOSTS", environ={"ALLOWED_HOSTS": "a.example b.example"})
    assert "'a.example b.example'" in str(info.value)


@pytest.mark.parametrize(
    "raw",
    ["redis://127.0.0.1:6379/0", "redis://localhost", "rediss://:pw@cache.internal:6380/2"],
)
def test_env_url_accepts_urls_of_its_schemes(raw: str) -> None:
    environ = {"REDIS_URL": raw}
    assert env_url("REDIS_URL", "redis://x", schemes=REDIS_SCHEMES, environ=environ) == raw


def test_env_url_default_when_unset() -> None:
    default = "redis://127.0.0.1:6379/0"
    assert env_url("REDIS_URL", default, schemes=REDIS_SCHEMES, environ={}) == default


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "http://127.0.0.1:6379", "localhost:6379", "redis://127.0.0.1:notaport/0",
     "redis://127.0.0.1:99999/0"],
)  # fmt: skip
def test_env_url_refuses_bad_urls(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        env_url("REDIS_URL", "redis://x", schemes=REDIS_SCHEMES, environ={"REDIS_URL": raw})


def test_env_url_error_hides_the_password() -> None:
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL") as info:
        env_url("REDIS_URL", "", schemes=REDIS_SCHEMES, environ={"REDIS_URL": "http://u:s3cret@h/"})
    assert "s3cret" not in str(info.value)
    assert "http://u:***@h/" in str(info.value)


def test_env_path_resolves_relative_paths_from_base(tmp_path: Path) -> None:
    default = tmp_path / "default"
    assert env_path("LAYERHUB_STORE", default, base=tmp_path, environ={}) == default
    relative = {"LAYERHUB_STORE": "data/store"}
    assert env_path("LAYERHUB_STORE", default, base=tmp_path, environ=relative) == (
        tmp_path / "data" / "store"
    )
    absolute = {"LAYERHUB_STORE": "/srv/layerhub"}
    assert env_path("LAYERHUB_STORE", default, base=tmp_path, environ=absolute) == Path(
        "/srv/layerhub"
    )


def test_env_path_refuses_an_empty_value(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="LAYERHUB_STORE"):
        env_path("LAYERHUB_STORE", tmp_path, base=tmp_path, environ={"LAYERHUB_STORE": " "})


def test_env_database_parses_postgres() -> None:
    url = "postgres://postgres:pw@127.0.0.1:5432/layerhub"
    config = env_database("DATABASE_URL", "sqlite:///x", environ={"DATABASE_URL": url})
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert config["NAME"] == "layerhub"
    assert config["USER"] == "postgres"
    assert config["PASSWORD"] == "pw"
    assert config["HOST"] == "127.0.0.1"
    assert config["PORT"] == 5432
    assert config["CONN_MAX_AGE"] == 60


def test_env_database_parses_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    config = env_database("DATABASE_URL", url, environ={})
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == str(tmp_path / "db.sqlite3")


@pytest.mark.parametrize(
    "raw",
    ["mysql://root@127.0.0.1/layerhub", "postgres://127.0.0.1:5432", "postgres://h:port/db", ""],
)
def test_env_database_refuses_bad_urls(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        env_database("DATABASE_URL", "sqlite:///x", environ={"DATABASE_URL": raw})


def test_env_secret_key_dev_default_only_with_debug() -> None:
    assert env_secret_key("SECRET_KEY", debug=True, environ={}) == DEV_SECRET_KEY
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY must be set when DEBUG is off"):
        env_secret_key("SECRET_KEY", debug=False, environ={})
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        env_secret_key("SECRET_KEY", debug=False, environ={"SECRET_KEY": DEV_SECRET_KEY})
    assert env_secret_key("SECRET_KEY", debug=False, environ={"SECRET_KEY": "s" * 50}) == "s" * 50


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(monkeypatch)
    base = SETTINGS_FILE.parent.parent
    assert loaded["DEBUG"] is True
    assert loaded["SECRET_KEY"] == DEV_SECRET_KEY
    assert loaded["DATABASES"]["default"]["NAME"] == str(base / "var" / "layerhub.sqlite3")
    assert loaded["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert loaded["CELERY_BROKER_URL"] == loaded["REDIS_URL"]
    assert loaded["CELERY_TASK_ALWAYS_EAGER"] is False
    assert loaded["LAYERHUB_STORE"] == base / "var" / "store"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loaded = load_settings(
        monkeypatch,
        DEBUG="off",
        SECRET_KEY="k" * 50,
        ALLOWED_HOSTS="layerhub.example,localhost",
        DATABASE_URL="postgres://postgres@db.internal:5432/layerhub",
        REDIS_URL="redis://cache.internal:6380/1",
        LAYERHUB_STORE=str(tmp_path / "store"),
    )
    assert loaded["DEBUG"] is False
    assert loaded["ALLOWED_HOSTS"] == ["layerhub.example", "localhost"]
    assert loaded["DATABASES"]["default"]["HOST"] == "db.internal"
    assert loaded["CELERY_BROKER_URL"] == "redis://cache.internal:6380/1"
    assert loaded["LAYERHUB_STORE"] == tmp_path / "store"


def test_settings_need_a_secret_key_without_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        load_settings(monkeypatch, DEBUG="0")


def test_settings_refuse_a_bad_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe'"):
        load_settings(monkeypatch, DEBUG="maybe")


@pytest.mark.parametrize(("raw", "expected"), [("10", 10.0), (" 0.5 ", 0.5), ("600", 600.0)])
def test_env_seconds_accepts_plain_decimals(raw: str, expected: float) -> None:
    assert env_seconds("T", 1.0, environ={"T": raw}) == expected


def test_env_seconds_default_when_unset() -> None:
    assert env_seconds("T", 2.5, environ={}) == 2.5


@pytest.mark.parametrize(
    "raw", ["", "0", "-1", "inf", "nan", "1e3", "1_0", "\u0661\u0662", "10s", "700"]
)
def test_env_seconds_refuses_anything_else(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="T="):
        env_seconds("T", 1.0, maximum=600, environ={"T": raw})


@pytest.mark.parametrize(("raw", "expected"), [("4", 4), (" 1 ", 1), ("64", 64)])
def test_env_count_accepts_whole_numbers(raw: str, expected: int) -> None:
    assert env_count("N", 2, maximum=64, environ={"N": raw}) == expected
    assert env_count("N", 2, maximum=64, environ={}) == 2


@pytest.mark.parametrize("raw", ["", "0", "-1", "1.5", "1e1", "\u0664", "four", "65"])
def test_env_count_refuses_anything_else(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"N=.* must be a whole number from 1 to 64"):
        env_count("N", 2, maximum=64, environ={"N": raw})


@pytest.mark.parametrize("raw", ["layerhub-prod", "team.ci:42", "Q_1"])
def test_env_name_accepts_queue_names(raw: str) -> None:
    assert env_name("LAYERHUB_QUEUE", "x", environ={"LAYERHUB_QUEUE": raw}) == raw


@pytest.mark.parametrize("raw", ["", " ", "a b", "-lead", "q*", "x" * 101, "caf\u00e9"])
def test_env_name_refuses_other_names(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="LAYERHUB_QUEUE"):
        env_name("LAYERHUB_QUEUE", "x", environ={"LAYERHUB_QUEUE": raw})


def test_settings_job_and_broker_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(monkeypatch)
    assert loaded["LAYERHUB_JOB_HEARTBEAT"] == 10.0
    assert loaded["LAYERHUB_JOB_DEAD_AFTER"] == 90.0
    assert loaded["CELERY_BROKER_TRANSPORT_OPTIONS"]["visibility_timeout"] == 600.0
    assert loaded["CELERY_TASK_DEFAULT_QUEUE"] == loaded["LAYERHUB_QUEUE"]
    assert loaded["LAYERHUB_QUEUE"].startswith("layerhub-")
    assert loaded["LAYERHUB_QUEUE"] != "celery"
    assert loaded["STATIC_ROOT"] == SETTINGS_FILE.parent.parent / "staticfiles"


def test_settings_queue_is_named_after_the_database_and_the_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def queue(**env: str) -> str:
        return str(load_settings(monkeypatch, **env)["LAYERHUB_QUEUE"])

    first = {"DATABASE_URL": f"sqlite:///{tmp_path / 'a.sqlite3'}", "LAYERHUB_STORE": "/srv/a"}
    assert queue(**first) == queue(**first)  # every process of a deployment agrees
    assert queue(**first) != queue(**{**first, "LAYERHUB_STORE": "/srv/b"})
    assert queue(**first) != queue(**{**first, "DATABASE_URL": f"sqlite:///{tmp_path / 'b'}"})
    pg = "postgres://u:{}@db.internal:5432/layerhub"
    same_db = queue(DATABASE_URL=pg.format("old"), LAYERHUB_STORE="/srv/a")
    assert same_db == queue(DATABASE_URL=pg.format("rotated"), LAYERHUB_STORE="/srv/a")
    assert queue(**first, LAYERHUB_QUEUE="layerhub-prod") == "layerhub-prod"


def test_settings_job_timings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(
        monkeypatch,
        LAYERHUB_JOB_HEARTBEAT="0.5",
        LAYERHUB_JOB_DEAD_AFTER="2",
        LAYERHUB_BROKER_TIMEOUT="1",
        LAYERHUB_BROKER_VISIBILITY_TIMEOUT="30",
    )
    assert loaded["LAYERHUB_JOB_HEARTBEAT"] == 0.5
    assert loaded["LAYERHUB_JOB_DEAD_AFTER"] == 2.0
    assert loaded["CELERY_BROKER_CONNECTION_TIMEOUT"] == 1.0
    assert loaded["CELERY_BROKER_TRANSPORT_OPTIONS"] == {
        "visibility_timeout": 30.0,
        "socket_connect_timeout": 1.0,
    }


def test_settings_refuse_a_dead_after_that_live_jobs_would_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ImproperlyConfigured, match="LAYERHUB_JOB_DEAD_AFTER=15"):
        load_settings(monkeypatch, LAYERHUB_JOB_HEARTBEAT="10", LAYERHUB_JOB_DEAD_AFTER="15")


def test_settings_refuse_a_bad_queue_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImproperlyConfigured, match="LAYERHUB_QUEUE"):
        load_settings(monkeypatch, LAYERHUB_QUEUE="my queue")


def test_blobs_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(monkeypatch)["LAYERHUB_BLOBS"] == BlobsLocation("local")
    loaded = load_settings(monkeypatch, LAYERHUB_BLOBS="s3://layers/prod")
    assert loaded["LAYERHUB_BLOBS"] == BlobsLocation("s3", "layers", "prod")
    for bad in ("/srv/blobs", "s3://Layers", "gs://layers/x", "s3://k:s@layers/x"):
        with pytest.raises(ImproperlyConfigured, match=r"^LAYERHUB_BLOBS: "):
            load_settings(monkeypatch, LAYERHUB_BLOBS=bad)


def test_snapshot_cache_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(monkeypatch)
    assert loaded["LAYERHUB_SNAPSHOT_CACHE_MAX"] == 0  # no limit, as before
    assert loaded["LAYERHUB_SNAPSHOT_CACHE_IDLE"] == timedelta(minutes=10)
    for raw, expected in [("50G", 50 * 10**9), ("500GiB", 500 << 30), (" 2TB ", 2 * 10**12)]:
        loaded = load_settings(monkeypatch, LAYERHUB_SNAPSHOT_CACHE_MAX=raw)
        assert loaded["LAYERHUB_SNAPSHOT_CACHE_MAX"] == expected
    loaded = load_settings(monkeypatch, LAYERHUB_SNAPSHOT_CACHE_IDLE="90s")
    assert loaded["LAYERHUB_SNAPSHOT_CACHE_IDLE"] == timedelta(seconds=90)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("lots", "LAYERHUB_SNAPSHOT_CACHE_MAX='lots' is not a size"),
        ("-5G", "LAYERHUB_SNAPSHOT_CACHE_MAX='-5G' is not a size"),
        ("5%", "LAYERHUB_SNAPSHOT_CACHE_MAX='5%' is not a size"),
        ("1e9", "LAYERHUB_SNAPSHOT_CACHE_MAX='1e9' is not a size"),
        ("50", "LAYERHUB_SNAPSHOT_CACHE_MAX='50' is 50 bytes, less than a layer: give a unit"),
        ("10k", "LAYERHUB_SNAPSHOT_CACHE_MAX='10k' is 10000 bytes"),
    ],
)
def test_snapshot_cache_max_refuses_nonsense(
    monkeypatch: pytest.MonkeyPatch, raw: str, message: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        load_settings(monkeypatch, LAYERHUB_SNAPSHOT_CACHE_MAX=raw)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("raw", ["10", "soon", "off", "-1m", "60d"])
def test_snapshot_cache_idle_refuses_nonsense(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"LAYERHUB_SNAPSHOT_CACHE_IDLE={raw!r}"):
        load_settings(monkeypatch, LAYERHUB_SNAPSHOT_CACHE_IDLE=raw)

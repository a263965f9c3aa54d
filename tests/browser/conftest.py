"""A real browser against the live server: Debian's chromium driven by Playwright.

Pages run in pytest-django's live server (a thread of this process, on the test database);
jobs the pages start run in a real Celery worker process that shares that database, the
test's store and a queue of the test's own. A test signs in through the login page, and fails
on any JavaScript error the page raises or logs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import AbstractBaseUser
from playwright.sync_api import ConsoleMessage, Error, Locator, Page, expect
from pytest_django import Settings
from pytest_django.live_server_helper import LiveServer

from layerhub.jobs.presence import workers_present
from tests.conftest import delete_queue_keys

# the CNCF registry on loopback seeded with test images, and its faulty front
from tests.registry.conftest import proxy, registry, seed  # noqa: F401
from tests.registry.test_worker import start_worker, stop_worker
from tests.support.database import database_url
from tests.support.peers import require_peer
from workers import app

# Sync Playwright keeps an asyncio loop running in this thread from its first page to the end
# of the session, and Django refuses ORM calls from a thread with a running loop. The tests'
# own ORM calls are synchronous and never run on that loop, so the check only gets in the way.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
PASSWORD = "correct horse battery staple"
# how long a page may take to show what a test waits for (a pull from loopback, a commit)
JOB_TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's chromium: `playwright install` cannot download a browser here. The tests
    run as root, where chromium's sandbox refuses to start."""
    return {
        **browser_type_launch_args,
        "executable_path": require_peer("chromium"),
        "args": ["--no-sandbox", "--disable-dev-shm-usage"],
    }


@pytest.fixture(scope="session")
def browser_context_args(
    browser_context_args: dict[str, Any], live_server: LiveServer
) -> dict[str, Any]:
    """Relative URLs in page.goto() go to the live server; a desktop's width by default."""
    return {
        **browser_context_args,
        "base_url": live_server.url,
        "viewport": {"width": 1280, "height": 900},
    }


@pytest.fixture(autouse=True)
def javascript_errors(page: Page) -> Iterator[list[str]]:
    """Fail the test on any uncaught exception or console error in the page (htmx logs a
    failed request or a swap error there, the browser a static file that does not load)."""
    errors: list[str] = []

    def console(message: ConsoleMessage) -> None:
        # the browser asks for /favicon.ico on its own, whatever the page links; the site
        # has none, and that 404 is no error of a page
        where = message.location.get("url", "")
        if message.type == "error" and not where.endswith("/favicon.ico"):
            errors.append(f"console error at {message.location.get('url')}: {message.text}")

    def uncaught(error: Error) -> None:
        errors.append(f"uncaught {error.name}: {error.message}")

    page.on("console", console)
    page.on("pageerror", uncaught)
    yield errors
    assert not errors, "JavaScript errors in the page:\n" + "\n".join(errors)


@pytest.fixture
def user(transactional_db: None, django_user_model: type[AbstractBaseUser]) -> AbstractBaseUser:
    """A signed-in team member: the ``default`` team's owner, as ``make dev``'s admin is."""
    from layerhub.accounts.models import Membership, Role
    from tests.support.teams import default_team

    alice = django_user_model.objects.create_user(username="alice", password=PASSWORD)  # type: ignore[attr-defined]
    Membership.objects.create(team=default_team(), user=alice, role=Role.OWNER)
    return alice  # type: ignore[no-any-return]


@pytest.fixture
def signed_in(page: Page, user: AbstractBaseUser) -> Page:
    """The page, signed in as ``user`` through the login form."""
    page.set_default_timeout(15_000)  # for actions; a job's end is waited on for longer
    page.goto("/login/")
    page.locator("#id_username").fill(user.get_username())
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    return page


@pytest.fixture
def worker(transactional_db: None, broker: str, settings: Settings) -> Iterator[None]:
    """A real Celery worker taking this test's queue, on the test database and store.

    The live server queues jobs through this process' Celery app, so the worker listens on
    that app's broker; the queue (the ``broker`` fixture's, of this test alone) keeps it from
    taking anyone else's jobs, and its keys are deleted afterwards.
    """
    broker_url = str(app.conf.broker_url)
    queue = settings.LAYERHUB_QUEUE
    env = {
        **os.environ,
        "REDIS_URL": broker_url,
        "LAYERHUB_QUEUE": queue,
        "DATABASE_URL": database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    proc = start_worker(env)
    try:
        wait_until(lambda: bool(workers_present(queue)), 60, "the worker to start")
        yield
    finally:
        stop_worker(proc)
        client = redis.Redis.from_url(broker_url)
        delete_queue_keys(client, queue)
        client.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Outside the browser (a worker process starting): poll a condition, with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page under var/screenshots/ (git-ignored) for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def exact_bytes(page: Page | Locator, selector: str) -> int:
    """The exact byte count a size shows in its ``title`` ("1234 bytes"), in the page or in
    one part of it."""
    title = page.locator(selector).first.get_attribute("title") or ""
    number = title.split(" ", 1)[0]
    assert number.isdigit(), f"{selector}: no byte count in title {title!r}"
    return int(number)

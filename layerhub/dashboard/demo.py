"""A realistic demo catalog, planned: families of images on a few shared bases.

Debian, Ubuntu, Alpine and UBI bases of one or two layers; language runtimes and servers on
them (some on a shared build-dependencies stack); then a team's applications on the runtimes,
several versions each, consecutive versions sharing their dependencies layer. About five
layers per image, sizes and dates as real images have them, repositories and tags, a few
untagged (``<none>``) older versions.

The plan is plain dataclasses from a seeded random generator (the same seed plans the same
catalog); ``manage.py seed_demo`` writes it as database rows.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from layerhub.images.models import Image, Layer

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MB = 1_000_000
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# (repository, tag, [(created_by, unpacked bytes)]), bottom layer first
BASES: list[tuple[str, str, list[tuple[str, int]]]] = [
    ("library/debian", "bookworm", [("ADD file:debian-bookworm-rootfs.tar.xz in /", 117 * MB)]),
    (
        "library/debian",
        "bookworm-slim",
        [("ADD file:debian-bookworm-slim-rootfs.tar.xz in /", 74 * MB)],
    ),
    ("library/ubuntu", "24.04", [("ADD file:ubuntu-noble-rootfs.tar.gz in /", 78 * MB)]),
    ("library/alpine", "3.20", [("ADD file:alpine-minirootfs-3.20.tar.gz in /", 7_800_000)]),
    (
        "ubi9/ubi-minimal",
        "9.4",
        [
            ("ADD file:ubi9-minimal-rootfs.tar in /", 92 * MB),
            ("COPY licenses /licenses", 21_000),
        ],
    ),
]

# (base as repository:tag, repository, tag, layers): images built FROM another image
RUNTIMES: list[tuple[str, str, str, list[tuple[str, int]]]] = [
    (
        "library/debian:bookworm",
        "library/buildpack-deps",
        "bookworm",
        [
            ("RUN apt-get update && apt-get install -y ca-certificates curl gnupg", 24 * MB),
            ("RUN apt-get update && apt-get install -y git mercurial openssh-client", 60 * MB),
            ("RUN apt-get update && apt-get install -y autoconf build-essential ...", 532 * MB),
        ],
    ),
    (
        "library/buildpack-deps:bookworm",
        "library/python",
        "3.12-bookworm",
        [
            ("RUN apt-get install -y libbluetooth-dev tk-dev uuid-dev", 20 * MB),
            ("RUN ./configure --enable-optimizations && make install  # python", 63 * MB),
            ("RUN python -m ensurepip && pip install setuptools wheel", 11 * MB),
        ],
    ),
    (
        "library/buildpack-deps:bookworm",
        "library/node",
        "20-bookworm",
        [
            ("RUN groupadd --gid 1000 node && useradd --uid 1000 node", 4_700),
            ("RUN curl -fsSLO nodejs.org/dist/v20 && tar -xJf node-v20-linux-x64.tar.xz", 189 * MB),
            ("RUN npm install -g yarn@1.22", 5_300_000),
        ],
    ),
    (
        "library/buildpack-deps:bookworm",
        "library/golang",
        "1.22-bookworm",
        [
            ("RUN apt-get install -y g++ gcc libc6-dev make pkg-config", 220 * MB),
            ("RUN curl -sL go.dev/dl/go1.22.linux-amd64.tar.gz | tar -C /usr/local -xz", 240 * MB),
        ],
    ),
    (
        "library/debian:bookworm-slim",
        "library/python",
        "3.12-slim",
        [
            ("RUN apt-get update && apt-get install -y ca-certificates netbase tzdata", 9 * MB),
            ("RUN ./configure --enable-optimizations && make install  # python", 42 * MB),
            ("RUN python -m ensurepip && pip install setuptools wheel", 11 * MB),
        ],
    ),
    (
        "library/debian:bookworm-slim",
        "library/node",
        "20-slim",
        [
            ("RUN groupadd --gid 1000 node && useradd --uid 1000 node", 4_700),
            ("RUN curl -fsSLO nodejs.org/dist/v20 && tar -xJf node-v20-linux-x64.tar.xz", 160 * MB),
        ],
    ),
    (
        "library/debian:bookworm-slim",
        "library/nginx",
        "1.27",
        [
            ("RUN groupadd --system nginx && useradd --system nginx", 4_200),
            ("RUN apt-get install -y nginx=1.27.* nginx-module-njs", 112 * MB),
            ("COPY docker-entrypoint.sh /", 1_620),
        ],
    ),
    (
        "library/debian:bookworm-slim",
        "library/ruby",
        "3.3-slim",
        [
            ("RUN apt-get install -y libffi8 libgmp10 libssl3 libyaml-0-2", 12 * MB),
            ("RUN ./configure --disable-install-doc && make install  # ruby", 98 * MB),
        ],
    ),
    (
        "library/ubuntu:24.04",
        "library/eclipse-temurin",
        "21-jre",
        [
            ("RUN apt-get install -y tzdata curl wget ca-certificates fontconfig locales", 31 * MB),
            ("RUN curl -Lo /tmp/jdk.tar.gz adoptium.net && tar -xf /tmp/jdk.tar.gz", 158 * MB),
            ("COPY entrypoint.sh /__cacert_entrypoint.sh", 5_200),
        ],
    ),
    (
        "library/alpine:3.20",
        "library/python",
        "3.12-alpine",
        [
            ("RUN apk add --no-cache ca-certificates tzdata", 1_900_000),
            ("RUN ./configure --enable-optimizations && make install  # python", 44 * MB),
            ("RUN python -m ensurepip && pip install setuptools wheel", 11 * MB),
        ],
    ),
    (
        "library/alpine:3.20",
        "library/node",
        "20-alpine",
        [
            ("RUN addgroup -g 1000 node && adduser -u 1000 -G node -s /bin/sh -D node", 130_000),
            ("RUN apk add libstdc++ && tar -xJf node-v20-linux-x64-musl.tar.xz", 126 * MB),
            ("RUN npm install -g yarn@1.22", 5_300_000),
        ],
    ),
    (
        "library/alpine:3.20",
        "library/nginx",
        "1.27-alpine",
        [
            ("RUN addgroup -g 101 -S nginx && apk add --no-cache nginx=1.27.*", 38 * MB),
            ("COPY docker-entrypoint.sh /", 1_620),
        ],
    ),
    (
        "ubi9/ubi-minimal:9.4",
        "ubi9/openjdk-21",
        "1.20",
        [
            ("RUN microdnf install -y java-21-openjdk-headless shadow-utils", 210 * MB),
            ("COPY run-java.sh /opt/jboss/container/java/run/", 48_000),
        ],
    ),
]

# How an application on a runtime is built: (install its dependencies, copy its code, run it)
APP_STEPS: dict[str, tuple[str, str, list[str]]] = {
    "library/python": (
        "RUN pip install --no-cache-dir -r requirements.txt",
        "COPY . /app",
        ["gunicorn", "app:application"],
    ),
    "library/node": ("RUN npm ci --omit=dev", "COPY . /app", ["node", "server.js"]),
    "library/golang": (
        "RUN go mod download",
        "RUN go build -o /usr/local/bin/app ./cmd/app",
        ["app"],
    ),
    "library/nginx": (
        "COPY nginx.conf /etc/nginx/conf.d/default.conf",
        "COPY dist/ /usr/share/nginx/html",
        ["nginx", "-g", "daemon off;"],
    ),
    "library/ruby": ("RUN bundle install --deployment", "COPY . /app", ["bundle", "exec", "puma"]),
    "library/eclipse-temurin": (
        "COPY build/libs/dependencies/ /app/lib/",
        "COPY build/libs/app.jar /app/app.jar",
        ["java", "-jar", "/app/app.jar"],
    ),
    "ubi9/openjdk-21": (
        "COPY target/lib/ /deployments/lib/",
        "COPY target/app-runner.jar /deployments/",
        ["/opt/jboss/container/java/run/run-java.sh"],
    ),
}
# median bytes of an application's (dependencies, code) layers on each runtime
APP_SIZES: dict[str, tuple[int, int]] = {
    "library/python": (60 * MB, 3 * MB),
    "library/node": (90 * MB, 4 * MB),
    "library/golang": (180 * MB, 22 * MB),
    "library/nginx": (2_000, 6 * MB),
    "library/ruby": (70 * MB, 5 * MB),
    "library/eclipse-temurin": (45 * MB, 12 * MB),
    "ubi9/openjdk-21": (40 * MB, 9 * MB),
}
TEAMS = ("payments", "search", "platform", "checkout", "data", "identity", "growth", "infra")
SERVICES = (
    "api",
    "worker",
    "web",
    "gateway",
    "scheduler",
    "indexer",
    "notifier",
    "billing",
    "reports",
    "auth",
    "ingest",
    "frontend",
    "exporter",
    "cron",
    "admin",
    "ledger",
)
APP_REGISTRY = "registry.example.com"
HUB = "docker.io"


@dataclass
class LayerPlan:
    """One layer to write, keyed by its place in the stack (its ChainID)."""

    parent: LayerPlan | None
    diff_id: str
    digest: str
    chain_id: str
    size: int
    unpacked_size: int
    file_count: int
    created_by: str
    created: datetime
    depth: int
    row: Layer | None = None


@dataclass
class ImagePlan:
    """One image to write: where it lives, its layers bottom first, its run settings."""

    registry: str
    repository: str
    tag: str | None  # None: an older version whose tag moved on (``<none>``)
    layers: list[LayerPlan]
    created: datetime
    added_at: datetime
    run: dict[str, Any]
    row: Image | None = None


@dataclass
class CatalogPlan:
    """Everything the command writes, planned before the first row is inserted."""

    layers: list[LayerPlan] = field(default_factory=list)
    images: list[ImagePlan] = field(default_factory=list)


class Planner:
    """Plans a catalog from a seeded random generator; digests are salted per run so that a
    second run (``--force``) never collides with the first."""

    def __init__(self, *, seed: int, salt: str, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.salt = salt
        self.now = now
        self.plan = CatalogPlan()
        self._counter = 0
        self._by_name: dict[str, ImagePlan] = {}

    def _digest(self, kind: str) -> str:
        self._counter += 1
        text = f"layerhub seed_demo {self.salt} {kind} {self._counter}"
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def layer(
        self, parent: LayerPlan | None, created_by: str, unpacked: int, created: datetime
    ) -> LayerPlan:
        diff_id = self._digest("diff")
        chain = (
            diff_id
            if parent is None
            else "sha256:" + hashlib.sha256(f"{parent.chain_id} {diff_id}".encode()).hexdigest()
        )
        unpacked = max(unpacked, 32)
        plan = LayerPlan(
            parent=parent,
            diff_id=diff_id,
            digest=self._digest("blob"),
            chain_id=chain,
            # gzip takes binaries and text to roughly a third or a half
            size=max(int(unpacked * self.rng.uniform(0.28, 0.46)), 32),
            unpacked_size=unpacked,
            file_count=max(1, unpacked // self.rng.randint(15_000, 80_000)),
            created_by=created_by,
            created=created,
            depth=0 if parent is None else parent.depth + 1,
        )
        self.plan.layers.append(plan)
        return plan

    def image(
        self,
        registry: str,
        repository: str,
        tag: str | None,
        layers: list[LayerPlan],
        created: datetime,
        run: dict[str, Any],
    ) -> ImagePlan:
        pulled = created + timedelta(hours=self.rng.uniform(1, 24 * 20))
        plan = ImagePlan(
            registry=registry,
            repository=repository,
            tag=tag,
            layers=layers,
            created=created,
            added_at=min(pulled, self.now),
            run=run,
        )
        self.plan.images.append(plan)
        if tag is not None:
            self._by_name[f"{repository}:{tag}"] = plan
        return plan

    def _jitter(self, size: int) -> int:
        return int(size * self.rng.uniform(0.95, 1.05))

    def _days_ago(self, low: float, high: float) -> datetime:
        return self.now - timedelta(days=self.rng.uniform(low, high))

    def base_images(self) -> list[ImagePlan]:
        out = []
        for repository, tag, steps in BASES:
            created = self._days_ago(300, 420)
            layers: list[LayerPlan] = []
            for created_by, size in steps:
                parent = layers[-1] if layers else None
                layers.append(self.layer(parent, created_by, self._jitter(size), created))
            run = {"Env": [PATH_ENV], "Cmd": ["/bin/sh" if "alpine" in repository else "bash"]}
            out.append(self.image(HUB, repository, tag, layers, created, run))
        return out

    def runtime_images(self) -> list[ImagePlan]:
        out = []
        for base_name, repository, tag, steps in RUNTIMES:
            base = self._by_name[base_name]
            created = max(base.created + timedelta(days=self.rng.uniform(2, 60)), base.created)
            created = min(created, self.now - timedelta(days=30))
            layers = list(base.layers)
            for created_by, size in steps:
                layers.append(self.layer(layers[-1], created_by, self._jitter(size), created))
            name = repository.rsplit("/", 1)[-1]
            env = [PATH_ENV, f"{name.upper()}_VERSION={tag.split('-')[0]}", "LANG=C.UTF-8"]
            out.append(self.image(HUB, repository, tag, layers, created, {"Env": env}))
        return out

    def app_versions(self, runtimes: list[ImagePlan], want: int) -> None:
        """Applications on the runtimes until ``want`` images are planned in all."""
        # teams build mostly on the slim and Alpine runtimes, some on the full Debian ones
        weights = [
            0 if r.repository not in APP_STEPS else 1 if (r.tag or "").endswith("-bookworm") else 4
            for r in runtimes
        ]
        serial = 0
        while len(self.plan.images) < want:
            runtime = self.rng.choices(runtimes, weights=weights)[0]
            team = self.rng.choice(TEAMS)
            serial += 1
            service = f"{self.rng.choice(SERVICES)}-{serial}"
            repository = f"{team}/{service}"
            deps_step, code_step, cmd = APP_STEPS[runtime.repository]
            deps_median, code_median = APP_SIZES[runtime.repository]
            versions = min(max(int(self.rng.lognormvariate(1.8, 0.8)), 1), 40)
            created = max(self._days_ago(20, 330), runtime.created)
            deps: LayerPlan | None = None
            major, minor, patch = 1, self.rng.randint(0, 9), 0
            for index in range(versions):
                if len(self.plan.images) >= want:
                    return
                # the dependencies change every few releases; the code changes every release
                if deps is None or self.rng.random() < 0.3:
                    size = int(self.rng.lognormvariate(math.log(deps_median), 0.6))
                    deps = self.layer(runtime.layers[-1], deps_step, size, created)
                size = int(self.rng.lognormvariate(math.log(code_median), 0.8))
                code = self.layer(deps, code_step, size, created)
                latest = index == versions - 1
                # an older release that was re-pushed under the same tag is left untagged
                untagged = not latest and self.rng.random() < 0.08
                tag = None if untagged else f"{major}.{minor}.{patch}"
                run = {
                    "Env": [*runtime.run.get("Env", [PATH_ENV]), f"APP_VERSION={major}.{minor}"],
                    "Cmd": cmd,
                    "WorkingDir": "/app",
                    "User": "app",
                    "ExposedPorts": {"8080/tcp": {}},
                    "Labels": {
                        "org.opencontainers.image.source": f"https://git.example.com/{team}"
                    },
                }
                layers = [*runtime.layers, deps, code]
                self.image(APP_REGISTRY, repository, tag, layers, created, run)
                created = min(created + timedelta(days=self.rng.uniform(0.5, 14)), self.now)
                if self.rng.random() < 0.2:
                    minor, patch = minor + 1, 0
                else:
                    patch += 1


def plan_catalog(images: int, *, seed: int, salt: str, now: datetime) -> CatalogPlan:
    """The catalog to write: bases first, then runtimes, then applications, ``images`` in all
    (the first ``images`` of those when fewer than the bases and runtimes are asked for)."""
    planner = Planner(seed=seed, salt=salt, now=now)
    planner.base_images()
    runtimes = planner.runtime_images()
    planner.app_versions(runtimes, images)
    plan = planner.plan
    plan.images = plan.images[:images]
    used = {id(layer) for image in plan.images for layer in image.layers}
    plan.layers = [layer for layer in plan.layers if id(layer) in used]
    return plan


def history_entries(image: ImagePlan) -> list[dict[str, Any]]:
    """``docker history`` entries: one per layer, and the metadata-only steps (empty layers)."""
    entries: list[dict[str, Any]] = []
    for layer in image.layers:
        entries.append({"created": layer.created.isoformat(), "created_by": layer.created_by})
    if image.run.get("Cmd"):
        entries.append(
            {
                "created": image.created.isoformat(),
                "created_by": f"CMD {image.run['Cmd']!r}".replace("'", '"'),
                "empty_layer": True,
            }
        )
    return entries

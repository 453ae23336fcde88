"""What HTTP handlers may reach: one narrow, frozen bundle per area, never the whole App.

The composition (lifecycle.http_services) builds an HttpServices from the running App; the
aiohttp app holds it, and each handler module reads only its own area's part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from ..auth import Tokens
from ..engine.runner import Engine
from ..query.service import QueryService
from ..storage.catalog import Catalog
from ..write import WriteService
from .body import BodyLimits


@dataclass(frozen=True)
class HttpSettings:
    """The settings the middleware and handlers read; none is reloadable, so a copy stays true."""

    auth_enabled: bool
    bind: str
    allowed_hosts: tuple[str, ...]
    cors_origins: tuple[str, ...]
    metrics_without_token: bool  # auth.disable_authz lists "metrics"
    body: BodyLimits
    max_buffered_bytes: int


@dataclass(frozen=True)
class WriteAccess:
    """The v3, v2 and v1 write endpoints: the one write path and the threads it runs on."""

    writes: WriteService
    pool: Executor


@dataclass(frozen=True)
class QueryAccess:
    """SQL queries: the service, its pool, and the slots that bound how many run at once."""

    service: QueryService
    pool: Executor
    slots: asyncio.Semaphore  # query.max_concurrent permits
    max_concurrent: int


@dataclass(frozen=True)
class ConfigureAccess:
    """Databases, tables and tokens; changes run on the admin pool (never behind writes)."""

    catalog: Catalog
    tokens: Tokens
    pool: Executor
    auth_enabled: bool


@dataclass(frozen=True)
class EngineAccess:
    """Triggers, plugin dry runs, packages and request triggers."""

    engine: Engine
    pool: Executor  # request plugins and dry runs: never the event loop
    admin_pool: Executor  # trigger and package changes


@dataclass(frozen=True)
class OpsAccess:
    """Health, ping, metrics, persist and object store sync control."""

    health: Callable[[], dict[str, Any]]
    persist: Callable[[], Future[int]]
    sync_status: Callable[[], dict[str, Any]]
    sync_now: Callable[[], Future[None]] | None  # None when sync is not configured
    process_id: str
    pool: Executor  # metrics rendering and status reads: off the event loop


@dataclass(frozen=True)
class HttpServices:
    """Everything the HTTP layer uses, by area."""

    settings: HttpSettings
    write: WriteAccess
    query: QueryAccess
    configure: ConfigureAccess
    engine: EngineAccess
    ops: OpsAccess

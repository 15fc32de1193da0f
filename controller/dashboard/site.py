"""The dashboard's routes, its token check, and where each page's data comes from.

PNodes, leases, allocations and networks come from the view (`controller.state.view`),
exactly what the gRPC API answers from, so a page never costs a store read for them. Jobs
and events are not in the view: they are re-read from the store at most once per `poll`
seconds however many pages are open (`_Reads`), and this replica's own job writes reach
the job page at once through the job feed, which also feeds the curves.

Routes (all GET except the login form; docs/operations.md, "Dashboard"):

    /  /networks/NAME  /pnodes/NAME  /jobs/NAME      the pages (one HTML file, web/index.html)
    /api/overview  /api/networks/NAME  /api/pnodes/NAME  /api/jobs/NAME      JSON
    /api/watch/overview  /api/watch/networks/NAME ...   the same JSON as server-sent events,
                                                        sent again whenever it changes
    /static/FILE                                        the page's scripts and styles
    POST /login                                         the login form (token → cookie)

Access: with tokens configured (`--admin-token-file`, `--read-only-token-file`) every route
but /static and /login needs an admin or read-only token: `Authorization: Bearer`, the
cookie the login sets, or `?token=` once, answered with the cookie and a redirect to the
same page without it (so the token leaves the address bar and the history). No token or a
wrong one: 401, the login form for a page, JSON for /api. No tokens configured: open, as
the gRPC API is then.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import importlib.resources
import json
import logging
import os
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from api import tls as api_tls
from api.resources import event as event_model
from api.resources import job as job_model
from controller.dashboard import curves as curves_mod
from controller.dashboard import http, pages
from controller.jobs import job_watch
from controller.runtime import clock as clock_mod
from controller.services import auth
from controller.state import view as view_mod
from store import base, errors

log = logging.getLogger("dcnr.dashboard")

COOKIE = "dcnr_token"
#: Page routes: all served by index.html, which reads its route from the address.
#: Names as the records' (DNS subdomains, and a little more): nothing that could end a
#: header line or leave the site when a path is sent back in a Location.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}"
_PAGE = re.compile(rf"^/(?:(?:networks|pnodes|jobs)/{_NAME})?\Z")
_API = re.compile(rf"^/api/(?:watch/)?(overview|networks|pnodes|jobs)(?:/({_NAME}))?\Z")
_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "vendor.js": "text/javascript; charset=utf-8",
    "vendor.css": "text/css; charset=utf-8",
}
#: Server-sent events: a comment this often keeps proxies and the browser from timing out.
KEEPALIVE = 15.0
#: A watched page is recomputed at most this often, however fast the view changes.
MIN_PUSH_INTERVAL = 0.2
#: Pages whose pushed JSON is kept for other watchers (cleared when full).
MAX_CACHED_PAGES = 256


def _asset(name: str) -> bytes:
    return importlib.resources.files("controller.dashboard").joinpath("web", name).read_bytes()


def _stamp(files: api_tls.ServerFiles) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in (files.cert, files.key):
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((-1, -1, -1))
        else:
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


def _context(files: api_tls.ServerFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    return context


class ReloadingContext:
    """TLS with the gRPC listener's certificate, following its files as gRPC's does: each
    handshake looks at the files' stamps (from the server-name callback, which OpenSSL
    calls for every ClientHello, with or without a name) and, when they changed and load,
    hands the connection the new context. Files that do not load keep the previous one.

    Browsers present no client certificate, so `--tls-client-ca` (mutual TLS for gRPC)
    does not apply here: the token guards the dashboard."""

    def __init__(self, files: api_tls.ServerFiles) -> None:
        self._files = files
        self._stamp = _stamp(files)
        self._current = _context(files)
        self.context = _context(files)  # the listener's; it only dispatches to _current
        self.context.sni_callback = self._hello
        self.reloads = 0

    def _hello(self, connection: Any, server_name: str | None, _: ssl.SSLContext) -> None:
        stamp = _stamp(self._files)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._current = _context(self._files)
            except (OSError, ssl.SSLError) as exc:
                log.warning("dashboard: TLS files changed but cannot be used; keeping the "
                            "previous certificate: %s", exc)  # fmt: skip
            else:
                self.reloads += 1
                log.info("dashboard: TLS certificate reloaded from %s", self._files.cert)
        connection.context = self._current


class _Reads:
    """Jobs and events from the store, re-read at most once per `poll` seconds."""

    def __init__(self, store: base.Store, clock: clock_mod.Clock, poll: float) -> None:
        self._store = store
        self._clock = clock
        self._poll = poll
        self.at = -float("inf")
        self._lock = asyncio.Lock()
        self.jobs: list[job_model.Job] = []
        self.events: list[event_model.Event] = []

    async def fresh(self) -> None:
        async with self._lock:
            if self._clock.monotonic() - self.at < self._poll:
                return
            try:
                self.jobs = await base.list_all(self._store, job_model.Job)
                self.events = await base.list_all(self._store, event_model.Event)
            except errors.StoreError:
                log.warning("dashboard: could not re-read jobs and events; showing the last read")
            self.at = self._clock.monotonic()


class Dashboard:
    def __init__(
        self,
        *,
        view: view_mod.View,
        store: base.Store,
        clock: clock_mod.Clock,
        tokens: auth.Tokens,
        feed: job_watch.JobFeed,
        tls: api_tls.ServerFiles | None = None,
        poll: float = 1.0,
    ) -> None:
        self._view = view
        self._clock = clock
        self._tokens = tokens
        self._feed = feed
        self._tls = tls
        self._poll = poll
        self._reads = _Reads(store, clock, poll)
        self.curves = curves_mod.Curves()
        self._assets: dict[str, bytes] = {}
        #: (page, name) → (what it was computed from, its JSON): shared by watchers.
        self._texts: dict[tuple[str, str | None], tuple[tuple[Any, ...], str]] = {}
        self.tls = ReloadingContext(tls) if tls is not None else None
        self._http = http.Server(self.handle, ssl_context=self.tls.context if self.tls else None)
        feed.subscribe(self._job_written)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._assets = {name: _asset(name) for name in [*_STATIC, "index.html", "login.html"]}
        self.port = await self._http.start(host, port)
        return self.port

    async def stop(self) -> None:
        await self._http.stop()

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    # -- data -------------------------------------------------------------------------------

    def _job_written(self, job: job_model.Job) -> None:
        self.curves.observe(job, self._clock.now().timestamp())

    def _is_live(self) -> pages.IsLive:
        now = self._clock.now()
        return lambda name: self._view.is_live(name, now)

    def _jobs(self) -> list[job_model.Job]:
        """The store's jobs, each replaced by this replica's newer write of it if any."""
        jobs = []
        for job in self._reads.jobs:
            mine = self._feed.latest(job.name)
            if (
                mine is not None
                and mine.metadata.uid == job.metadata.uid
                and mine.metadata.resource_version > job.metadata.resource_version
            ):
                job = mine
            jobs.append(job)
        now = self._clock.now().timestamp()
        for job in jobs:
            self.curves.observe(job, now)
        return jobs

    def _events_of(self, kind: str, name: str) -> list[event_model.Event]:
        key = f"{kind}/{name}"
        return [e for e in self._reads.events if e.involved_object.key() == key]

    async def document(self, page: str, name: str | None) -> pages.JSON | None:
        """The JSON of one page; None when what it is about does not exist."""
        await self._reads.fresh()
        view = self._view
        if page == "overview":
            return pages.overview(
                pnodes=view.pnodes.values(),
                allocations=view.allocations.values(),
                networks=view.networks.values(),
                jobs=self._jobs(),
                events=self._reads.events,
                is_live=self._is_live(),
            )
        assert name is not None
        if page == "networks":
            net = view.networks.get(name)
            if net is None:
                return None
            return pages.network_graph(
                net,
                view.allocations_of(name),
                is_live=self._is_live(),
                events=self._events_of("Network", name),
            )
        if page == "pnodes":
            node = view.pnodes.get(name)
            if node is None:
                return None
            return pages.pnode_detail(
                node,
                view.allocations_on(name),
                live=self._is_live()(name),
                lease_expiry=view.lease_expiry(name),
                events=self._events_of("PNode", name),
            )
        job = next((j for j in self._jobs() if j.name == name), None)
        if job is None:
            job = self._feed.latest(name)
        if job is None:
            return None
        return pages.job_detail(job, self.curves.points(name), self._events_of("Job", name))

    # -- HTTP -------------------------------------------------------------------------------

    def _cookie(self, token: str) -> str:
        secure = "; Secure" if self._tls is not None else ""
        value = urllib.parse.quote(token, safe="")
        return f"{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/{secure}"

    def _presented(self, request: http.Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            return header.removeprefix("Bearer ").strip() or None
        cookie = request.cookie(COOKIE)
        return urllib.parse.unquote(cookie) if cookie else None

    def _refused(self, request: http.Request, why: str) -> http.Response:
        if request.path.startswith("/api/"):
            return http.Response.error(401, why)
        page = self._assets["login.html"].decode()
        page = page.replace("{{message}}", html.escape(why)).replace(
            "{{next}}", html.escape(request.path, quote=True)
        )
        answer = http.Response(401, page.encode(), "text/html; charset=utf-8")
        answer.headers.append(("Cache-Control", "no-store"))
        return answer

    async def handle(self, request: http.Request) -> http.Response | http.Stream:
        if request.method not in ("GET", "HEAD", "POST"):
            return http.Response.error(
                405, f"method {request.method[:10]!r}: the dashboard is read-only"
            )
        path = request.path
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        if path == "/login":
            return self._login(request)
        if request.method == "POST":
            return http.Response.error(405, f"POST {path[:80]}: only /login takes a POST")
        if self._tokens.configured:
            given = request.query.get("token")
            if given is not None:
                if self._tokens.role(given) is None:
                    return self._refused(request, "the token given is not valid for this server")
                # The token leaves the address (history, screenshots): the cookie holds it.
                # Back to the same page, if it is one of ours; never off the site.
                back = path if _PAGE.match(path) or _API.match(path) else "/"
                return http.Response(
                    303, headers=[("Location", back), ("Set-Cookie", self._cookie(given))]
                )
            presented = self._presented(request)
            if presented is None:
                return self._refused(
                    request,
                    "this dashboard needs an admin or read-only token (--read-only-token-file)",
                )
            if self._tokens.role(presented) is None:
                return self._refused(request, "the token presented is not valid for this server")
        if _PAGE.match(path):
            answer = http.Response(200, self._assets["index.html"], "text/html; charset=utf-8")
            answer.headers.append(("Cache-Control", "no-store"))
            return answer
        match = _API.match(path)
        if match is None:
            return http.Response.error(404, f"no such page: {path[:200]!r}")
        page, name = match[1], match[2]
        if (page == "overview") != (name is None):
            return http.Response.error(404, f"no such page: {path[:200]!r}")
        if path.startswith("/api/watch/"):
            if request.method == "HEAD":
                return http.Response(200, b"", "text/event-stream")
            return http.Stream(lambda send: self._watch(page, name, send))
        document = await self.document(page, name)
        if document is None:
            return http.Response.error(404, f"{page[:-1]} {name!r} not found")
        return http.Response.json(document)

    def _static(self, name: str) -> http.Response:
        content_type = _STATIC.get(name)
        if content_type is None:
            return http.Response.error(404, f"no such file: {name[:80]!r}")
        answer = http.Response(200, self._assets[name], content_type)
        answer.headers.append(("Cache-Control", "max-age=300"))
        return answer

    def _login(self, request: http.Request) -> http.Response:
        if request.method != "POST":
            return self._refused(request, "enter an admin or read-only token")
        form = request.form()
        token = form.get("token", "").strip()
        target = form.get("next", "/")
        if not _PAGE.match(target):
            target = "/"  # never a redirect off this site
        if self._tokens.configured and self._tokens.role(token) is None:
            return self._refused(
                http.Request("GET", target, {}, request.headers),
                "that token is not valid for this server",
            )
        return http.Response(
            303, headers=[("Location", target), ("Set-Cookie", self._cookie(token))]
        )

    async def _watch(
        self, page: str, name: str | None, send: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Send the page's JSON now and again each time it differs; a comment every
        KEEPALIVE seconds otherwise. Wakes on any change of the view, on this replica's
        writes of the job watched, and every `poll` seconds (leases expire, other replicas
        write jobs and events, with no signal here)."""
        last = None
        quiet = 0.0
        while True:
            seen = self._view.changed.value
            # This replica's writes of the job wake the page at once; a job it never wrote
            # gets no signal (one per name asked for would grow without bound).
            mine = page == "jobs" and name is not None and self._feed.latest(name) is not None
            job_seen = self._feed.signal(name).value if mine and name else -1
            text = await self._text(page, name)
            if text != last:
                await send(f"data: {text}\n\n".encode())
                last, quiet = text, 0.0
            elif quiet >= KEEPALIVE:
                await send(b": keepalive\n\n")
                quiet = 0.0
            await self._clock.sleep(MIN_PUSH_INTERVAL)
            started = self._clock.monotonic()
            await self._wake(seen, page, name, job_seen)
            quiet += MIN_PUSH_INTERVAL + self._clock.monotonic() - started

    async def _text(self, page: str, name: str | None) -> str:
        """The page's JSON as pushed, computed once for every watcher of the same page
        while nothing it is made of can have changed: the view's change counter, the
        job feed's, the store re-read, and the `poll` period liveness is judged in."""
        await self._reads.fresh()
        mine = page == "jobs" and name is not None and self._feed.latest(name) is not None
        key = (
            self._view.changed.value,
            self._feed.signal(name).value if mine and name else 0,
            self._reads.at,
            int(self._clock.monotonic() // self._poll),
        )
        held = self._texts.get((page, name))
        if held is not None and held[0] == key:
            return held[1]
        document = await self.document(page, name)
        text = json.dumps(
            document if document is not None else {"error": f"{page[:-1]} {name!r} not found"},
            separators=(",", ":"),
            allow_nan=False,
        )
        if len(self._texts) >= MAX_CACHED_PAGES:
            self._texts.clear()
        self._texts[(page, name)] = (key, text)
        return text

    async def _wake(self, seen: int, page: str, name: str | None, job_seen: int) -> None:
        waits: list[Awaitable[Any]] = [self._view.changed.wait_past(seen, within=self._poll)]
        if job_seen >= 0 and name:
            waits.append(self._feed.signal(name).wait_past(job_seen, within=self._poll))
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

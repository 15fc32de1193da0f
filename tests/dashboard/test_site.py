"""The dashboard's HTTP side in-process, over real loopback sockets: who gets in (tokens,
the cookie, the login form, TLS), the limits on what a client sends, the JSON and the
server-sent events, against a real view over a SQLite store."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api import tls as api_tls
from api.resources import allocation
from controller import config as config_mod
from controller.dashboard import http, site
from controller.jobs import job_watch
from controller.runtime import clock as clocks
from controller.services import auth
from controller.state import view as view_mod
from store import sqlite
from tests.controller.state.test_view import (
    allocation_record,
    create_all,
    network_record,
    pnode_record,
)
from tests.support import tls

ADMIN, READ_ONLY = "admin-token", "read-only;token"  # a ';' must survive the cookie


class Client:
    """Raw HTTP/1.1 over one connection: the bytes are the test's to choose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers.setdefault(key.strip().lower(), value.strip())
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        return status, headers, body

    async def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: test",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await self.response()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class Site:
    def __init__(
        self, dashboard: site.Dashboard, view: view_mod.View, context: ssl.SSLContext | None
    ):
        self.dashboard, self.view, self.context = dashboard, view, context

    async def connect(self) -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.dashboard.port, ssl=self.context,
            server_hostname="localhost" if self.context else None,
        )  # fmt: skip
        return Client(reader, writer)

    async def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        client = await self.connect()
        try:
            return await client.get(path, headers)
        finally:
            await client.close()


async def _site(
    tmp_path: Path,
    *,
    tokens: auth.Tokens,
    tls_files: api_tls.ServerFiles | None = None,
    context: ssl.SSLContext | None = None,
    poll: float = 0.2,
) -> AsyncIterator[Site]:
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clocks.SystemClock()
    view = view_mod.View(store, clock, config=config_mod.ControlPlaneConfig())
    await create_all(
        store, pnode_record("p1"), pnode_record("p2"), network_record("net", ("a", "b")),
        allocation_record("net", "a", 0, "p1"), allocation_record("net", "b", 0, "p2"),
    )  # fmt: skip
    await view.refresh()
    dashboard = site.Dashboard(
        view=view, store=store, clock=clock, tokens=tokens, feed=job_watch.JobFeed(clock),
        tls=tls_files, poll=poll,
    )  # fmt: skip
    await dashboard.start("127.0.0.1", 0)
    try:
        yield Site(dashboard, view, context)
    finally:
        await dashboard.stop()
        await store.close()


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in _site(tmp_path, tokens=auth.Tokens([ADMIN], [READ_ONLY])):
        yield s


@pytest.fixture
async def open_site(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in _site(tmp_path, tokens=auth.Tokens()):
        yield s


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/", "/networks/net", "/api/overview", "/api/watch/overview"])
async def test_no_token_is_refused(guarded: Site, path: str) -> None:
    status, _headers, body = await guarded.get(path)
    assert status == 401
    if path.startswith("/api/"):
        assert json.loads(body)["status"] == 401
    else:
        assert b'<form method="post" action="/login">' in body
        assert f'value="{path}"'.encode() in body  # back to the page after signing in


@pytest.mark.parametrize("token", [ADMIN, READ_ONLY])
async def test_both_roles_read_and_a_wrong_token_does_not(guarded: Site, token: str) -> None:
    status, _, body = await guarded.get("/api/overview", _bearer(token))
    assert status == 200
    assert [p["name"] for p in json.loads(body)["pnodes"]] == ["p1", "p2"]
    assert (await guarded.get("/api/overview", _bearer(token + "x")))[0] == 401


async def test_token_in_the_url_becomes_a_cookie_and_leaves_the_address(guarded: Site) -> None:
    quoted = READ_ONLY.replace(";", "%3B")
    status, headers, _ = await guarded.get(f"/networks/net?token={quoted}")
    assert status == 303
    assert headers["location"] == "/networks/net"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie
    value = cookie.split(";", 1)[0]
    status, _, body = await guarded.get("/api/networks/net", {"Cookie": f"other=1; {value}"})
    assert status == 200, body
    assert (await guarded.get("/?token=wrong"))[0] == 401
    # Never a redirect off the site, nor a header of the client's making.
    status, headers, _ = await guarded.get(f"//elsewhere.example/?token={quoted}")
    assert (status, headers["location"]) == (303, "/")
    status, headers, _ = await guarded.get(f"/networks/a%0d%0aSet-Cookie:%20x=1?token={quoted}")
    assert status == 400
    assert "set-cookie" not in headers


async def test_login_form(guarded: Site) -> None:
    async def post(form: str) -> tuple[int, dict[str, str], bytes]:
        client = await guarded.connect()
        try:
            await client.send(
                "POST /login HTTP/1.1\r\nHost: t\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(form)}\r\n\r\n{form}".encode()
            )
            return await client.response()
        finally:
            await client.close()

    status, headers, _ = await post(f"token={ADMIN}&next=/jobs/j1")
    assert (status, headers["location"]) == (303, "/jobs/j1")
    assert headers["set-cookie"].startswith(f"{site.COOKIE}={ADMIN};")
    status, headers, _ = await post(f"token={ADMIN}&next=//elsewhere.example/")
    assert headers["location"] == "/"  # never a redirect off the site
    status, headers, _ = await post(f"token={ADMIN}&next=/jobs/a%0d%0aSet-Cookie:%20x=1")
    assert headers["location"] == "/"  # nor a header of the form's making
    status, headers, body = await post("token=wrong&next=/")
    assert status == 401
    assert "set-cookie" not in headers
    assert b"not valid" in body


async def test_open_when_no_token_is_configured(open_site: Site) -> None:
    status, _, body = await open_site.get("/api/networks/net")
    assert status == 200
    document = json.loads(body)
    assert [(n["id"], n["pnode"]) for n in document["nodes"]] == [("a#0", "p1"), ("b#0", "p2")]
    assert document["edges"] == [{"id": "a#0>b#0", "source": "a#0", "target": "b#0"}]


async def test_pages_assets_and_not_found(open_site: Site) -> None:
    for path in ("/", "/networks/net", "/pnodes/p1", "/jobs/anything"):
        status, headers, body = await open_site.get(path)
        assert status == 200, path
        assert headers["content-type"].startswith("text/html")
        assert b'src="/static/app.js"' in body
        assert "default-src 'self'" in headers["content-security-policy"]
    status, headers, body = await open_site.get("/static/vendor.js")
    assert status == 200
    assert b"cytoscape" in body
    assert b"uPlot" in body
    assert (await open_site.get("/static/../site.py"))[0] == 404
    assert (await open_site.get("/api/networks/absent"))[0] == 404
    assert (await open_site.get("/api/pnodes/absent"))[0] == 404
    assert (await open_site.get("/api/jobs/absent"))[0] == 404
    assert (await open_site.get("/api/overview/extra"))[0] == 404
    assert (await open_site.get("/nowhere"))[0] == 404


async def test_keep_alive_serves_several_requests_on_one_connection(open_site: Site) -> None:
    client = await open_site.connect()
    try:
        for path in ("/api/overview", "/api/pnodes/p1", "/static/app.css"):
            status, headers, _ = await client.get(path)
            assert status == 200
            assert headers["connection"] == "keep-alive"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (http.MAX_HEAD + 10) + b"\r\n\r\n", 431),
        (f"POST /login HTTP/1.1\r\nContent-Length: {http.MAX_BODY + 1}\r\n\r\n".encode(), 413),
        (b"POST /login HTTP/1.1\r\nContent-Length: lots\r\n\r\n", 400),
        (b"POST /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / SPDY/3\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"PUT /api/overview HTTP/1.1\r\n\r\n", 405),
        (b"POST /api/overview HTTP/1.1\r\n\r\n", 405),
    ],
)
async def test_bad_requests_get_a_clear_status(open_site: Site, raw: bytes, status: int) -> None:
    client = await open_site.connect()
    try:
        await client.send(raw)
        got, _, body = await client.response()
    finally:
        await client.close()
    assert got == status, body
    assert json.loads(body)["error"]


async def test_watch_pushes_the_page_again_when_the_view_changes(open_site: Site) -> None:
    client = await open_site.connect()
    try:
        await client.send(b"GET /api/watch/networks/net HTTP/1.1\r\n\r\n")
        status, headers, _ = await client.response()
        assert status == 200
        assert headers["content-type"] == "text/event-stream"

        async def next_document() -> dict[str, Any]:
            while True:
                line = await asyncio.wait_for(client.reader.readline(), 10)
                if line.startswith(b"data: "):
                    document: dict[str, Any] = json.loads(line[6:])
                    return document

        first = await next_document()
        assert [n["pnode"] for n in first["nodes"]] == ["p1", "p2"]
        moved = allocation_record("net", "a", 0, "p2", epoch=2)
        old = open_site.view.allocations[allocation.slot_name("net", "a", 0)]
        moved.metadata.resource_version = old.metadata.resource_version + 1
        moved.metadata.uid = old.metadata.uid
        open_site.view.apply_written([moved])
        second = await next_document()
        nodes = second["nodes"]
        assert [(n["pnode"], n["epoch"]) for n in nodes] == [("p2", 2), ("p2", 1)]
    finally:
        await client.close()


async def test_tls_with_the_grpc_certificate(tmp_path: Path) -> None:
    pki = tls.Pki.create(tmp_path / "pki")
    files = api_tls.ServerFiles(pki.paths.cert, pki.paths.key)
    context = ssl.create_default_context(cafile=str(pki.paths.ca))
    async for s in _site(tmp_path, tokens=auth.Tokens([ADMIN]), tls_files=files, context=context):
        assert s.dashboard.scheme == "https"
        status, headers, _ = await s.get(f"/?token={ADMIN}")
        assert status == 303
        assert "; Secure" in headers["set-cookie"]
        status, _, _ = await s.get("/api/overview", _bearer(ADMIN))
        assert status == 200
        # The certificate follows its files, as gRPC's does: the next handshake shows it.
        address = f"127.0.0.1:{s.dashboard.port}"
        before = await asyncio.to_thread(tls.peer_serial, address, pki.paths.ca)
        rotated = pki.rotate_server()
        assert rotated != before
        assert await asyncio.to_thread(tls.peer_serial, address, pki.paths.ca) == rotated
        assert s.dashboard.tls is not None
        assert s.dashboard.tls.reloads == 1
        pki.paths.key.write_text("not a key")  # unusable files: the last good one stays
        assert await asyncio.to_thread(tls.peer_serial, address, pki.paths.ca) == rotated
        assert (await s.get("/api/overview", _bearer(ADMIN)))[0] == 200


@pytest.fixture
async def quiet_site(tmp_path: Path) -> AsyncIterator[Site]:
    """A long poll period: no store re-read and no period edge during a test."""
    async for s in _site(tmp_path, tokens=auth.Tokens(), poll=600):
        yield s


async def test_watchers_of_one_page_share_its_computation(
    quiet_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing moves while three pages open (no re-read, no period edge, no change of the
    view), so the overview is computed once for all three."""
    computed: list[str] = []
    real = quiet_site.dashboard.document

    async def counting(page: str, name: str | None) -> dict[str, Any] | None:
        computed.append(page)
        return await real(page, name)

    monkeypatch.setattr(quiet_site.dashboard, "document", counting)
    clients = [await quiet_site.connect() for _ in range(3)]
    try:
        firsts = []
        for client in clients:
            await client.send(b"GET /api/watch/overview HTTP/1.1\r\n\r\n")
            status, _, _ = await client.response()
            assert status == 200
            line = b""
            while not line.startswith(b"data: "):
                line = await asyncio.wait_for(client.reader.readline(), 10)
            firsts.append(line)
        assert firsts[0] == firsts[1] == firsts[2]
        assert computed == ["overview"]
    finally:
        for client in clients:
            await client.close()

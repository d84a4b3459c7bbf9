"""The fake gateway: plain JSON text frames, HELLO/IDENTIFY/READY/RESUME and dispatches.

Each websocket is a :class:`Connection`; a successful IDENTIFY creates a :class:`Session`, which
outlives its connection so that a RESUME can replay what was dispatched while the bot was away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import FakeDiscord

_log = logging.getLogger("fakediscord")

# Gateway intents that gate what this fake sends.
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15

# A payload, or a function building it from the receiving session (to honour its intents).
EventData = dict[str, Any] | Callable[["Session"], dict[str, Any]]


@dataclass(eq=False)
class Session:
    id: str
    intents: int
    seq: int = 0
    backlog: list[dict[str, Any]] = field(default_factory=list)
    connection: Connection | None = None
    disconnected_at: float = 0.0  # event-loop time the last websocket went away

    def has(self, intent: int) -> bool:
        return bool(self.intents & intent)


class Connection:
    """One websocket; frames go out in order through a queue drained by a writer task."""

    def __init__(self, ws: web.WebSocketResponse, path: str) -> None:
        self.ws = ws
        self.path = path
        self.session: Session | None = None
        self.closed_by_server = False
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.writer = asyncio.create_task(self._write(), name="fakediscord-gateway-writer")

    def send(self, payload: dict[str, Any]) -> None:
        self.queue.put_nowait(payload)

    async def _write(self) -> None:
        while (payload := await self.queue.get()) is not None:
            try:
                await self.ws.send_str(json.dumps(payload))
            except (ConnectionError, RuntimeError):
                return  # closed under us; a resumed session replays from its backlog

    async def close(self, code: int) -> None:
        self.closed_by_server = True
        self.queue.put_nowait(None)
        await self.writer
        await self.ws.close(code=code)


class Gateway:
    """Serves ``/gateway`` and ``/resume`` (the ``resume_gateway_url``) for a FakeDiscord."""

    BACKLOG = 1000
    RESUME_WINDOW = 5.0

    def __init__(self, fd: FakeDiscord, heartbeat_interval: float) -> None:
        self.fd = fd
        self.heartbeat_interval = heartbeat_interval
        self.sessions: dict[str, Session] = {}
        self.connections: list[Connection] = []
        self.identify_count = 0
        self.resume_count = 0
        self.identify_payloads: list[dict[str, Any]] = []
        self.presence: dict[str, Any] | None = None

    # -- serving -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, timeout=2.0)
        await ws.prepare(request)
        conn = Connection(ws, request.path)
        self.connections.append(conn)
        conn.send({"op": 10, "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000)}})
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_frame(conn, json.loads(msg.data))
                elif msg.type is WSMsgType.BINARY:
                    self.fd._problem("gateway: unexpected binary frame from the bot")
        finally:
            self.connections.remove(conn)
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
                session.disconnected_at = asyncio.get_running_loop().time()
                if not conn.closed_by_server and ws.close_code in (1000, 1001):
                    self.sessions.pop(session.id, None)  # a clean close by the bot ends its session
            if not conn.writer.done():
                conn.queue.put_nowait(None)
            self.fd._notify()
        return ws

    async def _on_frame(self, conn: Connection, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:  # HEARTBEAT
            conn.send({"op": 11})
        elif op == 2:  # IDENTIFY
            await self._identify(conn, d)
        elif op == 6:  # RESUME
            await self._resume(conn, d)
        elif op == 3:  # PRESENCE UPDATE
            self.presence = d
        elif op == 8:  # REQUEST GUILD MEMBERS
            self._request_members(conn, d)
        elif op == 4:  # VOICE STATE UPDATE: no voice here
            pass
        else:
            self.fd._problem(f"gateway: unknown op {op}: {frame!r}")

    def _token_ok(self, token: str | None) -> bool:
        self.fd.tokens_seen.add(token or "")
        return self.fd.token is None or token == self.fd.token

    async def _identify(self, conn: Connection, d: dict[str, Any]) -> None:
        if not self._token_ok(d.get("token")):
            await conn.close(4004)  # Authentication failed
            return
        self.identify_count += 1
        self.identify_payloads.append(d)
        session = Session(id=secrets.token_hex(16), intents=int(d.get("intents", 0)))
        self.sessions[session.id] = session
        self._attach(conn, session)
        fd = self.fd
        ready = {
            "v": 10,
            "user": {**fd.bot_user.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in fd.guilds.values()],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": fd.resume_gateway_url,
            "shard": d.get("shard", [0, 1]),
            "application": {"id": str(fd.application_id), "flags": fd.application_flags},
            "private_channels": [],
            "presences": [],
            "relationships": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fakediscord"],
        }
        self._dispatch_to(session, "READY", ready)
        for guild in fd.guilds.values():
            self._dispatch_to(session, "GUILD_CREATE", fd._guild_create_payload(guild, session))
        fd._notify()

    async def _resume(self, conn: Connection, d: dict[str, Any]) -> None:
        if not self._token_ok(d.get("token")):
            await conn.close(4004)
            return
        session = self.sessions.get(d.get("session_id", ""))
        if session is None:
            conn.send({"op": 9, "d": False})
            return
        self.resume_count += 1
        last_seen = d.get("seq") or 0
        old = session.connection
        if old is not None and old is not conn:
            await old.close(4000)
        self._attach(conn, session)
        for payload in session.backlog:
            if payload["s"] > last_seen:
                conn.send(payload)
        self._dispatch_to(session, "RESUMED", {"_trace": ["fakediscord"]})
        self.fd._notify()

    def _request_members(self, conn: Connection, d: dict[str, Any]) -> None:
        session = conn.session
        if session is None:
            return
        ids = d.get("guild_id")
        for gid in ids if isinstance(ids, list) else [ids]:
            guild = self.fd.guilds.get(int(gid))
            if guild is None:
                continue
            wanted = {int(u) for u in d.get("user_ids") or []}
            query = (d.get("query") or "").lower()
            members = [
                m.payload()
                for m in guild.members.values()
                if (not wanted or m.id in wanted) and m.name.lower().startswith(query)
            ]
            chunk = {
                "guild_id": str(guild.id),
                "members": members,
                "chunk_index": 0,
                "chunk_count": 1,
            }
            if d.get("nonce"):
                chunk["nonce"] = d["nonce"]
            self._dispatch_to(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _attach(self, conn: Connection, session: Session) -> None:
        conn.session = session
        session.connection = conn

    # -- sending -------------------------------------------------------------------------------

    def _dispatch_to(self, session: Session, event: str, data: EventData) -> None:
        session.seq += 1
        payload = {
            "op": 0,
            "t": event,
            "s": session.seq,
            "d": data(session) if callable(data) else data,
        }
        session.backlog.append(payload)
        del session.backlog[: -self.BACKLOG]
        if session.connection is not None:
            session.connection.send(payload)

    def dispatch(self, event: str, data: EventData, *, intent: int | None = None) -> int:
        """Send an event to every session (connected or waiting to resume) that has ``intent``.

        Returns how many sessions it went to.
        """
        sent = 0
        for session in self.sessions.values():
            if intent is None or session.has(intent):
                self._dispatch_to(session, event, data)
                sent += 1
        return sent

    @property
    def live_session(self) -> Session | None:
        """The most recently identified session that currently has a websocket."""
        live = [s for s in self.sessions.values() if s.connection is not None]
        return live[-1] if live else None

    @property
    def current_session(self) -> Session | None:
        """Where interactions go: the live session, else one that lost its websocket less than
        RESUME_WINDOW seconds ago (its events are replayed if the bot RESUMEs)."""
        if self.live_session is not None:
            return self.live_session
        now = asyncio.get_running_loop().time()
        recent = [s for s in self.sessions.values() if now - s.disconnected_at < self.RESUME_WINDOW]
        return recent[-1] if recent else None

    # -- test controls ---------------------------------------------------------------------------

    async def disconnect(self, code: int = 4000) -> None:
        """Close every bot websocket with ``code`` (4000 lets discord.py RESUME)."""
        for conn in list(self.connections):
            await conn.close(code)

    def send_op(self, op: int, d: Any = None) -> None:
        """Send a raw opcode (7 RECONNECT, 9 INVALID_SESSION, 1 HEARTBEAT) to every connection."""
        for conn in self.connections:
            conn.send({"op": op, "d": d})

    async def close(self) -> None:
        for conn in list(self.connections):
            await conn.close(1001)

"""``FakeDiscord``: an in-memory Discord (REST + gateway + CDN) on 127.0.0.1 for end-to-end tests.

    async with FakeDiscord() as fd:
        ...  # point a bot at fd.api_base / fd.gateway_url, then play members with fd.invoke(...)

Nothing here assumes the bot runs in the same process: everything goes over HTTP and websockets.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import mimetypes
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from . import rest
from .errors import ApiError, Fault, invalid_form
from .gateway import (
    DIRECT_MESSAGES,
    GUILD_MEMBERS,
    GUILD_MESSAGES,
    GUILDS,
    MESSAGE_CONTENT,
    Gateway,
    Session,
)
from .models import (
    ADMINISTRATOR,
    DEFAULT_EVERYONE_PERMISSIONS,
    EPHEMERAL,
    LOADING,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    Snowflakes,
    compute_pings,
    iso,
    walk_components,
)
from .users import MemberActions

_log = logging.getLogger("fakediscord")
T = TypeVar("T")


class FakeDiscord(MemberActions):
    """A fake Discord: one bot application, one guild (``fd.guild``), one channel (``fd.channel``).

    Args:
        token: the bot token the fake accepts; ``None`` accepts any (seen ones: ``tokens_seen``).
        response_deadline: seconds a bot has for the initial interaction response (Discord: 3).
        token_lifetime: seconds an interaction token stays valid for followups/edits (Discord: 900).
        heartbeat_interval: seconds, sent in HELLO.
        attachment_size_limit: bytes per uploaded file (also sent in interactions).
        nonce_window: seconds a message nonce sent with ``enforce_nonce`` is remembered
            (Discord: "a few minutes").
    """

    def __init__(
        self,
        *,
        token: str | None = "fake-bot-token",
        bot_name: str = "Easel",
        guild_name: str = "Test Guild",
        channel_name: str = "general",
        response_deadline: float = 3.0,
        token_lifetime: float = 15 * 60,
        heartbeat_interval: float = 10.0,
        attachment_size_limit: int = 10 * 1024 * 1024,
        nonce_window: float = 5 * 60,
    ) -> None:
        self.token = token
        self.nonce_window = nonce_window
        self.faults: list[Fault] = []  # scripted 5xx answers: see fail()
        self._nonces: dict[tuple[int, str], tuple[float, FakeMessage]] = {}
        self.response_deadline = response_deadline
        self.token_lifetime = token_lifetime
        self.attachment_size_limit = attachment_size_limit
        self.application_flags = 0
        self.tokens_seen: set[str] = set()
        self.problems: list[str] = []  # unknown routes, server-side exceptions: see check()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every HTTP request, in order

        self.new_id = Snowflakes()
        self.application_id = self.new_id()
        self.bot_user = FakeUser(self.application_id, bot_name, bot=True)
        self.app_owner = FakeUser(self.new_id(), "owner")
        self.users: dict[int, FakeUser] = {u.id: u for u in (self.bot_user, self.app_owner)}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages_by_id: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.commands_by_scope: dict[int | None, list[dict[str, Any]]] = {None: []}

        self.gateway = Gateway(self, heartbeat_interval)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._http: aiohttp.ClientSession | None = None

        self.guild = self.add_guild(guild_name, owner=self.app_owner, channel_name=channel_name)
        self.channel = self.guild.text_channels[0]

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=1024**3, middlewares=[rest.error_middleware(self)])
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/resume", self.gateway.handle)
        rest.add_routes(app, self)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        await self.gateway.close()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """Set ``discord.http.Route.BASE`` (or DISCORD_API_BASE) to this."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """Set ``DiscordWebSocket.DEFAULT_GATEWAY`` (or DISCORD_GATEWAY_URL) to this."""
        return f"ws://127.0.0.1:{self._port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/resume"

    # -- building the world ----------------------------------------------------------------------

    def add_guild(
        self, name: str, *, owner: FakeUser | None = None, channel_name: str = "general"
    ) -> FakeGuild:
        """A guild with @everyone, the bot (with an admin managed role) and one text channel."""
        gid = self.new_id()
        owner = owner or self.app_owner
        guild = FakeGuild(gid, name, owner.id)
        guild.roles[gid] = FakeRole(gid, gid, "@everyone", DEFAULT_EVERYONE_PERMISSIONS)
        bot_role = FakeRole(
            self.new_id(),
            gid,
            self.bot_user.name,
            ADMINISTRATOR,
            position=1,
            bot_id=self.bot_user.id,
        )
        guild.roles[bot_role.id] = bot_role
        guild.members[self.bot_user.id] = FakeMember(self.bot_user, guild, [bot_role])
        guild.members[owner.id] = FakeMember(owner, guild)
        self.guilds[gid] = guild
        self.commands_by_scope[gid] = []
        self._add_channel(guild, channel_name)
        self.gateway.dispatch(
            "GUILD_CREATE", lambda s: self._guild_create_payload(guild, s), intent=GUILDS
        )
        return guild

    def add_channel(
        self, name: str, *, guild: FakeGuild | None = None, topic: str | None = None
    ) -> FakeChannel:
        guild = guild or self.guild
        channel = self._add_channel(guild, name, topic)
        self.gateway.dispatch("CHANNEL_CREATE", channel.payload(), intent=GUILDS)
        return channel

    def _add_channel(self, guild: FakeGuild, name: str, topic: str | None = None) -> FakeChannel:
        channel = FakeChannel(
            self.new_id(), name, guild.id, position=len(guild.channels), topic=topic
        )
        guild.channels[channel.id] = self.channels[channel.id] = channel
        return channel

    def add_role(
        self,
        name: str,
        permissions: int = 0,
        *,
        guild: FakeGuild | None = None,
        mentionable: bool = False,
    ) -> FakeRole:
        guild = guild or self.guild
        role = FakeRole(
            self.new_id(),
            guild.id,
            name,
            permissions,
            position=len(guild.roles),
            mentionable=mentionable,
        )
        guild.roles[role.id] = role
        self.gateway.dispatch(
            "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()}, intent=GUILDS
        )
        return role

    def add_member(
        self,
        name: str,
        *,
        permissions: int | None = None,
        roles: tuple[FakeRole, ...] | list[FakeRole] = (),
        guild: FakeGuild | None = None,
        nick: str | None = None,
        bot: bool = False,
    ) -> FakeMember:
        """A new user in ``guild``; ``permissions`` adds a personal role with those bits."""
        guild = guild or self.guild
        user = FakeUser(self.new_id(), name, bot=bot)
        self.users[user.id] = user
        member_roles = list(roles)
        if permissions is not None:
            member_roles.append(self.add_role(f"{name}-perms", permissions, guild=guild))
        member = FakeMember(user, guild, member_roles, nick)
        guild.members[user.id] = member
        self.gateway.dispatch(
            "GUILD_MEMBER_ADD",
            {**member.payload(), "guild_id": str(guild.id)},
            intent=GUILD_MEMBERS,
        )
        return member

    def upload(
        self, data: bytes, filename: str, *, channel: FakeChannel | None = None
    ) -> FakeAttachment:
        """Store bytes as an attachment served by this fake (e.g. for an attachment option)."""
        return self._new_attachment(data, filename, (channel or self.channel).id)

    def _new_attachment(
        self, data: bytes, filename: str, channel_id: int, description: str | None = None
    ) -> FakeAttachment:
        if len(data) > self.attachment_size_limit:
            raise ApiError(413, 40005, "Request entity too large")
        aid = self.new_id()
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        url = f"{self.base_url}/attachments/{channel_id}/{aid}/{filename}"
        att = FakeAttachment(aid, filename, data, ctype, url, description)
        self.attachments[aid] = att
        return att

    def _guild_create_payload(self, guild: FakeGuild, session: Session) -> dict[str, Any]:
        return guild.payload(
            include_members=session.has(GUILD_MEMBERS), bot_user_id=self.bot_user.id
        )

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The bot's DM channel with ``user`` (created on first use)."""
        for ch in self.channels.values():
            if ch.type == 1 and ch.recipients[0].id == user.id:
                return ch
        ch = FakeChannel(self.new_id(), "", None, type=1, recipients=[user])
        self.channels[ch.id] = ch
        return ch

    # -- looking at the world --------------------------------------------------------------------

    def messages(
        self,
        channel: FakeChannel | None = None,
        *,
        viewer: FakeMember | FakeUser | None = None,
        include_deleted: bool = False,
    ) -> list[FakeMessage]:
        """Messages in ``channel`` (all channels if None), oldest first.

        Without ``viewer`` only public messages; with one, also the ephemerals shown to that user.
        """
        uid = viewer.id if viewer is not None else None
        return [
            m
            for m in self.messages_by_id.values()
            if (channel is None or m.channel_id == channel.id)
            and (include_deleted or not m.deleted)
            and (m.visible_to is None or m.visible_to == uid)
        ]

    def visible_to(
        self, member: FakeMember | FakeUser, channel: FakeChannel | None = None
    ) -> list[FakeMessage]:
        """What ``member`` sees: public messages plus their own ephemerals."""
        return self.messages(channel, viewer=member)

    def commands(self, guild: FakeGuild | None = None) -> list[dict[str, Any]]:
        """Synced application commands: global (``guild=None``) or for one guild."""
        return self.commands_by_scope.get(guild.id if guild else None, [])

    def command(self, name: str, guild: FakeGuild | None = None) -> dict[str, Any]:
        """The synced slash command ``name`` as the client sees it (guild first, then global)."""
        scopes = ([guild.id] if guild else []) + [None]
        for scope in scopes:
            for cmd in self.commands_by_scope.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd
        synced = [c["name"] for s in scopes for c in self.commands_by_scope.get(s, [])]
        raise LookupError(f"/{name} is not synced (synced: {synced})")

    async def fetch_attachment(self, attachment: FakeAttachment | dict[str, Any] | str) -> bytes:
        """Download an attachment over HTTP from its ``url`` (checks the CDN route really works)."""
        if isinstance(attachment, FakeAttachment):
            url = attachment.url
        elif isinstance(attachment, dict):
            url = attachment["url"]
        else:
            url = attachment
        if self._http is None:
            self._http = aiohttp.ClientSession()
        async with self._http.get(url) as resp:
            resp.raise_for_status()
            return await resp.read()

    def check(self) -> None:
        """Raise AssertionError if the bot hit unknown routes or made the fake fail."""
        if self.problems:
            raise AssertionError("fake Discord problems:\n  " + "\n  ".join(self.problems))

    # -- waiting ---------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(
        self,
        check: Callable[[], T],
        *,
        timeout: float = 5.0,
        what: str = "condition",
    ) -> T:
        """Re-evaluate ``check()`` after every change to the fake (and every 20 ms, for conditions
        on the bot's side) until it returns something truthy; TimeoutError after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = self._changed
            result = check()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 0.02))
            except TimeoutError:
                pass

    async def wait_for_message(
        self,
        predicate: Callable[[FakeMessage], bool] | None = None,
        *,
        channel: FakeChannel | None = None,
        viewer: FakeMember | None = None,
        timeout: float = 5.0,
    ) -> FakeMessage:
        """The first (oldest) message, in its current state, that matches ``predicate``."""
        pred = predicate or (lambda m: True)

        def find() -> FakeMessage | None:
            return next((m for m in self.messages(channel, viewer=viewer) if pred(m)), None)

        try:
            return await self.wait_until(find, timeout=timeout, what="a matching message")
        except TimeoutError as exc:
            recent = self.messages(channel, viewer=viewer)[-10:]
            raise TimeoutError(f"{exc}; recent messages: {recent}") from None

    async def wait_for_bot(self, *, timeout: float = 10.0) -> None:
        """Wait until a bot has identified on the gateway (and been sent its guilds)."""
        await self.wait_until(
            lambda: self.gateway.live_session, timeout=timeout, what="a gateway session"
        )

    async def wait_for_commands(
        self,
        *names: str,
        guild: FakeGuild | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Wait until commands with these names are synced (globally, or to ``guild``)."""

        def synced() -> bool:
            have = {c["name"] for c in self.commands(guild)}
            return all(n in have for n in names)

        await self.wait_until(synced, timeout=timeout, what=f"commands {names} to be synced")

    # -- server errors and nonces ----------------------------------------------------------------

    def fail(
        self,
        method: str,
        path: str,
        status: int = 503,
        *,
        times: int = 1,
        after_commit: bool = False,
    ) -> Fault:
        """Answer the next ``times`` matching requests with ``status`` (see :class:`Fault`),
        e.g. ``fd.fail("POST", "/messages$", 503, after_commit=True)``."""
        fault = Fault(method.upper(), path, status, times, after_commit)
        self.faults.append(fault)
        return fault

    def slow(self, method: str, path: str, seconds: float, *, times: int = 1) -> Fault:
        """Answer the next ``times`` matching requests normally, but ``seconds`` late."""
        fault = Fault(method.upper(), path, None, times, delay=seconds)
        self.faults.append(fault)
        return fault

    def remember_nonce(self, author: FakeUser, nonce: str, message: FakeMessage) -> None:
        self._nonces[(author.id, nonce)] = (time.monotonic(), message)

    def message_with_nonce(self, author: FakeUser, nonce: str) -> FakeMessage | None:
        """The message ``author`` created with ``nonce`` within ``nonce_window`` seconds."""
        found = self._nonces.get((author.id, nonce))
        if found is None or time.monotonic() - found[0] > self.nonce_window:
            return None
        return None if found[1].deleted else found[1]

    # -- gateway controls ------------------------------------------------------------------------

    async def disconnect_bot(self, code: int = 4000) -> None:
        """Drop the bot's websocket; with a resumable code discord.py then RESUMEs."""
        await self.gateway.disconnect(code)

    def request_reconnect(self) -> None:
        """Send op 7 RECONNECT (the bot should reconnect and RESUME)."""
        self.gateway.send_op(7)

    def invalidate_session(self, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION (non-resumable: the bot IDENTIFYs again)."""
        if not resumable:
            self.gateway.sessions.clear()
        self.gateway.send_op(9, resumable)

    def _problem(self, text: str) -> None:
        _log.error("fakediscord: %s", text)
        self.problems.append(text)

    # -- messages (shared by the REST handlers and the member helpers) ----------------------------

    def _known_ids(self, guild: FakeGuild | None) -> tuple[set[int], set[int]]:
        return set(self.users), set(guild.roles) if guild else set()

    def create_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        payload: dict[str, Any],
        uploads: dict[int, tuple[str, bytes]] | None = None,
        *,
        interaction: FakeInteraction | None = None,
        ephemeral_for: int | None = None,
        msg_type: int = 0,
        loading: bool = False,
    ) -> FakeMessage:
        """Create a message from an API payload, as Discord would, and dispatch MESSAGE_CREATE."""
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        flags = int(payload.get("flags") or 0) & ~LOADING
        if loading:
            flags |= LOADING
        if ephemeral_for is None:
            flags &= ~EPHEMERAL  # only interaction responses can be ephemeral
        msg = FakeMessage(
            id=self.new_id(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=author,
            flags=flags,
            type=msg_type,
            visible_to=ephemeral_for if flags & 64 else None,
            author_member=guild.members.get(author.id) if guild else None,
        )
        ref = payload.get("message_reference")
        if ref:
            target = self.messages_by_id.get(int(ref["message_id"]))
            if target is None and ref.get("fail_if_not_exists", True):
                raise invalid_form("message_reference: Unknown message")
            msg.message_reference = {
                "type": ref.get("type", 0),
                "message_id": str(ref["message_id"]),
                "channel_id": str(channel.id),
                **({"guild_id": str(guild.id)} if guild else {}),
            }
        if interaction is not None:
            msg.interaction_id = interaction.id
            msg.webhook_id = self.application_id
            msg.interaction_metadata = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.member.user.payload(),
                "authorizing_integration_owners": {"0": str(interaction.guild.id)},
                **(
                    {"name": interaction.data["name"], "command_type": 1}
                    if interaction.type == 2
                    else {}
                ),
                **(
                    {"interacted_message_id": str(interaction.message.id)}
                    if interaction.message
                    else {}
                ),
            }
        self._apply_fields(msg, payload, uploads or {}, existing=[], require_content=not loading)
        self.messages_by_id[msg.id] = msg
        if msg.visible_to is None:
            self.gateway.dispatch(
                "MESSAGE_CREATE",
                lambda s: self._message_event(msg, s),
                intent=self._msg_intent(channel),
            )
        self._notify()
        return msg

    def edit_message(
        self,
        msg: FakeMessage,
        payload: dict[str, Any],
        uploads: dict[int, tuple[str, bytes]] | None = None,
    ) -> FakeMessage:
        """Apply a PATCH payload (only the fields present change) and dispatch MESSAGE_UPDATE."""
        if msg.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        before = dict(msg.__dict__)
        try:
            msg.flags &= ~LOADING
            if "flags" in payload and payload["flags"] is not None:
                msg.flags = (msg.flags & ~4) | (
                    int(payload["flags"]) & 4
                )  # only SUPPRESS_EMBEDS is editable
            msg.edited_timestamp = iso()
            self._apply_fields(
                msg, payload, uploads or {}, existing=msg.attachments, require_content=True
            )
        except ApiError:
            msg.__dict__.update(before)  # a rejected edit changes nothing
            raise
        if msg.visible_to is None:
            channel = self.channels[msg.channel_id]
            self.gateway.dispatch(
                "MESSAGE_UPDATE",
                lambda s: self._message_event(msg, s),
                intent=self._msg_intent(channel),
            )
        self._notify()
        return msg

    def delete_message(self, msg: FakeMessage) -> None:
        if msg.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        msg.deleted = True
        if msg.visible_to is None:
            data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id:
                data["guild_id"] = str(msg.guild_id)
            self.gateway.dispatch(
                "MESSAGE_DELETE", data, intent=self._msg_intent(self.channels[msg.channel_id])
            )
        self._notify()

    @staticmethod
    def _msg_intent(channel: FakeChannel) -> int:
        return DIRECT_MESSAGES if channel.type == 1 else GUILD_MESSAGES

    def _message_event(self, msg: FakeMessage, session: Session) -> dict[str, Any]:
        guild = self.guilds.get(msg.guild_id) if msg.guild_id else None
        data = msg.payload(guild.members if guild else None)
        privileged = session.has(MESSAGE_CONTENT) or msg.author.id == self.bot_user.id
        if not privileged and msg.guild_id is not None and self.bot_user.id not in msg.pings.users:
            data.update(content="", embeds=[], attachments=[], components=[])
        return data

    def _apply_fields(
        self,
        msg: FakeMessage,
        payload: dict[str, Any],
        uploads: dict[int, tuple[str, bytes]],
        *,
        existing: list[FakeAttachment],
        require_content: bool,
    ) -> None:
        if "content" in payload:
            msg.content = payload["content"] or ""
        if "embeds" in payload:
            msg.embeds = [dict(e) for e in payload["embeds"] or []]
        if "components" in payload:
            msg.components = self._number_components(payload["components"] or [])
        # Each create/edit is judged by its own allowed_mentions (absent: everything parses).
        msg.allowed_mentions = payload.get("allowed_mentions")
        if "attachments" in payload or uploads:
            msg.attachments = self._resolve_attachments(
                payload.get("attachments"), uploads, existing, msg.channel_id
            )
        rest.validate_message(msg, require_content=require_content)
        self._link_embed_attachments(msg)
        guild = self.guilds.get(msg.guild_id) if msg.guild_id else None
        replied = None
        if msg.message_reference:
            target = self.messages_by_id.get(int(msg.message_reference["message_id"]))
            replied = target.author.id if target else None
        users, roles = self._known_ids(guild)
        msg.pings = compute_pings(
            msg.content,
            msg.allowed_mentions,
            known_users=users,
            known_roles=roles,
            replied_author=replied,
        )
        msg.history.append(msg.payload(guild.members if guild else None))

    def _resolve_attachments(
        self,
        listed: list[dict[str, Any]] | None,
        uploads: dict[int, tuple[str, bytes]],
        existing: list[FakeAttachment],
        channel_id: int,
    ) -> list[FakeAttachment]:
        """Discord's rules: listed ids keep existing attachments, listed indexes are new uploads."""
        keep = {a.id: a for a in existing}
        result: list[FakeAttachment] = []
        used: set[int] = set()
        if listed is None:
            result = list(existing)
        else:
            for entry in listed:
                ident = int(entry["id"])
                if ident in keep:
                    result.append(keep[ident])
                elif ident in uploads:
                    name, data = uploads[ident]
                    fname = entry.get("filename") or name
                    result.append(
                        self._new_attachment(data, fname, channel_id, entry.get("description"))
                    )
                    used.add(ident)
                else:
                    raise invalid_form(f"attachments: unknown attachment id {ident}")
        for index in sorted(set(uploads) - used):
            name, data = uploads[index]
            result.append(self._new_attachment(data, name, channel_id))
        if len(result) > 10:
            raise invalid_form("attachments: Must be 10 or fewer in length.")
        return result

    @staticmethod
    def _link_embed_attachments(msg: FakeMessage) -> None:
        """Resolve ``attachment://name`` URLs in embeds to the attachment's CDN URL (as Discord)."""
        by_name = {a.filename: a for a in msg.attachments}
        for embed in msg.embeds:
            for key in ("image", "thumbnail", "footer", "author"):
                part = embed.get(key)
                if not isinstance(part, dict):
                    continue
                url_key = "url" if key in ("image", "thumbnail") else "icon_url"
                url = part.get(url_key) or ""
                match = re.fullmatch(r"attachment://(.+)", url)
                if match and match.group(1) in by_name:
                    att = by_name[match.group(1)]
                    part[url_key] = att.url
                    part["proxy_" + url_key] = att.url
                    if key in ("image", "thumbnail"):
                        part.update(
                            {k: v for k, v in att.payload().items() if k in ("width", "height")}
                        )

    def _number_components(self, components: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copy components, giving each a numeric ``id`` where the bot set none (like Discord)."""
        comps = copy.deepcopy(components)
        taken = {c["id"] for c in walk_components(comps) if isinstance(c.get("id"), int)}
        next_id = 1
        for comp in walk_components(comps):
            if "id" not in comp:
                while next_id in taken:
                    next_id += 1
                comp["id"] = next_id
                taken.add(next_id)
        return comps

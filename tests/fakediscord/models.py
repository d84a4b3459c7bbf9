"""In-memory Discord objects held by the fake server, and their JSON payloads.

Each model knows how to render itself the way the Discord API v10 does (``payload()``); the
server keeps them in plain dicts keyed by snowflake.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MENTION_EVERYONE = 1 << 17
ALL_PERMISSIONS = (1 << 53) - 1
DEFAULT_EVERYONE_PERMISSIONS = (
    (1 << 0)  # create instant invite
    | (1 << 6)  # add reactions
    | (1 << 10)  # view channel
    | (1 << 11)  # send messages
    | (1 << 14)  # embed links
    | (1 << 15)  # attach files
    | (1 << 16)  # read message history
    | (1 << 20)  # connect
    | (1 << 21)  # speak
    | (1 << 26)  # change nickname
    | (1 << 31)  # use application commands
)

# Message flags.
EPHEMERAL = 1 << 6
LOADING = 1 << 7

DISCORD_EPOCH_MS = 1420070400000


class Snowflakes:
    """Generates increasing, realistic snowflakes (timestamp in the high bits)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._last = 0

    def __call__(self) -> int:
        now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = (now_ms << 22) | (next(self._counter) & 0xFFF)
        self._last = value = max(value, self._last + 1)
        return value


def iso(ts: float | None = None) -> str:
    """An ISO-8601 timestamp like Discord's (``2024-01-01T00:00:00.000000+00:00``)."""
    return dt.datetime.fromtimestamp(time.time() if ts is None else ts, dt.UTC).isoformat()


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, read from its IHDR chunk; None if ``data`` is not a PNG."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


@dataclass(eq=False)
class FakeUser:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass(eq=False)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    mentionable: bool = False
    bot_id: int | None = None  # set for a bot's managed role

    @property
    def mention(self) -> str:
        return "@everyone" if self.id == self.guild_id else f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "managed": self.bot_id is not None,
            "mentionable": self.mentionable,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass(eq=False)
class FakeChannel:
    id: int
    name: str
    guild_id: int | None
    type: int = 0  # 0 guild text, 1 DM
    position: int = 0
    topic: str | None = None
    recipients: list[FakeUser] = field(default_factory=list)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self) -> dict[str, Any]:
        if self.type == 1:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "recipients": [u.payload() for u in self.recipients],
                "flags": 0,
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": False,
            "topic": self.topic,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeMember:
    """A user's membership in one guild; use it wherever a test plays a person."""

    user: FakeUser
    guild: FakeGuild
    roles: list[FakeRole] = field(default_factory=list)  # without @everyone
    nick: str | None = None
    joined_at: str = field(default_factory=iso)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def mention(self) -> str:
        return self.user.mention

    @property
    def permissions(self) -> int:
        return self.guild.permissions_for(self)

    def payload(self, *, with_user: bool = True, with_permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r.id) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if with_permissions:
            data["permissions"] = str(self.permissions)
        return data


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    locale: str = "en-US"

    @property
    def default_role(self) -> FakeRole:
        return self.roles[self.id]

    @property
    def text_channels(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.type == 0]

    def permissions_for(self, member: FakeMember) -> int:
        """Guild-level permissions (no channel overwrites in this fake); the owner is admin."""
        if member.id == self.owner_id:
            return ALL_PERMISSIONS
        perms = self.default_role.permissions
        for role in member.roles:
            perms |= role.permissions
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def payload(self, *, include_members: bool, bot_user_id: int) -> dict[str, Any]:
        """The full GUILD_CREATE payload; without the members intent only the bot is listed."""
        members = [
            m.payload() for m in self.members.values() if include_members or m.id == bot_user_id
        ]
        return {
            "id": str(self.id),
            "name": self.name,
            "owner_id": str(self.owner_id),
            "description": None,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "region": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": self.locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "max_members": 500000,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [r.payload() for r in self.roles.values()],
            "joined_at": iso(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "members": members,
            "channels": [c.payload() for c in self.channels.values()],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass(eq=False)
class FakeAttachment:
    id: int
    filename: str
    data: bytes = field(repr=False)
    content_type: str
    url: str
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def spoiler(self) -> bool:
        return self.filename.startswith("SPOILER_")

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            data["description"] = self.description
        dims = png_size(self.data)
        if dims is not None:
            data["width"], data["height"] = dims
        return data


@dataclass(frozen=True)
class Pings:
    """Who a message notifies, after applying ``allowed_mentions`` (Discord semantics)."""

    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()
    everyone: bool = False  # @everyone or @here
    replied_user: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.users or self.roles or self.everyone or self.replied_user)


_USER_RE = re.compile(r"<@!?(\d+)>")
_ROLE_RE = re.compile(r"<@&(\d+)>")


def compute_pings(
    content: str | None,
    allowed_mentions: dict[str, Any] | None,
    *,
    known_users: set[int],
    known_roles: set[int],
    replied_author: int | None = None,
) -> Pings:
    """Apply Discord's mention rules: with no ``allowed_mentions`` everything in the content parses.

    (Permission checks such as "may this author mention @everyone" are not modelled: a message
    counts as pinging @everyone whenever its ``allowed_mentions`` would let it.)
    """
    content = content or ""
    if allowed_mentions is None:
        parse = {"users", "roles", "everyone"}
        users_ok: set[int] = set()
        roles_ok: set[int] = set()
        replied = True
    else:
        parse = set(allowed_mentions.get("parse") or [])
        users_ok = {int(u) for u in allowed_mentions.get("users") or []}
        roles_ok = {int(r) for r in allowed_mentions.get("roles") or []}
        replied = bool(allowed_mentions.get("replied_user", False))
    users = {
        int(u)
        for u in _USER_RE.findall(content)
        if int(u) in known_users and ("users" in parse or int(u) in users_ok)
    }
    roles = {
        int(r)
        for r in _ROLE_RE.findall(content)
        if int(r) in known_roles and ("roles" in parse or int(r) in roles_ok)
    }
    everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
    return Pings(frozenset(users), frozenset(roles), everyone, replied_author if replied else None)


def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component, depth first (action rows, sections, containers and labels included)."""
    for comp in components:
        yield comp
        yield from walk_components(comp.get("components") or [])
        if isinstance(comp.get("component"), dict):
            yield from walk_components([comp["component"]])
        if isinstance(comp.get("accessory"), dict):
            yield from walk_components([comp["accessory"]])


@dataclass(eq=False)
class FakeMessage:
    """A stored message; ``history`` holds its payload after creation and after each edit."""

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    allowed_mentions: dict[str, Any] | None = None
    pings: Pings = field(default_factory=Pings)
    message_reference: dict[str, Any] | None = None
    interaction_id: int | None = None  # the interaction this message answers, if any
    interaction_metadata: dict[str, Any] | None = None
    webhook_id: int | None = None
    visible_to: int | None = None  # the only user who sees an ephemeral message
    author_member: FakeMember | None = None
    timestamp: str = field(default_factory=iso)
    edited_timestamp: str | None = None
    deleted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred "<bot> is thinking…" placeholder."""
        return bool(self.flags & LOADING)

    @property
    def embed(self) -> dict[str, Any] | None:
        return self.embeds[0] if self.embeds else None

    def is_visible_to(self, user_id: int | None) -> bool:
        return not self.deleted and (self.visible_to is None or self.visible_to == user_id)

    def all_components(self) -> list[dict[str, Any]]:
        return list(walk_components(self.components))

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.all_components() if c.get("type") == 2]

    def find_component(
        self, custom_id: str | None = None, *, label: str | None = None
    ) -> dict[str, Any]:
        """The component with this ``custom_id`` (or button ``label``); KeyError if none."""
        for comp in self.all_components():
            if custom_id is not None and comp.get("custom_id") == custom_id:
                return comp
            if label is not None and comp.get("label") == label:
                return comp
        raise KeyError(
            f"message {self.id} has no component {custom_id or label!r}; it has "
            f"{[c.get('custom_id') or c.get('label') for c in self.buttons]}"
        )

    def payload(self, member_lookup: dict[int, FakeMember] | None = None) -> dict[str, Any]:
        lookup = member_lookup or {}
        mentions = []
        for uid in sorted(self.pings.users):
            member = lookup.get(uid)
            if member is not None:
                mentions.append(
                    {**member.user.payload(), "member": member.payload(with_user=False)}
                )
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": False,
            "mention_everyone": self.pings.everyone,
            "mentions": mentions,
            "mention_roles": [str(r) for r in sorted(self.pings.roles)],
            "attachments": [a.payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "flags": self.flags,
            "pinned": False,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.author_member is not None:
            data["member"] = self.author_member.payload(with_user=False)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
        return data

    def __repr__(self) -> str:
        bits = [f"id={self.id}", f"content={self.content!r}"]
        if self.embeds:
            bits.append(f"embeds={len(self.embeds)}")
        if self.attachments:
            bits.append(f"attachments={[a.filename for a in self.attachments]}")
        if self.flags:
            bits.append(f"flags={self.flags}")
        if self.deleted:
            bits.append("deleted")
        return f"<FakeMessage {' '.join(bits)}>"


@dataclass
class CallbackRecord:
    """One ``POST /interactions/{id}/{token}/callback`` the bot made."""

    # 1 pong, 4 message, 5 deferred message, 6 deferred update, 7 update, 8 autocomplete, 9 modal
    type: int
    data: dict[str, Any] | None
    elapsed: float  # seconds between INTERACTION_CREATE and the callback arriving
    accepted: bool
    error: str | None = None
    message: FakeMessage | None = None  # the message created or updated by this callback


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the fake dispatched, with everything the bot did with its token."""

    id: int
    token: str
    type: int  # 2 application command, 3 component, 4 autocomplete, 5 modal submit
    data: dict[str, Any]
    member: FakeMember
    channel: FakeChannel
    message: FakeMessage | None = None  # the message a component/modal came from
    locale: str = "en-US"
    dispatched_at: float = 0.0  # event-loop time
    expires_at: float = 0.0
    callbacks: list[CallbackRecord] = field(default_factory=list)
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)  # messages returned by followup sends
    modal: dict[str, Any] | None = None
    choices: list[dict[str, Any]] | None = None

    @property
    def guild(self) -> FakeGuild:
        return self.member.guild

    @property
    def response(self) -> CallbackRecord | None:
        """The accepted initial response, if the bot made one in time."""
        return next((c for c in self.callbacks if c.accepted), None)

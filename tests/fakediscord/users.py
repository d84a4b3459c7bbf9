"""Playing members: slash commands, autocomplete, buttons, selects, modals, plain messages.

The helpers behave like the Discord client: they only let a member do what the client would let
them do (a synced command, valid option values, a visible and enabled button, a filled-in modal),
then dispatch INTERACTION_CREATE and hand back an :class:`InteractionHandle` to watch the answer.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .models import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    CallbackRecord,
    FakeAttachment,
    FakeChannel,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
)

if TYPE_CHECKING:
    from .server import FakeDiscord


class InteractionFailed(AssertionError):
    """What the user would see as "This interaction failed": no accepted response in time."""


class InteractionHandle:
    """One interaction a test started; everything the bot did with it is visible from here."""

    def __init__(self, fd: FakeDiscord, interaction: FakeInteraction) -> None:
        self.fd = fd
        self.interaction = interaction

    def __repr__(self) -> str:
        return f"<InteractionHandle id={self.interaction.id} type={self.interaction.type}>"

    async def response(self, timeout: float | None = None) -> CallbackRecord:
        """The initial response (callback). Raises :class:`InteractionFailed` if the bot missed the
        deadline (``fd.response_deadline``) or its callback was rejected; TimeoutError after
        ``timeout``.
        """
        itx = self.interaction
        loop = asyncio.get_running_loop()
        give_up = itx.dispatched_at + self.fd.response_deadline + 0.5

        def check() -> CallbackRecord | bool:
            if itx.response is not None:
                return itx.response
            rejected = [c for c in itx.callbacks if not c.accepted]
            if rejected:
                raise InteractionFailed(f"bot's callback was rejected: {rejected[0].error}")
            if loop.time() > give_up:
                raise InteractionFailed(f"no response within {self.fd.response_deadline}s")
            return False

        limit = give_up - loop.time() if timeout is None else timeout
        try:
            result = await self.fd.wait_until(
                check, timeout=max(limit, 0), what="the interaction response"
            )
        except TimeoutError:
            check()
            raise
        assert isinstance(result, CallbackRecord)
        return result

    @property
    def response_time(self) -> float | None:
        """Seconds from dispatch to the accepted initial callback (None if none yet)."""
        return self.interaction.response.elapsed if self.interaction.response else None

    @property
    def modal(self) -> dict[str, Any] | None:
        """The modal the bot opened (callback type 9), as sent, with component ids filled in."""
        return self.interaction.modal

    @property
    def choices(self) -> list[dict[str, Any]] | None:
        """Autocomplete choices (callback type 8)."""
        return self.interaction.choices

    @property
    def original(self) -> FakeMessage | None:
        """The ``@original`` message in its current state (its ``history`` has every version)."""
        mid = self.interaction.original_message_id
        return self.fd.messages_by_id.get(mid) if mid else None

    @property
    def followups(self) -> list[FakeMessage]:
        """Messages returned by followup sends, in order. The first followup after a deferred
        ("thinking") response replaces that message, so it is the ``original`` message too."""
        return [self.fd.messages_by_id[m] for m in self.interaction.followup_ids]

    @property
    def messages(self) -> list[FakeMessage]:
        """The original response (if it is a message) and all followups, oldest first."""
        itx = self.interaction
        ids = dict.fromkeys(
            [*([itx.original_message_id] if itx.original_message_id else []), *itx.followup_ids]
        )
        return [self.fd.messages_by_id[m] for m in ids]

    async def wait_for_message(
        self,
        predicate: Callable[[FakeMessage], bool] | None = None,
        *,
        timeout: float = 5.0,
    ) -> FakeMessage:
        """The first message of this interaction (original or followup) that matches, as is."""
        pred = predicate or (lambda m: True)

        def find() -> FakeMessage | None:
            return next((m for m in self.messages if not m.deleted and pred(m)), None)

        try:
            return await self.fd.wait_until(find, timeout=timeout, what="an interaction message")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; this interaction's messages: {self.messages}") from None


class MemberActions:
    """Mixed into :class:`FakeDiscord`: the things a member can do in the Discord client."""

    # -- slash commands ------------------------------------------------------------------------

    async def invoke(
        self: FakeDiscord,
        member: FakeMember,
        command: str,
        options: Mapping[str, Any] | None = None,
        *,
        channel: FakeChannel | None = None,
        locale: str = "en-US",
        honor_default_permissions: bool = True,
        client_checks: bool = True,
    ) -> InteractionHandle:
        """Run ``/command`` (``"mod ban"`` for subcommands, ``"mod words add"`` for groups).

        Option values: str, int, float, bool, FakeMember/FakeUser (user), FakeChannel, FakeRole,
        FakeAttachment (from ``fd.upload``). Raises ValueError/LookupError/PermissionError where
        the Discord client would not let the member send it. ``honor_default_permissions=False``
        plays a server whose admin let everyone use the command. ``client_checks=False`` sends
        option values outside their min/max/length/choices, as a modified client could.
        """
        channel = channel or member.guild.text_channels[0]
        cmd, leaf, path = self._resolve_command(member, command)
        if honor_default_permissions and cmd.get("default_member_permissions") not in (None, ""):
            needed = int(cmd["default_member_permissions"])
            perms = member.permissions
            if not perms & ADMINISTRATOR and (perms & needed) != needed:
                raise PermissionError(
                    f"{member.name} cannot see /{cmd['name']} (needs permissions {needed})"
                )
        resolved: dict[str, dict[str, Any]] = {}
        self._client_checks = client_checks
        try:
            opts = self._build_options(leaf, dict(options or {}), resolved, focused=None)
        finally:
            self._client_checks = True
        data = self._command_data(cmd, path, opts, resolved)
        return self._dispatch_interaction(2, data, member, channel, locale=locale)

    async def autocomplete(
        self: FakeDiscord,
        member: FakeMember,
        command: str,
        options: Mapping[str, Any],
        *,
        focused: str,
        channel: FakeChannel | None = None,
        timeout: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Type into option ``focused`` of ``/command``; returns the choices the bot offered."""
        channel = channel or member.guild.text_channels[0]
        cmd, leaf, path = self._resolve_command(member, command)
        resolved: dict[str, dict[str, Any]] = {}
        opts = self._build_options(leaf, dict(options), resolved, focused=focused)
        handle = self._dispatch_interaction(
            4, self._command_data(cmd, path, opts, resolved), member, channel
        )
        await handle.response(timeout=timeout)
        return handle.choices or []

    def _resolve_command(
        self: FakeDiscord, member: FakeMember, command: str
    ) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, int]]]:
        name, *subs = command.split()
        cmd = self.command(name, member.guild)
        leaf = cmd
        path: list[tuple[str, int]] = []
        for sub in subs:
            found = next(
                (o for o in leaf.get("options") or [] if o["name"] == sub and o["type"] in (1, 2)),
                None,
            )
            if found is None:
                raise LookupError(f"/{command}: {leaf['name']} has no subcommand {sub!r}")
            path.append((sub, found["type"]))
            leaf = found
        if any(o["type"] in (1, 2) for o in leaf.get("options") or []):
            raise LookupError(
                f"/{command} needs a subcommand: {[o['name'] for o in leaf['options']]}"
            )
        return cmd, leaf, path

    def _command_data(
        self: FakeDiscord,
        cmd: dict[str, Any],
        path: list[tuple[str, int]],
        opts: list[dict[str, Any]],
        resolved: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        for name, kind in reversed(path):
            opts = [{"name": name, "type": kind, "options": opts}]
        data: dict[str, Any] = {
            "id": cmd["id"],
            "name": cmd["name"],
            "type": cmd.get("type", 1),
            "options": opts,
        }
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return data

    def _build_options(
        self: FakeDiscord,
        leaf: dict[str, Any],
        values: dict[str, Any],
        resolved: dict[str, dict[str, Any]],
        *,
        focused: str | None,
    ) -> list[dict[str, Any]]:
        defs = {o["name"]: o for o in leaf.get("options") or []}
        unknown = set(values) - set(defs)
        if unknown:
            raise ValueError(
                f"/{leaf['name']} has no option(s) {sorted(unknown)}; it has {sorted(defs)}"
            )
        out = []
        if focused is not None and focused not in defs:
            raise ValueError(f"/{leaf['name']} has no option {focused!r} to autocomplete")
        for name, spec in defs.items():
            if name == focused:  # what the member has typed so far, always a string
                out.append(
                    {
                        "name": name,
                        "type": spec["type"],
                        "value": str(values.get(name, "")),
                        "focused": True,
                    }
                )
                continue
            if name not in values or values[name] is None:
                if spec.get("required") and focused is None:
                    raise ValueError(f"/{leaf['name']}: option {name!r} is required")
                continue
            if focused is not None and spec["type"] in (3, 4, 10):
                out.append({"name": name, "type": spec["type"], "value": values[name]})
            else:
                out.append(
                    {
                        "name": name,
                        "type": spec["type"],
                        "value": self._option_value(spec, values[name], resolved),
                    }
                )
        return out

    def _option_value(
        self: FakeDiscord, spec: dict[str, Any], value: Any, resolved: dict[str, dict[str, Any]]
    ) -> Any:
        kind, name = spec["type"], spec["name"]
        if not getattr(self, "_client_checks", True):
            spec = {
                k: v
                for k, v in spec.items()
                if k not in ("min_length", "max_length", "min_value", "max_value", "choices")
            }
        if kind == 3:
            if not isinstance(value, str):
                raise ValueError(f"option {name!r} needs a string, got {value!r}")
            if not spec.get("min_length", 0) <= len(value) <= spec.get("max_length", 6000):
                raise ValueError(
                    f"option {name!r}: length {len(value)} outside "
                    f"{spec.get('min_length')}..{spec.get('max_length')}"
                )
        elif kind in (4, 10):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (kind == 4 and not float(value).is_integer())
            ):
                raise ValueError(
                    f"option {name!r} needs {'an integer' if kind == 4 else 'a number'}: {value!r}"
                )
            value = int(value) if kind == 4 else value
            if (spec.get("min_value") is not None and value < spec["min_value"]) or (
                spec.get("max_value") is not None and value > spec["max_value"]
            ):
                raise ValueError(
                    f"option {name!r}: {value} outside "
                    f"{spec.get('min_value')}..{spec.get('max_value')}"
                )
        elif kind == 5:
            if not isinstance(value, bool):
                raise ValueError(f"option {name!r} needs a bool, got {value!r}")
        else:
            return self._resolve_entity(kind, name, value, resolved)
        if spec.get("choices") and value not in [c["value"] for c in spec["choices"]]:
            raise ValueError(
                f"option {name!r}: {value!r} is not one of {[c['value'] for c in spec['choices']]}"
            )
        return value

    def _resolve_entity(
        self: FakeDiscord, kind: int, name: str, value: Any, resolved: dict[str, dict[str, Any]]
    ) -> str:
        """Fill ``resolved`` for user (6), channel (7), role (8), mentionable (9), attachment (11)
        options."""
        if kind in (6, 9) and isinstance(value, (FakeMember, FakeUser)):
            user = value.user if isinstance(value, FakeMember) else value
            resolved.setdefault("users", {})[str(user.id)] = user.payload()
            member = value if isinstance(value, FakeMember) else None
            if member is not None:
                resolved.setdefault("members", {})[str(user.id)] = member.payload(
                    with_user=False, with_permissions=True
                )
            return str(user.id)
        if kind in (8, 9) and isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        if kind == 7 and isinstance(value, FakeChannel):
            resolved.setdefault("channels", {})[str(value.id)] = {
                **value.payload(),
                "permissions": str(ALL_PERMISSIONS),
            }
            return str(value.id)
        if kind == 11 and isinstance(value, FakeAttachment):
            resolved.setdefault("attachments", {})[str(value.id)] = value.payload()
            return str(value.id)
        raise ValueError(f"option {name!r} (type {kind}) cannot take {value!r}")

    # -- components ----------------------------------------------------------------------------

    def _component_message(
        self: FakeDiscord, member: FakeMember, message: FakeMessage
    ) -> FakeMessage:
        current = self.messages_by_id.get(message.id)
        if current is None or not current.is_visible_to(member.id):
            raise LookupError(f"{member.name} cannot see message {message.id}")
        return current

    async def click(
        self: FakeDiscord,
        member: FakeMember,
        message: FakeMessage,
        custom_id: str | None = None,
        *,
        label: str | None = None,
    ) -> InteractionHandle:
        """Press a button (by ``custom_id`` or ``label``) on the message's current version."""
        msg = self._component_message(member, message)
        button = msg.find_component(custom_id, label=label)
        if button.get("type") != 2 or button.get("style") in (5, 6):
            raise ValueError(f"{button!r} is not an interactive button")
        if button.get("disabled"):
            raise ValueError(f"button {button.get('custom_id')!r} is disabled")
        data = {"custom_id": button["custom_id"], "component_type": 2, "id": button.get("id")}
        return self._dispatch_interaction(
            3, data, member, self.channels[msg.channel_id], message=msg
        )

    async def select(
        self: FakeDiscord,
        member: FakeMember,
        message: FakeMessage,
        custom_id: str,
        values: list[Any],
    ) -> InteractionHandle:
        """Pick ``values`` in a select menu: strings for a string select; members/users, roles or
        channels for the other select types."""
        msg = self._component_message(member, message)
        comp = msg.find_component(custom_id)
        kind = comp.get("type")
        if kind not in (3, 5, 6, 7, 8) or comp.get("disabled"):
            raise ValueError(f"{custom_id!r} is not an enabled select menu")
        if not comp.get("min_values", 1) <= len(values) <= comp.get("max_values", 1):
            raise ValueError(
                f"select {custom_id!r} takes "
                f"{comp.get('min_values', 1)}..{comp.get('max_values', 1)} values"
            )
        data: dict[str, Any] = {
            "custom_id": custom_id,
            "component_type": kind,
            "id": comp.get("id"),
        }
        if kind == 3:
            allowed = [o["value"] for o in comp.get("options") or []]
            if any(v not in allowed for v in values):
                raise ValueError(f"select {custom_id!r} only offers {allowed}")
            data["values"] = list(values)
        else:
            resolved: dict[str, dict[str, Any]] = {}
            option_kind = {5: 6, 6: 8, 7: 9, 8: 7}[kind]
            data["values"] = [
                self._resolve_entity(option_kind, custom_id, v, resolved) for v in values
            ]
            data["resolved"] = resolved
        return self._dispatch_interaction(
            3, data, member, self.channels[msg.channel_id], message=msg
        )

    async def submit_modal(
        self: FakeDiscord,
        member: FakeMember,
        source: InteractionHandle | FakeInteraction,
        values: Mapping[str, Any] | None = None,
    ) -> InteractionHandle:
        """Fill in and submit the modal the bot opened in answer to ``source``.

        ``values`` maps text-input custom_ids to strings (select custom_ids to lists); inputs not
        given keep their prefilled ``value``. Required inputs left empty raise ValueError.
        """
        itx = source.interaction if isinstance(source, InteractionHandle) else source
        if itx.modal is None:
            raise LookupError("the bot did not answer this interaction with a modal")
        values = dict(values or {})
        resolved: dict[str, dict[str, Any]] = {}
        comps = [self._submit_component(c, values, resolved) for c in itx.modal["components"]]
        if values:
            raise ValueError(f"modal {itx.modal['custom_id']!r} has no inputs {sorted(values)}")
        data: dict[str, Any] = {"custom_id": itx.modal["custom_id"], "components": comps}
        if resolved:
            data["resolved"] = resolved
        message = self.messages_by_id.get(itx.message.id) if itx.message else None
        return self._dispatch_interaction(5, data, member, itx.channel, message=message)

    def _submit_component(
        self: FakeDiscord,
        comp: dict[str, Any],
        values: dict[str, Any],
        resolved: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        """What the client submits for one modal component (recursing into rows and labels)."""
        kind = comp.get("type")
        out: dict[str, Any] = {"type": kind, "id": comp.get("id")}
        cid = comp.get("custom_id")
        if kind == 1:
            out["components"] = [
                self._submit_component(c, values, resolved) for c in comp.get("components") or []
            ]
        elif kind == 18:
            out["component"] = self._submit_component(comp["component"], values, resolved)
        elif kind == 4:  # text input
            value = str(values.pop(cid, comp.get("value") or ""))
            if comp.get("required", True) and not value:
                raise ValueError(f"text input {cid!r} is required")
            if value and not comp.get("min_length", 0) <= len(value) <= comp.get(
                "max_length", 4000
            ):
                raise ValueError(f"text input {cid!r}: length {len(value)} not allowed")
            out.update(custom_id=cid, value=value)
        elif kind in (3, 22):  # string select, checkbox group
            allowed = [o["value"] for o in comp.get("options") or []]
            chosen = list(
                values.pop(cid, [o["value"] for o in comp.get("options") or [] if o.get("default")])
            )
            if any(v not in allowed for v in chosen):
                raise ValueError(f"{cid!r} only offers {allowed}")
            if comp.get("required", True) and not chosen and comp.get("min_values", 1) > 0:
                raise ValueError(f"{cid!r} is required")
            out.update(custom_id=cid, values=chosen)
        elif kind in (5, 6, 7, 8, 19):  # entity selects, file upload: values are resolved objects
            option_kind = {5: 6, 6: 8, 7: 9, 8: 7, 19: 11}[kind]
            chosen = values.pop(cid, [])
            out.update(
                custom_id=cid,
                values=[self._resolve_entity(option_kind, cid, v, resolved) for v in chosen],
            )
        elif kind == 21:  # radio group
            default = next(
                (o["value"] for o in comp.get("options") or [] if o.get("default")), None
            )
            out.update(custom_id=cid, value=values.pop(cid, default))
        elif kind == 23:  # checkbox
            out.update(custom_id=cid, value=bool(values.pop(cid, comp.get("default", False))))
        return out

    # -- plain messages --------------------------------------------------------------------------

    async def send_as(
        self: FakeDiscord, member: FakeMember, content: str, *, channel: FakeChannel | None = None
    ) -> FakeMessage:
        """``member`` posts in ``channel`` (the bot gets MESSAGE_CREATE if it has the intent)."""
        channel = channel or member.guild.text_channels[0]
        return self.create_message(channel, member.user, {"content": content})

    # -- dispatch ----------------------------------------------------------------------------------

    def _dispatch_interaction(
        self: FakeDiscord,
        kind: int,
        data: dict[str, Any],
        member: FakeMember,
        channel: FakeChannel,
        *,
        message: FakeMessage | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        if channel.guild_id != member.guild.id:
            raise ValueError(
                f"{member.name} is not in the guild of channel {channel.id} "
                "(DM interactions are not modelled)"
            )
        session = self.gateway.current_session
        if session is None:
            raise RuntimeError("no bot session on the fake gateway (not started yet, or closed)")
        now = asyncio.get_running_loop().time()
        itx = FakeInteraction(
            id=self.new_id(),
            token="aW50ZXJhY3Rpb24" + secrets.token_urlsafe(32),
            type=kind,
            data=data,
            member=member,
            channel=channel,
            message=message,
            locale=locale,
            dispatched_at=now,
            expires_at=now + self.token_lifetime,
        )
        self.interactions[itx.id] = itx
        self.gateway._dispatch_to(session, "INTERACTION_CREATE", self._interaction_payload(itx))
        self._notify()
        return InteractionHandle(self, itx)

    def _interaction_payload(self: FakeDiscord, itx: FakeInteraction) -> dict[str, Any]:
        guild, member = itx.guild, itx.member
        perms = str(member.permissions)
        payload: dict[str, Any] = {
            "id": str(itx.id),
            "application_id": str(self.application_id),
            "type": itx.type,
            "data": itx.data,
            "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
            "guild_id": str(guild.id),
            "channel": {**itx.channel.payload(), "permissions": perms},
            "channel_id": str(itx.channel.id),
            "member": member.payload(with_permissions=True),
            "token": itx.token,
            "version": 1,
            "app_permissions": str(guild.permissions_for(guild.members[self.bot_user.id])),
            "locale": itx.locale,
            "guild_locale": guild.locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": self.attachment_size_limit,
        }
        if itx.message is not None:
            payload["message"] = itx.message.payload(guild.members)
        return payload

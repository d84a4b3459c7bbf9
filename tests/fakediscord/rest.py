"""REST routes under ``/api/v10`` plus the attachment CDN, with Discord's validation and errors.

Responses use ``Content-Type: application/json`` exactly: discord.py only parses JSON when the
header has no ``charset`` parameter (aiohttp's ``json_response`` would add one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import SERVER_ERRORS, ApiError, invalid_form
from .models import CallbackRecord, FakeInteraction, FakeMessage, walk_components

if TYPE_CHECKING:
    from .server import FakeDiscord

_log = logging.getLogger("fakediscord")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Uploads = dict[int, tuple[str, bytes]]

_NAME_RE = re.compile(r"^[-_'\w]{1,32}$")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, content_type="application/json"
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def error_middleware(fd: FakeDiscord) -> Any:
    """Turn ApiError into Discord error JSON; record every request and any crash in the fake."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        fd.requests.append((request.method, request.path))
        fault = next((f for f in fd.faults if f.matches(request.method, request.path)), None)
        if fault is not None:
            fault.times -= 1
            fault.served.append(request.path)
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            if fault.after_commit:
                with contextlib.suppress(ApiError):
                    await handler(request)  # done, and its answer is lost
            body = {"message": SERVER_ERRORS.get(fault.status, "Server Error"), "code": 0}
            return json_response(body, fault.status)
        try:
            return await handler(request)
        except ApiError as exc:
            body: dict[str, Any] = {"message": exc.message, "code": exc.code}
            if exc.errors:
                body["errors"] = exc.errors
            return json_response(body, exc.status)
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug in the fake (or a payload it cannot read): say so loudly
            _log.exception("fakediscord: %s %s crashed", request.method, request.path)
            fd.problems.append(f"{request.method} {request.path} crashed: {exc!r}")
            # 400, not 500: discord.py retries 5xx with multi-second sleeps.
            return json_response(
                {"message": f"fakediscord internal error: {exc!r}", "code": 50035}, 400
            )

    return middleware


async def read_body(request: web.Request) -> tuple[Any, Uploads]:
    """A JSON body, or a multipart body with ``payload_json`` and ``files[n]`` parts."""
    if request.content_type.startswith("multipart/"):
        payload: Any = {}
        uploads: Uploads = {}
        reader = await request.multipart()
        async for part in reader:
            match = re.fullmatch(r"files\[(\d+)\]", part.name or "")
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            elif match:
                uploads[int(match.group(1))] = (
                    part.filename or f"file{match.group(1)}",
                    bytes(await part.read()),
                )
            else:
                raise invalid_form(f"unexpected multipart field {part.name!r}")
        return payload, uploads
    text = await request.text()
    return (json.loads(text) if text else {}), {}


# -- validation --------------------------------------------------------------------------------


def validate_message(msg: FakeMessage, *, require_content: bool) -> None:
    """The checks Discord makes on a message's final state (a subset, the ones bots trip over)."""
    if len(msg.content) > 2000:
        raise invalid_form("content: Must be 2000 or fewer in length.")
    if len(msg.embeds) > 10:
        raise invalid_form("embeds: Must be 10 or fewer in length.")
    total = 0
    for i, embed in enumerate(msg.embeds):
        limits = {"title": 256, "description": 4096}
        for key, limit in limits.items():
            if len(embed.get(key) or "") > limit:
                raise invalid_form(f"embeds.{i}.{key}: Must be {limit} or fewer in length.")
        fields = embed.get("fields") or []
        if len(fields) > 25:
            raise invalid_form(f"embeds.{i}.fields: Must be 25 or fewer in length.")
        for f in fields:
            if (
                not f.get("name")
                or not f.get("value")
                or len(f["name"]) > 256
                or len(f["value"]) > 1024
            ):
                raise invalid_form(
                    f"embeds.{i}.fields: name 1-256 and value 1-1024 characters are required."
                )
        total += sum(len(embed.get(k) or "") for k in limits)
        total += sum(len(f["name"]) + len(f["value"]) for f in fields)
        total += len((embed.get("footer") or {}).get("text") or "") + len(
            (embed.get("author") or {}).get("name") or ""
        )
    if total > 6000:
        raise invalid_form("embeds: Embed size exceeds maximum size of 6000")
    _validate_components(msg)
    empty = not (msg.content or msg.embeds or msg.attachments or msg.components)
    if require_content and empty and not msg.loading:
        raise ApiError(400, 50006, "Cannot send an empty message")


def _validate_components(msg: FakeMessage) -> None:
    v2 = bool(msg.flags & (1 << 15))
    if not v2:
        if len(msg.components) > 5:
            raise invalid_form("components: Must be 5 or fewer in length.")
        for row in msg.components:
            children = row.get("components") or []
            if row.get("type") != 1 or not 1 <= len(children) <= 5:
                raise invalid_form(
                    "components: each top-level component must be an action row of 1-5 items."
                )
            if any(c.get("type") != 2 for c in children) and len(children) != 1:
                raise invalid_form("components: a select menu must be alone in its action row.")
    elif msg.content or msg.embeds:
        raise invalid_form("content/embeds cannot be used with the IS_COMPONENTS_V2 flag.")
    seen: set[str] = set()
    for comp in walk_components(msg.components):
        cid = comp.get("custom_id")
        if comp.get("type") == 2:
            if comp.get("style") == 5:
                if not comp.get("url") or cid:
                    raise invalid_form("components: a link button needs a url and no custom_id.")
            elif not cid:
                raise invalid_form("components: a button needs a custom_id.")
            if len(comp.get("label") or "") > 80:
                raise invalid_form("components: a button label must be 80 or fewer in length.")
        if cid is not None:
            if not 1 <= len(cid) <= 100:
                raise invalid_form(f"components: custom_id {cid!r} must be 1-100 characters.")
            if cid in seen:
                raise invalid_form(f"components: custom_id {cid!r} is duplicated.")
            seen.add(cid)


def validate_command(cmd: dict[str, Any]) -> None:
    """Discord's rules for an application command definition."""
    ctype = cmd.get("type", 1)
    name = cmd.get("name", "")
    if ctype == 1:
        if not _NAME_RE.match(name) or name != name.lower():
            raise invalid_form(f"name: {name!r} must be 1-32 lowercase letters, digits, - or _.")
        if not 1 <= len(cmd.get("description") or "") <= 100:
            raise invalid_form(f"{name}.description: Must be between 1 and 100 in length.")
        _validate_options(name, cmd.get("options") or [])
    elif not 1 <= len(name) <= 32:
        raise invalid_form(f"name: {name!r} must be 1-32 characters.")


def _validate_options(path: str, options: list[dict[str, Any]]) -> None:
    if len(options) > 25:
        raise invalid_form(f"{path}.options: Must be 25 or fewer in length.")
    kinds = {o.get("type") in (1, 2) for o in options}
    if len(kinds) > 1:
        raise invalid_form(f"{path}.options: subcommands cannot be mixed with other options.")
    optional_seen = False
    names = set()
    for opt in options:
        oname = opt.get("name", "")
        where = f"{path}.{oname}"
        if not _NAME_RE.match(oname) or oname != oname.lower():
            raise invalid_form(f"{where}: invalid option name.")
        if oname in names:
            raise invalid_form(f"{where}: duplicate option name.")
        names.add(oname)
        if not 1 <= len(opt.get("description") or "") <= 100:
            raise invalid_form(f"{where}.description: Must be between 1 and 100 in length.")
        if len(opt.get("choices") or []) > 25:
            raise invalid_form(f"{where}.choices: Must be 25 or fewer in length.")
        if opt.get("autocomplete"):
            if opt.get("type") not in (3, 4, 10):
                raise invalid_form(f"{where}.autocomplete: only string and number options.")
            if opt.get("choices"):
                raise invalid_form(f"{where}.autocomplete: cannot be set with choices.")
        if opt.get("type") in (1, 2):
            _validate_options(where, opt.get("options") or [])
        elif opt.get("required"):
            if optional_seen:
                raise invalid_form(f"{where}: required options must come before optional ones.")
        else:
            optional_seen = True


def _checked_choices(itx: FakeInteraction, choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Autocomplete choices as Discord checks them: at most 25, each a name of 1–100 characters
    and a value of the focused option's type (a string of at most 100)."""
    if len(choices) > 25:
        raise invalid_form("data.choices: Must be 25 or fewer in length.")
    focused = _focused_option(itx.data.get("options") or [])
    for n, option in enumerate(choices):
        name, value = option.get("name"), option.get("value")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise invalid_form(f"data.choices.{n}.name: Must be between 1 and 100 in length.")
        kind = focused.get("type") if focused else None
        wrong = (
            (kind == 3 and not (isinstance(value, str) and len(value) <= 100))
            or (kind == 4 and (isinstance(value, bool) or not isinstance(value, int)))
            or (kind == 10 and (isinstance(value, bool) or not isinstance(value, (int, float))))
        )
        if wrong:
            raise invalid_form(f"data.choices.{n}.value: not a valid value for option type {kind}.")
    return choices


def _focused_option(options: list[dict[str, Any]]) -> dict[str, Any] | None:
    for option in options:
        if option.get("focused"):
            return option
        found = _focused_option(option.get("options") or [])
        if found is not None:
            return found
    return None


# -- routes ------------------------------------------------------------------------------------


class RestApi:
    """Request handlers; state lives on the :class:`FakeDiscord`."""

    def __init__(self, fd: FakeDiscord) -> None:
        self.fd = fd

    # helpers

    def _auth(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            token = header[4:] if header.startswith("Bot ") else None
            self.fd.tokens_seen.add(token or "")
            if token is None or (self.fd.token is not None and token != self.fd.token):
                return json_response({"message": "401: Unauthorized", "code": 0}, 401)
            return await handler(request)

        return wrapped

    def _msg(self, msg: FakeMessage) -> dict[str, Any]:
        guild = self.fd.guilds.get(msg.guild_id) if msg.guild_id else None
        return msg.payload(guild.members if guild else None)

    def _channel(self, request: web.Request) -> Any:
        channel = self.fd.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    def _guild(self, request: web.Request) -> Any:
        guild = self.fd.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return guild

    def _channel_message(self, request: web.Request) -> FakeMessage:
        channel = self._channel(request)
        msg = self.fd.messages_by_id.get(int(request.match_info["message_id"]))
        if msg is None or msg.deleted or msg.channel_id != channel.id or msg.visible_to is not None:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    # users, application, gateway

    async def get_me(self, request: web.Request) -> web.Response:
        return json_response(
            {**self.fd.bot_user.payload(), "verified": True, "mfa_enabled": False, "flags": 0}
        )

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.fd.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(user.payload())

    async def create_dm(self, request: web.Request) -> web.Response:
        body, _ = await read_body(request)
        user = self.fd.users.get(int(body.get("recipient_id", 0)))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(self.fd.dm_channel(user).payload())

    async def get_application(self, request: web.Request) -> web.Response:
        fd = self.fd
        return json_response(
            {
                "id": str(fd.application_id),
                "name": fd.bot_user.name,
                "icon": None,
                "description": "",
                "summary": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": fd.app_owner.payload(),
                "team": None,
                "flags": fd.application_flags,
                "bot": fd.bot_user.payload(),
                "hook": True,
                "interactions_endpoint_url": None,
                "redirect_uris": [],
                "tags": [],
                "approximate_guild_count": len(fd.guilds),
            }
        )

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.fd.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return json_response(
            {"url": self.fd.gateway_url, "shards": 1, "session_start_limit": limit}
        )

    # application commands

    def _scope(self, request: web.Request) -> int | None:
        if int(request.match_info["app_id"]) != self.fd.application_id:
            raise ApiError(404, 10002, "Unknown Application")
        return self._guild(request).id if "guild_id" in request.match_info else None

    def _store_command(
        self, scope: int | None, payload: dict[str, Any], existing: list[dict[str, Any]]
    ) -> dict[str, Any]:
        validate_command(payload)
        ctype = payload.get("type", 1)
        prev = next(
            (c for c in existing if c["name"] == payload["name"] and c["type"] == ctype), None
        )
        cmd = {
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            "contexts": None,
            "integration_types": [0],
            **payload,
            "id": prev["id"] if prev else str(self.fd.new_id()),
            "application_id": str(self.fd.application_id),
            "version": str(self.fd.new_id()),
            "type": ctype,
        }
        if scope is not None:
            cmd["guild_id"] = str(scope)
        return cmd

    async def list_commands(self, request: web.Request) -> web.Response:
        return json_response(self.fd.commands_by_scope[self._scope(request)])

    async def bulk_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body, _ = await read_body(request)
        old = self.fd.commands_by_scope[scope]
        keys = [(c.get("type", 1), c.get("name")) for c in body]
        if len(keys) != len(set(keys)):
            raise invalid_form("application commands: duplicate names.")
        new = [self._store_command(scope, c, old) for c in body]
        self.fd.commands_by_scope[scope] = new
        self.fd._notify()
        return json_response(new)

    async def upsert_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body, _ = await read_body(request)
        cmds = self.fd.commands_by_scope[scope]
        cmd = self._store_command(scope, body, cmds)
        cmds[:] = [c for c in cmds if c["id"] != cmd["id"]] + [cmd]
        self.fd._notify()
        return json_response(cmd, 201)

    def _find_command(self, request: web.Request) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        cmds = self.fd.commands_by_scope[self._scope(request)]
        cmd = next((c for c in cmds if c["id"] == request.match_info["command_id"]), None)
        if cmd is None:
            raise ApiError(404, 10063, "Unknown application command")
        return cmds, cmd

    async def get_command(self, request: web.Request) -> web.Response:
        return json_response(self._find_command(request)[1])

    async def edit_command(self, request: web.Request) -> web.Response:
        cmds, cmd = self._find_command(request)
        body, _ = await read_body(request)
        new = self._store_command(self._scope(request), {**cmd, **body}, cmds)
        cmds[cmds.index(cmd)] = new
        self.fd._notify()
        return json_response(new)

    async def delete_command(self, request: web.Request) -> web.Response:
        cmds, cmd = self._find_command(request)
        cmds.remove(cmd)
        self.fd._notify()
        return no_content()

    # interactions

    def _interaction_for_token(self, request: web.Request) -> FakeInteraction:
        token = request.match_info["token"]
        itx = next((i for i in self.fd.interactions.values() if i.token == token), None)
        if int(request.match_info["app_id"]) != self.fd.application_id or itx is None:
            raise ApiError(404, 10015, "Unknown Webhook")
        if asyncio.get_running_loop().time() > itx.expires_at:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return itx

    async def callback(self, request: web.Request) -> web.Response:
        fd = self.fd
        itx = fd.interactions.get(int(request.match_info["interaction_id"]))
        if itx is None or itx.token != request.match_info["token"]:
            raise ApiError(404, 10062, "Unknown interaction")
        elapsed = asyncio.get_running_loop().time() - itx.dispatched_at  # measured on arrival
        body, uploads = await read_body(request)
        cb_type, data = body.get("type"), body.get("data") or {}
        if itx.response is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if elapsed > fd.response_deadline:
            itx.callbacks.append(
                CallbackRecord(cb_type, data, elapsed, False, f"too late ({elapsed:.2f}s)")
            )
            fd._notify()
            raise ApiError(404, 10062, "Unknown interaction")
        try:
            message = self._apply_callback(itx, cb_type, data, uploads)
        except ApiError as exc:  # invalid response: recorded so that handle.response() can say why
            itx.callbacks.append(CallbackRecord(cb_type, data, elapsed, False, str(exc)))
            fd._notify()
            raise
        itx.callbacks.append(CallbackRecord(cb_type, data, elapsed, True, message=message))
        fd._notify()
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return no_content()
        interaction: dict[str, Any] = {"id": str(itx.id), "type": itx.type}
        resource: dict[str, Any] = {"type": cb_type}
        if message is not None:
            interaction.update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
            resource["message"] = self._msg(message)
        return json_response({"interaction": interaction, "resource": resource})

    def _apply_callback(
        self, itx: FakeInteraction, cb_type: int, data: dict[str, Any], uploads: Uploads
    ) -> FakeMessage | None:
        fd = self.fd
        allowed = {1: {1}, 4: {2, 3, 5}, 5: {2, 3, 5}, 6: {3, 5}, 7: {3, 5}, 8: {4}, 9: {2, 3}}
        if itx.type not in allowed.get(cb_type, set()) or (cb_type == 7 and itx.message is None):
            raise invalid_form(
                f"interaction response type {cb_type} is not valid for interaction type {itx.type}"
            )
        if cb_type in (4, 5):
            message = fd.create_message(
                itx.channel,
                fd.bot_user,
                data if cb_type == 4 else {"flags": data.get("flags", 0)},
                uploads,
                interaction=itx,
                ephemeral_for=itx.member.id,
                msg_type=20 if itx.type == 2 else 0,
                loading=cb_type == 5,
            )
            itx.original_message_id = message.id
            return message
        if cb_type in (6, 7) and itx.message is not None:
            if cb_type == 7:
                fd.edit_message(itx.message, data, uploads)
            itx.original_message_id = itx.message.id
            return itx.message
        if cb_type == 8:
            itx.choices = _checked_choices(itx, data.get("choices") or [])
        elif cb_type == 9:
            if not data.get("custom_id") or not data.get("title") or not data.get("components"):
                raise invalid_form("a modal needs custom_id, title and components.")
            itx.modal = {**data, "components": fd._number_components(data["components"])}
        return None

    async def followup(self, request: web.Request) -> web.Response:
        fd = self.fd
        itx = self._interaction_for_token(request)
        if itx.response is None:
            raise ApiError(404, 10015, "Unknown Webhook")
        body, uploads = await read_body(request)
        original = fd.messages_by_id.get(itx.original_message_id or 0)
        if original is not None and original.loading and itx.response.type == 5:
            # The first followup after a deferred "thinking" response replaces that message.
            msg = fd.edit_message(original, body, uploads)
        else:
            msg = fd.create_message(
                itx.channel,
                fd.bot_user,
                body,
                uploads,
                interaction=itx,
                ephemeral_for=itx.member.id,
            )
        itx.followup_ids.append(msg.id)
        if request.query.get("wait", "").lower() in ("1", "true"):
            return json_response(self._msg(msg))
        return no_content()

    def _webhook_message(self, request: web.Request) -> tuple[FakeInteraction, FakeMessage]:
        itx = self._interaction_for_token(request)
        raw = request.match_info["message_id"]
        mid = itx.original_message_id if raw == "@original" else int(raw)
        own = {
            *itx.followup_ids,
            itx.original_message_id,
            *([itx.message.id] if itx.message else []),
        }
        msg = self.fd.messages_by_id.get(mid or 0)
        if msg is None or msg.deleted or mid not in own:
            raise ApiError(404, 10008, "Unknown Message")
        return itx, msg

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        return json_response(self._msg(self._webhook_message(request)[1]))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        _, msg = self._webhook_message(request)
        body, uploads = await read_body(request)
        return json_response(self._msg(self.fd.edit_message(msg, body, uploads)))

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        self.fd.delete_message(self._webhook_message(request)[1])
        return no_content()

    # channels and messages

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request).payload())

    async def list_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msgs = self.fd.messages(channel)
        q = request.query
        limit = max(1, min(int(q.get("limit", 50)), 100))
        if "before" in q:
            msgs = [m for m in msgs if m.id < int(q["before"])]
        if "after" in q:
            msgs = [m for m in msgs if m.id > int(q["after"])][:limit]
        if "around" in q:
            pivot = int(q["around"])
            older = [m for m in msgs if m.id <= pivot][-(limit - limit // 2) :]
            newer = [m for m in msgs if m.id > pivot][: limit // 2]
            msgs = older + newer
        msgs = msgs[-limit:]
        return json_response([self._msg(m) for m in reversed(msgs)])

    async def post_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body, uploads = await read_body(request)
        nonce = body.get("nonce")
        if nonce is not None and len(str(nonce)) > 25:
            raise invalid_form("nonce: Must be 25 or fewer in length.")
        if nonce is not None and body.get("enforce_nonce"):
            # Discord: the same author's message with this nonce from the last few minutes is
            # returned instead of a new one.
            earlier = self.fd.message_with_nonce(self.fd.bot_user, str(nonce))
            if earlier is not None:
                return json_response({**self._msg(earlier), "nonce": str(nonce)})
        msg = self.fd.create_message(
            channel,
            self.fd.bot_user,
            body,
            uploads,
            msg_type=19 if body.get("message_reference") else 0,
        )
        if nonce is not None:
            self.fd.remember_nonce(self.fd.bot_user, str(nonce), msg)
            return json_response({**self._msg(msg), "nonce": str(nonce)})
        return json_response(self._msg(msg))

    async def get_message(self, request: web.Request) -> web.Response:
        return json_response(self._msg(self._channel_message(request)))

    async def edit_message(self, request: web.Request) -> web.Response:
        msg = self._channel_message(request)
        if msg.author.id != self.fd.bot_user.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        body, uploads = await read_body(request)
        return json_response(self._msg(self.fd.edit_message(msg, body, uploads)))

    async def delete_message(self, request: web.Request) -> web.Response:
        self.fd.delete_message(self._channel_message(request))
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        self._channel(request)
        return no_content()

    # guilds

    async def get_guild(self, request: web.Request) -> web.Response:
        data = self._guild(request).payload(include_members=False, bot_user_id=self.fd.bot_user.id)
        for key in (
            "members",
            "channels",
            "threads",
            "presences",
            "voice_states",
            "joined_at",
            "large",
            "member_count",
        ):
            data.pop(key)
        return json_response(data)

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        return json_response([c.payload() for c in self._guild(request).channels.values()])

    async def get_roles(self, request: web.Request) -> web.Response:
        return json_response([r.payload() for r in self._guild(request).roles.values()])

    async def get_member(self, request: web.Request) -> web.Response:
        member = self._guild(request).members.get(int(request.match_info["user_id"]))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(member.payload())

    async def list_members(self, request: web.Request) -> web.Response:
        members = sorted(self._guild(request).members.values(), key=lambda m: m.id)
        after = int(request.query.get("after", 0))
        limit = int(request.query.get("limit", 1))
        return json_response([m.payload() for m in members if m.id > after][:limit])

    # CDN and fallback

    async def cdn(self, request: web.Request) -> web.Response:
        att = self.fd.attachments.get(int(request.match_info["attachment_id"]))
        if att is None or att.filename != request.match_info["filename"]:
            raise web.HTTPNotFound()
        return web.Response(body=att.data, content_type=att.content_type)

    async def unknown(self, request: web.Request) -> web.Response:
        self.fd._problem(f"unhandled route {request.method} {request.path}")
        return json_response({"message": "404: Not Found", "code": 0}, 404)


def add_routes(app: web.Application, fd: FakeDiscord) -> None:
    api = RestApi(fd)
    bot_routes: list[tuple[str, str, Handler]] = [
        ("GET", "/users/@me", api.get_me),
        ("POST", "/users/@me/channels", api.create_dm),
        ("GET", "/users/{user_id:\\d+}", api.get_user),
        ("GET", "/oauth2/applications/@me", api.get_application),
        ("GET", "/gateway", api.get_gateway),
        ("GET", "/gateway/bot", api.get_gateway_bot),
        ("GET", "/channels/{channel_id}", api.get_channel),
        ("GET", "/channels/{channel_id}/messages", api.list_messages),
        ("POST", "/channels/{channel_id}/messages", api.post_message),
        ("GET", "/channels/{channel_id}/messages/{message_id}", api.get_message),
        ("PATCH", "/channels/{channel_id}/messages/{message_id}", api.edit_message),
        ("DELETE", "/channels/{channel_id}/messages/{message_id}", api.delete_message),
        ("POST", "/channels/{channel_id}/typing", api.typing),
        ("GET", "/guilds/{guild_id}", api.get_guild),
        ("GET", "/guilds/{guild_id}/channels", api.get_guild_channels),
        ("GET", "/guilds/{guild_id}/roles", api.get_roles),
        ("GET", "/guilds/{guild_id}/members", api.list_members),
        ("GET", "/guilds/{guild_id}/members/{user_id}", api.get_member),
    ]
    for scope in ("/applications/{app_id}", "/applications/{app_id}/guilds/{guild_id}"):
        bot_routes += [
            ("GET", scope + "/commands", api.list_commands),
            ("PUT", scope + "/commands", api.bulk_commands),
            ("POST", scope + "/commands", api.upsert_command),
            ("GET", scope + "/commands/{command_id}", api.get_command),
            ("PATCH", scope + "/commands/{command_id}", api.edit_command),
            ("DELETE", scope + "/commands/{command_id}", api.delete_command),
        ]
    webhook_routes: list[tuple[str, str, Handler]] = [
        ("POST", "/interactions/{interaction_id}/{token}/callback", api.callback),
        ("POST", "/webhooks/{app_id}/{token}", api.followup),
        ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", api.get_webhook_message),
        ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", api.edit_webhook_message),
        ("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", api.delete_webhook_message),
    ]
    for method, path, handler in bot_routes:
        app.router.add_route(method, "/api/v10" + path, api._auth(handler))
    for method, path, handler in webhook_routes:
        app.router.add_route(method, "/api/v10" + path, handler)
    app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", api.cdn)
    app.router.add_route("*", "/api/v10/{tail:.*}", api.unknown)

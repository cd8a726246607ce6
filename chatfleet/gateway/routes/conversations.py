"""/api/conversations: the caller's conversations and their replies.

GET    /api/conversations                   most recent first (?limit, ?before)
POST   /api/conversations                   {title?, system_prompt?, tools?, tool_choice?}
GET    /api/conversations/{id}              with its messages
PATCH  /api/conversations/{id}              {title?, tools?, tool_choice?}
DELETE /api/conversations/{id}              with its messages
POST   /api/conversations/{id}/messages     {content, max_tokens?, temperature?, top_p?, seed?}
POST   /api/conversations/{id}/regenerate   the last reply again (same options)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatfleet.errors import InvalidRequestError
from chatfleet.gateway.auth import CallerKey, GatewayDep
from chatfleet.gateway.routes.query import int_query
from chatfleet.gateway.schemas import (
    NewConversation,
    NewMessage,
    ReplyOptions,
    UpdateConversation,
    conversation_json,
    message_json,
)
from chatfleet.gateway.workers import run_db
from chatfleet.http.http_errors import NotFoundError

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


@router.get("")
async def list_conversations(request: Request, key: CallerKey, gw: GatewayDep) -> dict[str, Any]:
    limit = int_query(request, "limit", 50, 1, 200)
    before = request.query_params.get("before")
    try:
        cursor = None if before is None else float(before)
    except ValueError:
        raise InvalidRequestError("before must be a number", param="before") from None
    convs = await run_db(gw.store.list_conversations, key.user_id, limit + 1, cursor)
    data = [conversation_json(c) for c in convs[:limit]]
    return {"object": "list", "data": data, "has_more": len(convs) > limit}


@router.post("", status_code=201)
async def create_conversation(request: Request, key: CallerKey, gw: GatewayDep) -> dict[str, Any]:
    """Takes one request of the key's rate; its system prompt counts toward the user's
    stored bytes."""
    await gw.limiter.take_request(key)
    req = await gw.body(request, NewConversation)
    tools, choice = req.tools_json(), req.tool_choice_json()
    conv = await run_db(
        gw.store.create_conversation,
        key.user_id,
        req.title,
        req.system_prompt,
        tools,
        choice,
        gw.config.chat.max_stored_bytes_per_user,
    )
    return conversation_json(conv)


@router.get("/{conversation_id}")
async def get_conversation(conversation_id: str, key: CallerKey, gw: GatewayDep) -> dict[str, Any]:
    conv = await gw.conversation(key, conversation_id)
    messages = await run_db(gw.store.list_messages, conversation_id)
    stale = gw.config.chat.stale_after_s
    return conversation_json(conv) | {"messages": [message_json(m, stale) for m in messages]}


@router.patch("/{conversation_id}")
async def update_conversation(
    request: Request, conversation_id: str, key: CallerKey, gw: GatewayDep
) -> dict[str, Any]:
    await gw.conversation(key, conversation_id)
    req = await gw.body(request, UpdateConversation)
    tools, choice = req.tools_json(), req.tool_choice_json()
    quota = gw.config.chat.max_stored_bytes_per_user
    conv = await run_db(
        gw.store.update_conversation, conversation_id, req.title, None, tools, choice, quota
    )
    if conv is None:
        raise NotFoundError(f"No conversation {conversation_id!r}.", param="id")
    return conversation_json(conv)


@router.delete("/{conversation_id}")
async def delete_conversation(
    conversation_id: str, key: CallerKey, gw: GatewayDep
) -> dict[str, Any]:
    await gw.conversation(key, conversation_id)
    await run_db(gw.store.delete_conversation, conversation_id)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


async def _reply(
    request: Request, conversation_id: str, key: CallerKey, gw: GatewayDep, is_new: bool
) -> Response:
    """An SSE reply to a new message (`is_new`), or the last reply again."""
    await gw.limiter.check_open(key)  # before the body is read and the history tokenized
    conv = await gw.conversation(key, conversation_id)
    if is_new:
        message = await gw.body(request, NewMessage)
        return await gw.chat.reply(key, conv, message, message.content)
    return await gw.chat.reply(key, conv, await gw.body(request, ReplyOptions), None)


@router.post("/{conversation_id}/messages")
async def post_message(request: Request, conversation_id: str, key: CallerKey, gw: GatewayDep):
    return await _reply(request, conversation_id, key, gw, is_new=True)


@router.post("/{conversation_id}/regenerate")
async def regenerate(request: Request, conversation_id: str, key: CallerKey, gw: GatewayDep):
    return await _reply(request, conversation_id, key, gw, is_new=False)

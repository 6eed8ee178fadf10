"""``/internal/avatars``: a user's avatar upload (``user_store/avatars.py``), and the stored avatar the gateway
serves at its public URL."""

from __future__ import annotations

import msgspec
from aiohttp import web

from shared.errors import NotFound
from shared.guard import body_limit
from shared.messages import AvatarUpload
from user_store.appkeys import AUDIT, AVATARS, CONFIG, PG_POOL, SIGNER
from user_store.avatars import AVATAR_ID, MAX_UPLOAD_BYTES, upload_avatar
from user_store.http import json_response, read_json

_upload_decoder = msgspec.json.Decoder(AvatarUpload)
#: The upload, base64 in JSON (4/3), plus the credentials.
UPLOAD_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024


@body_limit(UPLOAD_BODY_BYTES)
async def upload(request: web.Request) -> web.Response:
    """``POST /internal/avatars`` ``AvatarUpload`` -> ``AvatarResult``."""
    body = await read_json(request, _upload_decoder)
    app = request.app
    result = await upload_avatar(
        app[PG_POOL], app[SIGNER], app[AVATARS], body, issuer=app[CONFIG].issuer, audit=app[AUDIT]
    )
    return json_response(result)


async def get_avatar(request: web.Request) -> web.Response:
    """``GET /internal/avatars/{avatar_id}``: the image's bytes, its ``Content-Type`` and its ``ETag``."""
    avatar_id = request.match_info["avatar_id"]
    found = await request.app[AVATARS].get(avatar_id) if AVATAR_ID.match(avatar_id) else None
    if found is None:
        raise NotFound("no such avatar")
    return web.Response(body=found.content, content_type=found.content_type, headers={"ETag": f'"{found.etag}"'})

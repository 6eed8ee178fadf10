"""``POST /api/upload-avatar`` (the bearer's new avatar, multipart) and ``GET /avatars/{id}.{ext}`` (every uploaded
avatar, public and cacheable for ever: a new upload gets a new id).

The gateway only carries bytes: the user store decodes, checks, re-encodes and stores the image
(``user_store/avatars.py``) and serves it back by id. Avatars are not cached here: an erased account's avatar must
stop being served at once, so caching is left to HTTP caches, which the headers allow.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from gateway import appkeys
from gateway.content_safety import submit_avatar
from gateway.params import caller_credentials
from gateway.responses import envelope_ok
from shared.errors import BadRequest, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from shared.guard import body_limit
from shared.messages import MAX_AVATAR_BYTES, AvatarUpload

UPLOAD_PATH = "/api/upload-avatar"
#: The route's own body limit: the file plus room for the multipart envelope and a few small fields.
UPLOAD_BODY_BYTES = MAX_AVATAR_BYTES + 64 * 1024
#: The multipart fields that may carry the file (``wx.uploadFile``'s ``name``).
FILE_FIELDS = ("avatar", "file")
AVATAR_PATH = "/avatars/{name}"
AVATAR_PREFIX = "/avatars/"
_NAME = re.compile(r"^([0-9a-f]{32})\.(jpg|png|webp)$")
_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
#: An avatar's URL names bytes that never change.
CACHE_FOREVER = "public, max-age=31536000, immutable"
_IMAGE_HEADERS = {
    "Cache-Control": CACHE_FOREVER,
    "X-Content-Type-Options": "nosniff",
    # Opened directly, an image runs nothing and embeds nothing.
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


@body_limit(UPLOAD_BODY_BYTES, binary=True)
async def upload_avatar(request: web.Request) -> web.Response:
    """``POST /api/upload-avatar``: ``multipart/form-data`` with the image in field ``avatar`` (or ``file``), the
    bearer's token in ``Authorization`` or ``access_token``. ``data``: the avatar's URL, now the user's avatar;
    ``data2``: its type, size and pixels, and ``pending`` when the application screens avatars: it becomes the
    user's once WeChat's content security passes it."""
    caller = caller_credentials(request, dict(request.query))
    if not caller.access_token:
        raise Unauthorized("upload-avatar needs the user's access token (Authorization: Bearer ...)")
    content = await _file_part(request)
    result = await request.app[appkeys.USER_STORE].upload_avatar(
        AvatarUpload(credentials=caller, content=content),
        request_id=request[appkeys.REQUEST_ID],
        client_ip=request[appkeys.CLIENT_IP],
    )
    if result.pending:
        await submit_avatar(request, caller, result)
    return envelope_ok(result.url, data2=result)


async def _file_part(request: web.Request) -> bytes:
    """The bytes of the file field, read from the body ``input_guard`` already holds."""
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType("send the avatar as multipart/form-data, in a field named 'avatar'")
    raw = await request.read()
    loop = asyncio.get_running_loop()
    # A limit above the body's size: the whole body is fed at once, with no transport to pause.
    stream = StreamReader(BaseProtocol(loop), max(2**16, len(raw) + 1), loop=loop)
    stream.feed_data(raw)
    stream.feed_eof()
    try:
        reader = MultipartReader(request.headers, stream)
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name in FILE_FIELDS:
                content = bytes(await part.read(decode=True))
                if len(content) > MAX_AVATAR_BYTES:
                    raise PayloadTooLarge("the avatar is larger than {mb} MB", mb=MAX_AVATAR_BYTES // (1024 * 1024))
                return content
    except (HttpProcessingError, ValueError, AssertionError, RuntimeError, LookupError) as exc:
        raise BadRequest("the multipart body is malformed ({kind})", kind=type(exc).__name__) from None
    raise BadRequest("the multipart body has no file in a field named 'avatar'")


async def avatar(request: web.Request) -> web.Response:
    """``GET /avatars/{id}.{ext}``: an uploaded avatar; 304 when ``If-None-Match`` names its ETag."""
    match = _NAME.match(request.match_info["name"])
    if match is None:
        raise NotFound("no such avatar")
    avatar_id, extension = match.groups()
    found = await request.app[appkeys.USER_STORE].get_avatar(avatar_id, request_id=request[appkeys.REQUEST_ID])
    if found is None or found.content_type != _TYPES[extension]:
        raise NotFound("no such avatar")
    headers = {**_IMAGE_HEADERS, "ETag": found.etag}
    if found.etag and found.etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.content, content_type=found.content_type, headers=headers)


ROUTES = (
    ("POST", UPLOAD_PATH, upload_avatar),
    ("GET", AVATAR_PATH, avatar),
)

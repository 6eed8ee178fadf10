"""Avatar upload: since 2022 a mini program holds only a temporary local file (``chooseAvatar``), which it uploads.

``clean_image`` decides what is kept: a JPEG, PNG or WebP of at most ``MAX_UPLOAD_BYTES``, recognised by decoding it
(Pillow), not by its name or declared type. Refused, each with a 4xx that says why: anything Pillow does not decode
as one of those three; a polyglot (bytes after the image's end, or markup a browser or an interpreter would run);
a decompression bomb (more than ``MAX_SOURCE_PIXELS`` pixels announced, whatever the file's size); a file over the
limit. What is kept is a new encoding of the pixels alone, in the same format, scaled down to ``MAX_SIDE`` pixels:
EXIF (GPS included), ICC profiles, comments and any trailing payload are gone.

``AvatarStore`` is where avatars live: PostgreSQL (``PostgresAvatarStore``, table ``avatars``, one row per user) by
default; an object store would implement the same three methods.
"""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import warnings
from dataclasses import dataclass
from typing import Protocol

import structlog
from PIL import Image, ImageOps

from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from shared.messages import MAX_AVATAR_BYTES, AvatarResult, AvatarUpload
from user_store.audit import AuditWriter
from user_store.callers import authenticate, require_user
from user_store.db import Conn, Pool, connection, transaction
from user_store.queries import avatars as queries
from user_store.queries.content_safety import content_safety_of, insert_review
from user_store.queries.users import write_user
from user_store.signing_keys.signer import Signer

#: The largest upload taken (the gateway's route limit adds room for the multipart envelope).
MAX_UPLOAD_BYTES = MAX_AVATAR_BYTES
#: Pixels a source may announce: far above any phone photo's 48 MP, far below what would exhaust memory decoded.
MAX_SOURCE_PIXELS = 50_000_000
#: The stored avatar fits in a square of this side.
MAX_SIDE = 512
#: Format Pillow reports -> (content type, URL extension).
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}
EXTENSIONS = {ext: content_type for content_type, ext in FORMATS.values()}
#: Markup that makes a file something else too: HTML or SVG a browser renders, PHP a server runs.
_MARKUP = re.compile(rb"<(?:script|html|svg|body|iframe|\?php|!doctype)", re.IGNORECASE)
_PNG_END = b"IEND\xaeB`\x82"
#: An avatar id: 32 hex digits, unguessable, new for every upload (so its URL can be cached forever).
AVATAR_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class CleanImage:
    content: bytes
    content_type: str
    extension: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class StoredAvatar:
    avatar_id: str
    content: bytes
    content_type: str
    etag: str


class AvatarStore(Protocol):
    """Where avatars are kept: one per user (a new one replaces the old), found by its id."""

    async def put(self, user_id: str, avatar_id: str, image: CleanImage) -> None: ...

    async def get(self, avatar_id: str) -> StoredAvatar | None: ...

    async def delete(self, user_id: str) -> bool: ...


class PostgresAvatarStore:
    """The default store: ``avatars`` in the user store's database (migration 0011)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def put(self, user_id: str, avatar_id: str, image: CleanImage) -> None:
        async with connection(self._pool) as conn:
            await queries.upsert_avatar(conn, user_id, avatar_id, image)

    async def get(self, avatar_id: str) -> StoredAvatar | None:
        async with connection(self._pool) as conn:
            return await _get(conn, avatar_id)

    async def delete(self, user_id: str) -> bool:
        async with connection(self._pool) as conn:
            return await queries.delete_avatar(conn, user_id)


async def _get(conn: Conn, avatar_id: str) -> StoredAvatar | None:
    row = await queries.avatar_by_id(conn, avatar_id)
    if row is None:
        return None
    return StoredAvatar(
        avatar_id=avatar_id, content=bytes(row["content"]), content_type=row["content_type"], etag=row["etag"]
    )


def new_avatar_id() -> str:
    return secrets.token_hex(16)


def avatar_url(issuer: str, avatar_id: str, extension: str) -> str:
    """The public URL the gateway serves an avatar at."""
    return f"{issuer.rstrip('/')}/avatars/{avatar_id}.{extension}"


def clean_image(raw: bytes) -> CleanImage:
    """The avatar ``raw`` becomes (see the module docstring); CPU-bound, so callers run it in a thread."""
    if len(raw) > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge("the avatar is larger than {mb} MB", mb=MAX_UPLOAD_BYTES // (1024 * 1024))
    if not raw:
        raise BadRequest("the avatar file is empty")
    with warnings.catch_warnings():
        # Pillow warns (then raises) past its own pixel limit; ours is lower and checked first.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            source = Image.open(io.BytesIO(raw), formats=list(FORMATS))
        except Image.DecompressionBombError:
            raise _bomb() from None
        except Exception:  # Pillow's parsers raise many kinds (struct.error, EOFError, ...) on hostile bytes
            raise UnsupportedMediaType("the avatar is not a JPEG, PNG or WebP image") from None
        fmt = source.format or ""
        width, height = source.size
        if width * height > MAX_SOURCE_PIXELS or width > 30_000 or height > 30_000:
            raise _bomb(f"{width}x{height}")
        if getattr(source, "n_frames", 1) > 1:
            raise BadRequest("the avatar must be a still image, not an animation")
        _refuse_polyglot(raw, fmt)
        try:
            source.load()
            image = ImageOps.exif_transpose(source)
            return _encode(image, fmt)
        except Exception:  # the same on decoding: a damaged file is the client's, never a 500
            raise BadRequest("the avatar image is damaged or truncated") from None


def _bomb(size: str = "") -> BadRequest:
    if size:
        return BadRequest(
            "the avatar announces {size} pixels, more than {limit}: refused as a decompression bomb",
            size=size,
            limit=f"{MAX_SOURCE_PIXELS:,}",
        )
    return BadRequest(
        "the avatar announces far more pixels than {limit}: refused as a decompression bomb",
        limit=f"{MAX_SOURCE_PIXELS:,}",
    )


def _refuse_polyglot(raw: bytes, fmt: str) -> None:
    if _MARKUP.search(raw):
        raise BadRequest("the avatar holds markup or script as well as an image (a polyglot file): refused")
    trailing = False
    if fmt == "PNG":
        trailing = not raw.endswith(_PNG_END)
    elif fmt == "JPEG":
        trailing = not raw.rstrip(b"\x00").endswith(b"\xff\xd9")
    elif fmt == "WEBP":
        trailing = int.from_bytes(raw[4:8], "little") + 8 != len(raw)
    if trailing:
        raise BadRequest("the avatar has data after the end of its image (a polyglot file): refused")


def _encode(image: Image.Image, fmt: str) -> CleanImage:
    content_type, extension = FORMATS[fmt]
    if fmt == "JPEG":
        image = image.convert("L" if image.mode in ("1", "L") else "RGB")
    elif image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    # Only the pixels go on: no EXIF (GPS), ICC profile, text chunk or comment of the upload.
    pixels = Image.new(image.mode, image.size)
    pixels.paste(image)
    out = io.BytesIO()
    if fmt == "JPEG":
        pixels.save(out, "JPEG", quality=85, optimize=True)
    elif fmt == "PNG":
        pixels.save(out, "PNG", optimize=True)
    else:
        pixels.save(out, "WEBP", quality=85, method=4)
    return CleanImage(
        content=out.getvalue(),
        content_type=content_type,
        extension=extension,
        width=pixels.width,
        height=pixels.height,
    )


async def upload_avatar(
    pool: Pool,
    signer: Signer,
    store: AvatarStore,
    upload: AvatarUpload,
    *,
    issuer: str,
    audit: AuditWriter | None = None,
) -> AvatarResult:
    """The bearer's new avatar: checked and re-encoded (in a thread), stored, and set as the user's ``avatar``."""
    async with connection(pool) as conn:
        caller = await authenticate(conn, signer, upload.credentials)
        user_id = require_user(caller, "upload-avatar")
    image = await asyncio.to_thread(clean_image, upload.content)
    avatar_id = new_avatar_id()
    url = avatar_url(issuer, avatar_id, image.extension)
    async with connection(pool) as conn:
        pending = await content_safety_of(conn, caller.client_id)
    if pending:
        # Nobody's avatar until WeChat's content security passes it (``user_store/content_safety.py``).
        async with transaction(pool) as conn:
            await insert_review(conn, avatar_id, user_id, caller.client_id, image, url)
    else:
        await store.put(user_id, avatar_id, image)
        async with transaction(pool) as conn:
            await write_user(conn, user_id, {"avatar": url})
    structlog.contextvars.bind_contextvars(user_id=user_id, avatar_bytes=len(image.content), avatar_pending=pending)
    if audit is not None:
        audit.record(
            "avatar_uploaded",
            actor_kind="user",
            actor_id=user_id,
            target_user_id=user_id,
            organization=caller.organization,
            client_id=caller.client_id,
            details={
                "content_type": image.content_type,
                "bytes": len(image.content),
                "uploaded_bytes": len(upload.content),
                "pending": pending,
            },
        )
    return AvatarResult(
        url=url,
        content_type=image.content_type,
        width=image.width,
        height=image.height,
        size=len(image.content),
        pending=pending,
        review_id=avatar_id if pending else "",
    )

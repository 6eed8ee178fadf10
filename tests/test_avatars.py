"""Avatar upload: what ``clean_image`` keeps and refuses, and ``POST /api/upload-avatar`` then ``GET /avatars/…``
end to end (the gateway, the user store, PostgreSQL), with the refusals' 4xx and the public URL's cache headers."""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

import aiohttp
import pytest
from PIL import Image

from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from tests.account_helpers import account, api, bearer, new_user
from tests.conftest import _stack_fixture
from tests.stack import Stack
from user_store.avatars import MAX_SIDE, MAX_UPLOAD_BYTES, clean_image

GPS_MARK = b"GPS-SECRET-48.8584N"


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), *, exif: bool = False, mode: str = "RGB") -> bytes:
    image = Image.new(mode, size, (200, 30, 60) if mode == "RGB" else 128)
    out = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if exif:
        data = Image.Exif()
        data[0x010E] = GPS_MARK.decode()  # ImageDescription: stands for GPS and camera data
        kwargs["exif"] = data.tobytes()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header announcing ``width`` x ``height`` pixels, one tiny compressed row: what a decompression
    bomb looks like before it is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class TestCleanImage:
    @pytest.mark.parametrize(
        ("fmt", "content_type"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")]
    )
    def test_formats_kept_and_reencoded(self, fmt, content_type):
        """JPEG, PNG and WebP are kept in their format, as a new encoding without the upload's EXIF."""
        raw = image_bytes(fmt, exif=True)
        assert GPS_MARK in raw
        clean = clean_image(raw)
        assert clean.content_type == content_type and (clean.width, clean.height) == (64, 48)
        assert GPS_MARK not in clean.content
        reopened = Image.open(io.BytesIO(clean.content))
        assert reopened.format == fmt
        assert not reopened.getexif() and "exif" not in reopened.info and "icc_profile" not in reopened.info

    def test_large_image_scaled_down(self):
        """A big photo is scaled to fit MAX_SIDE, keeping its proportions."""
        clean = clean_image(image_bytes("JPEG", (2000, 1000)))
        assert (clean.width, clean.height) == (MAX_SIDE, MAX_SIDE // 2)

    def test_not_an_image(self):
        """Text, HTML, a GIF or an SVG is not a JPEG, PNG or WebP: 415."""
        gif = io.BytesIO()
        Image.new("RGB", (4, 4)).save(gif, "GIF")
        svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
        for raw in (b"hello, I am not an image", b"<html><body>hi</body></html>", gif.getvalue(), svg):
            with pytest.raises(UnsupportedMediaType, match="not a JPEG, PNG or WebP"):
                clean_image(raw)

    def test_polyglots(self):
        """An image with a payload after its end (a ZIP, a script) or markup inside it is refused: 400."""
        png, jpeg = image_bytes("PNG"), image_bytes("JPEG")
        for raw in (png + b"PK\x03\x04" + b"\x00" * 40, jpeg + b"#!/bin/sh\necho owned\n"):
            with pytest.raises(BadRequest, match="polyglot"):
                clean_image(raw)
        # Markup hidden in a PNG text chunk, before IEND: still a valid image, still refused.
        text = b"tEXt" + b"Comment\x00<script>alert(document.cookie)</script>"
        chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text) & 0xFFFFFFFF)
        with pytest.raises(BadRequest, match="markup or script"):
            clean_image(png[:33] + chunk + png[33:])

    def test_decompression_bomb(self):
        """A small file announcing 1.6 billion pixels is refused before decoding: 400 naming the bomb."""
        raw = png_bomb()
        assert len(raw) < 100_000
        with pytest.raises(BadRequest, match="decompression bomb"):
            clean_image(raw)

    def test_oversized_and_empty(self):
        """Over 2 MB is 413; nothing is 400; a truncated image is 400."""
        with pytest.raises(PayloadTooLarge):
            clean_image(b"\xff" * (MAX_UPLOAD_BYTES + 1))
        with pytest.raises(BadRequest, match="empty"):
            clean_image(b"")
        with pytest.raises(BadRequest):
            clean_image(image_bytes("PNG", (300, 300))[:200])


async def upload(
    session: aiohttp.ClientSession,
    stack: Stack,
    token: str,
    content: bytes,
    *,
    status: int = 200,
    field: str = "avatar",
) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field(field, io.BytesIO(content), filename="tmp_avatar.bin", content_type="application/octet-stream")
    return await api(session, stack, "POST", "/api/upload-avatar", status=status, token=token, data=form)


class TestUploadEndpoint:
    async def test_upload_sets_the_avatar_and_serves_it(self, session, stack, db):
        """The upload answers its URL under the gateway, which becomes the user's avatar; the URL serves the clean
        image with its type, nosniff, an ETag (304 on If-None-Match) and immutable caching; one row per user, a
        new upload replaces it and the old URL is gone."""
        user = await new_user(session, stack)
        body = await upload(session, stack, user["access_token"], image_bytes("PNG", exif=True))
        url = body["data"]
        assert url.startswith(stack.gateway + "/avatars/") and url.endswith(".png")
        assert body["data2"]["content_type"] == "image/png" and body["data2"]["url"] == url
        assert (await account(session, stack, user["access_token"]))["avatar"] == url
        async with session.get(url) as resp:
            content = await resp.read()
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "image/png"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            etag = resp.headers["ETag"]
        assert GPS_MARK not in content and Image.open(io.BytesIO(content)).size == (64, 48)
        async with session.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
        assert await db.fetchval("SELECT count(*) FROM avatars WHERE user_id = $1::uuid", user["id"]) == 1

        second = await upload(session, stack, user["access_token"], image_bytes("WEBP"))
        assert second["data"].endswith(".webp") and second["data"] != url
        async with session.get(url) as resp:
            assert resp.status == 404
        async with session.get(second["data"]) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/webp"
        assert await db.fetchval("SELECT count(*) FROM avatars WHERE user_id = $1::uuid", user["id"]) == 1

    async def test_refusals(self, session, stack):
        """A non-image 415, a polyglot 400, a decompression bomb 400, a file over 2 MB 413, no file 400, not
        multipart 415; the user's avatar is unchanged by each."""
        user = await new_user(session, stack)
        token = user["access_token"]
        body = await upload(session, stack, token, b"#!/bin/sh\nrm -rf /\n", status=415)
        assert "not a JPEG, PNG or WebP" in body["msg"]
        body = await upload(session, stack, token, image_bytes("JPEG") + b"<?php system($_GET['c']); ?>", status=400)
        assert "polyglot" in body["msg"]
        body = await upload(session, stack, token, png_bomb(), status=400)
        assert "decompression bomb" in body["msg"]
        body = await upload(session, stack, token, b"\xff" * (MAX_UPLOAD_BYTES + 10), status=413)
        assert "2 MB" in body["msg"]
        body = await upload(session, stack, token, image_bytes("PNG"), field="other", status=400)
        assert "field named 'avatar'" in body["msg"]
        body = await api(session, stack, "POST", "/api/upload-avatar", status=415, token=token, data=b"x")
        assert "multipart/form-data" in body["msg"]
        assert (await account(session, stack, token))["avatar"] == ""

    async def test_large_photo_within_the_routes_own_limit(self, session, stack):
        """A photo far above MAX_BODY_BYTES (64 KiB) but under 2 MB passes the route's own body limit and comes back
        scaled to 512 pixels."""
        noise = Image.frombytes("RGB", (900, 700), os.urandom(900 * 700 * 3))
        out = io.BytesIO()
        noise.save(out, "JPEG", quality=95)
        assert 64 * 1024 * 4 < len(out.getvalue()) < MAX_UPLOAD_BYTES
        user = await new_user(session, stack)
        body = await upload(session, stack, user["access_token"], out.getvalue())
        assert (body["data2"]["width"], body["data2"]["height"]) == (512, 398)

    async def test_deleting_the_account_erases_the_avatar(self, session, stack, db):
        """An account deletion erases its avatar: the row is gone and its URL answers 404."""
        user = await new_user(session, stack)
        url = (await upload(session, stack, user["access_token"], image_bytes("PNG")))["data"]
        async with session.post(
            stack.sandbox + "/sandbox/login", json={"appid": stack.demo["wechatAppId"], "openid": user["openid"]}
        ) as resp:
            code = (await resp.json())["code"]
        form = {"code": code}
        await api(session, stack, "POST", "/api/delete-account", token=user["access_token"], data=form)
        assert await db.fetchval("SELECT count(*) FROM avatars WHERE user_id = $1::uuid", user["id"]) == 0
        async with session.get(url) as resp:
            assert resp.status == 404

    async def test_far_oversized_body_refused_unread(self, session, stack):
        """A body far over the route's own limit is 413 from its Content-Length alone."""
        user = await new_user(session, stack)
        headers = {**bearer(user["access_token"]), "Content-Type": "multipart/form-data; boundary=x"}
        async with session.post(
            stack.gateway + "/api/upload-avatar", data=io.BytesIO(b"x" * (4 * 1024 * 1024)), headers=headers
        ) as resp:
            assert resp.status == 413

    async def test_needs_a_users_token(self, session, stack):
        """No token, a bad token: 401; client credentials (no user): 401."""
        await upload(session, stack, "", image_bytes("PNG"), status=401)
        await upload(session, stack, "not-a-token", image_bytes("PNG"), status=401)

    async def test_unknown_avatar(self, session, stack):
        """A well-formed id nobody has, a wrong extension or a malformed name: 404."""
        user = await new_user(session, stack)
        url = (await upload(session, stack, user["access_token"], image_bytes("JPEG")))["data"]
        for path in ("/avatars/" + "0" * 32 + ".png", url.rsplit("/", 1)[1].replace(".jpg", ".png"), "/avatars/x.png"):
            path = path if path.startswith("/") else "/avatars/" + path
            async with session.get(stack.gateway + path) as resp:
                assert resp.status == 404, path


limited_stack = _stack_fixture(
    "limited_stack", RATE_LIMIT_AVATAR_UPLOADS="2", RATE_LIMIT_WECHAT_DATA="1", RATE_LIMIT_AVATARS_PER_IP="3"
)


class TestRateLimits:
    async def test_new_routes_are_limited(self, session, limited_stack):
        """Uploads and decryptions are limited per user (a second user still has its budget), avatar downloads per
        IP: 429 in the envelope (OAuth JSON for the download) with Retry-After."""
        stack = limited_stack
        first, second = await new_user(session, stack), await new_user(session, stack)
        url = (await upload(session, stack, first["access_token"], image_bytes("PNG")))["data"]
        await upload(session, stack, first["access_token"], image_bytes("PNG"))
        body = await upload(session, stack, first["access_token"], image_bytes("PNG"), status=429)
        assert body["status"] == "error"
        url = (await upload(session, stack, second["access_token"], image_bytes("PNG")))["data"]

        path = "/api/decrypt-wechat-data"
        form = {"encryptedData": "AAAAAAAAAAAAAAAAAAAAAA==", "iv": "AAAAAAAAAAAAAAAAAAAAAA=="}
        await api(session, stack, "POST", path, status=400, token=first["access_token"], data=form)
        await api(session, stack, "POST", path, status=429, token=first["access_token"], data=form)

        statuses = []
        for _ in range(4):
            async with session.get(url) as resp:
                statuses.append(resp.status)
                retry = resp.headers.get("Retry-After")
        assert statuses == [200, 200, 200, 429] and retry is not None

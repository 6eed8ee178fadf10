"""JSON in and out for the internal API's views: one decoder call at the edge, one encoder for every answer."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from aiohttp import web

from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def json_response(value: Any) -> web.Response:
    return web.Response(body=_encoder.encode(value), content_type="application/json")


async def read_body(request: web.Request) -> bytes:
    """The raw body; ``PayloadTooLarge`` beyond the app's limit."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            "the body exceeds {client_max_size} bytes", client_max_size=request.client_max_size
        ) from None


async def read_json(request: web.Request, decoder: msgspec.json.Decoder[T]) -> T:
    """The body decoded as ``decoder``'s type; a clear 400/413/415 for anything else."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("the body must be application/json")
    raw = await read_body(request)
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRequest("the body does not fit: {detail}", detail=str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest("malformed JSON: {detail}", detail=str(exc)) from None

"""Bad inputs, one per kind: each must get a 4xx JSON error quickly and leave the service healthy.

Every entry is a request description (method, path, query, headers, body) built with Pillow or
by hand; nothing is read from disk except the sample photos used as raw material.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class BadInput:
    kind: str
    expected: tuple[int, ...]  # acceptable statuses
    method: str = "POST"
    path: str = "/features"
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    files: list | None = None  # for requests' multipart encoder
    chunked: bool = False


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width×height pixels, with a little zlib stream of zeros."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    gif = bytearray(_encode(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)  # logical screen
    index = gif.index(b",")  # image descriptor
    gif[index + 5 : index + 9] = struct.pack("<HH", width, height)
    return bytes(gif)


def tiff_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    tiff = bytearray(_encode(Image.new("L", (8, 8)), "TIFF"))
    first_ifd = struct.unpack("<I", tiff[4:8])[0]
    count = struct.unpack("<H", tiff[first_ifd : first_ifd + 2])[0]
    for i in range(count):
        entry = first_ifd + 2 + 12 * i
        tag = struct.unpack("<H", tiff[entry : entry + 2])[0]
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            tiff[entry + 2 : entry + 4] = struct.pack("<H", 4)  # LONG
            tiff[entry + 8 : entry + 12] = struct.pack("<I", value)
    return bytes(tiff)


def webp_bomb(width: int = 16383, height: int = 16383) -> bytes:
    """A WebP extended header (VP8X) declaring a 16383×16383 canvas."""
    vp8x = struct.pack("<I", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    small = _encode(Image.new("RGB", (8, 8)), "WEBP", lossless=True)
    bitstream = small[12:]  # the VP8L chunk of a tiny image
    payload = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x + bitstream
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def corpus(photo_jpeg: bytes, photo_png: bytes, max_body_bytes: int, max_images: int) -> list[BadInput]:
    jpeg, png = photo_jpeg, photo_png
    raw = {"Content-Type": "application/octet-stream"}
    tiny_png = _encode(Image.new("RGB", (4, 4)), "PNG")
    bad_jpeg_header = bytearray(jpeg)
    sof = bad_jpeg_header.find(b"\xff\xc0")
    if sof < 0:
        sof = bad_jpeg_header.find(b"\xff\xc2")
    bad_jpeg_header[sof + 5 : sof + 9] = b"\0\0\0\0"  # zero width and height
    items = [
        BadInput("zero-byte body", (400,), headers=raw, body=b""),
        BadInput("truncated JPEG", (400,), headers=raw, body=jpeg[: len(jpeg) // 2]),
        BadInput("truncated PNG", (400,), headers=raw, body=png[: len(png) // 3]),
        BadInput("JPEG header only", (400,), headers=raw, body=jpeg[:200]),
        BadInput("JPEG with zero dimensions", (400,), headers=raw, body=bytes(bad_jpeg_header)),
        BadInput("PNG with broken CRC and data", (400,), headers=raw, body=png[:100] + b"\0" * 400 + png[500:1000]),
        BadInput("plain text", (400,), headers=raw, body=b"just some text, not an image\n" * 10),
        BadInput(
            "HTML", (400,), headers=raw, body=b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
        ),
        BadInput("GIF/JavaScript polyglot", (400,), headers=raw, body=b"GIF89a/*\x00\x00*/=alert(1);//" + b"\0" * 64),
        BadInput("PDF", (400,), headers=raw, body=b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
        BadInput("ZIP", (400,), headers=raw, body=b"PK\x03\x04" + b"\0" * 100),
        BadInput(
            "EPS (Ghostscript never runs)",
            (400,),
            headers=raw,
            body=b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        ),
        BadInput("PNG decompression bomb", (413,), headers=raw, body=png_bomb(50_000, 50_000)),
        # 90 Mpx: Pillow itself only warns between 89 and 179 Mpx; our own limit must refuse it.
        BadInput("PNG bomb in Pillow's warn-only range", (413,), headers=raw, body=png_bomb(10_000, 9_000)),
        BadInput("GIF decompression bomb", (413,), headers=raw, body=gif_bomb()),
        BadInput("TIFF decompression bomb", (413,), headers=raw, body=tiff_bomb()),
        BadInput("WebP decompression bomb", (413,), headers=raw, body=webp_bomb()),
        BadInput(
            "huge dimensions, real pixels", (413,), headers=raw, body=_encode(Image.new("L", (9000, 5000)), "PNG")
        ),
        BadInput("absurd aspect ratio", (400,), headers=raw, body=_encode(Image.new("L", (20_000, 2)), "PNG")),
        BadInput("empty multipart part", (400,), files=[("image", ("empty.png", b"", "image/png"))]),
        BadInput("multipart without an image part", (400,), files=[("photo", ("a.png", tiny_png, "image/png"))]),
        BadInput(
            "too many images",
            (413,),
            files=[("image", (f"{i}.png", tiny_png, "image/png")) for i in range(max_images + 1)],
        ),
        BadInput("oversized body", (413,), headers=raw, body=b"\xff" * (max_body_bytes + 1)),
        BadInput("oversized chunked body", (413,), headers=raw, body=b"\0" * (max_body_bytes + 65536), chunked=True),
        BadInput(
            "invalid base64", (400,), headers={"Content-Type": "application/json"}, body=b'{"images": ["not*base64!"]}'
        ),
        BadInput(
            "base64 of garbage",
            (400,),
            headers={"Content-Type": "application/json"},
            body=b'{"images": ["' + base64.b64encode(b"garbage" * 20) + b'"]}',
        ),
        BadInput("JSON that is not an object", (400,), headers={"Content-Type": "application/json"}, body=b"[1, 2, 3]"),
        BadInput("broken JSON", (400,), headers={"Content-Type": "application/json"}, body=b'{"images": ["'),
        BadInput("unsupported content type", (415,), headers={"Content-Type": "text/plain"}, body=tiny_png),
        BadInput(
            "form-urlencoded body", (415,), headers={"Content-Type": "application/x-www-form-urlencoded"}, body=b"a=b"
        ),
        BadInput("unknown layer", (400,), headers=raw, body=tiny_png, query={"layers": "layer9"}),
        BadInput("duplicated layers", (400,), headers=raw, body=tiny_png, query={"layers": "fc,avgpool,fc"}),
        BadInput("empty layer list", (400,), headers=raw, body=tiny_png, query={"layers": ","}),
        BadInput(
            "very long layer list",
            (400,),
            headers=raw,
            body=tiny_png,
            query={"layers": ",".join(["layer1.0.relu"] * 500)},
        ),
        BadInput("very long layer name", (400,), headers=raw, body=tiny_png, query={"layers": "x" * 7000}),
        BadInput("bad pool value", (400,), headers=raw, body=tiny_png, query={"pool": "median"}),
        BadInput("bad encoding value", (400,), headers=raw, body=tiny_png, query={"encoding": "npy"}),
        BadInput("bad normalize value", (400,), headers=raw, body=tiny_png, query={"normalize": "perhaps"}),
        BadInput("shapes: text height", (400,), method="GET", path="/shapes", query={"height": "tall"}),
        BadInput("shapes: zero batch", (400,), method="GET", path="/shapes", query={"batch": "0"}),
        BadInput("shapes: enormous width", (400,), method="GET", path="/shapes", query={"width": "10000000"}),
        BadInput("wrong method", (405,), method="GET", path="/features"),
        BadInput("unknown route", (404,), method="GET", path="/admin/../../etc/passwd"),
        *_open_inference_protocol(jpeg, max_body_bytes, max_images),
        *_openai_embeddings(jpeg, max_body_bytes, max_images),
    ]
    return items


def _openai_embeddings(jpeg: bytes, max_body_bytes: int, max_images: int) -> list[BadInput]:
    """The same kinds of trouble through OpenAI's /v1/embeddings, plus its own: data URLs, token arrays, text."""
    photo = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()

    def embeddings(name: str, expected: tuple[int, ...], document: object = None, **extra) -> BadInput:
        body = json.dumps(document).encode() if document is not None else extra.pop("body")
        headers = {"Content-Type": "application/json", **extra.pop("headers", {})}
        return BadInput(f"v1: {name}", expected, path="/v1/embeddings", headers=headers, body=body, **extra)

    model = "resnet18"
    return [
        embeddings("broken JSON", (400,), body=b'{"model": "resnet18", "input": ['),
        embeddings("not an object", (400,), ["resnet18"]),
        embeddings("no input", (400,), {"model": model}),
        embeddings("empty input", (400,), {"model": model, "input": []}),
        embeddings("empty string", (400,), {"model": model, "input": ""}),
        embeddings("token array", (400,), {"model": model, "input": [101, 2023, 102]}),
        embeddings("token arrays", (400,), {"model": model, "input": [[101, 2023], [102]]}),
        embeddings("a number in the list", (400,), {"model": model, "input": [photo, 7]}),
        embeddings("too many inputs", (400,), {"model": model, "input": ["x"] * 2049}),
        embeddings("too many images", (413,), {"model": model, "input": [photo] * (max_images + 1)}),
        embeddings("huge string", (413,), {"model": model, "input": "word " * 20_000}),
        embeddings("text to a model without a text tower", (400,), {"model": model, "input": "a cat"}),
        embeddings("an http URL", (400,), {"model": model, "input": "https://example.com/cat.jpg"}),
        embeddings("malformed data URL", (400,), {"model": model, "input": "data:image/jpeg,notbase64"}),
        embeddings("bad base64", (400,), {"model": model, "input": "data:image/jpeg;base64,@@@@"}),
        embeddings("text behind a data URL", (415,), {"model": model, "input": "data:text/plain;base64,aGk="}),
        embeddings(
            "not an image behind an image data URL",
            (400,),
            {"model": model, "input": "data:image/png;base64," + base64.b64encode(b"hello").decode()},
        ),
        embeddings("truncated JPEG", (400,), {"model": model, "input": photo[: len(photo) // 2 // 4 * 4]}),
        embeddings("unknown model", (404,), {"model": "gpt-4", "input": photo}),
        embeddings("wrong dimensions", (400,), {"model": model, "input": photo, "dimensions": 3}),
        embeddings("unknown field", (400,), {"model": model, "input": photo, "temperature": 0.5}),
        embeddings("bad encoding format", (400,), {"model": model, "input": photo, "encoding_format": "npy"}),
        embeddings("unknown layer", (400,), {"model": model, "input": photo, "layers": "layer9"}),
        embeddings("very long model name", (400, 404), {"model": "m" * 7000, "input": photo}),
        embeddings("gzip bomb", (413,), body=_gzip(b" " * (max_body_bytes * 20)), headers={"Content-Encoding": "gzip"}),
        BadInput("v1: unknown model's details", (404,), method="GET", path="/v1/models/nope"),
        BadInput("v1: wrong method", (405,), method="GET", path="/v1/embeddings"),
    ]


def _open_inference_protocol(jpeg: bytes, max_body_bytes: int, max_images: int) -> list[BadInput]:
    """The same kinds of trouble through /v2/models/{model}/infer, plus the protocol's own."""
    infer = "/v2/models/resnet18/infer"

    def request(inputs: list, **extra) -> bytes:
        return json.dumps({"inputs": inputs, **extra}).encode()

    def image(*data: bytes, datatype: str = "BYTES") -> dict:
        return {
            "name": "images",
            "shape": [len(data)],
            "datatype": datatype,
            "data": [base64.b64encode(d).decode() for d in data],
        }

    element = struct.pack("<I", len(jpeg)) + jpeg
    header = request(
        [{"name": "images", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}]
    )
    return [
        BadInput("v2: broken JSON", (400,), path=infer, body=b'{"inputs": ['),
        BadInput("v2: no inputs", (400,), path=infer, body=request([])),
        BadInput("v2: 200,000 empty inputs", (400,), path=infer, body=request([{}] * 200_000)),
        BadInput("v2: truncated JPEG", (400,), path=infer, body=request([image(jpeg[: len(jpeg) // 2])])),
        BadInput("v2: PNG bomb", (413,), path=infer, body=request([image(png_bomb(50_000, 50_000))])),
        BadInput("v2: too many images", (413,), path=infer, body=request([image(*[b"x"] * (max_images + 1))])),
        BadInput("v2: unknown datatype", (400,), path=infer, body=request([image(jpeg, datatype="INT64")])),
        BadInput("v2: unknown output", (400,), path=infer, body=request([image(jpeg)], outputs=[{"name": "layer9"}])),
        BadInput(
            "v2: binary size past the body",
            (400,),
            path=infer,
            headers={"Inference-Header-Content-Length": str(len(header))},
            body=header + element[:-10],
        ),
        BadInput(
            "v2: header length past the body",
            (400,),
            path=infer,
            headers={"Inference-Header-Content-Length": str(len(header) * 10)},
            body=header + element,
        ),
        BadInput(
            "v2: gzip bomb",
            (413,),
            path=infer,
            headers={"Content-Encoding": "gzip"},
            body=_gzip(b" " * (max_body_bytes * 20)),
        ),
        BadInput("v2: unknown content encoding", (415,), path=infer, headers={"Content-Encoding": "br"}, body=b"{}"),
        BadInput("v2: unknown model", (404,), path="/v2/models/nope/infer", body=request([image(jpeg)])),
        BadInput("v2: unknown version", (404,), path="/v2/models/resnet18/versions/7/infer", body=request([])),
    ]


def _gzip(data: bytes) -> bytes:
    return zlib.compress(data, 9, wbits=31)  # 31: a gzip header and trailer


def send(session, base_url: str, item: BadInput, timeout: float = 30):
    """Send one corpus entry with a requests.Session; returns the response."""
    url = base_url + item.path
    if item.files is not None:
        return session.request(item.method, url, params=item.query, files=item.files, timeout=timeout)
    body = item.body
    if item.chunked and body is not None:
        payload = body
        body = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
    return session.request(item.method, url, params=item.query, headers=item.headers, data=body, timeout=timeout)

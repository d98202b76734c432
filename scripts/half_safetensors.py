#!/usr/bin/env python3
"""Rewrites a safetensors file with every F32 tensor stored as F16 (half the size; the loaders
here and in transformers upcast on load). Standard library only.
    half_safetensors.py IN.safetensors OUT.safetensors"""
import json
import struct
import sys

src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    raw = f.read()
(header_len,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + header_len])
body = memoryview(raw)[8 + header_len :]
meta = header.pop("__metadata__", None)
out_header, chunks, offset = {}, [], 0
for name in sorted(header, key=lambda n: header[n]["data_offsets"][0]):
    info = header[name]
    start, end = info["data_offsets"]
    data, dtype = bytes(body[start:end]), info["dtype"]
    if dtype == "F32":
        n = len(data) // 4
        try:
            data = struct.pack(f"<{n}e", *struct.unpack(f"<{n}f", data))
        except OverflowError:
            sys.exit(f"{name}: values overflow float16")
        dtype = "F16"
    out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
if meta is not None:
    out_header["__metadata__"] = meta
encoded = json.dumps(out_header, separators=(",", ":")).encode()
encoded += b" " * (-len(encoded) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for c in chunks:
        f.write(c)
print(f"{src} ({len(raw) / 2**20:.1f} MiB) -> {dst} ({(8 + len(encoded) + offset) / 2**20:.1f} MiB, F16)")

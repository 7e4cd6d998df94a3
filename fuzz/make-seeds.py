#!/usr/bin/env python3
"""Writes the derived seeds of corpus/attestation/ from the real document seed-blocky.cbor.

Each seed takes the parser or the verifier down one path that the three real documents do
not: truncation, trailing bytes, CBOR tags, the wrong algorithm, a broken signature, sizes
over the limits, malformed CBOR. safebox/tests/fuzz_corpus.rs pins what each one must give.
Run from fuzz/: python3 make-seeds.py (standard library only; the output is deterministic).
"""

import pathlib
import struct

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus" / "attestation"


def head(major, value):
    if value < 24:
        return bytes([major << 5 | value])
    for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if value < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | extra]) + struct.pack(fmt, value)
    raise ValueError(value)


def encode(value):
    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        return head(3, len(value.encode())) + value.encode()
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    raise TypeError(value)


def decode(data, at=0):
    """The definite-length subset the Nitro documents use: (value, next offset)."""
    first = data[at]
    major, info = first >> 5, first & 31
    at += 1
    if major == 7:
        return {20: False, 21: True, 22: None}[info], at
    if info < 24:
        arg = info
    else:
        size = {24: 1, 25: 2, 26: 4, 27: 8}[info]
        arg = int.from_bytes(data[at : at + size], "big")
        at += size
    if major == 0:
        return arg, at
    if major == 1:
        return -1 - arg, at
    if major in (2, 3):
        raw = data[at : at + arg]
        return (raw if major == 2 else raw.decode()), at + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, at = decode(data, at)
            items.append(item)
        return items, at
    if major == 5:
        entries = {}
        for _ in range(arg):
            key, at = decode(data, at)
            entries[key], at = decode(data, at)
        return entries, at
    raise ValueError(f"major type {major}")


def main():
    blocky = (CORPUS / "seed-blocky.cbor").read_bytes()
    (protected, unprotected, payload, signature), end = decode(blocky)
    assert end == len(blocky) and unprotected == {}
    document, _ = decode(payload)

    def sign1(protected=protected, payload=payload, signature=signature):
        return encode([protected, {}, payload, signature])

    def with_payload(**changes):
        changed = dict(document)
        changed.update(changes)
        return sign1(payload=encode(changed))

    flipped = bytearray(signature)
    flipped[-1] ^= 1
    module_flip = bytearray(payload)
    module_flip[payload.index(b"i-0a22")] ^= 1
    seeds = {
        "seed-empty.cbor": b"",
        "seed-blocky-truncated-head.cbor": blocky[:64],
        "seed-blocky-truncated-tail.cbor": blocky[:-1],
        "seed-blocky-trailing-byte.cbor": blocky + b"\x00",
        "seed-blocky-tagged.cbor": b"\xd2" + blocky,  # tag 18, COSE_Sign1: accepted
        "seed-blocky-cose-sign-tag.cbor": b"\xd8\x62" + blocky,  # tag 98, COSE_Sign
        "seed-blocky-es256.cbor": sign1(protected=encode({1: -7})),
        "seed-blocky-bad-signature.cbor": sign1(signature=bytes(flipped)),
        "seed-blocky-payload-flip.cbor": sign1(payload=bytes(module_flip)),
        "seed-too-many-pcrs.cbor": with_payload(pcrs={i: bytes(48) for i in range(33)}),
        "seed-pcr-index-out-of-range.cbor": with_payload(pcrs={40: bytes(48)}),
        "seed-cabundle-too-long.cbor": with_payload(cabundle=document["cabundle"] * 3),
        "seed-payload-not-a-map.cbor": sign1(payload=encode([1, 2, 3])),
        "seed-huge-length.cbor": b"\x84\x40\xa0\x5b" + b"\xff" * 8,
        "seed-deep-nesting.cbor": b"\x81" * 4096 + b"\x00",
        "seed-map-not-array.cbor": encode({"a": 1}),
    }
    for name, data in seeds.items():
        (CORPUS / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()

"""Test helper: read a TensorBoard event file back without TensorBoard installed."""

from __future__ import annotations

import struct


def read_scalars(data: bytes) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from an event file's bytes (TFRecord framing: length,
    its CRC, the Event protobuf, its CRC; the CRCs are not checked here)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        event = Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars

"""The few fields the gateway reads from the bytes it forwards (it never re-serializes a call)."""

from __future__ import annotations

from hands.v1 import hands_pb2

_parse_request = hands_pb2.ExecuteRequest.FromString
_parse_response = hands_pb2.ExecuteResponse.FromString


def hand_name(raw: bytes) -> str:
    """The hand name of a serialized ExecuteRequest (DecodeError when it is not one).

    A full parse, not a scan for the first field: protobuf lets a later copy of a field
    win, so a shortcut could route (and authorize) a different name than the backend runs.
    """
    return _parse_request(raw).name


def response_usage(raw: bytes) -> tuple[int, int]:
    """(input_tokens, output_tokens) of a serialized ExecuteResponse, for charging token quotas."""
    usage = _parse_response(raw).usage
    return usage.input_tokens, usage.output_tokens

"""The exception that means 'the user's input is wrong', shown as a single line by the CLI (exit code 1).
A params.yaml problem is lm.config.ConfigError instead (exit code 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class LmError(Exception):
    """Bad input or missing prerequisite; the message names the file, column or key and the fix."""


def first_problem(err: ValidationError) -> tuple[str, str]:
    """The first problem of a pydantic validation as (dotted key, message): the one line an LmError names.

    e.g. ServeConfig(port="x") fails with ('port', 'Input should be a valid integer, unable to parse string as
    an integer').
    """
    first = err.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"].removeprefix("Value error, ")


def host_port(endpoint: str) -> tuple[str, int]:
    """'10.0.0.1:29500' -> ('10.0.0.1', 29500); ValueError unless a host, a colon and a port in 1..65535."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port (e.g. 10.0.0.1:29500), got {endpoint!r}")
    return host, int(port)

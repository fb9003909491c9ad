"""Which text encoding a user's file is in, for every reader of user files (download, predict).

Real exports are not all UTF-8: a CSV saved by Excel on Windows is cp1252, older dumps latin-1. Refusing them
sent users off to re-encode files by hand; guessing silently could garble text. So: UTF-8 when the whole file
decodes as UTF-8, else cp1252, else latin-1 (which decodes any byte), and the caller says which it used.
"""

from __future__ import annotations

from pathlib import Path

from lm.errors import LmError


def text_encoding(path: Path, configured: str) -> str:
    """data.encoding, or for 'auto': utf-8 when the whole file decodes as UTF-8 (a BOM is skipped), else
    cp1252 (Windows Latin-1, what Excel writes), else latin-1 (which decodes any byte)."""
    import codecs

    if configured != "auto":
        try:
            codecs.lookup(configured)
        except LookupError:
            raise LmError(
                f"data.encoding {configured!r} is not a known text encoding; use auto, utf-8, latin-1, "
                f"cp1252, ..."
            ) from None
        return configured
    for candidate in ("utf-8-sig", "cp1252"):
        decoder = codecs.getincrementaldecoder(candidate)()
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    decoder.decode(block)
                decoder.decode(b"", final=True)
            if candidate == "utf-8-sig":
                with open(path, "rb") as fh:
                    return candidate if fh.read(3) == codecs.BOM_UTF8 else "utf-8"
            return candidate
        except UnicodeDecodeError:
            continue
    return "latin-1"

"""Watermarks: where a scan of the ledger stopped, per writer, so the next one starts there."""

from __future__ import annotations

import base64
import datetime as dt
import zlib
from dataclasses import dataclass

from ouro.ledger.records import WRITER_ID_PATTERN, InvalidWatermarkError

# -- watermarks -----------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentPosition:
    """Where a scan stopped in one writer's segments: its segment ``day`` up to ``offset``
    bytes (the end of the last complete line); the writer's earlier days were read whole."""

    day: dt.date
    offset: int


@dataclass(frozen=True)
class Watermark:
    """The end of a scan: everything before it has been read.

    ``floor``: every segment dated before it was read whole. ``positions``: for writers
    with a segment dated ``floor`` or later, where reading stopped. Writers not listed
    wrote nothing from ``floor`` on, so all of their later segments are new.

    Text form (:meth:`encode`), e.g. ``1;20250130;replica-a=20250131:5120;replica-b=20250130:88``:
    format version, floor date, then ``writer=date:offset`` per listed writer. Only writers
    active since the day before the scan are listed, so the string stays short however many
    writers the ledger has seen; past 512 characters it is stored zlib-compressed as
    ``1z;<base64url>``.
    """

    floor: dt.date
    positions: tuple[tuple[str, SegmentPosition], ...] = ()

    FORMAT = "1"
    COMPRESSED_FORMAT = "1z"
    COMPRESS_OVER_CHARS = 512

    def position(self, writer_id: str) -> SegmentPosition | None:
        return dict(self.positions).get(writer_id)

    def encode(self) -> str:
        parts = [self.FORMAT, _compact_date(self.floor)]
        parts += [f"{w}={_compact_date(p.day)}:{p.offset}" for w, p in self.positions]
        text = ";".join(parts)
        if len(text) <= self.COMPRESS_OVER_CHARS:
            return text
        packed = base64.urlsafe_b64encode(zlib.compress(text.encode("ascii"), 9))
        return f"{self.COMPRESSED_FORMAT};{packed.decode('ascii')}"

    @classmethod
    def decode(cls, text: str) -> Watermark:
        try:
            if text.startswith(cls.COMPRESSED_FORMAT + ";"):
                packed = text.split(";", 1)[1].encode("ascii")
                text = zlib.decompress(base64.urlsafe_b64decode(packed)).decode("ascii")
            fmt, floor, *entries = text.split(";")
            if fmt != cls.FORMAT:
                raise ValueError(f"unknown format {fmt!r}")
            positions = []
            for entry in entries:
                writer, _, rest = entry.partition("=")
                day, _, offset = rest.partition(":")
                if not WRITER_ID_PATTERN.match(writer) or not offset.isdigit():
                    raise ValueError(f"bad entry {entry!r}")
                positions.append((writer, SegmentPosition(_parse_compact(day), int(offset))))
            floor_day = _parse_compact(floor)
        except (ValueError, zlib.error) as exc:
            raise InvalidWatermarkError(f"not a ledger watermark: {text[:80]!r} ({exc})") from exc
        positions.sort(key=lambda item: item[0])
        return cls(floor=floor_day, positions=tuple(positions))


def _compact_date(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _parse_compact(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%Y%m%d").date()

from collections.abc import Sequence
from typing import Any

def encode_array(
    rows: Sequence[Any],
    elem_oid: int,
    attr_oids: tuple[int, ...],
    row_type: type | None = None,
    fields: tuple[str, ...] | None = None,
    /,
) -> bytes: ...

from collections.abc import Sequence
from typing import Any

def encode_array(rows: Sequence[tuple[Any, ...]], elem_oid: int, attr_oids: tuple[int, ...], /) -> bytes: ...

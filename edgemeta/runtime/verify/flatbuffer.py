"""The one flatbuffer reader: bounds-checked reads of tables, vectors and strings in a TFLite model's bytes.

Every offset followed is checked to lie inside the file before it is read, so corrupt or hostile bytes
raise `ModelVerificationError` (a `ValueError`) instead of reading garbage or crashing. Used by
`edgemeta.runtime.verify.structure` to check a model, and by `converters.edgetpu` to edit one.

Field ids are the declaration order in the TFLite schema (tensorflow/compiler/mlir/lite/schema/schema.fbs:
`table Model`, `SubGraph`, `Tensor`, ...); the vtable slot of field id i is 4 + 2*i (as in the generated
ai_edge_litert/schema_py_generated.py).
"""

from __future__ import annotations

import struct
from typing import Any

FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite model

# The schema's field ids that more than one reader follows.
MODEL_SUBGRAPHS = 2  # table Model: version, operator_codes, subgraphs, ...
SUBGRAPH_TENSORS = 0  # table SubGraph: tensors, inputs, outputs, operators, name
TENSOR_SHAPE_SIGNATURE = 7  # table Tensor: shape, type, buffer, name, quantization, is_variable, sparsity, shape_signature


class ModelVerificationError(ValueError):
    """A model file that must not reach the interpreter; `stage` is "structure", "manifest" or "probe"."""

    def __init__(self, message: str, stage: str = "structure") -> None:
        super().__init__(message)
        self.stage = stage


class Buffer:
    """Bounds-checked little-endian reads; every offset followed goes through `need`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def has_identifier(self) -> bool:
        """Whether bytes 4..8 are the TFLite file identifier."""
        return self.size >= 8 and self.data[4:8] == FILE_IDENTIFIER

    def need(self, pos: int, length: int, what: str) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise ModelVerificationError(
                f"model.tflite is truncated or corrupt: {what} lies outside the file. "
                f"Received: bytes {pos}..{pos + length} of a {self.size}-byte file")

    def read(self, fmt: str, pos: int, what: str) -> Any:
        self.need(pos, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int, what: str) -> Table:
        return Table(self, pos, what)

    def root(self) -> Table:
        """The root table (a TFLite `Model`), whose offset is the file's first 4 bytes."""
        return self.table(self.read("<I", 0, "the root table offset"), "the model (root table)")


class Table:
    """A flatbuffer table: a signed offset back to its vtable, which maps field ids to offsets."""

    def __init__(self, buf: Buffer, pos: int, what: str) -> None:
        self.buf, self.pos, self.what = buf, pos, what
        self.vtable = pos - buf.read("<i", pos, f"{what} (table start)")
        self.vtable_size = buf.read("<H", self.vtable, f"{what}'s vtable")
        self.table_size = buf.read("<H", self.vtable + 2, f"{what}'s vtable")
        if self.vtable_size < 4 or self.vtable_size % 2 or self.table_size < 4:
            raise ModelVerificationError(
                f"model.tflite is corrupt: {what} has a malformed vtable. "
                f"Received: vtable size {self.vtable_size}, table size {self.table_size}")
        buf.need(self.vtable, self.vtable_size, f"{what}'s vtable")
        buf.need(pos, self.table_size, what)

    def _field(self, field_id: int, size: int) -> int | None:
        """Absolute position of a field of `size` bytes inside the table, or None when it is absent."""
        slot = 4 + 2 * field_id
        if slot + 2 > self.vtable_size:
            return None  # written by an older schema: the field has its default
        offset = self.buf.read("<H", self.vtable + slot, f"{self.what}'s vtable")
        if offset == 0:
            return None
        if offset + size > self.table_size:
            raise ModelVerificationError(
                f"model.tflite is corrupt: field {field_id} of {self.what} lies past the table's end. "
                f"Received: field at +{offset} in a {self.table_size}-byte table")
        return self.pos + offset

    def scalar(self, field_id: int, fmt: str, default: int = 0) -> int:
        pos = self._field(field_id, struct.calcsize(fmt))
        return default if pos is None else self.buf.read(fmt, pos, f"field {field_id} of {self.what}")

    def _target(self, field_id: int, what: str) -> int | None:
        pos = self._field(field_id, 4)
        if pos is None:
            return None
        return pos + self.buf.read("<I", pos, what)  # uoffset: relative to where it is stored

    def table(self, field_id: int, what: str) -> Table | None:
        target = self._target(field_id, what)
        return None if target is None else Table(self.buf, target, what)

    def vector(self, field_id: int, element_size: int, what: str) -> tuple[int, int] | None:
        """(start, length) of a vector field, with all `length` elements inside the file."""
        target = self._target(field_id, what)
        if target is None:
            return None
        length = self.buf.read("<I", target, f"{what} (length)")
        self.buf.need(target + 4, length * element_size, f"{what} ({length} elements)")
        return target + 4, length

    def ints(self, field_id: int, fmt: str, what: str) -> tuple[int, ...]:
        vector = self.vector(field_id, struct.calcsize(fmt), what)
        if vector is None:
            return ()
        start, length = vector
        return struct.unpack_from(f"<{length}{fmt}", self.buf.data, start)

    def tables(self, field_id: int, what: str) -> list[Table]:
        vector = self.vector(field_id, 4, what)
        if vector is None:
            return []
        start, length = vector
        return [
            Table(self.buf, start + 4 * i + self.buf.read("<I", start + 4 * i, f"{what}[{i}]"), f"{what}[{i}]")
            for i in range(length)
        ]

    def string(self, field_id: int, what: str) -> str:
        vector = self.vector(field_id, 1, what)
        if vector is None:
            return ""
        start, length = vector
        self.buf.need(start + length, 1, f"{what} (terminator)")  # flatbuffer strings end in a 0 byte
        return self.buf.data[start:start + length].decode("utf-8", "replace")


def subgraph_tensors(model: Table) -> list[list[Table]]:
    """Every tensor table of a TFLite `Model`, per subgraph."""
    return [subgraph.tables(SUBGRAPH_TENSORS, f"{subgraph.what}.tensors")
            for subgraph in model.tables(MODEL_SUBGRAPHS, "subgraphs")]

"""The filter language: a safe attribute-expression syntax compiled to pyarrow compute expressions.

Grammar (keywords are case-insensitive)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | primary
    primary    := "(" expr ")" | predicate
    predicate  := FIELD ("=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">=") VALUE
                | FIELD ["not"] "in" "(" VALUE ("," VALUE)* ")"
                | FIELD ["not"] "between" VALUE "and" VALUE
                | FIELD ["not"] "contains" VALUE
                | FIELD "is" ["not"] "null"
    VALUE      := 'single' or "double" quoted string | number | ISO date (2020-01-31,
                  2020-01-31T12:00:00) | true | false

Example::

    year >= 2020 and category in ('cs.IR', 'cs.CL') and not (authors contains 'Smith')
    published between 2019-01-01 and 2019-12-31

The text is tokenized and parsed here by a recursive-descent parser; nothing is
passed to ``eval`` or to an SQL engine. The same tree can be written as a
Python object (see :func:`from_object`)::

    {"and": [{"field": "year", "op": ">=", "value": 2020},
             {"field": "category", "op": "in", "value": ["cs.IR", "cs.CL"]}]}

Semantics: a document whose attribute is missing (null) matches no predicate on
that attribute, not even ``!=`` or ``not in``; ``not`` negates the whole
predicate, so ``not (lang = 'en')`` does match documents without ``lang``.
``between`` is inclusive at both ends. ``contains`` tests a list attribute for
an element. Comparing a ``date`` or ``timestamp`` attribute accepts an ISO date
literal or a quoted ISO date string.

:meth:`Filter.compile` checks every field and value against the document
store's Arrow schema and returns a :class:`CompiledFilter`, whose
``expression`` is a :class:`pyarrow.compute.Expression`; ``contains`` over a
list column, which Arrow has no kernel for, is computed first into a derived
boolean column that the expression refers to.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from retk.errors import RetkError

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
ORDERED = ("<", "<=", ">", ">=")
KEYWORDS = ("and", "or", "not", "in", "between", "contains", "is", "null", "true", "false")
RESERVED_FIELDS = ("id", "title", "text")


class FilterError(RetkError):
    """A filter that cannot be parsed or does not fit the index's attributes.

    ``position`` is the 1-based character position in the expression text
    (None for filters given as Python objects); ``token`` is the text found
    there.
    """

    def __init__(self, message: str, *, position: int | None = None, token: str | None = None) -> None:
        self.position = position
        self.token = token
        self.reason = message
        where = ""
        if position is not None:
            found = "end of expression" if token in (None, "") else token if token[0] in "'\"" else f"'{token}'"
            where = f" at position {position} ({found})"
        super().__init__(f"invalid filter{where}: {message}")


# ---------------------------------------------------------------------------
# The syntax tree.


@dataclass(frozen=True)
class Predicate:
    """One test on one attribute: ``op`` is a comparison, ``in``, ``not in``,
    ``between``, ``not between``, ``contains``, ``not contains``, ``is null`` or ``is not null``."""

    field: str
    op: str
    value: Any = None
    position: int | None = field(default=None, compare=False)
    value_positions: tuple = field(default=(), compare=False)


@dataclass(frozen=True)
class And:
    items: tuple


@dataclass(frozen=True)
class Or:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: Any


Node = Union[Predicate, And, Or, Not]


@dataclass(frozen=True)
class DateLiteral:
    """An unquoted ISO date or date-time in the expression text."""

    value: dt.date

    def __str__(self) -> str:
        return self.value.isoformat()


# ---------------------------------------------------------------------------
# Tokenizer.


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "string", "number", "date", "op", "(", ")", ",", "end" or a keyword
    value: Any
    position: int  # 1-based
    text: str


_DATE = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
_TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<date>{_DATE})(?![\w.])
  | (?P<number>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)(?![\w.])
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<punct>[(),])
  | (?P<quote>['"])
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens; a bad character or an unclosed string raises :class:`FilterError`."""
    tokens: list[Token] = []
    index = 0
    while index < len(text):
        match = _TOKEN.match(text, index)
        if match is None:
            raise FilterError("unexpected character", position=index + 1, token=text[index])
        kind = match.lastgroup
        raw = match.group()
        position = index + 1
        if kind == "quote":
            value, end = _read_string(text, index)
            tokens.append(Token("string", value, position, text[index:end]))
            index = end
            continue
        index = match.end()
        if kind == "space":
            continue
        if kind == "date":
            tokens.append(Token("date", DateLiteral(_parse_iso(raw, position)), position, raw))
        elif kind == "number":
            tokens.append(Token("number", _parse_number(raw), position, raw))
        elif kind == "name":
            lowered = raw.lower()
            tokens.append(Token(lowered if lowered in KEYWORDS else "name", raw, position, raw))
        elif kind == "op":
            op = {"==": "=", "<>": "!="}.get(raw, raw)
            tokens.append(Token("op", op, position, raw))
        else:
            tokens.append(Token(raw, raw, position, raw))
    tokens.append(Token("end", None, len(text) + 1, ""))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Read a quoted string at ``start``; the quote is escaped by doubling it or by a backslash."""
    quote = text[start]
    parts: list[str] = []
    index = start + 1
    while index < len(text):
        character = text[index]
        if character == "\\" and index + 1 < len(text):
            parts.append(text[index + 1])
            index += 2
        elif character == quote:
            if text.startswith(quote, index + 1):
                parts.append(quote)
                index += 2
            else:
                return "".join(parts), index + 1
        else:
            parts.append(character)
            index += 1
    raise FilterError("unclosed string", position=start + 1, token=text[start:start + 20])


def _parse_number(raw: str) -> int | float:
    if re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    return float(raw)


def _parse_iso(raw: str, position: int | None) -> dt.date:
    try:
        if len(raw) == 10:
            return dt.date.fromisoformat(raw)
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as error:
        raise FilterError(f"not a valid ISO date ({error})", position=position, token=raw) from None


# ---------------------------------------------------------------------------
# Parser.


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.current
        self.index += 1
        return token

    def fail(self, message: str) -> FilterError:
        token = self.current
        return FilterError(message, position=token.position, token=token.text)

    def expect(self, kind: str, message: str) -> Token:
        if self.current.kind != kind:
            raise self.fail(message)
        return self.advance()

    def parse(self) -> Node:
        if self.current.kind == "end":
            raise self.fail("empty filter; expected a condition such as year >= 2020")
        node = self.or_expr()
        if self.current.kind != "end":
            raise self.fail("expected 'and', 'or' or the end of the expression")
        return node

    def or_expr(self) -> Node:
        items = [self.and_expr()]
        while self.current.kind == "or":
            self.advance()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while self.current.kind == "and":
            self.advance()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Node:
        if self.current.kind == "not":
            self.advance()
            return Not(self.not_expr())
        return self.primary()

    def primary(self) -> Node:
        if self.current.kind == "(":
            self.advance()
            node = self.or_expr()
            self.expect(")", "expected ')' to close the parenthesis")
            return node
        if self.current.kind != "name":
            if self.current.kind in KEYWORDS:
                raise self.fail(f"'{self.current.text}' is a keyword; expected a field name (quote-free, e.g. year)")
            raise self.fail("expected a field name or '('")
        name_token = self.advance()
        return self.predicate(name_token)

    def predicate(self, name: Token) -> Predicate:
        field_name, position = name.value, name.position
        token = self.current
        if token.kind == "op":
            self.advance()
            value, value_position = self.value(f"expected a value after '{token.text}'")
            return Predicate(field_name, token.value, value, position, (value_position,))
        negated = False
        if token.kind == "is":
            self.advance()
            if self.current.kind == "not":
                self.advance()
                negated = True
            self.expect("null", "expected 'null' after 'is'" if not negated else "expected 'null' after 'is not'")
            return Predicate(field_name, "is not null" if negated else "is null", None, position)
        if token.kind == "not":
            self.advance()
            negated = True
        prefix = "not " if negated else ""
        if self.current.kind == "in":
            self.advance()
            self.expect("(", "expected '(' after 'in'")
            values, positions = [], []
            while True:
                value, value_position = self.value("expected a value in the list")
                values.append(value)
                positions.append(value_position)
                if self.current.kind == ",":
                    self.advance()
                    continue
                self.expect(")", "expected ',' or ')' in the list")
                break
            return Predicate(field_name, prefix + "in", tuple(values), position, tuple(positions))
        if self.current.kind == "between":
            self.advance()
            low, low_position = self.value("expected a value after 'between'")
            self.expect("and", "expected 'and' between the two bounds of 'between'")
            high, high_position = self.value("expected a value after 'and'")
            return Predicate(field_name, prefix + "between", (low, high), position, (low_position, high_position))
        if self.current.kind == "contains":
            self.advance()
            value, value_position = self.value("expected a value after 'contains'")
            return Predicate(field_name, prefix + "contains", value, position, (value_position,))
        if negated:
            raise self.fail("expected 'in', 'between' or 'contains' after 'not'")
        raise self.fail(f"expected an operator after '{name.text}' (=, !=, <, <=, >, >=, in, not in, between, contains, is null)")

    def value(self, message: str) -> tuple[Any, int]:
        token = self.current
        if token.kind in ("string", "number", "date"):
            self.advance()
            return token.value, token.position
        if token.kind in ("true", "false"):
            self.advance()
            return token.kind == "true", token.position
        raise self.fail(message + " (a quoted string, a number, an ISO date, true or false)")


def parse(text: str) -> Node:
    """Parse filter text into a tree of :class:`Predicate`, :class:`And`, :class:`Or` and :class:`Not`."""
    if not isinstance(text, str):
        raise FilterError(f"expected filter text, got {type(text).__name__}")
    return _Parser(text).parse()


# ---------------------------------------------------------------------------
# The structured Python form.

_OBJECT_OPS = {
    "=": "=", "==": "=", "eq": "=", "!=": "!=", "<>": "!=", "ne": "!=",
    "<": "<", "lt": "<", "<=": "<=", "le": "<=", ">": ">", "gt": ">", ">=": ">=", "ge": ">=",
    "in": "in", "not in": "not in", "between": "between", "not between": "not between",
    "contains": "contains", "not contains": "not contains", "is null": "is null", "is not null": "is not null",
}


def from_object(obj: Any) -> Node:
    """Build a filter tree from Python objects.

    Accepted forms: ``{"field": F, "op": OP, "value": V}`` (``between`` takes a
    pair, ``in`` a list), the tuple ``(F, OP, V)``, ``{"and": [...]}``,
    ``{"or": [...]}``, ``{"not": X}``, a shorthand ``{"F": V, ...}`` meaning
    F = V for each key (a list or tuple V means F in V), filter text, a parsed
    tree, or a :class:`Filter`. Python ``datetime.date`` values compare with
    date attributes.
    """
    if isinstance(obj, Filter):
        return obj.node
    if isinstance(obj, (Predicate, And, Or, Not)):
        return obj
    if isinstance(obj, str):
        return parse(obj)
    if isinstance(obj, tuple) and len(obj) in (2, 3) and isinstance(obj[0], str):
        return _object_predicate(obj[0], obj[1], obj[2] if len(obj) == 3 else None)
    if isinstance(obj, Mapping):
        keys = set(obj)
        if keys == {"and"} or keys == {"or"}:
            key = next(iter(keys))
            items = obj[key]
            if not isinstance(items, Sequence) or isinstance(items, str) or not items:
                raise FilterError(f"'{key}' needs a non-empty list of conditions")
            nodes = tuple(from_object(item) for item in items)
            if len(nodes) == 1:
                return nodes[0]
            return And(nodes) if key == "and" else Or(nodes)
        if keys == {"not"}:
            return Not(from_object(obj["not"]))
        if "field" in keys and "op" in keys and keys <= {"field", "op", "value"}:
            return _object_predicate(obj["field"], obj["op"], obj.get("value"))
        if not keys:
            raise FilterError("empty filter object")
        nodes = []
        for name, value in obj.items():
            op = "in" if isinstance(value, (list, tuple, set)) else "="
            nodes.append(_object_predicate(name, op, value))
        return nodes[0] if len(nodes) == 1 else And(tuple(nodes))
    raise FilterError(
        f"cannot read a filter from {type(obj).__name__}; expected text, a dict such as "
        "{'field': 'year', 'op': '>=', 'value': 2020}, or a (field, op, value) tuple"
    )


def _object_predicate(name: Any, op: Any, value: Any) -> Predicate:
    if not isinstance(name, str) or not name:
        raise FilterError(f"a field name must be a non-empty string, got {name!r}")
    if not isinstance(op, str) or op.strip().lower() not in _OBJECT_OPS:
        raise FilterError(f"unknown operator {op!r}; expected one of {', '.join(sorted(set(_OBJECT_OPS.values())))}")
    op = _OBJECT_OPS[op.strip().lower()]
    if op.endswith("in"):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)) or not value:
            raise FilterError(f"'{op}' on '{name}' needs a non-empty list of values, got {value!r}")
        value = tuple(_object_value(v) for v in (sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value))
    elif op.endswith("between"):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise FilterError(f"'{op}' on '{name}' needs two bounds [low, high], got {value!r}")
        value = (_object_value(value[0]), _object_value(value[1]))
    elif op.startswith("is"):
        value = None
    else:
        value = _object_value(value)
    return Predicate(name, op, value)


def _object_value(value: Any) -> Any:
    if isinstance(value, dt.date):
        return DateLiteral(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, bool, int, float)):
        return value
    raise FilterError(f"unsupported value {value!r}; expected a string, number, boolean or date")


# ---------------------------------------------------------------------------
# Rendering the tree back to text.


def to_text(node: Node) -> str:
    """Return canonical filter text for ``node`` (parsing it gives the same tree)."""
    if isinstance(node, And):
        return " and ".join(_grouped(item, Or) for item in node.items)
    if isinstance(node, Or):
        return " or ".join(_grouped(item, None) for item in node.items)
    if isinstance(node, Not):
        return f"not ({to_text(node.item)})"
    if node.op in ("is null", "is not null"):
        return f"{node.field} {node.op}"
    if node.op.endswith("in"):
        return f"{node.field} {node.op} ({', '.join(_literal(v) for v in node.value)})"
    if node.op.endswith("between"):
        return f"{node.field} {node.op} {_literal(node.value[0])} and {_literal(node.value[1])}"
    return f"{node.field} {node.op} {_literal(node.value)}"


def _grouped(node: Node, wrap: type | None) -> str:
    text = to_text(node)
    return f"({text})" if wrap is not None and isinstance(node, wrap) else text


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


# ---------------------------------------------------------------------------
# Type checking and compilation.


def kind_of(arrow_type: pa.DataType) -> str:
    """Return the filter kind of an Arrow type: string, number, date, bool, list of X, or other."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "number"
    if pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type):
        return "date"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return "list of " + kind_of(arrow_type.value_type)
    return "other"


@dataclass
class CompiledFilter:
    """A filter bound to a schema: an Arrow expression plus the derived columns it reads.

    ``derived`` maps a derived column name to ``(list_column, value)``: the
    column is true where the list holds the value (``contains``).
    """

    text: str
    expression: pc.Expression
    columns: list[str]
    derived: dict[str, tuple[str, Any]]

    def evaluate(self, table: pa.Table) -> np.ndarray:
        """Return a boolean numpy mask over the rows of ``table`` (row i is document row i)."""
        arrays: dict[str, Any] = {name: table.column(name) for name in self.columns}
        for name, (column, value) in self.derived.items():
            arrays[name] = pa.array(_list_contains(table.column(column), value), pa.bool_())
        if not arrays:
            arrays["__rows"] = pa.nulls(table.num_rows, pa.bool_())
        narrow = pa.table(arrays) if arrays else table
        result = ds.dataset(narrow).to_table(columns={"mask": self.expression})
        mask = result.column("mask")
        if mask.null_count:
            mask = pc.fill_null(mask, False)
        return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _list_contains(column: pa.ChunkedArray, value: Any) -> np.ndarray:
    result = np.zeros(len(column), dtype=bool)
    offset = 0
    for chunk in column.chunks:
        flat = pc.list_flatten(chunk)
        if len(flat):
            parents = pc.list_parent_indices(chunk).to_numpy()
            equal = pc.fill_null(pc.equal(flat, value), False).to_numpy(zero_copy_only=False)
            result[offset + parents[equal]] = True
        offset += len(chunk)
    return result


class Filter:
    """A parsed filter. Build one from text or a Python object, then compile it against a schema.

    Example::

        flt = Filter.parse("year >= 2020 and tags contains 'ir'")
        mask = flt.compile(store.table.schema).evaluate(store.table)
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    @classmethod
    def parse(cls, text: str) -> "Filter":
        return cls(parse(text))

    @classmethod
    def of(cls, spec: Any) -> "Filter":
        """Accept filter text, a structured object (see :func:`from_object`) or a Filter."""
        if isinstance(spec, Filter):
            return spec
        return cls(from_object(spec))

    @property
    def text(self) -> str:
        return to_text(self.node)

    def __repr__(self) -> str:
        return f"Filter({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other.node == self.node

    def __hash__(self) -> int:
        return hash(self.node)

    def fields(self) -> list[str]:
        names: list[str] = []
        _collect_fields(self.node, names)
        return names

    def compile(self, schema: pa.Schema) -> CompiledFilter:
        """Type-check against ``schema`` and build the Arrow expression."""
        compiler = _Compiler(schema)
        expression = compiler.node(self.node)
        return CompiledFilter(self.text, expression, sorted(compiler.columns), compiler.derived)

    def evaluate(self, table: pa.Table) -> np.ndarray:
        """Compile against ``table``'s schema and return the boolean row mask."""
        return self.compile(table.schema).evaluate(table)


def _collect_fields(node: Node, names: list[str]) -> None:
    if isinstance(node, Predicate):
        if node.field not in names:
            names.append(node.field)
    elif isinstance(node, Not):
        _collect_fields(node.item, names)
    else:
        for item in node.items:
            _collect_fields(item, names)


class _Compiler:
    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.known = [name for name in schema.names if name not in RESERVED_FIELDS]
        self.columns: set[str] = set()
        self.derived: dict[str, tuple[str, Any]] = {}

    def node(self, node: Node) -> pc.Expression:
        if isinstance(node, And):
            expression = self.node(node.items[0])
            for item in node.items[1:]:
                expression = expression & self.node(item)
            return expression
        if isinstance(node, Or):
            expression = self.node(node.items[0])
            for item in node.items[1:]:
                expression = expression | self.node(item)
            return expression
        if isinstance(node, Not):
            return ~self.node(node.item)
        return self.predicate(node)

    def predicate(self, node: Predicate) -> pc.Expression:
        arrow_type = self.field_type(node)
        kind = kind_of(arrow_type)
        op = node.op
        name = node.field
        if op in ("is null", "is not null"):
            self.columns.add(name)
            test = pc.field(name).is_valid()
            return test if op == "is not null" else ~test
        negated = op.startswith("not ")
        base = op[4:] if negated else op
        if kind.startswith("list of "):
            if base != "contains":
                raise self.type_error(node, f"field '{name}' is a list ({arrow_type}); use 'contains' (or 'not contains', 'is null')")
            element_type = arrow_type.value_type
            value = self.literal(node, node.value, element_type, kind[len("list of "):], 0)
            derived = f"__contains_{len(self.derived)}"
            self.derived[derived] = (name, value)
            expression = pc.field(derived)
            if not negated:
                return expression
            self.columns.add(name)
            return pc.if_else(pc.field(name).is_valid(), ~expression, pa.scalar(False))
        if base == "contains":
            raise self.type_error(node, f"'contains' needs a list attribute; field '{name}' is {arrow_type} ({kind}); use '='")
        if kind == "other":
            raise self.type_error(node, f"field '{name}' has type {arrow_type}, which filters cannot compare")
        if kind == "bool" and op in ORDERED:
            raise self.type_error(node, f"field '{name}' is a boolean; use = or !=")
        self.columns.add(name)
        column = pc.field(name)
        if base == "in":
            values = [self.literal(node, v, arrow_type, kind, i) for i, v in enumerate(node.value)]
            test = column.isin(pa.array(values, type=_value_type(arrow_type)))
        elif base == "between":
            low = self.literal(node, node.value[0], arrow_type, kind, 0)
            high = self.literal(node, node.value[1], arrow_type, kind, 1)
            test = (column >= low) & (column <= high)
        else:
            value = self.literal(node, node.value, arrow_type, kind, 0)
            test = {
                "=": lambda: column == value,
                "!=": lambda: column != value,
                "<": lambda: column < value,
                "<=": lambda: column <= value,
                ">": lambda: column > value,
                ">=": lambda: column >= value,
            }[op]()
        # A missing attribute matches no predicate (not even != or not in).
        test = pc.if_else(column.is_valid(), test, pa.scalar(False))
        if negated:
            test = pc.if_else(column.is_valid(), ~test, pa.scalar(False))
        return test

    def field_type(self, node: Predicate) -> pa.DataType:
        if node.field in RESERVED_FIELDS:
            raise FilterError(
                f"'{node.field}' is the document {node.field}, not an attribute; known fields: {self.known_text()}",
                position=node.position,
                token=node.field,
            )
        index = self.schema.get_field_index(node.field)
        if index < 0:
            close = difflib.get_close_matches(node.field, self.known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise FilterError(
                f"unknown field '{node.field}'{hint}; known fields: {self.known_text()}",
                position=node.position,
                token=node.field,
            )
        return self.schema.field(index).type

    def known_text(self) -> str:
        if not self.known:
            return "none (this index has no attributes)"
        return ", ".join(f"{name} ({kind_of(self.schema.field(name).type)})" for name in self.known)

    def type_error(self, node: Predicate, message: str, position_index: int | None = None) -> FilterError:
        position, token = node.position, node.field
        if position_index is not None and position_index < len(node.value_positions):
            position = node.value_positions[position_index]
            token = _literal(_plain(node.value if not isinstance(node.value, tuple) else node.value[position_index]))
        return FilterError(message, position=position, token=token)

    def literal(self, node: Predicate, value: Any, arrow_type: pa.DataType, kind: str, index: int) -> pa.Scalar:
        """Check ``value`` against the field's kind and return it as a scalar of the column's type."""
        expected = {
            "string": "a quoted string",
            "number": "a number",
            "date": "an ISO date (2020-01-31) or a quoted ISO date",
            "bool": "true or false",
        }.get(kind, kind)
        got = _describe(value)
        value_type = _value_type(arrow_type)
        if kind == "string" and isinstance(value, str):
            return pa.scalar(value, value_type)
        if kind == "string" and isinstance(value, DateLiteral):
            # NOTE: JSON corpora store dates as ISO strings; ISO text orders like the dates it names.
            return pa.scalar(value.value.isoformat(), value_type)
        if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            if pa.types.is_integer(value_type) and isinstance(value, float):
                return pa.scalar(value, pa.float64())
            try:
                return pa.scalar(value, value_type)
            except (pa.ArrowInvalid, OverflowError):
                return pa.scalar(value)
        if kind == "bool" and isinstance(value, bool):
            return pa.scalar(value, pa.bool_())
        if kind == "date":
            date = value.value if isinstance(value, DateLiteral) else None
            if isinstance(value, str):
                try:
                    date = _parse_iso(value.strip(), None)
                except FilterError:
                    date = None
            if date is not None:
                return _date_scalar(date, value_type)
        raise self.type_error(
            node,
            f"field '{node.field}' is {arrow_type} ({kind}); '{node.op}' expected {expected}, got {got}",
            index,
        )


def _value_type(arrow_type: pa.DataType) -> pa.DataType:
    return arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, DateLiteral) else value


def _describe(value: Any) -> str:
    if isinstance(value, DateLiteral):
        return f"date {value}"
    if isinstance(value, bool):
        return f"boolean {_literal(value)}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    return f"string {_literal(value)}"


def _date_scalar(value: dt.date, arrow_type: pa.DataType) -> pa.Scalar:
    if pa.types.is_timestamp(arrow_type):
        if not isinstance(value, dt.datetime):
            value = dt.datetime(value.year, value.month, value.day)
        if arrow_type.tz is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        if arrow_type.tz is None and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return pa.scalar(value, arrow_type)
    if isinstance(value, dt.datetime):
        # A date column compared with a date-time: compare at day resolution, as a timestamp.
        return pa.scalar(value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(dt.timezone.utc).replace(tzinfo=None), pa.timestamp("us"))
    return pa.scalar(value, arrow_type)


def compile_filter(spec: Any, schema: pa.Schema) -> CompiledFilter:
    """Parse (text) or read (object) ``spec`` and compile it against ``schema``."""
    return Filter.of(spec).compile(schema)


__all__ = [
    "And",
    "CompiledFilter",
    "DateLiteral",
    "Filter",
    "FilterError",
    "Not",
    "Or",
    "Predicate",
    "compile_filter",
    "from_object",
    "kind_of",
    "parse",
    "to_text",
    "tokenize",
]

"""How much larger than the data a query's values can grow, bounded before it runs.

DuckDB's `memory_limit` bounds what its buffer manager accounts for, and an interrupt stops a
query between vectors; neither stops one call that builds a huge value: `regexp_replace(s, '.',
'xxxxxxxxxx', 'g')` over a 100 MB `string_agg` builds 1 GB in one call, and a chain of CTEs
each doubling `s || s` doubles per level within one vector. So every expression of the
statement gets two figures, propagated from the leaves up, through subqueries and from each
select-list alias (or CTE column) to the columns that name it:

- `growth`: how many times larger than the largest stored value it can be. A call multiplies
  the largest of its inputs' growth by its own factor (`factor`): `replace` and
  `regexp_replace` by their replacement's length, a concatenation by its number of inputs
  that are not literals (nested ones flattened: `a || b || c` is three), `bin` by 8, `hex` by
  2, ... Other calls keep the largest growth of their inputs. At most `GROWTH_MAX`.
- `big`: whether it may hold a value built from many rows (`string_agg`, `list`, `max(x, n)`,
  ...): such a value is as large as DuckDB's memory allows, so no call may make it twice as
  large (joining a list with a short separator makes it at most a little larger: its elements
  take at least 16 bytes each in DuckDB's memory).

A call that can double a value inside a recursive CTE (applied once per step, without end) or
a lambda (once per element; `list_reduce` on its own result) is refused too. Names are matched
without their scope (a column named like a grown alias anywhere counts as grown), a struct
field is as large as its struct, and a name this check cannot trace (`#1`, `COLUMNS(*)`, a
name DuckDB made up for an expression) counts as the largest value in the statement: that
errs on the side of refusing. Growth through such a name is not traced (only whether it may
hold a value built from many rows).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from api.errors import SqlRefused

GROWTH_MAX = 64  # DuckDB keeps each step of `a || b || c ...`: n inputs hold about n²/2 of them
WHY = ("one call would build a value many times larger than the data, which the server cannot "
       "interrupt before it exhausts its memory")
CONCATS = frozenset({"||", "concat", "concat_ws", "list_concat", "list_cat", "array_concat",
                     "array_cat", "list_value", "list_pack", "array_value", "row", "struct_pack",
                     "list_zip", "array_zip", "map", "map_from_entries", "list_append", "list_prepend",
                     "array_append", "array_prepend", "array_push_back", "array_push_front"})
# the largest output per input byte
ENCODERS = {"bin": 8.0, "to_binary": 8.0, "hex": 2.0, "to_hex": 2.0, "url_encode": 3.0,
            "to_base64": 2.0, "base64": 2.0, "to_json": 6.0, "json_quote": 6.0, "json_object": 6.0,
            "json_array": 6.0, "row_to_json": 6.0, "array_to_json": 6.0}
SCALARS = frozenset({"length", "len", "strlen", "octet_length", "bit_length", "array_length",
                     "cardinality", "length_grapheme", "hash", "md5", "md5_number", "sha1", "sha256",
                     "count", "list_count", "array_position", "list_position", "contains",
                     "list_contains", "array_contains", "starts_with", "ends_with", "instr", "strpos"})
SPLITS = frozenset({"string_split", "str_split", "string_to_array", "split", "regexp_split_to_array",
                    "string_split_regex", "str_split_regex", "regexp_split_to_table"})
# list-to-string joins: the argument holding the separator
JOINS = {"array_to_string": 1, "array_join": 1, "list_to_string": 1}
BIG_AGGREGATES = frozenset({"string_agg", "group_concat", "listagg", "list", "array_agg",
                            "histogram", "map_agg", "json_group_array", "json_group_object",
                            "json_group_structure", "histogram_exact"})
TOP_N_MAX = 10_000  # max(x, n) with a literal n up to this is a short list
# aggregates that return a list of n values when given n
TOP_N = frozenset({"max", "min", "arg_max", "arg_min", "max_by", "min_by", "argmax", "argmin",
                   "arg_max_nulls_last", "arg_min_nulls_last", "approx_top_k", "lttb"})
TOP_N_ARGS = {"max": 1, "min": 1, "approx_top_k": 1}  # arguments without n (the others: 2)
UNNAMED = "\x00unnamed"
_BACKREF = re.compile(r"\\[0-9]")
_PLACEHOLDER = re.compile(r"%[^%]|\{")


@dataclass(frozen=True)
class Size:
    growth: float = 1.0
    big: str | None = None  # the aggregate that built one value from many rows
    named: bool = False  # that value came through a column (not built by this query node)
    repeated: bool = False  # that one value is on every row (a window, a scalar subquery)

    def join(self, other: Size) -> Size:
        return Size(max(self.growth, other.growth), self.big or other.big,
                    self.named or other.named, self.repeated or other.repeated)

    def through_name(self) -> Size:
        return Size(self.growth, self.big, self.big is not None, self.repeated)


def _literal(expr: dict[str, Any]) -> str | None:
    if expr.get("class") != "CONSTANT":
        return None
    return str((expr.get("literal") or {}).get("text", ""))


def _args(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [a.get("expression", a) for a in node.get("arguments", [])]


def _name(node: dict[str, Any]) -> str:
    return str(node.get("function_name", "")).lower()


def _children(expr: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The expressions directly under `expr` (arguments, operands, ORDER BY keys, filters)."""
    stack: list[Any] = [v for k, v in expr.items() if k not in ("subquery", "literal")]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class" in item:
                yield item
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _walk(expr: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`expr` and every expression under it (not into subqueries)."""
    yield expr
    for child in _children(expr):
        yield from _walk(child)


def _concat_inputs(node: dict[str, Any]) -> int:
    return sum(_concat_inputs(a) if _name(a) in CONCATS else int(_literal(a) is None)
               for a in _args(node))


def _concat_literal_bytes(node: dict[str, Any]) -> int:
    total = 0
    for a in _args(node):
        text = _literal(a)
        total += _concat_literal_bytes(a) if _name(a) in CONCATS else len(text.encode()) if text else 0
    return total


def _call(big: str) -> str:
    return big if big.endswith((" OVER", ")")) else f"{big}(...)"


def _refused(name: str, what: str) -> SqlRefused:
    return SqlRefused(f"{name}: {what} ({WHY})")


def factor(node: dict[str, Any]) -> float:
    """How many times larger than its largest input one call's result can be."""
    name, args = _name(node), _args(node)
    if name in CONCATS:  # the inputs, and the literals' bytes against a value's 16 at least
        inputs = _concat_inputs(node)
        if name == "concat_ws" and args and _literal(args[0]) is None:
            inputs += len(args) - 2  # a separator that is not a literal sits between every two
        return max(1, inputs) + _concat_literal_bytes(node) / 16
    if name in SPLITS:  # every piece takes 16 bytes in DuckDB's memory, even one character
        return 16.0
    if name in ("list_resize", "array_resize") and len(args) > 2:  # the fill value, n times
        n = _literal(args[1])
        return float(int(n)) if n is not None and n.isdigit() else float(GROWTH_MAX + 1)
    if name in ENCODERS:
        return ENCODERS[name]
    if name == "replace" and len(args) == 3:
        old, new = _literal(args[1]), _literal(args[2])
        if new is None:
            raise _refused(name, "takes a literal replacement here")
        return max(1.0, len(new) / max(1, len(old or "")))
    if name == "regexp_replace" and len(args) >= 3:
        new = _literal(args[2])
        if new is None:
            raise _refused(name, "takes a literal replacement here")
        options = _literal(args[3]) if len(args) > 3 else ""
        if options is None or "g" in options:  # an empty match may sit between every two characters
            return max(1.0, float(len(new)))
        return float(1 + len(_BACKREF.findall(new)))  # a back-reference copies the match
    if name in JOINS:  # a list's elements take at least 16 bytes each in DuckDB's memory
        sep = _literal(args[JOINS[name]]) if len(args) > JOINS[name] else ""
        if sep is None:
            raise _refused(name, "takes a literal separator here")
        if len(args) > JOINS[name] + 1 and _literal(args[-1]) is None:
            raise _refused(name, "takes a literal separator here")
        return 1.0 + len(sep.encode()) / 16
    if name in ("format", "printf") and args:
        fmt = _literal(args[0])
        return float(max(1, len(_PLACEHOLDER.findall(fmt)) if fmt is not None else len(args)))
    return 1.0


def _big(node: dict[str, Any]) -> bool:
    name = _name(node)
    if node.get("class") not in ("FUNCTION", "AGGREGATE", "WINDOW"):
        return False
    if name in BIG_AGGREGATES:
        return True
    args = _args(node) or node.get("children", [])
    if name not in TOP_N or len(args) <= TOP_N_ARGS.get(name, 2):
        return False
    n = _literal(args[-1])
    return n is None or not n.isdigit() or int(n) > TOP_N_MAX


class Growth:
    """One pass over a statement's syntax tree; `check` runs passes until the sizes known for
    the column names settle."""

    def __init__(self, columns: set[str] | frozenset[str] = frozenset()) -> None:
        self.columns = {c.lower() for c in columns}  # the stored tables' and views' columns
        self.lambdas = 0  # depth of lambdas around the expression being sized
        self.joined = False  # the expression is evaluated on the rows of a join
        self.names: dict[str, Size] = {}
        self.tables: dict[str, list[str]] = {}  # CTE name: the names holding its columns' sizes
        self.changed = False

    def check(self, tree: dict[str, Any]) -> bool:
        """Whether the result may hold a value built from many rows (refusals raise)."""
        for _ in range(50):
            self.changed = False
            big = False
            for statement in tree.get("statements", []):
                big |= any(size.big for size in self.query(statement.get("node"), recursive=False))
            if not self.changed:
                return big
        raise SqlRefused("the query's columns are defined in too deep a chain to be checked here")

    def _lambda_params(self, node: dict[str, Any], size: Size) -> None:
        """Name a lambda's parameters (`x`, or `(a, b)`) as large as the lists it runs over."""
        lhs = node.get("lhs") or {}
        params = [lhs] if lhs.get("class") == "COLUMN_REF" else _args(lhs)
        for param in params:
            for part in param.get("column_names", []):
                self._name_size(str(part), size)

    def untraced(self) -> Size:
        """What a column this check cannot trace may hold: a value built from many rows if any
        column may hold one (its growth is not traced: taking the largest would feed on itself
        from pass to pass)."""
        return Size(1.0, next((one.big for one in self.names.values() if one.big), None)).through_name()

    def _cte_size(self, cte: str, sizes: list[Size], aliases: list[str]) -> None:
        """Remember the size of a CTE's whole row under a name of its own, for `*` over it."""
        widest = Size()
        for size in sizes:
            widest = widest.join(size)
        key = f"\x00{cte.lower()}"
        self.tables[cte.lower()] = [key, *(a.lower() for a in aliases)]
        self._name_size(key, widest)

    def _name_size(self, name: str, size: Size) -> None:
        name = name.lower()
        old = self.names.get(name, Size())
        new = old.join(Size(min(size.growth, 2 * GROWTH_MAX), size.big, False, size.repeated))
        if new != old:
            self.names[name] = new
            self.changed = True

    def query(self, node: Any, recursive: bool) -> list[Size]:
        """The sizes of a query node's result columns, naming them as its aliases do."""
        if not isinstance(node, dict):
            return []
        for entry in (node.get("cte_map") or {}).get("map", []):
            value = entry.get("value", {})
            sizes = self.query(value.get("query_node") or value.get("query"), recursive)
            names = [str(a) for a in value.get("aliases", [])]
            for alias, size in zip(names, sizes, strict=False):
                self._name_size(alias, size)
            self._cte_size(str(entry.get("key", "")), sizes, names)
        kind = node.get("type")
        if kind in ("SET_OPERATION_NODE", "RECURSIVE_CTE_NODE"):
            inner = recursive or kind == "RECURSIVE_CTE_NODE"
            branches = [self.query(node.get("left"), recursive), self.query(node.get("right"), inner)]
            # DuckDB 2.0 keeps a set operation's branches under `children`
            branches += [self.query(child, recursive) for child in node.get("children") or []]
            out: list[Size] = []
            for sizes in branches:
                out = [a.join(b) for a, b in zip(out, sizes, strict=False)] if out else list(sizes)
            return out
        if kind == "CTE_NODE":
            self.query(node.get("query"), recursive)
            return self.query(node.get("child"), recursive)
        sources = self.table(node.get("from_table"), recursive)
        from_table = node.get("from_table")
        multiplied = (isinstance(from_table, dict) and from_table.get("type") == "JOIN") or any(
            _name(n) in ("unnest", "generate_subscripts") for item in node.get("select_list", [])
            for n in _walk(item))  # more rows than the relation holds: each repeats its values
        outer_join, self.joined = self.joined, multiplied
        try:
            return self._select(node, sources, recursive)
        finally:
            self.joined = outer_join

    def _select(self, node: dict[str, Any], sources: list[Size], recursive: bool) -> list[Size]:
        out = []
        star = False
        for item in node.get("select_list", []):
            if item.get("class") == "STAR":  # as large as the largest column it may expand to
                star = True
                size = Size()
                for source in sources:
                    size = size.join(source)
                out.append(size)
                continue
            size = self.expr(item, recursive)
            out.append(size)
            if item.get("alias"):
                self._name_size(str(item["alias"]), size)
            elif item.get("class") == "COLUMN_REF":
                self._name_size(str(item["column_names"][-1]), size)
            else:  # DuckDB names it after its text: an untraced name may refer to it
                self._name_size(UNNAMED, size)
        for key in ("where_clause", "having", "qualify"):
            if isinstance(node.get(key), dict):
                self.expr(node[key], recursive)
        for item in node.get("group_expressions", []):
            self.expr(item, recursive)
        if star:  # which position holds what is not known here: each may hold the largest
            widest = Size()
            for size in out:
                widest = widest.join(size)
            return [widest] * (len(out) + 256)
        return out

    def table(self, ref: Any, recursive: bool) -> list[Size]:
        """A FROM clause: its subqueries name their columns (returned, for `*`); joins hold
        conditions. A CTE or table named here holds what its columns' names say."""
        if not isinstance(ref, dict):
            return []
        out: list[Size] = []
        if ref.get("type") == "SUBQUERY":
            out = self.query((ref.get("subquery") or {}).get("node"), recursive)
            for alias, size in zip(ref.get("column_name_alias", []), out, strict=False):
                self._name_size(str(alias), size)
        elif ref.get("type") == "BASE_TABLE":
            out = [self.names[n] for n in self.tables.get(str(ref.get("table_name", "")).lower(), [])
                   if n in self.names]
        for key in ("left", "right"):
            out += self.table(ref.get(key), recursive)
        if isinstance(ref.get("condition"), dict):
            self.expr(ref["condition"], recursive)
        if ref.get("type") == "TABLE_FUNCTION" and isinstance(ref.get("function"), dict):
            size = self.expr(ref["function"], recursive)
            out.append(size)
            for alias in ref.get("column_name_alias", []):
                self._name_size(str(alias), size)
        return out

    def expr(self, node: dict[str, Any], recursive: bool, in_concat: bool = False) -> Size:
        """The size of an expression; `in_concat`: an operand of a concatenation, which counts
        a concatenation here among its own inputs."""
        cls = node.get("class")
        if cls == "CONSTANT":
            return Size()
        if cls == "COLUMN_REF":  # a struct field is as large as its struct
            parts = [str(p).lower() for p in node.get("column_names", [])]
            known = [self.names[p] for p in parts if p in self.names]
            if not known:
                return Size() if parts and parts[-1] in self.columns else self.untraced()
            size = Size()
            for one in known:
                size = size.join(one)
            if size.big and self.joined:
                raise _refused(size.big, "its one value, built from many rows, may not be used "
                                         "beside a join, which repeats it on every joined row")
            return size.through_name()
        if cls == "POSITIONAL_REFERENCE" or (cls == "STAR" and node.get("columns")):
            return self.untraced()  # `#1`, COLUMNS(*): any column
        if cls == "SUBQUERY":
            sizes = self.query((node.get("subquery") or {}).get("node"), recursive)
            inner = Size()
            for size in sizes:
                inner = inner.join(size)
            if node.get("subquery_type") == "ARRAY":  # ARRAY(SELECT ...): a list of every row
                inner = Size(inner.growth, "ARRAY(SELECT ...)")
            if inner.big:  # one value for every row of the query around it
                inner = Size(inner.growth, inner.big, True, True)
            for child in _children(node):  # the left side of IN / ANY
                inner = inner.join(self.expr(child, recursive))
            return inner
        concat = _name(node) in CONCATS
        children = list(_children(node))
        inner = Size()
        for child in children:  # the lists first: a lambda's parameters are their elements
            if child.get("class") != "LAMBDA":
                inner = inner.join(self.expr(child, recursive, concat))
        for child in children:
            if child.get("class") == "LAMBDA":
                self._lambda_params(child, inner)
                self.lambdas += 1
                try:
                    inner = inner.join(self.expr(child.get("expr") or {}, recursive))
                finally:
                    self.lambdas -= 1
        if "function_name" not in node:
            return inner
        if _name(node) in SCALARS:
            return Size()  # a number or a fixed-size digest, whatever the input
        grow = 1.0 if concat and in_concat else factor(node)
        if _big(node):
            if cls == "WINDOW":  # the same value on every row of the window
                return Size(inner.growth, f"{_name(node)}(...) OVER", True, True)
            return Size(inner.growth, _name(node))  # built here
        name = _name(node)
        if inner.big and inner.repeated:
            raise _refused(name, f"may not be applied to {_call(inner.big)}, one value built from "
                                 "many rows and repeated on every row: it would copy it on each")
        if grow <= 1:
            return inner
        if inner.big and grow >= 2:  # less than twice its size: within the memory watch's reach
            raise _refused(name, f"may not grow the result of {_call(inner.big)}, one value built "
                                 "from many rows; apply it to the rows before aggregating")
        if recursive and grow >= 2:  # adding a little per step is linear; doubling is not
            raise _refused(name, "may not grow a value inside a recursive CTE, which applies it "
                                 "once per step")
        if self.lambdas and grow >= 2:
            raise _refused(name, "may not grow a value inside a lambda, which runs it once per "
                                 "element (and list_reduce on its own result)")
        growth = grow * inner.growth
        if growth > GROWTH_MAX:
            raise _refused(name, f"could make a value {growth:.0f} times larger than the data "
                                 f"(at most {GROWTH_MAX} here, over every call and CTE on its way)")
        return Size(growth, inner.big, inner.named)


def check_growth(tree: dict[str, Any], columns: set[str] | frozenset[str] = frozenset()) -> bool:
    """Refuse a statement (its `json_serialize_sql` tree) that could build a value more than
    `GROWTH_MAX` times larger than the stored data, grow one built by an aggregate from many
    rows, or grow one inside a recursive CTE or a lambda. `columns`: the stored tables' column
    names; any other name the check cannot trace to an alias counts as the largest value.
    Returns whether a column of the result may hold such a value (the caller then converts
    the result a row at a time)."""
    return Growth(columns).check(tree)

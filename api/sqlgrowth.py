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

A call that grows a value inside a recursive CTE (applied once per step, without end) is
refused too. Names are matched without their scope (a column named like a grown alias
anywhere counts as grown): that errs on the side of refusing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from api.errors import SqlRefused

GROWTH_MAX = 256
WHY = ("one call would build a value many times larger than the data, which the server cannot "
       "interrupt before it exhausts its memory")
CONCATS = frozenset({"||", "concat", "concat_ws", "list_concat", "list_cat", "array_concat",
                     "array_cat", "list_value", "list_pack", "array_value"})
# the largest output per input byte
ENCODERS = {"bin": 8.0, "to_binary": 8.0, "hex": 2.0, "to_hex": 2.0, "url_encode": 3.0,
            "to_base64": 2.0, "base64": 2.0, "to_json": 6.0, "json_quote": 6.0, "json_object": 6.0,
            "json_array": 6.0, "row_to_json": 6.0, "array_to_json": 6.0}
# list-to-string joins: the argument holding the separator
JOINS = {"array_to_string": 1, "array_join": 1, "list_to_string": 1}
BIG_AGGREGATES = frozenset({"string_agg", "group_concat", "listagg", "list", "array_agg",
                            "histogram", "map_agg", "json_group_array", "json_group_object",
                            "json_group_structure", "bitstring_agg", "reservoir_quantile",
                            "quantile", "quantile_disc", "quantile_cont", "mode"})
# aggregates that return a list of n values when given n
TOP_N = frozenset({"max", "min", "arg_max", "arg_min", "max_by", "min_by", "argmax", "argmin"})
TOP_N_ARGS = {"max": 1, "min": 1}  # arguments without n (the others: 2)
_BACKREF = re.compile(r"\\[0-9]")
_PLACEHOLDER = re.compile(r"%[^%]|\{")


@dataclass(frozen=True)
class Size:
    growth: float = 1.0
    big: str | None = None  # the aggregate that built one value from many rows

    def join(self, other: Size) -> Size:
        return Size(max(self.growth, other.growth), self.big or other.big)


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


def _concat_inputs(node: dict[str, Any]) -> int:
    return sum(_concat_inputs(a) if _name(a) in CONCATS else int(_literal(a) is None)
               for a in _args(node))


def _refused(name: str, what: str) -> SqlRefused:
    return SqlRefused(f"{name}: {what} ({WHY})")


def factor(node: dict[str, Any]) -> float:
    """How many times larger than its largest input one call's result can be."""
    name, args = _name(node), _args(node)
    if name in CONCATS:
        inputs = _concat_inputs(node)
        if name == "concat_ws" and args and _literal(args[0]) is None:
            inputs += len(args) - 2  # a separator that is not a literal sits between every two
        return float(max(1, inputs))
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
    return name in TOP_N and len(_args(node) or node.get("children", [])) > TOP_N_ARGS.get(name, 2)


class Growth:
    """One pass over a statement's syntax tree; `check` runs passes until the sizes known for
    the column names settle."""

    def __init__(self) -> None:
        self.names: dict[str, Size] = {}
        self.tables: dict[str, list[str]] = {}  # CTE name: the names holding its columns' sizes
        self.changed = False

    def check(self, tree: dict[str, Any]) -> None:
        for _ in range(50):
            self.changed = False
            for statement in tree.get("statements", []):
                self.query(statement.get("node"), recursive=False)
            if not self.changed:
                return
        raise SqlRefused("the query's columns are defined in too deep a chain to be checked here")

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
        new = old.join(Size(min(size.growth, 2 * GROWTH_MAX), size.big))
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
            left = self.query(node.get("left"), recursive)
            right = self.query(node.get("right"), inner)
            return [a.join(b) for a, b in zip(left, right, strict=False)] or left or right
        if kind == "CTE_NODE":
            self.query(node.get("query"), recursive)
            return self.query(node.get("child"), recursive)
        sources = self.table(node.get("from_table"), recursive)
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
            out.append(self.expr(ref["function"], recursive))
        return out

    def expr(self, node: dict[str, Any], recursive: bool, in_concat: bool = False) -> Size:
        """The size of an expression; `in_concat`: an operand of a concatenation, which counts
        a concatenation here among its own inputs."""
        cls = node.get("class")
        if cls == "CONSTANT":
            return Size()
        if cls == "COLUMN_REF":
            return self.names.get(str(node["column_names"][-1]).lower(), Size())
        if cls == "SUBQUERY":
            sizes = self.query((node.get("subquery") or {}).get("node"), recursive)
            inner = Size()
            for size in sizes:
                inner = inner.join(size)
            for child in _children(node):  # the left side of IN / ANY
                inner = inner.join(self.expr(child, recursive))
            return inner
        concat = _name(node) in CONCATS
        inner = Size()
        for child in _children(node):
            inner = inner.join(self.expr(child, recursive, concat))
        if cls == "LAMBDA":
            return inner
        if "function_name" not in node:
            return inner
        grow = 1.0 if concat and in_concat else factor(node)
        if _big(node):
            return Size(inner.growth, _name(node))
        if grow <= 1:
            return inner
        name = _name(node)
        if inner.big and grow >= 2:  # less than twice its size: within the memory watch's reach
            raise _refused(name, f"may not grow the result of {inner.big}(...), one value built "
                                 "from many rows; apply it to the rows before aggregating")
        if recursive:
            raise _refused(name, "may not grow a value inside a recursive CTE, which applies it "
                                 "once per step")
        growth = grow * inner.growth
        if growth > GROWTH_MAX:
            raise _refused(name, f"could make a value {growth:.0f} times larger than the data "
                                 f"(at most {GROWTH_MAX} here, over every call and CTE on its way)")
        return Size(growth, inner.big)


def check_growth(tree: dict[str, Any]) -> None:
    """Refuse a statement (its `json_serialize_sql` tree) that could build a value more than
    `GROWTH_MAX` times larger than the stored data, grow one built by an aggregate from many
    rows, or grow one inside a recursive CTE."""
    Growth().check(tree)

"""The policy: a fail-closed AST allow-list for the code users ship (``check()``).

``check(source, modules)`` runs at install time and again before a hash first runs in a process
(a backend or a worker). It either returns ``Checked`` (the compiled code object) or raises
``PolicyError`` carrying *every* finding with its line, RestrictedPython-style. It is one layer
of two (see SECURITY.md and /work/shared/research/security.md): it gives users clear, early errors
and shrinks what the confined worker has to contain; it is not a sandbox by itself.

How it stays closed:

* The text is checked before parsing (size, control/bidi/format characters, coding cookies), then
  parsed exactly once from ``str`` and *that* tree is rewritten and compiled: what was checked is
  what runs (``compile(bytes)`` would honour a UTF-7 cookie that ``ast.parse(str)`` ignores).
* Every AST node type needs a ``visit_<Type>`` method here; a node without one is rejected. A new
  Python release's new nodes are therefore refused until someone reviews them
  (``tests/unit/test_policy.py`` lists every node type of the running Python).
* The walk is iterative with a depth and a node cap, and any exception inside the validator is a
  rejection, never an acceptance.
* Names are checked wherever an identifier occurs (``Name``, ``Attribute.attr``, every kind of
  parameter, keywords, import aliases, ``except ... as``, match captures, function and class
  names, ``nonlocal``): no leading ``_`` (dunders, ``__subclasses__``, ``__globals__``, the
  runtime's own ``_wh_*`` hooks; the bare throwaway name ``_`` is fine), no frame/code/generator
  internals, no introspection builtins.

The transformer then inserts the run-time hooks (all start with ``_wh_`` so user code can never
name, rebind or shadow them; ``namespace.build_globals`` binds them):

``_wh_tick()``               start of every function and lambda body, every loop body, and as an
                             always-true condition in every comprehension: in-process execution
                             notices cancel and timeouts between Python-level steps.
``_wh_getattr(o, name)``     attribute *reads* of the few names whose meaning depends on the
                             object at run time (``format``: ``str.format`` traverses attributes
                             from a format string; ``obj``: ``AttributeError.obj`` hands out the
                             object a failed lookup was made on).
``_wh_setattr(o, name, v)``  every attribute store: only the call's own objects may be changed,
``_wh_delattr(o, name)``     never shared ones (module classes and functions live for the whole
                             process; changing them would reach later calls and trusted code).
``_wh_pow/_wh_mul/_wh_lshift(a, b)`` and the in-place ``_wh_ipow/_wh_imul/_wh_ilshift``:
                             size guards for ``**``, ``*`` and ``<<`` (``10**10**8``,
                             ``'x' * 10**10``) so one expression cannot allocate gigabytes.

Statement rewrites that need a temporary use ``_wh_t<N>`` names (unreachable for the same
reason). ``Checked.code`` is the module code: executing it defines the function.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import math
import re
import types
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

__all__ = [
    "CATALOGUE",
    "DYNAMIC_ATTRIBUTES",
    "FILENAME",
    "FORBIDDEN_ATTRIBUTES",
    "FORBIDDEN_NAMES",
    "HOOKS",
    "Checked",
    "Ahead",
    "Finding",
    "PolicyError",
    "ahead_statements",
    "allowed_names",
    "check",
]

from .rules import (  # noqa: F401 - re-exported: the rules are part of the policy's API
    CATALOGUE,
    DEFER,
    Checked,
    DELATTR,
    DUNDER_METHODS,
    DYNAMIC_ATTRIBUTES,
    EXCEPTION_NAMES,
    FILENAME,
    FORBIDDEN_ATTRIBUTES,
    FORBIDDEN_NAMES,
    Ahead,
    AheadResult,
    AheadStep,
    AheadTest,
    AheadValue,
    Finding,
    GETATTR,
    GLOBAL_NAMES,
    HARD_DENY,
    HOOKS,
    ILSHIFT,
    IMUL,
    IPOW,
    LSHIFT,
    MAX_AHEAD,
    MAX_AHEAD_TEST_DEPTH,
    MAX_AHEAD_TEST_NODES,
    MAX_AHEAD_VALUE_DEPTH,
    MAX_AHEAD_VALUE_NODES,
    MAX_DEPTH,
    MAX_FINDINGS,
    MAX_NODES,
    MAX_SOURCE_CHARS,
    MUL,
    POW,
    PolicyError,
    SETATTR,
    TICK,
    _FORBIDDEN_ATTRIBUTE_PREFIXES,
    _UNCATCHABLE,
    _dba_hint,
    _reasons,
    allowed_names,
)

# --------------------------------------------------------------------------------------------
# text checks (before parsing)

# PEP 263: the tokenizer honours this on line 1 or 2; ast.parse(str) ignores it, compile(bytes)
# does not, so a cookie is how a UTF-7 payload hides code in a comment.
_COOKIE = re.compile(r"^[ \t\f]*#.*?coding[:=]", re.ASCII)
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_NAMES = {"\r": "carriage return", "\f": "form feed", "\v": "vertical tab",
                  "\x00": "NUL"}


def _text_findings(source: str) -> list[Finding]:
    findings: list[Finding] = []
    lines = source.split("\n")
    for lineno, line in enumerate(lines[:2], 1):
        if _COOKIE.match(line):
            findings.append(Finding(lineno, 0, "coding-cookie",
                                    "a coding declaration ('# coding: ...') is not allowed; "
                                    "the source is always UTF-8 text"))
    ascii_only = source.isascii()
    for lineno, line in enumerate(lines, 1):
        if ascii_only and not _ASCII_CONTROL.search(line):
            continue
        for col, ch in enumerate(line):
            if ch == "\t" or " " <= ch <= "~":
                continue
            category = unicodedata.category(ch)
            if category in ("Cc", "Cf", "Cs", "Zl", "Zp"):
                what = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, f"U+{ord(ch):04X}")
                kind = {"Cc": "control character", "Cf": "invisible format character",
                        "Cs": "lone surrogate", "Zl": "line separator",
                        "Zp": "paragraph separator"}[category]
                findings.append(Finding(
                    lineno, col, "bad-character",
                    f"{kind} {what} (U+{ord(ch):04X}) is not allowed in the source"
                    + (" (bidi and zero-width characters can make code read differently "
                       "from how it runs)" if category == "Cf" else ""),
                ))
            if len(findings) >= MAX_FINDINGS:
                return findings
    return findings


# --------------------------------------------------------------------------------------------
# the validator


_AS_NAME = re.compile(rb"\bas\s+([^\s:#]+)\s*:")


class _Ctx(NamedTuple):
    depth: int
    #: inside a ``with`` block or a ``try`` that has ``finally``, within the current function
    #: (a ``yield`` there would let code run when the generator is closed at garbage collection)
    in_cleanup: bool


class _Validator:
    """Checks the tree iteratively; every node type needs a ``visit_<Type>`` method."""

    def __init__(self, source: str, modules: Mapping[str, frozenset[str] | None]) -> None:
        self.lines = [line.encode("utf-8", "surrogatepass") for line in source.split("\n")]
        self.modules = modules
        self.findings: list[Finding] = []
        self.function: ast.FunctionDef | None = None
        self.class_names: set[str] = set()
        self.methods: set[int] = set()  # ids of FunctionDef nodes directly in a class body
        self.ok_super: set[int] = set()  # ids of Name('super') nodes in a zero-arg call
        self.ok_dunder_attr: set[int] = set()  # ids of super().__dunder__ Attribute nodes
        # for the early module-attribute check: names bound by `import m [as n]`, names bound
        # any other way, and `n.attr` reads to check once the walk is done.
        self.import_bound: dict[str, str] = {}
        self.other_bound: set[str] = set()
        self.module_reads: list[tuple[ast.Attribute, str]] = []

    # -- helpers

    def add(self, node: ast.AST | None, rule: str, message: str) -> None:
        lineno = getattr(node, "lineno", 1) if node is not None else 1
        col = getattr(node, "col_offset", 0) if node is not None else 0
        self.findings.append(Finding(int(lineno), int(col), rule, message))

    def _span(self, node: ast.AST) -> bytes:
        """The node's source text (UTF-8 bytes), one line only; b'' if unknown."""
        lineno = getattr(node, "lineno", None)
        col = getattr(node, "col_offset", None)
        if lineno is None or col is None or not 1 <= lineno <= len(self.lines):
            return b""
        end_col = getattr(node, "end_col_offset", None)
        line = self.lines[lineno - 1]
        if getattr(node, "end_lineno", lineno) != lineno or end_col is None:
            end_col = len(line)
        return bytes(line[col:end_col])

    def _tail(self, node: ast.AST, size: int) -> bytes | None:
        """The ``size`` bytes that end the node (an attribute's name, a capture's name)."""
        end_lineno = getattr(node, "end_lineno", None)
        end_col = getattr(node, "end_col_offset", None)
        if end_lineno is None or end_col is None or not 1 <= end_lineno <= len(self.lines):
            return None
        line = self.lines[end_lineno - 1]
        return bytes(line[max(end_col - size, 0):end_col]) if end_col >= size else None

    def _identifier(self, name: str, node: ast.AST, what: str, *, text: bytes | None = None,
                    dunder_ok: bool = False) -> None:
        """Check one identifier. ``text``: the source bytes it was written as, when known.

        The parser NFKC-normalises identifiers (``ｅval`` arrives as ``eval``), so the written
        form is compared with the name to catch look-alikes; the name itself is checked too.
        """
        if not name.isascii() or (text is not None and text != name.encode("ascii", "replace")):
            self.add(node, "non-ascii-identifier",
                     f"{what} {name!r} is written with non-ASCII characters; identifiers must "
                     f"be plain ASCII (look-alike letters can disguise names such as eval)")
        if name.startswith("_") and not dunder_ok and name != "_":
            self.add(node, "underscore-name",
                     f"{what} {name!r} starts with '_'; names starting with an underscore "
                     f"(dunders, private names, the runtime's hooks) are not allowed")
        elif name in FORBIDDEN_NAMES:
            self.add(node, "forbidden-name", f"{name!r} is not allowed: it "
                     f"{FORBIDDEN_NAMES[name]}")

    def _attribute_name(self, name: str, node: ast.AST, text: bytes | None) -> None:
        if not name.isascii() or (text is not None and text != name.encode("ascii", "replace")):
            self.add(node, "non-ascii-identifier",
                     f"attribute {name!r} is written with non-ASCII characters; identifiers "
                     f"must be plain ASCII")
        elif name.startswith("_"):
            self.add(node, "underscore-attribute",
                     f"attribute {name!r} starts with '_'; underscore attributes (dunders "
                     f"such as __class__, __globals__, __subclasses__) are not allowed")
        elif name in FORBIDDEN_ATTRIBUTES or name.startswith(_FORBIDDEN_ATTRIBUTE_PREFIXES):
            self.add(node, "forbidden-attribute",
                     f"attribute {name!r} is not allowed (frame, code, generator and "
                     f"formatting internals reach outside the function)")

    def _nonascii_outside_strings(self, node: ast.AST, what: str) -> None:
        """For identifiers the AST gives no position for: any non-ASCII byte in the node's
        first line outside string literals and comments is a non-ASCII identifier."""
        span = self._span(node)
        if span.isascii():
            return
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, (str, bytes)):
                piece = self._span(sub)
                if piece:
                    span = span.replace(piece, b"")
        span = span.split(b"#", 1)[0]
        if not span.isascii():
            self.add(node, "non-ascii-identifier",
                     f"{what} is written with non-ASCII characters; identifiers must be plain "
                     f"ASCII")

    def _literal(self, node: ast.expr | None) -> bool:
        """A default value that runs no code: a constant, -constant, or a tuple of them."""
        if node is None or isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return isinstance(node.operand, ast.Constant) and isinstance(
                node.operand.value, (int, float, complex)) and not isinstance(
                node.operand.value, bool)
        if isinstance(node, ast.Tuple) and len(node.elts) <= 64:
            return all(self._literal(e) for e in node.elts)
        return False

    def _type_expression(self, node: ast.expr) -> bool:
        """An annotation that only looks names up: ``int``, ``list[str]``, ``dt.date | None``.

        Annotations are evaluated when the ``def`` runs; these forms call nothing but the
        trusted ``__class_getitem__``/``type.__or__`` of builtin types (user classes may not
        define those hooks). Names inside are still checked as names.
        """
        stack: list[ast.expr] = [node]
        seen = 0
        while stack:
            n = stack.pop()
            seen += 1
            if seen > 64:
                return False
            if isinstance(n, (ast.Name, ast.Constant)):
                continue
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load):
                stack.append(n.value)
            elif isinstance(n, ast.Subscript):
                stack.extend((n.value, n.slice))
            elif isinstance(n, (ast.Tuple, ast.List)):
                stack.extend(n.elts)
            elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
                stack.extend((n.left, n.right))
            else:
                return False
        return True

    def _annotation(self, node: ast.expr | None) -> None:
        if node is not None and not self._type_expression(node):
            self.add(node, "annotation",
                     "annotations may only name types (int, list[str], date | None): they run "
                     "when the function is defined")

    def _bind(self, name: str | None) -> None:
        if name is not None:
            self.other_bound.add(name)

    # -- the walk

    def run(self, tree: ast.Module) -> None:
        stack: list[tuple[ast.AST, _Ctx]] = [(tree, _Ctx(0, False))]
        count = 0
        too_deep = False
        while stack:
            node, ctx = stack.pop()
            count += 1
            if count > MAX_NODES:
                self.add(None, "too-large",
                         f"the function has more than {MAX_NODES} syntax nodes; split it up")
                return
            if ctx.depth > MAX_DEPTH:
                if not too_deep:
                    self.add(node, "too-deep",
                             f"expression or statement nesting deeper than {MAX_DEPTH} levels "
                             f"(e.g. a very long chain of '+'); split it up")
                    too_deep = True
                continue
            visit: Callable[[ast.AST, _Ctx], _Ctx | None] | None = getattr(
                self, "visit_" + type(node).__name__, None)
            if visit is None:
                self.add(node, "construct",
                         f"construct {type(node).__name__} is not allowed in wormhole functions")
                continue
            child_ctx = visit(node, ctx)
            if child_ctx is None:
                continue
            child_ctx = child_ctx._replace(depth=ctx.depth + 1)
            children = list(ast.iter_child_nodes(node))
            for child in reversed(children):
                stack.append((child, child_ctx))
            if len(self.findings) >= MAX_FINDINGS:
                return
        self._check_module_reads()

    def _check_module_reads(self) -> None:
        for node, module in self.module_reads:
            assert isinstance(node.value, ast.Name)
            alias = node.value.id
            if alias in self.other_bound:
                continue
            try:
                names = allowed_names(module, self.modules)
            except LookupError:
                continue  # already reported at the import
            if node.attr not in names and not node.attr.startswith("_"):
                self.add(node, "module-attribute",
                         f"{module}.{node.attr} is not available: a whitelisted module is "
                         f"reachable only through its allowed public names (never its "
                         f"submodules or re-exported modules); allowed: "
                         f"{', '.join(sorted(names)) or '(none)'}")

    # -- module and definitions

    def visit_Module(self, node: ast.Module, ctx: _Ctx) -> _Ctx | None:
        functions = [s for s in node.body if isinstance(s, ast.FunctionDef)]
        for stmt in node.body:
            if not isinstance(stmt, ast.FunctionDef):
                self.add(stmt, "top-level",
                         "the source must be exactly one function definition; move "
                         f"this {type(stmt).__name__} statement inside the function")
        if not functions:
            if not node.body or all(isinstance(s, ast.FunctionDef) for s in node.body):
                self.add(None, "top-level", "the source must be exactly one function definition")
        elif len(functions) > 1:
            self.add(functions[1], "top-level",
                     "the source must be exactly one function definition; define helper "
                     "functions inside it")
        if functions:
            self.function = functions[0]
        return ctx

    def _arguments(self, args: ast.arguments) -> None:
        for default in [*args.defaults, *args.kw_defaults]:
            if not self._literal(default):
                self.add(default, "default-value",
                         "default values must be literal constants (numbers, strings, True, "
                         "False, None or tuples of them): defaults run when the function is "
                         "defined")

    def visit_FunctionDef(self, node: ast.FunctionDef, ctx: _Ctx) -> _Ctx | None:
        is_method = id(node) in self.methods
        dunder = node.name.startswith("__") and node.name.endswith("__")
        text = None
        span = self._span(node)
        rest = span[3:].lstrip() if span.startswith(b"def") else None
        if rest is not None:
            text = rest[: len(node.name.encode("ascii", "replace"))]
        if is_method and dunder and node.name not in DUNDER_METHODS and node.name.isascii():
            self.add(node, "dunder-method",
                     f"method {node.name!r} is not allowed; the dunder methods a class may "
                     f"define are: {', '.join(sorted(DUNDER_METHODS))}")
        else:
            self._identifier(node.name, node, "function name", text=text,
                             dunder_ok=is_method and node.name in DUNDER_METHODS)
        if node.decorator_list:
            self.add(node.decorator_list[0], "decorator",
                     "decorators are not allowed: they run code when the function is defined")
        self._annotation(node.returns)
        self._arguments(node.args)
        self._bind(node.name)
        if getattr(node, "type_params", None):
            self.add(node, "construct", "type parameters are not allowed")
        return _Ctx(ctx.depth, False)

    def visit_Lambda(self, node: ast.Lambda, ctx: _Ctx) -> _Ctx | None:
        self._arguments(node.args)
        return _Ctx(ctx.depth, False)

    def visit_arguments(self, node: ast.arguments, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_arg(self, node: ast.arg, ctx: _Ctx) -> _Ctx | None:
        span = self._span(node)
        self._identifier(node.arg, node, "parameter",
                         text=span[: len(node.arg)] if span else None)
        self._annotation(node.annotation)
        self._bind(node.arg)
        return ctx

    def visit_ClassDef(self, node: ast.ClassDef, ctx: _Ctx) -> _Ctx | None:
        span = self._span(node)
        rest = span[5:].lstrip() if span.startswith(b"class") else None
        self._identifier(node.name, node, "class name",
                         text=rest[: len(node.name)] if rest is not None else None)
        if node.decorator_list:
            self.add(node.decorator_list[0], "decorator",
                     "decorators are not allowed: they run code when the class is defined")
        for kw in node.keywords:
            self.add(kw, "class-keyword",
                     f"class keyword {kw.arg or '**'}= is not allowed (metaclasses and "
                     f"__init_subclass__ arguments run code when the class is defined)")
        for base in node.bases:
            if isinstance(base, ast.Name):
                if base.id in self.class_names or base.id in EXCEPTION_NAMES:
                    continue
                if base.id in _BUILTIN_TYPE_NAMES:
                    self.add(base, "class-base",
                             f"a class may not inherit from {base.id!r}: the bases allowed are "
                             f"your own classes and exception classes")
            elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
                continue  # e.g. json.JSONDecodeError; the run-time guard checks it
            else:
                self.add(base, "class-base",
                         "class bases must be plain names (your own classes or exception "
                         "classes)")
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef):
                self.methods.add(id(stmt))
        self.class_names.add(node.name)
        self._bind(node.name)
        return ctx

    def visit_Return(self, node: ast.Return, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Yield(self, node: ast.Yield, ctx: _Ctx) -> _Ctx | None:
        return self._yield(node, ctx)

    def visit_YieldFrom(self, node: ast.YieldFrom, ctx: _Ctx) -> _Ctx | None:
        return self._yield(node, ctx)

    def _yield(self, node: ast.expr, ctx: _Ctx) -> _Ctx | None:
        if ctx.in_cleanup:
            self.add(node, "yield-in-cleanup",
                     "yield inside 'with' or 'try ... finally' is not allowed: the cleanup "
                     "would run whenever the generator is garbage-collected, outside the call")
        return ctx

    # -- rejected outright, with a message that says why

    def visit_AsyncFunctionDef(self, node: ast.AST, ctx: _Ctx) -> _Ctx | None:
        self.add(node, "async", "async def is not allowed (wormhole functions are synchronous)")
        return None

    def visit_Await(self, node: ast.AST, ctx: _Ctx) -> _Ctx | None:
        self.add(node, "async", "await is not allowed (wormhole functions are synchronous)")
        return None

    def visit_AsyncFor(self, node: ast.AST, ctx: _Ctx) -> _Ctx | None:
        self.add(node, "async", "async for is not allowed (wormhole functions are synchronous)")
        return None

    def visit_AsyncWith(self, node: ast.AST, ctx: _Ctx) -> _Ctx | None:
        self.add(node, "async", "async with is not allowed (wormhole functions are synchronous)")
        return None

    def visit_TryStar(self, node: ast.AST, ctx: _Ctx) -> _Ctx | None:
        self.add(node, "try-star",
                 "except* is not allowed (exception groups with a crafted split() crash "
                 "CPython 3.11, gh-128049)")
        return None

    def visit_Global(self, node: ast.Global, ctx: _Ctx) -> _Ctx | None:
        self.add(node, "global",
                 "global is not allowed: a wormhole function has no module state; return "
                 "values or use nonlocal in nested functions")
        return None

    # -- statements

    def visit_Nonlocal(self, node: ast.Nonlocal, ctx: _Ctx) -> _Ctx | None:
        for name in node.names:
            self._identifier(name, node, "name")
        self._nonascii_outside_strings(node, "a nonlocal name")
        return ctx

    def visit_Assign(self, node: ast.Assign, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_AugAssign(self, node: ast.AugAssign, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_AnnAssign(self, node: ast.AnnAssign, ctx: _Ctx) -> _Ctx | None:
        self._annotation(node.annotation)
        return ctx

    def visit_Delete(self, node: ast.Delete, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Expr(self, node: ast.Expr, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Pass(self, node: ast.Pass, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Break(self, node: ast.Break, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Continue(self, node: ast.Continue, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_If(self, node: ast.If, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_While(self, node: ast.While, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_For(self, node: ast.For, ctx: _Ctx) -> _Ctx | None:
        self._store_target(node.target, "a for-loop target")
        return ctx

    def _store_target(self, target: ast.expr, where: str) -> None:
        """Attribute stores are guarded by rewriting ``a.b = v``; that rewrite is only done
        for assignment statements, so other binding positions must bind names."""
        for sub in ast.walk(target):
            if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                self.add(sub, "attribute-target",
                         f"assigning to an attribute in {where} is not allowed; bind a name "
                         f"and assign the attribute in the body")

    def visit_With(self, node: ast.With, ctx: _Ctx) -> _Ctx | None:
        return ctx._replace(in_cleanup=True)

    def visit_withitem(self, node: ast.withitem, ctx: _Ctx) -> _Ctx | None:
        if node.optional_vars is not None:
            self._store_target(node.optional_vars, "a with ... as target")
        return ctx

    def visit_Raise(self, node: ast.Raise, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Try(self, node: ast.Try, ctx: _Ctx) -> _Ctx | None:
        return ctx._replace(in_cleanup=True) if node.finalbody else ctx

    def visit_ExceptHandler(self, node: ast.ExceptHandler, ctx: _Ctx) -> _Ctx | None:
        if node.type is None:
            self.add(node, "bare-except",
                     "bare 'except:' is not allowed (it would catch the runtime's interrupt); "
                     "write 'except Exception:'")
        else:
            types_ = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            for t in types_:
                if isinstance(t, ast.Name) and t.id in _UNCATCHABLE:
                    self.add(t, "catch-base-exception",
                             f"catching {t.id} is not allowed (it would catch the runtime's "
                             f"interrupt); catch Exception or something narrower")
                elif not isinstance(t, (ast.Name, ast.Attribute)):
                    self.add(t, "except-type",
                             "the exception type in 'except' must be a name such as ValueError "
                             "or json.JSONDecodeError, or a tuple of them")
        if node.name is not None:
            # the AST has no position for the name: find "as <name>" on the handler's line
            line = self.lines[node.lineno - 1] if 1 <= node.lineno <= len(self.lines) else b""
            found = _AS_NAME.search(bytes(line[node.col_offset:]))
            self._identifier(node.name, node, "name", text=found.group(1) if found else None)
            self._bind(node.name)
        return ctx

    def visit_Assert(self, node: ast.Assert, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Match(self, node: ast.Match, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_match_case(self, node: ast.match_case, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_MatchValue(self, node: ast.MatchValue, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_MatchSingleton(self, node: ast.MatchSingleton, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_MatchSequence(self, node: ast.MatchSequence, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_MatchOr(self, node: ast.MatchOr, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_MatchStar(self, node: ast.MatchStar, ctx: _Ctx) -> _Ctx | None:
        if node.name is not None:
            span = self._span(node)
            self._identifier(node.name, node, "capture name",
                             text=span[1:].strip() if span else None)
            self._bind(node.name)
        return ctx

    def visit_MatchAs(self, node: ast.MatchAs, ctx: _Ctx) -> _Ctx | None:
        if node.name is not None:
            self._identifier(node.name, node, "capture name",
                             text=self._tail(node, len(node.name)))
            self._bind(node.name)
        return ctx

    def visit_MatchMapping(self, node: ast.MatchMapping, ctx: _Ctx) -> _Ctx | None:
        if node.rest is not None:
            self._identifier(node.rest, node, "capture name")
            self._nonascii_outside_strings(node, "the '**rest' capture name")
            self._bind(node.rest)
        return ctx

    def visit_MatchClass(self, node: ast.MatchClass, ctx: _Ctx) -> _Ctx | None:
        if node.kwd_attrs:
            self.add(node, "match-class-attributes",
                     "class patterns with keyword attributes (case Point(x=...)) are not "
                     "allowed: they read attributes by name without an attribute check; match "
                     "on a dict or a tuple instead")
            return None
        return ctx

    # -- imports

    def visit_Import(self, node: ast.Import, ctx: _Ctx) -> _Ctx | None:
        for alias in node.names:
            if "." in alias.name:
                self.add(node, "import-dotted",
                         f"'import {alias.name}' is not allowed: submodules are not importable; "
                         f"import a whitelisted module by its exact name")
                continue
            self._module(alias.name, node)
            self._alias(alias, node)
            if alias.name in self.modules:
                self.import_bound[alias.asname or alias.name] = alias.name
        return None

    def visit_ImportFrom(self, node: ast.ImportFrom, ctx: _Ctx) -> _Ctx | None:
        if node.level or node.module is None:
            self.add(node, "relative-import", "relative imports are not allowed")
            return None
        if not self._module(node.module, node):
            return None
        try:
            names = allowed_names(node.module, self.modules)
        except LookupError:
            return None  # reported by _module
        for alias in node.names:
            if alias.name == "*":
                self.add(node, "star-import",
                         f"'from {node.module} import *' is not allowed; import the names you "
                         f"use")
                continue
            self._alias(alias, node)
            if alias.name not in names and not alias.name.startswith("_"):
                self.add(node, "import-name",
                         f"'{alias.name}' cannot be imported from {node.module}: only its "
                         f"allowed public names are reachable (never its submodules or "
                         f"re-exported modules); allowed: {', '.join(sorted(names)) or '(none)'}")
            self._bind(alias.asname or alias.name)
        return None

    def _module(self, module: str, node: ast.AST) -> bool:
        for part in module.split("."):
            self._identifier(part, node, "module name")
        if not module.isascii():
            return False
        self._nonascii_outside_strings(node, "the import")
        if module not in self.modules:
            self.add(node, "forbidden-module",
                     f"module {module!r} is not allowed; {_dba_hint(module)}")
            return False
        try:
            allowed_names(module, self.modules)
        except LookupError as exc:
            self.add(node, "module-names-unlisted", str(exc))
            return False
        return True

    def _alias(self, alias: ast.alias, node: ast.AST) -> None:
        if alias.name != "*":
            for part in alias.name.split("."):
                self._identifier(part, node, "imported name")
        if alias.asname is not None:
            self._identifier(alias.asname, node, "import alias")
            if (alias.asname in _BUILTIN_NAMES or alias.asname in GLOBAL_NAMES
                    or (alias.asname in self.modules and alias.asname != alias.name)):
                self.add(node, "import-shadow",
                         f"'as {alias.asname}' is not allowed: the alias would shadow a "
                         f"builtin or another whitelisted module")

    def visit_alias(self, node: ast.alias, ctx: _Ctx) -> _Ctx | None:
        return ctx  # checked by visit_Import / visit_ImportFrom, which do not descend

    # -- expressions

    def visit_Name(self, node: ast.Name, ctx: _Ctx) -> _Ctx | None:
        self._identifier(node.id, node, "name", text=self._span(node) or None)
        if node.id == "super" and id(node) not in self.ok_super:
            self.add(node, "super",
                     "super may only be called with no arguments, as super().method(...)")
        if not isinstance(node.ctx, ast.Load):
            self._bind(node.id)
        return ctx

    def visit_Attribute(self, node: ast.Attribute, ctx: _Ctx) -> _Ctx | None:
        text = self._tail(node, len(node.attr))
        if id(node) in self.ok_dunder_attr:
            return ctx
        self._attribute_name(node.attr, node, text)
        if isinstance(node.value, ast.Name) and node.value.id in self.import_bound:
            self.module_reads.append((node, self.import_bound[node.value.id]))
        return ctx

    def visit_Call(self, node: ast.Call, ctx: _Ctx) -> _Ctx | None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "super":
            if node.args or node.keywords:
                self.add(node, "super",
                         "super may only be called with no arguments, as super().method(...)")
            else:
                self.ok_super.add(id(func))
        if isinstance(func, ast.Name) and func.id == "type" and (
                len(node.args) != 1 or node.keywords):
            self.add(node, "type-call",
                     "type() may only be called with one argument; three-argument type() "
                     "creates classes and is not allowed")
        # super().__init__(...) and friends: the one place a dunder may be named.
        if (isinstance(func, ast.Attribute) and func.attr in DUNDER_METHODS
                and isinstance(func.ctx, ast.Load)
                and isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Name)
                and func.value.func.id == "super" and not func.value.args
                and not func.value.keywords):
            self.ok_dunder_attr.add(id(func))
        return ctx

    def visit_keyword(self, node: ast.keyword, ctx: _Ctx) -> _Ctx | None:
        if node.arg is not None:
            span = self._span(node)
            self._identifier(node.arg, node, "keyword argument",
                             text=span[: len(node.arg)] if span else None)
        return ctx

    def visit_NamedExpr(self, node: ast.NamedExpr, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_BoolOp(self, node: ast.BoolOp, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_BinOp(self, node: ast.BinOp, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_UnaryOp(self, node: ast.UnaryOp, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_IfExp(self, node: ast.IfExp, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Compare(self, node: ast.Compare, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Dict(self, node: ast.Dict, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Set(self, node: ast.Set, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_List(self, node: ast.List, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Tuple(self, node: ast.Tuple, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Starred(self, node: ast.Starred, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Subscript(self, node: ast.Subscript, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Slice(self, node: ast.Slice, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_Constant(self, node: ast.Constant, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_JoinedStr(self, node: ast.JoinedStr, ctx: _Ctx) -> _Ctx | None:
        return ctx

    def visit_FormattedValue(self, node: ast.FormattedValue, ctx: _Ctx) -> _Ctx | None:
        return ctx  # the value and the spec are ordinary nodes, checked like any other

    def _comprehension_scope(self, node: ast.AST, ctx: _Ctx) -> _Ctx:
        return ctx._replace(in_cleanup=False)

    def visit_ListComp(self, node: ast.ListComp, ctx: _Ctx) -> _Ctx | None:
        return self._comprehension_scope(node, ctx)

    def visit_SetComp(self, node: ast.SetComp, ctx: _Ctx) -> _Ctx | None:
        return self._comprehension_scope(node, ctx)

    def visit_DictComp(self, node: ast.DictComp, ctx: _Ctx) -> _Ctx | None:
        return self._comprehension_scope(node, ctx)

    def visit_GeneratorExp(self, node: ast.GeneratorExp, ctx: _Ctx) -> _Ctx | None:
        return self._comprehension_scope(node, ctx)

    def visit_comprehension(self, node: ast.comprehension, ctx: _Ctx) -> _Ctx | None:
        if node.is_async:
            self.add(node.target, "async", "async comprehensions are not allowed")
        self._store_target(node.target, "a comprehension target")
        return ctx

    # -- contexts and operators: leaves with nothing to check

    def _leaf(self, node: ast.AST, ctx: _Ctx) -> _Ctx | None:
        return None

    visit_Load = visit_Store = visit_Del = _leaf
    visit_And = visit_Or = _leaf
    visit_Add = visit_Sub = visit_Mult = visit_MatMult = visit_Div = visit_Mod = _leaf
    visit_Pow = visit_LShift = visit_RShift = visit_BitOr = visit_BitXor = _leaf
    visit_BitAnd = visit_FloorDiv = _leaf
    visit_Invert = visit_Not = visit_UAdd = visit_USub = _leaf
    visit_Eq = visit_NotEq = visit_Lt = visit_LtE = visit_Gt = visit_GtE = _leaf
    visit_Is = visit_IsNot = visit_In = visit_NotIn = _leaf


#: builtin type names a class may not inherit from (subclasses of str, dict... would fool the
#: exact-type checks of the guards and the result codec).
_BUILTIN_TYPE_NAMES = frozenset({
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
    "range", "set", "slice", "str", "tuple", "type", "object", "super", "enumerate", "filter",
    "map", "zip", "reversed", "property", "classmethod", "staticmethod", "memoryview",
})

#: every name the real builtins module defines (an import alias may not shadow one).
_BUILTIN_NAMES = frozenset(dir(builtins))


# --------------------------------------------------------------------------------------------
# the transformer (runs only on a tree that passed the validator)


def _call(hook: str, args: list[ast.expr], like: ast.AST) -> ast.Call:
    call = ast.Call(func=ast.Name(id=hook, ctx=ast.Load()), args=args, keywords=[])
    return ast.copy_location(call, like)


def _tick_stmt(like: ast.AST) -> ast.Expr:
    return ast.copy_location(ast.Expr(value=_call(TICK, [], like)), like)


_BINOP_HOOKS: dict[type[ast.operator], tuple[str, str]] = {
    ast.Pow: (POW, IPOW), ast.Mult: (MUL, IMUL), ast.LShift: (LSHIFT, ILSHIFT),
}


def _load_copy(target: ast.expr) -> ast.expr:
    """A Load-context copy of a simple assignment target (``x``, ``a.b``, ``a[k]``)."""
    if isinstance(target, ast.Name):
        return ast.copy_location(ast.Name(id=target.id, ctx=ast.Load()), target)
    if isinstance(target, ast.Attribute):
        return ast.copy_location(
            ast.Attribute(value=target.value, attr=target.attr, ctx=ast.Load()), target)
    assert isinstance(target, ast.Subscript)
    return ast.copy_location(
        ast.Subscript(value=target.value, slice=target.slice, ctx=ast.Load()), target)


def _simple(node: ast.expr) -> bool:
    """Evaluating it twice has no side effects: a name or a constant."""
    return isinstance(node, (ast.Name, ast.Constant))


class _Rewriter:
    """Rewrites the checked tree in place, iteratively (the tree can be MAX_DEPTH deep)."""

    def __init__(self) -> None:
        self.temp = 0

    def run(self, tree: ast.Module) -> None:
        stack: list[ast.AST] = [tree]
        while stack:
            node = stack.pop()
            self.node(node)
            for name, value in ast.iter_fields(node):
                if isinstance(value, list):
                    if value and isinstance(value[0], ast.stmt):
                        value[:] = self.statements(value)
                    for i, item in enumerate(value):
                        if isinstance(item, ast.expr):
                            value[i] = item = self.expression(item)
                        if isinstance(item, ast.AST):
                            stack.append(item)
                elif isinstance(value, ast.AST):
                    if isinstance(value, ast.expr):
                        value = self.expression(value)
                        setattr(node, name, value)
                    stack.append(value)

    def node(self, node: ast.AST) -> None:
        """Insert the tick where a body starts."""
        if isinstance(node, (ast.FunctionDef, ast.For, ast.While)):
            node.body.insert(0, _tick_stmt(node.body[0]))
        elif isinstance(node, ast.Lambda):
            # `_wh_tick() or body`: the tick returns None, so the value is the body's.
            node.body = ast.copy_location(
                ast.BoolOp(op=ast.Or(), values=[_call(TICK, [], node.body), node.body]),
                node.body)
        elif isinstance(node, ast.comprehension):
            tick = ast.UnaryOp(op=ast.Not(), operand=_call(TICK, [], node.iter))
            node.ifs.insert(0, ast.copy_location(tick, node.iter))

    def expression(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOP_HOOKS:
            hook = _BINOP_HOOKS[type(node.op)][0]
            return _call(hook, [node.left, node.right], node)
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                and node.attr in DYNAMIC_ATTRIBUTES):
            return _call(GETATTR, [node.value, ast.Constant(value=node.attr)], node)
        return node

    def statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in body:
            out.extend(self.statement(stmt))
        return out

    def statement(self, stmt: ast.stmt) -> list[ast.stmt]:
        if isinstance(stmt, ast.AugAssign):
            return self.aug_assign(stmt)
        if isinstance(stmt, ast.Assign):
            return self.assign(stmt)
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Attribute):
            if stmt.value is None:
                return [ast.copy_location(ast.Expr(value=stmt.target.value), stmt)]
            return self.assign(ast.copy_location(
                ast.Assign(targets=[stmt.target], value=stmt.value), stmt))
        if isinstance(stmt, ast.Delete):
            # del a.b, (c.d, e), [f.g]: Python deletes left to right, unpacking tuple and list
            # targets; every attribute among them goes through the guard (a ``del (a.b,)`` left
            # as a raw Delete would change shared classes behind ``_wh_delattr``'s back).
            out: list[ast.stmt] = []
            pending: list[ast.expr] = list(reversed(stmt.targets))
            while pending:
                target = pending.pop()
                if isinstance(target, (ast.Tuple, ast.List)):
                    pending.extend(reversed(target.elts))
                elif isinstance(target, ast.Attribute):
                    call = _call(DELATTR, [target.value, ast.Constant(value=target.attr)], target)
                    out.append(ast.copy_location(ast.Expr(value=call), target))
                else:
                    out.append(ast.copy_location(ast.Delete(targets=[target]), target))
            return out
        return [stmt]

    def aug_assign(self, stmt: ast.AugAssign) -> list[ast.stmt]:
        target = stmt.target
        hooks = _BINOP_HOOKS.get(type(stmt.op))
        if isinstance(target, ast.Attribute):
            # a.b op= v  ->  t = a.b; t op= v; _wh_setattr(a, 'b', t): the guard sees the store,
            # and the in-place operator still runs (a list attribute is extended, not copied).
            prefix: list[ast.stmt] = []
            obj: ast.expr = target.value
            if not _simple(obj):
                holder = self._temp(stmt)
                prefix.append(ast.copy_location(ast.Assign(
                    targets=[ast.Name(id=holder, ctx=ast.Store())], value=obj), stmt))
                obj = ast.Name(id=holder, ctx=ast.Load())
            tmp = self._temp(stmt)
            load = ast.Name(id=tmp, ctx=ast.Load())
            prefix.append(ast.copy_location(ast.Assign(
                targets=[ast.Name(id=tmp, ctx=ast.Store())],
                value=ast.Attribute(value=obj, attr=target.attr, ctx=ast.Load())), stmt))
            if hooks is not None:
                prefix.append(ast.copy_location(ast.Assign(
                    targets=[ast.Name(id=tmp, ctx=ast.Store())],
                    value=_call(hooks[1], [load, stmt.value], stmt)), stmt))
            else:
                prefix.append(ast.copy_location(ast.AugAssign(
                    target=ast.Name(id=tmp, ctx=ast.Store()), op=stmt.op, value=stmt.value),
                    stmt))
            store = _call(SETATTR, [obj, ast.Constant(value=target.attr), load], stmt)
            return [*prefix, ast.copy_location(ast.Expr(value=store), stmt)]
        if hooks is None:
            return [stmt]
        held: list[ast.stmt] = []
        if isinstance(target, ast.Subscript) and not (
                _simple(target.value) and _simple(target.slice)):
            # a.b[f()] op= v  ->  t1 = a.b; t2 = f(); t1[t2] = _wh_iop(t1[t2], v): the
            # container and the key are evaluated once, in Python's order, and the size
            # guard still sees the operation (it used to be left unguarded).
            value = self._hold(target.value, stmt, held)
            key = self._hold(target.slice, stmt, held)
            target = ast.copy_location(
                ast.Subscript(value=value, slice=key, ctx=ast.Store()), target)
        if isinstance(target, (ast.Name, ast.Subscript)):
            # x op= v  ->  x = _wh_iop(x, v); the hook applies the in-place operator itself.
            call = _call(hooks[1], [_load_copy(target), stmt.value], stmt)
            return [*held, ast.copy_location(ast.Assign(targets=[target], value=call), stmt)]
        return [stmt]

    def _hold(self, node: ast.expr, like: ast.stmt, prefix: list[ast.stmt]) -> ast.expr:
        """``node`` evaluated once into temporaries (appended to ``prefix``), in Python's
        left-to-right order; slices and tuples of keys keep their shape (a Slice is only valid
        inside a subscript)."""
        if _simple(node):
            return node
        if isinstance(node, ast.Slice):
            parts = [None if p is None else self._hold(p, like, prefix)
                     for p in (node.lower, node.upper, node.step)]
            return ast.copy_location(ast.Slice(lower=parts[0], upper=parts[1], step=parts[2]),
                                     node)
        if isinstance(node, ast.Tuple) and any(isinstance(e, ast.Slice) for e in node.elts):
            elts = [self._hold(e, like, prefix) for e in node.elts]
            return ast.copy_location(ast.Tuple(elts=elts, ctx=ast.Load()), node)
        holder = self._temp(like)
        prefix.append(ast.copy_location(ast.Assign(
            targets=[ast.Name(id=holder, ctx=ast.Store())], value=node), like))
        return ast.copy_location(ast.Name(id=holder, ctx=ast.Load()), node)

    def assign(self, stmt: ast.Assign) -> list[ast.stmt]:
        if not any(isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                   for t in stmt.targets for sub in ast.walk(t)):
            return [stmt]
        # a.b = v  ->  _t = v; _wh_setattr(a, 'b', _t): the value goes to a temporary first, so
        # it is evaluated once and before the targets, which are stored left to right, as Python
        # does (only a constant, which evaluates to nothing, goes straight into the call)
        if (len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute)
                and isinstance(stmt.value, ast.Constant)):
            t = stmt.targets[0]
            call = _call(SETATTR, [t.value, ast.Constant(value=t.attr), stmt.value], stmt)
            return [ast.copy_location(ast.Expr(value=call), stmt)]
        tmp = self._temp(stmt)
        out: list[ast.stmt] = [ast.copy_location(
            ast.Assign(targets=[ast.Name(id=tmp, ctx=ast.Store())], value=stmt.value), stmt)]
        for target in stmt.targets:
            out.extend(self._store(target, ast.Name(id=tmp, ctx=ast.Load()), stmt))
        # the temporaries hold the value only until it is stored (else it would live as long
        # as the frame: a big value overwritten later would still count against the limits)
        held = sorted({n.id for o in out for n in ast.walk(o)
                       if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                       and n.id.startswith("_wh_t")})
        out.append(ast.copy_location(ast.Delete(
            targets=[ast.Name(id=name, ctx=ast.Del()) for name in held]), stmt))
        return out

    def _store(self, target: ast.expr, value: ast.expr, like: ast.stmt) -> list[ast.stmt]:
        if isinstance(target, ast.Attribute):
            call = _call(SETATTR, [target.value, ast.Constant(value=target.attr), value], like)
            return [ast.copy_location(ast.Expr(value=call), like)]
        if isinstance(target, (ast.Tuple, ast.List)) and any(
                isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                for sub in ast.walk(target)):
            # unpack into temporaries, then store each one
            names: list[ast.expr] = []
            later: list[tuple[ast.expr, str]] = []
            for elt in target.elts:
                inner = elt.value if isinstance(elt, ast.Starred) else elt
                tmp = self._temp(like)
                store: ast.expr = ast.Name(id=tmp, ctx=ast.Store())
                if isinstance(elt, ast.Starred):
                    store = ast.Starred(value=store, ctx=ast.Store())
                names.append(store)
                later.append((inner, tmp))
            out: list[ast.stmt] = [ast.copy_location(ast.Assign(
                targets=[type(target)(elts=names, ctx=ast.Store())], value=value), like)]
            for inner, tmp in later:
                out.extend(self._store(inner, ast.Name(id=tmp, ctx=ast.Load()), like))
            return out
        return [ast.copy_location(ast.Assign(targets=[target], value=value), like)]

    def _temp(self, like: ast.AST) -> str:
        self.temp += 1
        return f"_wh_t{self.temp}"


# --------------------------------------------------------------------------------------------
# deferred statements (runs only on a tree that passed the validator, before the rewriter)

#: where an exception raised inside may be caught before it leaves the function
_CATCHING: tuple[type[ast.AST], ...] = tuple(
    t for t in (ast.Try, getattr(ast, "TryStar", None), ast.With, ast.AsyncWith) if t is not None)
#: nodes that open a new scope (their bodies are other functions' code)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _binds_query(node: ast.AST) -> bool:
    """Does ``node`` bind, delete or declare the name ``query`` (so a call may not be ours)?"""
    if isinstance(node, ast.Name):
        return node.id == "query" and not isinstance(node.ctx, ast.Load)
    if isinstance(node, ast.arg):
        return node.arg == "query"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == "query"
    if isinstance(node, ast.alias):
        return (node.asname or node.name.split(".")[0]) == "query"
    if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
        return node.name == "query"
    if isinstance(node, ast.MatchMapping):
        return node.rest == "query"
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return "query" in node.names
    return False


def _own_nodes(fn: ast.FunctionDef) -> Iterator[ast.AST]:
    """The nodes of ``fn``'s own body, not those of the functions and classes it defines."""
    stack: list[ast.AST] = list(fn.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def _may_defer(tree: ast.Module, fn: ast.FunctionDef) -> bool:
    """What :func:`_defer_discarded_queries` requires of the source as a whole (and
    :func:`ahead_statements` of a discarded statement it runs ahead as one the worker does
    not wait for): ``fn``'s name used nowhere, ``query`` bound nowhere, not a generator."""
    for node in ast.walk(tree):
        if _binds_query(node) or (isinstance(node, ast.Name) and node.id == fn.name):
            return False
    return not any(isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await))
                   for node in _own_nodes(fn))


def _defer_discarded_queries(tree: ast.Module, fn: ast.FunctionDef) -> int:
    """Rewrite ``query(sql, ...)`` statements of the entry function whose result is discarded
    and whose error nothing in the function could catch into ``_wh_defer(line, sql, ...)``;
    returns how many.

    The confined worker sends such a statement without waiting for its answer (the backend
    still runs every statement in order, and the call fails with the statement's error at its
    line, as it would have: see ``worker.ChannelPort.defer``); in-process ``_wh_defer`` is
    ``query``. Only where that cannot change what the function does:

    * in the function the client calls (its error leaves the call: the engine is its only
      caller), so never when its name is used anywhere (recursion, or a helper calling it);
    * outside ``try`` and ``with`` (an ``except`` or a context manager could catch it);
    * never in a generator (its body runs as the consumer iterates);
    * never when ``query`` is bound anywhere in the source (the call would not be ours).
    """
    if not _may_defer(tree, fn):
        return 0
    count = 0
    bodies: list[list[ast.stmt]] = [fn.body]
    while bodies:
        body = bodies.pop()
        for index, stmt in enumerate(body):
            if isinstance(stmt, _CATCHING) or isinstance(stmt, _SCOPES):
                continue
            if isinstance(stmt, ast.Expr):
                call = stmt.value
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                        and call.func.id == "query" and call.args and not call.keywords
                        and not isinstance(call.args[0], ast.Starred)):
                    line = ast.copy_location(ast.Constant(value=stmt.lineno), call)
                    body[index] = ast.copy_location(
                        ast.Expr(value=_call(DEFER, [line, *call.args], call)), stmt)
                    count += 1
                continue
            if isinstance(stmt, ast.Match):
                bodies.extend(case.body for case in stmt.cases)
                continue
            for field in ("body", "orelse"):  # if, for, while (their else too)
                inner = getattr(stmt, field, None)
                if isinstance(inner, list):
                    bodies.append(inner)
    return count


def ahead_statements(tree: ast.Module, fn: ast.FunctionDef) -> Ahead | None:
    """:func:`_chain`'s first half: the chain."""
    return _chain(tree, fn)[0]


def ahead_result(tree: ast.Module, fn: ast.FunctionDef) -> AheadResult | None:
    """:func:`_chain`'s second half: what ``fn`` returns when its chain is its whole body."""
    return _chain(tree, fn)[1]


def _chain(tree: ast.Module, fn: ast.FunctionDef) -> tuple[Ahead | None, AheadResult | None]:
    """The statements every call of ``fn`` starts with, whatever it is given, as far as its
    source says so: ``(positional parameters, steps)``, or None.

    The confined worker's backend runs each of them before the worker asks for it (the first
    as soon as the call starts, each next one right after answering the one before), and
    answers the worker's ``query`` from it when the request is exactly that statement
    (``sandbox._Ahead``). So it must be certain that a call which binds its arguments runs
    exactly these statements, in this order, before anything else, and that nothing between
    them could fail, branch or have an effect that the backend cannot see for itself:

    * the first statement (after a docstring) and each next one is an assignment, ``return``
      or ``for`` whose value starts by calling ``query`` (``query(...)[0]["x"]``,
      ``query(...).attr``: the subscripts, attributes and method calls around it are evaluated
      after it), or a ``query(...)`` statement whose result is discarded;
    * ``query`` gets a literal SQL text and then, as arguments, only the function's parameters
      or what an earlier statement of the chain assigned, possibly subscripted with literal
      ints and strings (``order["product_id"]``): the backend evaluates those on the same
      values (rows are lists of dicts of plain values), and where that raises, the function
      raises too and the chain stops;
    * a statement is followed by the next only when it assigns one plain name a value made of
      the ``query`` call and literal subscripts alone, which the backend evaluates the same way
      (``rows[0]`` raising ``IndexError`` for no rows ends the function, and the chain), or
      discards its result;
    * between two statements there may be ``if`` statements without ``elif``/``else`` whose
      test compares such values and literals (``if inventory["quantity"] <
      order["quantity"]: raise ...``, see :func:`_ahead_test`); the backend evaluates each test
      on the same values, and goes on only where it is false, where the function skips the
      body and runs the next statement (a true test, or one that raises, ends the chain
      whatever the body does);
    * the parameters are plain positional ones: no defaults or annotations (evaluated when the
      function is defined, which could fail), no ``*args``, keyword-only or ``**kwargs``, no
      decorators; the function is neither a generator nor ``async`` (its body would not run
      when it is called);
    * ``query`` is bound nowhere in the source (the call would not be wormhole's).

    A discarded statement is one the worker sends without waiting (``nowait``, see
    :func:`_defer_discarded_queries`) unless the function's name is used in the source; the
    step keeps its line, which the worker's message carries. The backend runs it ahead as
    well, and keeps its effects only when the worker then sends exactly that statement (any
    other message fails the call, which rolls them back: ``sandbox._Ahead``).

    The second half is the function's result, when the chain is its whole body: the body ends
    with the chain (it returns None), with a chain statement that returns the rows and literal
    subscripts (``return query(...)[0]``), or with ``return`` of a value built from the
    chain's values and literals alone (:func:`_ahead_value`); the tests of ``if`` statements
    after the last statement come with it. The backend can then finish the call without the
    worker (``sandbox.WorkerExecutor._complete``), where everything goes as the chain says.
    """
    none: tuple[None, None] = (None, None)
    if not isinstance(fn, ast.FunctionDef):
        return none
    a = fn.args
    if (fn.decorator_list or fn.returns is not None
            or a.vararg is not None or a.kwarg is not None or a.kwonlyargs or a.defaults
            or a.kw_defaults):
        return none
    params = [*a.posonlyargs, *a.args]
    if any(p.annotation is not None for p in params):
        return none
    for node in ast.walk(tree):
        if _binds_query(node):
            return none
    deferrable = _may_defer(tree, fn)  # the worker sends its discarded statements without waiting
    if any(isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)) for node in _own_nodes(fn)):
        return none
    body = fn.body
    if (len(body) > 1 and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
        body = body[1:]  # the docstring
    #: what each name holds as the chain runs: a parameter (>= 0) or a step's value (< 0)
    names: dict[str, int] = {p.arg: i for i, p in enumerate(params)}
    steps: list[AheadStep] = []
    tests: list[AheadTest] = []  # of the ``if`` statements since the last step
    #: how the chain ended: None (the body did), or the statement it stopped at, and whether
    #: that statement is the chain's last step, which returns its value
    end: ast.stmt | None = None
    returns_step = False
    for stmt in body:
        end = stmt
        if len(steps) >= MAX_AHEAD:
            break
        value: ast.expr | None
        if isinstance(stmt, ast.If):
            test = None if stmt.orelse else _ahead_test(stmt.test, names)
            if test is None or len(tests) >= MAX_AHEAD:
                break
            tests.append(test)  # the body runs only where the test is true: the chain ends
            continue
        if isinstance(stmt, ast.Assign):
            if any(isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                   for target in stmt.targets for sub in ast.walk(target)):
                # ``a[0].b = query(...)``: the rewritten store (``_wh_setattr``) evaluates
                # ``a[0]`` (which may raise, or run a statement) around the call; before the
                # sixth session's red team it did so before the call. Not followed at all.
                break
            value = stmt.value  # targets are assigned after the value is computed
        elif isinstance(stmt, (ast.Return, ast.For)):
            value = stmt.value if isinstance(stmt, ast.Return) else stmt.iter
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            value = stmt.value  # a discarded result: only the call itself (see below)
        else:
            break
        keys: list[int | str] | None = []  # the literal subscripts around the call, if only
        while value is not None and not isinstance(stmt, ast.Expr):  # down to what is first
            if isinstance(value, ast.Subscript):
                key = _literal_key(value.slice)
                if key is None or keys is None:
                    keys = None
                else:
                    keys.insert(0, key)
                value = value.value
            elif isinstance(value, ast.Attribute):
                keys, value = None, value.value
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
                keys, value = None, value.func.value
            else:
                break
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and value.func.id == "query" and value.args and not value.keywords):
            break
        sql, *passed = value.args
        if not (isinstance(sql, ast.Constant) and type(sql.value) is str):
            break
        refs = [_ahead_ref(arg, names) for arg in passed]
        if any(ref is None for ref in refs):
            break
        # a discarded statement goes without waiting where _defer_discarded_queries makes it
        # one (at the top of the function's body, outside try and with: all of the chain)
        line = stmt.lineno if isinstance(stmt, ast.Expr) and deferrable else 0
        steps.append((sql.value, tuple(r for r in refs if r is not None), tuple(keys or ()),
                      line, tuple(tests)))
        tests = []
        if isinstance(stmt, ast.Expr):
            end = None
            continue  # it binds nothing: the next statement follows it
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and keys is not None):
            returns_step = isinstance(stmt, ast.Return) and keys is not None
            break
        names[stmt.targets[0].id] = -len(steps)  # -1 - (index of this step)
        end = None
    else:
        end = None
    if not steps:
        return none
    ahead = (len(params), tuple(steps))
    result: AheadResult | None = None
    if returns_step:
        result = ((), ("step",))
    elif end is None:  # the body ends with the chain, and the tests after it
        result = (tuple(tests), ("const", None))
    elif isinstance(end, ast.Return):
        returned = ("const", None) if end.value is None else _ahead_value(end.value, names)
        if returned is not None:
            result = (tuple(tests), returned)
    return ahead, result


def _ahead_value(node: ast.expr, names: Mapping[str, int]) -> AheadValue | None:
    """A returned value the backend can build from the chain's values itself, or None: literal
    scalars (:func:`_ahead_constant`), the chain's values subscripted with literals
    (:func:`_ahead_ref`), and ``dict`` (literal keys), ``list`` and ``tuple`` displays of those,
    within :data:`MAX_AHEAD_VALUE_NODES` nodes and :data:`MAX_AHEAD_VALUE_DEPTH` levels.
    Building it runs no user code, and what it is made of is what the worker's function would
    have returned (the same values, encoded by the same codec)."""
    count = [0]

    def walk(node: ast.expr, depth: int) -> AheadValue | None:
        count[0] += 1
        if count[0] > MAX_AHEAD_VALUE_NODES or depth > MAX_AHEAD_VALUE_DEPTH:
            return None
        leaf = _ahead_operand(node, names)
        if leaf is not None or isinstance(node, (ast.Constant, ast.Name, ast.Subscript)):
            return leaf
        if isinstance(node, ast.Dict):
            pairs = []
            for key_node, value_node in zip(node.keys, node.values):
                key = None if key_node is None else _ahead_constant(key_node)  # None: **spread
                value = walk(value_node, depth + 1)
                if key is None or value is None:
                    return None
                pairs.append((key[1], value))
            return ("dict", tuple(pairs))
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [None if isinstance(e, ast.Starred) else walk(e, depth + 1)
                     for e in node.elts]
            if any(item is None for item in items):
                return None
            return ("list" if isinstance(node, ast.List) else "tuple", tuple(items))
        return None

    return walk(node, 1)


#: the comparison operators of a test the chain goes past, by the name the backend uses
_AHEAD_COMPARE: dict[type[ast.cmpop], str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not",
}


def _ahead_test(node: ast.expr, names: Mapping[str, int]) -> AheadTest | None:
    """The test of an ``if`` the chain may go past, as the backend evaluates it
    (``sandbox._truth``), or None.

    Only what evaluates the same in the backend as in the worker, with no effect but raising:
    comparisons (``<`` ... ``not in``; ``is``/``is not`` only against ``None``, ``True`` or
    ``False``), ``and``, ``or``, ``not``, and as operands the chain's values subscripted with
    literals (:func:`_ahead_ref`) and literal ``None``, booleans, ints within 64 bits, finite
    floats and short strings. The values are the parameters (decoded by wormhole's codec) and
    rows (plain values): their comparisons and truth are Python's own, never user code.
    Within :data:`MAX_AHEAD_TEST_NODES` nodes and :data:`MAX_AHEAD_TEST_DEPTH` levels.
    """
    count = [0]

    def walk(node: ast.expr, depth: int, operand: bool) -> AheadTest | None:
        count[0] += 1
        if count[0] > MAX_AHEAD_TEST_NODES or depth > MAX_AHEAD_TEST_DEPTH:
            return None
        leaf = _ahead_operand(node, names)
        if leaf is not None or operand:  # a comparison's operand: a value, not a test
            return leaf
        if isinstance(node, ast.BoolOp):
            parts = [walk(v, depth + 1, False) for v in node.values]
            if any(p is None for p in parts):
                return None
            return ("and" if isinstance(node.op, ast.And) else "or", tuple(parts))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = walk(node.operand, depth + 1, False)
            return None if inner is None else ("not", inner)
        if isinstance(node, ast.Compare):
            left = walk(node.left, depth + 1, True)
            if left is None:
                return None
            pairs: list[tuple[str, AheadTest]] = []
            before = node.left
            for op, right_node in zip(node.ops, node.comparators):
                name = _AHEAD_COMPARE.get(type(op))
                right = walk(right_node, depth + 1, True)
                if name is None or right is None:
                    return None
                if name in ("is", "is not") and not (
                        _singleton(before) or _singleton(right_node)):
                    return None
                pairs.append((name, right))
                before = right_node
            return ("cmp", left, tuple(pairs))
        return None

    return walk(node, 1, False)


def _ahead_operand(node: ast.expr, names: Mapping[str, int]) -> AheadTest | None:
    """A literal (:func:`_ahead_constant`) or one of the chain's values subscripted with
    literals (:func:`_ahead_ref`), as ``("const", value)`` or ``("ref", source, keys)``."""
    constant = _ahead_constant(node)
    if constant is not None or not isinstance(node, (ast.Name, ast.Subscript)):
        return constant
    ref = _ahead_ref(node, names)
    return None if ref is None else ("ref", ref[0], ref[1])


def _singleton(node: ast.expr) -> bool:
    """Is ``node`` the literal ``None``, ``True`` or ``False`` (one object in every process)?"""
    return isinstance(node, ast.Constant) and (node.value is None or type(node.value) is bool)


def _ahead_constant(node: ast.expr) -> AheadTest | None:
    """A literal operand of a test: ``("const", value)``, or None."""
    negative = False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        negative, node = True, node.operand
    if not isinstance(node, ast.Constant):
        return None
    value = node.value
    if type(value) is int:
        value = -value if negative else value
        return ("const", value) if -(1 << 63) <= value < 1 << 63 else None
    if type(value) is float:
        value = -value if negative else value
        return ("const", value) if math.isfinite(value) else None
    if negative:
        return None
    if value is None or type(value) is bool:
        return ("const", value)
    if type(value) is str and len(value) <= 1024:
        return ("const", value)
    return None


def _literal_key(node: ast.expr) -> int | str | None:
    value = node.value if isinstance(node, ast.Constant) else None
    if type(value) is int:  # an index past 64 bits raises anyway; JSON could not keep it
        return value if -(1 << 63) <= value < 1 << 63 else None
    return value if type(value) is str else None


def _ahead_ref(arg: ast.expr, names: Mapping[str, int]) -> tuple[int, tuple[int | str, ...]] | None:
    """An argument of a statement run ahead: a name the chain knows, subscripted with
    literals (``order["product_id"]``), as ``(source, keys)``; None for anything else."""
    keys: list[int | str] = []
    while isinstance(arg, ast.Subscript):
        key = _literal_key(arg.slice)
        if key is None:
            return None
        keys.insert(0, key)
        arg = arg.value
    if isinstance(arg, ast.Name) and arg.id in names:
        return names[arg.id], tuple(keys)
    return None


# --------------------------------------------------------------------------------------------
# entry point


def _fix_locations(tree: ast.AST) -> None:
    """``ast.fix_missing_locations``, iteratively (the library version recurses per level).

    Nodes the rewriter made without a position take their parent's, so tracebacks through the
    hooks still point at the user's line.
    """
    stack: list[tuple[ast.AST, int, int, int, int]] = [(tree, 1, 0, 1, 0)]
    while stack:
        node, lineno, col, end_lineno, end_col = stack.pop()
        if "lineno" in node._attributes:
            if getattr(node, "lineno", None) is None:
                node.lineno = lineno  # type: ignore[attr-defined]
            else:
                lineno = node.lineno  # type: ignore[attr-defined]
            if getattr(node, "end_lineno", None) is None:
                node.end_lineno = end_lineno  # type: ignore[attr-defined]
            else:
                end_lineno = node.end_lineno  # type: ignore[attr-defined]
        if "col_offset" in node._attributes:
            if getattr(node, "col_offset", None) is None:
                node.col_offset = col  # type: ignore[attr-defined]
            else:
                col = node.col_offset  # type: ignore[attr-defined]
            if getattr(node, "end_col_offset", None) is None:
                node.end_col_offset = end_col  # type: ignore[attr-defined]
            else:
                end_col = node.end_col_offset  # type: ignore[attr-defined]
        for child in ast.iter_child_nodes(node):
            stack.append((child, lineno, col, end_lineno, end_col))


def _parse(source: str) -> ast.Module | Finding:
    try:
        with warnings.catch_warnings():
            # invalid escape sequences warn (DeprecationWarning on 3.11, SyntaxWarning later);
            # with -W error that would turn legitimate regexes into syntax errors.
            warnings.simplefilter("ignore")
            return ast.parse(source, filename=FILENAME, mode="exec", type_comments=False)
    except SyntaxError as exc:
        return Finding(exc.lineno or 1, max((exc.offset or 1) - 1, 0), "syntax-error",
                       f"invalid syntax: {exc.msg}")
    except (RecursionError, MemoryError):
        return Finding(1, 0, "too-deep", "the source is nested too deeply to be parsed")


def _params(fn: ast.FunctionDef) -> tuple[str, ...]:
    a = fn.args
    names = [p.arg for p in [*a.posonlyargs, *a.args]]
    if a.vararg is not None:
        names.append(a.vararg.arg)
    names.extend(p.arg for p in a.kwonlyargs)
    if a.kwarg is not None:
        names.append(a.kwarg.arg)
    return tuple(names)


def _sorted(findings: list[Finding]) -> list[Finding]:
    unique: dict[Finding, None] = dict.fromkeys(findings)
    return sorted(unique, key=lambda f: (f.lineno, f.col))[:MAX_FINDINGS]


def _check(source: str, modules: Mapping[str, frozenset[str] | None]) -> Checked:
    if not isinstance(source, str):
        raise PolicyError([Finding(1, 0, "source", "the source must be text")])
    if len(source) > MAX_SOURCE_CHARS:
        raise PolicyError([Finding(1, 0, "too-large",
                                   f"the source is {len(source)} characters; the limit is "
                                   f"{MAX_SOURCE_CHARS}")])
    findings = _text_findings(source)
    if findings:
        raise PolicyError(_sorted(findings))
    tree = _parse(source)
    if isinstance(tree, Finding):
        raise PolicyError([tree])
    validator = _Validator(source, modules)
    validator.run(tree)
    if validator.findings or validator.function is None:
        raise PolicyError(_sorted(validator.findings) or [
            Finding(1, 0, "top-level", "the source must be exactly one function definition")])
    fn = validator.function
    ahead, result = _chain(tree, fn)  # before the rewrites: it reads the user's statements
    _defer_discarded_queries(tree, fn)
    _Rewriter().run(tree)
    _fix_locations(tree)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compile(tree, FILENAME, "exec", dont_inherit=True, optimize=0)
    except SyntaxError as exc:
        # errors only the compiler's symbol table finds: 'break' outside a loop, 'nonlocal x'
        # with no binding, 'return' in a class body...
        raise PolicyError([Finding(exc.lineno or 1, max((exc.offset or 1) - 1, 0),
                                   "syntax-error", f"invalid syntax: {exc.msg}")]) from None
    except RecursionError:
        raise PolicyError([Finding(1, 0, "too-deep",
                                   "the function is nested too deeply to be compiled")]) from None
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
    return Checked(name=fn.name, code=code, params=_params(fn), source_hash=digest,
                   ahead=ahead, result=result)


def check(source: str, modules: Mapping[str, frozenset[str] | None]) -> Checked:
    """Check ``source`` (exactly one top-level ``def``) against the policy and compile it.

    ``modules`` is the DBA's whitelist: module name -> allowed public names, or None for the
    catalogue's vetted names. Returns ``Checked``; raises ``PolicyError`` with every finding.
    Any other failure inside the validator is a rejection too (fail closed).
    """
    try:
        return _check(source, modules)
    except PolicyError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed: a validator bug rejects
        raise PolicyError([Finding(1, 0, "validator-error",
                                   f"the policy could not check this function "
                                   f"({type(exc).__name__}); it is rejected")]) from None


def node_types() -> Iterator[type[ast.AST]]:
    """Every concrete AST node class of the running Python (for the release checklist test)."""
    seen: set[type[ast.AST]] = set()
    stack: list[type[ast.AST]] = [ast.AST]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen and sub.__module__ == "ast" and sub.__name__[0] != "_":
                seen.add(sub)
                stack.append(sub)
    for cls in sorted(seen, key=lambda c: c.__name__):
        if cls._fields or not cls.__subclasses__():
            yield cls

"""SQL text handling: one small lexer for parameter translation and the statement guard.

Why a lexer rather than regex substitution: ``$1`` and ``%`` must be rewritten only where
PostgreSQL would see them as code, never inside string literals (``'...'``, ``E'...'``,
``U&'...'``), quoted identifiers, comments (``--``, nested ``/* */``) or dollar-quoted bodies
(``$$...$$``, ``$tag$...$tag$``); and ``a$1`` is an identifier, not ``a`` followed by ``$1``.
The lexer follows PostgreSQL's scanner rules with ``standard_conforming_strings = on`` (the
default since 9.1): in a plain ``'...'`` string a backslash is an ordinary character.

Unterminated literals and comments run to the end of the text (PostgreSQL rejects them; here
nothing after them is treated as code, which is the safe reading for the guard).
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

from .errors import ForbiddenStatement

__all__ = [
    "ForbiddenStatement",
    "to_pyformat",
    "param_numbers",
    "split_statements",
    "check_statement",
    "tokens",
]




# ----------------------------------------------------------------------------------------------
# lexer

# Token kinds
WORD = "word"          # unquoted identifier or keyword (text as written)
QIDENT = "qident"      # "quoted identifier" (value: unescaped text)
STRING = "string"      # any string literal
DOLLAR = "dollar"      # dollar-quoted body
PARAM = "param"        # $n
COMMENT = "comment"
OP = "op"              # any other character run (operators, punctuation, numbers)
SEMI = "semi"          # ;

# Identifier characters: PostgreSQL accepts any byte >= 0x80 (any non-ASCII character).
# Written as the complement of the excluded ASCII characters: exactly the same sets as
# [A-Za-z_\x80-\U0010ffff] (start), [A-Za-z_0-9$\x80-\U0010ffff] (continue) and
# [A-Za-z_0-9\x80-\U0010ffff] (dollar-quote tag), but ``re`` compiles a class reaching
# \U0010ffff very slowly (~50 ms per backend start-up for this module's patterns).
_IDENT_START = r"[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f]"
_IDENT_CONT = r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"
_TAG_CONT = r"[^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"

_MASTER = re.compile(
    rf"""
      (?P<estr>[eE]')                                  # E'...'  (backslash escapes)
    | (?P<ustr>[uU]&')                                 # U&'...'
    | (?P<uident>[uU]&")                               # U&"..."
    | (?P<word>{_IDENT_START}{_IDENT_CONT}*)           # identifier / keyword
    | (?P<str>')                                       # '...'
    | (?P<qident>")                                    # "..."
    | (?P<dollar>\$(?:{_IDENT_START}{_TAG_CONT}*)?\$)  # $tag$ / $$
    | (?P<param>\$[0-9]+)                              # $1
    | (?P<line>--)                                     # -- comment
    | (?P<block>/\*)                                   # /* comment */
    | (?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)
    | (?P<semi>;)
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)

_STD_STR_END = re.compile(r"(?:[^']|'')*'")          # body of '...' after the quote
_E_STR_END = re.compile(r"(?:[^'\\]|''|\\.)*'", re.S)  # body of E'...'
_QIDENT_END = re.compile(r'(?:[^"]|"")*"')
_BLOCK_PART = re.compile(r"/\*|\*/")


def _block_end(sql: str, pos: int) -> int:
    """End of the nested ``/* */`` comment whose opening ``/*`` ends at ``pos``."""
    depth = 1
    for m in _BLOCK_PART.finditer(sql, pos):
        depth += 1 if m.group() == "/*" else -1
        if depth == 0:
            return m.end()
    return len(sql)


def tokens(sql: str) -> Iterator[tuple[str, int, int]]:
    """Yield ``(kind, start, end)`` for every significant token (whitespace is skipped).

    Characters the master pattern does not claim (operators, punctuation, a lone ``$``) come
    out one at a time as ``OP``.
    """
    n = len(sql)
    pos = 0
    match = _MASTER.match
    while pos < n:
        m = match(sql, pos)
        if m is None:  # operator or punctuation character
            yield OP, pos, pos + 1
            pos += 1
            continue
        kind = m.lastgroup
        end = m.end()
        if kind == "space":
            pos = end
            continue
        if kind == "word":
            yield WORD, pos, end
        elif kind == "str" or kind == "ustr":
            e = _STD_STR_END.match(sql, end)
            end = e.end() if e else n
            yield STRING, pos, end
        elif kind == "estr":
            e = _E_STR_END.match(sql, end)
            end = e.end() if e else n
            yield STRING, pos, end
        elif kind == "qident" or kind == "uident":
            e = _QIDENT_END.match(sql, end)
            end = e.end() if e else n
            yield QIDENT, pos, end
        elif kind == "dollar":
            tag = m.group()
            close = sql.find(tag, end)
            end = n if close < 0 else close + len(tag)
            yield DOLLAR, pos, end
        elif kind == "param":
            yield PARAM, pos, end
        elif kind == "line":
            nl = sql.find("\n", end)
            end = n if nl < 0 else nl + 1
            yield COMMENT, pos, end
        elif kind == "block":
            end = _block_end(sql, end)
            yield COMMENT, pos, end
        elif kind == "semi":
            yield SEMI, pos, end
        else:  # num
            yield OP, pos, end
        pos = end


# Fast scanner for translation: jumps (at C speed) to the next place where a literal, comment or
# parameter may start, skipping ordinary code. The look-behinds keep identifiers such as
# ``a$1``, ``b$x$`` or ``typE'`` from being read as a parameter, dollar quote or E'' string.
_NOT_AFTER_IDENT = rf"(?<!{_IDENT_CONT})"
_JUMP = re.compile(
    rf"""
    (?=[eEuU'"$/-])  # cheap first-character filter before the alternation
    (?:
      {_NOT_AFTER_IDENT}(?P<estr>[eE]')
    | {_NOT_AFTER_IDENT}(?P<uq>[uU]&['"])
    | (?P<str>')
    | (?P<qident>")
    | {_NOT_AFTER_IDENT}(?P<dollar>\$(?:{_IDENT_START}{_TAG_CONT}*)?\$)
    | {_NOT_AFTER_IDENT}(?P<param>\$[0-9]+)
    | (?P<line>--)
    | (?P<block>/\*)
    )
    """,
    re.VERBOSE,
)


def _scan(sql: str) -> Iterator[tuple[str, int, int]]:
    """Like :func:`tokens` but yields only literals, comments and parameters."""
    n = len(sql)
    pos = 0
    search = _JUMP.search
    while pos < n:
        m = search(sql, pos)
        if m is None:
            return
        kind = m.lastgroup
        start, end = m.start(), m.end()
        if kind == "param":
            # a parameter is "$" digits not followed by more identifier characters ("$1a")
            yield PARAM, start, end
        elif kind == "str" or (kind == "uq" and sql[end - 1] == "'"):
            e = _STD_STR_END.match(sql, end)
            end = e.end() if e else n
            yield STRING, start, end
        elif kind == "estr":
            e = _E_STR_END.match(sql, end)
            end = e.end() if e else n
            yield STRING, start, end
        elif kind == "qident" or kind == "uq":
            e = _QIDENT_END.match(sql, end)
            end = e.end() if e else n
            yield QIDENT, start, end
        elif kind == "dollar":
            tag = m.group()
            close = sql.find(tag, end)
            end = n if close < 0 else close + len(tag)
            yield DOLLAR, start, end
        elif kind == "line":
            nl = sql.find("\n", end)
            end = n if nl < 0 else nl + 1
            yield COMMENT, start, end
        else:  # block
            end = _block_end(sql, end)
            yield COMMENT, start, end
        pos = end


# ----------------------------------------------------------------------------------------------
# psycopg2 translation

# Fast path: text without "$" or "%" needs no lexing at all.
_NEEDS_WORK = re.compile(r"[$%]")


def to_pyformat(sql: str) -> str:
    """Translate ``$n`` placeholders to psycopg2's ``%(pn)s`` and escape every other ``%``.

    psycopg2 %-formats the whole query text when parameters are given (the driver always
    passes a dict, possibly empty), so a ``%`` anywhere, literals and comments included, must
    become ``%%``; ``$n`` is rewritten only where PostgreSQL would read it as a parameter.
    """
    if not _NEEDS_WORK.search(sql):
        return sql
    out: list[str] = []
    last = 0
    for kind, start, end in _scan(sql):
        if kind == PARAM:
            out.append(sql[last:start].replace("%", "%%"))
            out.append(f"%(p{int(sql[start + 1:end])})s")
            last = end
    out.append(sql[last:].replace("%", "%%"))
    return "".join(out)


def param_numbers(sql: str) -> set[int]:
    """The ``$n`` parameter numbers used as parameters in ``sql`` (not inside literals)."""
    if "$" not in sql:
        return set()
    return {int(sql[s + 1:e]) for kind, s, e in _scan(sql) if kind == PARAM}


# ----------------------------------------------------------------------------------------------
# statements


def _statements(sql: str) -> list[list[tuple[str, int, int]]]:
    """Top-level statements as token lists (comments dropped, empty statements dropped).

    A ``;`` inside ``CREATE FUNCTION/PROCEDURE ... BEGIN ATOMIC ... END`` does not end the
    statement (psql tracks the same thing).
    """
    stmts: list[list[tuple[str, int, int]]] = []
    cur: list[tuple[str, int, int]] = []
    routine = False
    depth = 0
    heads: list[str] = []
    for tok in tokens(sql):
        kind, s, e = tok
        if kind == COMMENT:
            continue
        if kind == SEMI and depth <= 0:
            if cur:
                stmts.append(cur)
            cur, routine, depth, heads = [], False, 0, []
            continue
        if kind == WORD:
            w = sql[s:e].lower()
            nwords = len(heads)
            if nwords < 4:
                heads.append(w)
                if heads[0] == "create" and w in ("function", "procedure"):
                    routine = True
            if routine:
                if w == "begin" or w == "case":
                    depth += 1
                elif w == "end":
                    depth -= 1
        cur.append(tok)
    if cur:
        stmts.append(cur)
    return stmts


def split_statements(sql: str) -> list[str]:
    """The top-level statements of ``sql``, as text (trimmed, without the ``;``)."""
    return [sql[st[0][1]:st[-1][2]] for st in _statements(sql)]


_TXN = {
    "begin": "BEGIN", "start": "START TRANSACTION", "commit": "COMMIT", "end": "END",
    "rollback": "ROLLBACK", "abort": "ABORT", "savepoint": "SAVEPOINT", "release": "RELEASE",
}
# GUCs a call must not change: the DBA's limits, the identity, and the output formats the
# server-side type conversion (pgtypes) relies on.
_GUARDED_SETTINGS = {
    "statement_timeout": "it would lift the timeout the DBA set for the call",
    "lock_timeout": "it would lift the timeout the DBA set for the call",
    "idle_in_transaction_session_timeout": "it would lift a timeout the DBA set",
    "idle_session_timeout": "it would lift a timeout the DBA set",
    "transaction_timeout": "it would lift a timeout the DBA set",
    "role": "changing the role would escape the privileges the call runs with",
    "session_authorization": "changing the role would escape the privileges the call runs with",
    "datestyle": "results are converted assuming DateStyle ISO",
    "intervalstyle": "results are converted assuming IntervalStyle postgres",
    "extra_float_digits": "results are converted assuming shortest-exact float output",
}


def _refuse(what: str, why: str) -> ForbiddenStatement:
    return ForbiddenStatement(f"wormhole refuses {what} inside a remote function: {why}")


def _ident(sql: str, tok: tuple[str, int, int]) -> str | None:
    """The identifier a WORD/QIDENT token names (case-folded / unescaped), else None."""
    kind, s, e = tok
    if kind == WORD:
        return sql[s:e].lower()
    if kind == QIDENT:
        body = sql[s:e]
        if body[:1] in "uU":
            body = _unicode_ident(body[2:])
            return body
        return body[1:-1].replace('""', '"')
    return None


def _unicode_ident(quoted: str) -> str:
    """Decode the default-escape form of a ``U&"..."`` identifier (``\\XXXX``, ``\\+XXXXXX``)."""
    body = quoted[1:-1].replace('""', '"')

    def sub(m: re.Match[str]) -> str:
        g = m.group()
        if g == "\\\\":
            return "\\"
        try:
            return chr(int(g[2:] if g[1] == "+" else g[1:], 16))
        except ValueError:
            return g

    return re.sub(r"\\\\|\\\+[0-9A-Fa-f]{6}|\\[0-9A-Fa-f]{4}", sub, body)


def check_statement(sql: str) -> None:
    """Raise :class:`ForbiddenStatement` unless ``sql`` is one statement ``query()`` may run.

    Refused, and why:

    * more than one statement (a trailing ``;`` and comments are fine): each call is one
      statement so that parameters, results and errors map one to one;
    * transaction control (``BEGIN``, ``START TRANSACTION``, ``COMMIT``, ``END``, ``ROLLBACK``,
      ``ABORT``, ``SAVEPOINT``, ``RELEASE``, ``PREPARE TRANSACTION``, ``COMMIT/ROLLBACK
      PREPARED``): the call runs inside the caller's transaction, which it must not end;
    * role and session changes (``SET [SESSION|LOCAL] ROLE``, ``... SESSION AUTHORIZATION``,
      ``SET SESSION CHARACTERISTICS``, ``RESET ROLE``, ``RESET SESSION AUTHORIZATION``,
      ``RESET ALL``, ``DISCARD``) and any reference to ``set_config`` (the function form of
      ``SET``), and ``UPDATE`` of ``pg_settings`` (its rule calls ``set_config``);
    * ``SET``/``RESET`` of the timeouts (``statement_timeout``, ``lock_timeout``,
      ``idle_in_transaction_session_timeout``, ``idle_session_timeout``,
      ``transaction_timeout``): user code must not lift the limits the DBA set for it; and of
      ``DateStyle``, ``IntervalStyle``, ``extra_float_digits``, which would break the type
      parity of results. Other settings (``search_path``, ``TimeZone``, ``work_mem``...) are
      allowed: they are the caller's own session;
    * ``COPY`` (file and program access; ``COPY ... STDIN/STDOUT`` cannot work through SPI),
      ``LOAD`` (loads a shared library), ``DO`` (anonymous code that bypasses these checks);
    * ``LISTEN``/``UNLISTEN``: a listener registered by a call would outlive it in the
      session. ``NOTIFY`` is allowed: it is transactional, like any write, and equivalent to
      ``SELECT pg_notify(...)``.

    Keywords are matched case-insensitively after comments and whitespace. Not a security
    boundary: code reached indirectly (functions, ``EXECUTE`` in PL/pgSQL) is not inspected.
    """
    if _quick_ok(sql):
        return
    stmts = _statements(sql)
    if len(stmts) > 1:
        raise _refuse("more than one statement per query() call",
                      "send each statement in its own query() call")
    for st in stmts:
        _check_one(sql, st)


_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$))*")
_FIRST_WORD = re.compile(rf"{_IDENT_START}{_IDENT_CONT}*")
_FIRST_WORDS_TO_CHECK = frozenset(
    {"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release", "prepare",
     "copy", "load", "do", "listen", "unlisten", "discard", "set", "reset"}
)


def _quick_ok(sql: str) -> bool:
    """True when ``sql`` is certainly allowed, decided without lexing the whole text.

    No ``;`` means one statement; no ``set_config``/``pg_settings`` substring and no ``U&"``
    identifier (which could spell them with escapes) means no such reference; then only the
    first word matters. Anything else takes the full lexer.
    """
    if ";" in sql:
        return False
    low = sql.lower()
    if "set_config" in low or "pg_settings" in low or 'u&"' in low:
        return False
    pos = 0
    n = len(sql)
    while True:
        pos = _LEADING.match(sql, pos).end()  # type: ignore[union-attr]  # always matches
        if sql.startswith("/*", pos):
            pos = _block_end(sql, pos + 2)
            continue
        break
    if pos >= n:
        return True
    m = _FIRST_WORD.match(sql, pos)
    return m is None or m.group().lower() not in _FIRST_WORDS_TO_CHECK


def _check_one(sql: str, st: list[tuple[str, int, int]]) -> None:
    idents = [_ident(sql, t) for t in st]
    words = [sql[s:e].lower() if k == WORD else None for k, s, e in st]
    if "set_config" in idents:
        raise _refuse("set_config()", "it changes settings of the session the call runs in; "
                      "role, timeouts and result formats must stay as the DBA set them")
    if "pg_settings" in idents and "update" in words:
        raise _refuse("UPDATE of pg_settings", "it is set_config() in disguise")
    first = words[0]
    if first is None:
        return
    second = words[1] if len(words) > 1 else None
    if first in _TXN:
        if first != "start" or second == "transaction":
            raise _refuse(_TXN[first] if first != "start" else "START TRANSACTION",
                          "the call runs inside the caller's transaction, which only the "
                          "caller may end; use `with wormhole.transaction():` on the client")
    if first == "prepare" and second == "transaction":
        raise _refuse("PREPARE TRANSACTION", "the call runs inside the caller's transaction")
    if first in ("copy", "load", "do", "listen", "unlisten", "discard"):
        why = {
            "copy": "COPY reads and writes server files and programs, and COPY FROM STDIN/"
                    "TO STDOUT cannot work from inside a function; use INSERT/SELECT",
            "load": "it loads a shared library into the server process",
            "do": "anonymous code blocks would bypass these checks",
            "listen": "a listener would outlive the call in the caller's session",
            "unlisten": "the session's listeners belong to the caller",
            "discard": "it resets the session state (role, settings, plans) of the caller",
        }[first]
        raise _refuse(first.upper(), why)
    if first in ("set", "reset"):
        i = 1
        if first == "set" and words[i:i + 1] in (["session"], ["local"]):
            # SET SESSION x / SET LOCAL x, but "SET SESSION AUTHORIZATION" and
            # "SET SESSION CHARACTERISTICS" start with the same word
            if not (words[i] == "session" and len(words) > 2 and words[2] in (
                    "authorization", "characteristics")):
                i += 1
        name = idents[i] if i < len(idents) else None
        nxt = words[i + 1] if i + 1 < len(words) else None
        if name == "session" and nxt in ("authorization", "characteristics"):
            raise _refuse(f"{first.upper()} SESSION {nxt.upper()}",
                          "the role and session characteristics belong to the caller")
        if name == "all" and first == "reset":
            raise _refuse("RESET ALL", "it would reset the role and the limits set for the call")
        if name is not None:
            guarded = _GUARDED_SETTINGS.get(name)
            if guarded is not None:
                raise _refuse(f"{first.upper()} {name}", guarded)

"""A checker for Yarn Spinner 2 scripts, written from YarnSpinnerLexer.g4 / YarnSpinnerParser.g4.

No Yarn Spinner compiler installs from PyPI, so the tests parse the 📄 `.yarn` file with this.
It follows the lexer's modes line by line:

- outside nodes: `// comments`, file `#hashtags`, headers `ID: text`, `---` opening a body;
- BodyMode, at the start of a statement: `===` (the node's end), `->` (a shortcut option),
  `<<` (a command), `#` (hashtags), `{` (an expression), `//`; any other character starts a line
  in TextMode (taken as it is, a leading `\\` included, as Yarn 2.x's `ANY` rule does);
- TextMode: `\\[` `\\]` pass through for the markup parser; `\\` escapes one of ``\\ < > { } # /``
  (any other escape is a lexer error); `#` starts the hashtags that end the line, `{` an
  expression, `<<` a line condition, `//` a comment; a single `<` or `/` is text.

The parser builds `node: header+ '---' statement* '==='` with line statements (text,
expressions, an optional `<<if …>>` condition, hashtags), option groups whose bodies are the
lines indented deeper than their `->` (Yarn's INDENT/DEDENT), `<<if>>…<<endif>>` blocks,
`<<jump Node>>`, `<<set $v = …>>` and other commands. Then the compiler's checks: every node
has a `title` that is a node name, titles are unique, jumps name a node. Markup is read as the
runtime's LineParser reads it (an unescaped `[` or `]` is markup).

`plain_scene` is stricter: one node whose lines are plain text (no expressions, hashtags,
conditions, commands or markup), then at most one option group of plain lines. That is what
the Muse renderer must produce; what it returns is the text a player would see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NODE_NAME = re.compile(r"[^\W\d]\w*")
_HEADER = re.compile(r"([^\W\d]\w*)[ \t]*:[ ]*(.*)")
_ESCAPABLE = frozenset("\\<>{}#/")
_ESCAPED_BACKSLASH = "\ue000"
_HASHTAG_TEXT = re.compile(r"[^ \t\r\n#$<]+")
_EXPRESSION_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>\d+(?:\.\d+)?)
    | (?P<string>"(?:[^"\\\r\n]|\\["\\])*")
    | (?P<var>\$[^\W\d]\w*)
    | (?P<op><=|>=|==|!=|&&|\|\||\+=|-=|\*=|/=|%=|[-+*/%<>=!^(),])
    | (?P<word>[^\W\d]\w*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = frozenset({"true", "false", "null"})
_WORD_OPERATORS = frozenset(
    {"and", "or", "xor", "not", "is", "eq", "neq", "lt", "lte", "gt", "gte", "to", "as"}
)
_BINARY = frozenset(
    {"+", "-", "*", "/", "%", "<", ">", "<=", ">=", "==", "!=", "&&", "||", "^", "and", "or"}
    | {"xor", "is", "eq", "neq", "lt", "lte", "gt", "gte"}
)


class YarnError(ValueError):
    """The script does not parse (or fails a compiler check); says where."""

    def __init__(self, line_no: int, message: str) -> None:
        super().__init__(f"line {line_no}: {message}")
        self.line_no = line_no


@dataclass
class Line:
    """A line statement: `text` as the player sees it (escapes and escaped markup resolved)."""

    line_no: int
    text: str
    expressions: int = 0
    markup: bool = False
    condition: bool = False
    hashtags: list[str] = field(default_factory=list)

    @property
    def plain(self) -> bool:
        return not (self.expressions or self.markup or self.condition or self.hashtags)


@dataclass
class Option:
    line: Line
    body: list[Statement]


@dataclass
class OptionGroup:
    options: list[Option]


@dataclass
class Command:
    line_no: int
    kind: str  # "jump", "set", "declare", "call", "if", "elseif", "else", "endif", "command"
    target: str = ""
    hashtags: list[str] = field(default_factory=list)


@dataclass
class IfBlock:
    clauses: list[list[Statement]]


Statement = Line | OptionGroup | Command | IfBlock


@dataclass
class Node:
    title: str
    headers: dict[str, str]
    body: list[Statement]
    line_no: int


@dataclass
class Dialogue:
    file_hashtags: list[str]
    nodes: list[Node]


@dataclass
class PlainScene:
    title: str
    headers: dict[str, str]
    lines: list[str]
    options: list[tuple[str, list[str]]]  # (the option's text, the lines under it)


def parse(source: str) -> Dialogue:
    """The script's nodes; raises `YarnError` where Yarn Spinner would not compile it."""
    if "\r" in source:
        source = source.replace("\r\n", "\n").replace("\r", "\n")
    rows = source.split("\n")
    file_hashtags: list[str] = []
    nodes: list[Node] = []
    headers: dict[str, str] = {}
    header_start = 0
    i = 0
    while i < len(rows):
        number, row = i + 1, rows[i].strip(" \t")
        i += 1
        if not row or row.startswith("//"):
            continue
        if row.startswith("#"):
            if nodes or headers:
                raise YarnError(number, "a file hashtag after the first node")
            file_hashtags += _hashtags(row, 0, number)
            continue
        if row.startswith("---"):
            if not headers:
                raise YarnError(number, "`---` with no headers before it")
            _blank_after(row, 3, number, "`---`")
            body_rows: list[tuple[int, str]] = []
            while i < len(rows) and not _is_body_end(rows[i]):
                body_rows.append((i + 1, rows[i]))
                i += 1
            if i == len(rows):
                raise YarnError(len(rows), "the node's body has no `===`")
            _blank_after(rows[i].strip(" \t"), 3, i + 1, "`===`")
            i += 1
            nodes.append(_node(headers, header_start, body_rows))
            headers = {}
            continue
        header = _HEADER.fullmatch(row)
        if not header:
            raise YarnError(number, f"not a header, comment or `---`: {row[:40]!r}")
        if not headers:
            header_start = number
        key, value = header.group(1), header.group(2)
        if "title" in headers and key == "title":
            raise YarnError(number, "a second `title:` header")
        headers[key] = value
    if headers:
        raise YarnError(len(rows), "headers with no `---` body after them")
    if not nodes:
        raise YarnError(len(rows), "no nodes")
    _check_titles(nodes)
    return Dialogue(file_hashtags, nodes)


def plain_scene(source: str) -> PlainScene:
    """The one node of a Muse script: its plain lines, then its options, each a plain line with
    plain lines under it. Raises `YarnError` for anything else."""
    dialogue = parse(source)
    if len(dialogue.nodes) != 1 or dialogue.file_hashtags:
        raise YarnError(1, "not one node without file hashtags")
    node = dialogue.nodes[0]
    lines: list[str] = []
    options: list[tuple[str, list[str]]] = []
    for statement in node.body:
        if options:
            raise YarnError(node.line_no, "a statement after the options")
        if isinstance(statement, Line):
            lines.append(_plain_text(statement))
        elif isinstance(statement, OptionGroup):
            for option in statement.options:
                if not all(isinstance(s, Line) for s in option.body):
                    raise YarnError(option.line.line_no, "an option's body is not only lines")
                body = [_plain_text(s) for s in option.body if isinstance(s, Line)]
                options.append((_plain_text(option.line), body))
        else:
            raise YarnError(node.line_no, f"not a line or an option: {statement!r}")
    return PlainScene(node.title, node.headers, lines, options)


def split_speaker(text: str) -> tuple[str | None, str]:
    """(character, rest) as Yarn's runtime reads a line: the text before its first colon."""
    name, colon, rest = text.partition(":")
    return (name.strip(), rest.lstrip()) if colon else (None, text)


# --- nodes and statements --------------------------------------------------------------------


@dataclass
class _Row:
    line_no: int
    indent: int
    kind: str  # "line", "option", "command"
    line: Line | None = None
    command: Command | None = None


def _node(headers: dict[str, str], line_no: int, body_rows: list[tuple[int, str]]) -> Node:
    if "title" not in headers:
        raise YarnError(line_no, "a node without a `title:` header")
    title = headers["title"].strip()
    if not NODE_NAME.fullmatch(title):
        raise YarnError(line_no, f"{title!r} is not a node name")
    rows = [row for number, text in body_rows for row in _lex_body_row(number, text)]
    body, end = _statements(rows, 0, -1, top=True)
    assert end == len(rows)
    return Node(title, headers, body, line_no)


def _statements(rows: list[_Row], i: int, parent_indent: int, *, top: bool) -> tuple[list, int]:
    """Statements from rows[i] while they are indented deeper than `parent_indent`; an
    `<<elseif>>`/`<<else>>`/`<<endif>>` ends the run for the `<<if>>` above."""
    out: list[Statement] = []
    while i < len(rows):
        row = rows[i]
        if row.indent <= parent_indent:
            break
        if row.kind == "command" and row.command and row.command.kind in _IF_CONTINUATIONS:
            if top:
                raise YarnError(row.line_no, f"<<{row.command.kind}>> without <<if>>")
            break
        if row.kind == "option":
            group = OptionGroup([])
            while i < len(rows) and rows[i].kind == "option" and rows[i].indent == row.indent:
                option_row = rows[i]
                body, i = _statements(rows, i + 1, option_row.indent, top=False)
                assert option_row.line is not None
                group.options.append(Option(option_row.line, body))
            out.append(group)
            continue
        if row.kind == "command" and row.command and row.command.kind == "if":
            block, i = _if_block(rows, i, parent_indent)
            out.append(block)
            continue
        out.append(row.line if row.kind == "line" else row.command)  # type: ignore[arg-type]
        i += 1
    return out, i


_IF_CONTINUATIONS = frozenset({"elseif", "else", "endif"})


def _if_block(rows: list[_Row], i: int, parent_indent: int) -> tuple[IfBlock, int]:
    start = rows[i]
    clauses: list[list[Statement]] = []
    seen_else = False
    while True:
        body, i = _statements(rows, i + 1, parent_indent, top=False)
        clauses.append(body)
        if i >= len(rows) or rows[i].kind != "command" or rows[i].command is None:
            raise YarnError(start.line_no, "<<if>> without <<endif>>")
        kind = rows[i].command.kind  # type: ignore[union-attr]
        if kind == "endif":
            return IfBlock(clauses), i + 1
        if kind not in ("elseif", "else") or seen_else:
            raise YarnError(rows[i].line_no, f"<<{kind}>> where <<endif>> belongs")
        seen_else = kind == "else"


def _check_titles(nodes: list[Node]) -> None:
    titles: set[str] = set()
    for node in nodes:
        if node.title in titles:
            raise YarnError(node.line_no, f"a second node titled {node.title!r}")
        titles.add(node.title)
    for node in nodes:
        for command in _commands(node.body):
            if command.kind == "jump" and command.target not in titles:
                raise YarnError(command.line_no, f"<<jump {command.target}>>: no such node")


def _commands(statements: list[Statement]):
    for statement in statements:
        if isinstance(statement, Command):
            yield statement
        elif isinstance(statement, OptionGroup):
            for option in statement.options:
                yield from _commands(option.body)
        elif isinstance(statement, IfBlock):
            for clause in statement.clauses:
                yield from _commands(clause)


def _plain_text(line: Line) -> str:
    if not line.plain:
        raise YarnError(line.line_no, f"not plain text: {line!r}")
    return line.text


def _is_body_end(row: str) -> bool:
    return row.strip(" \t").startswith("===")


def _blank_after(row: str, at: int, line_no: int, what: str) -> None:
    rest = row[at:].strip(" \t")
    if rest and not rest.startswith("//"):
        raise YarnError(line_no, f"text after {what}: {rest[:40]!r}")


# --- BodyMode, TextMode and the rest of the lexer ---------------------------------------------


def _lex_body_row(line_no: int, text: str) -> list[_Row]:
    stripped = text.lstrip(" \t")
    indent = _indentation(text[: len(text) - len(stripped)])
    pos, kind = 0, "line"
    while True:
        while stripped[pos : pos + 1] in (" ", "\t"):
            pos += 1
        if stripped.startswith("->", pos):
            if kind == "option":
                raise YarnError(line_no, "`->` twice")
            kind, pos = "option", pos + 2
            continue
        break
    rest = stripped[pos:]
    if not rest or rest.startswith("//"):
        if kind == "option":
            raise YarnError(line_no, "an option without text")
        return []
    if rest.startswith("<<"):
        if kind == "option":
            raise YarnError(line_no, "an option without text (a command after `->`)")
        command, end = _command(stripped, pos + 2, line_no)
        command.hashtags = _tail(stripped, end, line_no, allow_commands=False)
        return [_Row(line_no, indent, "command", command=command)]
    line = _text_line(stripped, pos, line_no)
    if kind == "option" and not line.text.strip() and not line.expressions:
        raise YarnError(line_no, "an option without text")
    return [_Row(line_no, indent, kind, line=line)]


def _indentation(spaces: str) -> int:
    count = 0
    for char in spaces:
        count += 8 - (count % 8) if char == "\t" else 1
    return count


def _text_line(text: str, pos: int, line_no: int) -> Line:
    """A line from `pos` (BodyMode: the first character is text whatever it is, unless it
    opens hashtags or an expression) to the end: TextMode."""
    raw: list[str] = []
    line = Line(line_no, "")
    if text[pos] == "#":
        line.hashtags = _tail(text, pos, line_no, allow_commands=True, line=line)
        return line
    if text[pos] != "{":
        raw.append(text[pos])
        pos += 1
    while pos < len(text):
        char = text[pos]
        if text.startswith(("\\[", "\\]"), pos):
            raw.append(text[pos : pos + 2])
            pos += 2
        elif char == "\\":
            if pos + 1 >= len(text) or text[pos + 1] not in _ESCAPABLE:
                raise YarnError(line_no, f"`\\{text[pos + 1 : pos + 2]}` is not an escape")
            raw.append(_ESCAPED_BACKSLASH if text[pos + 1] == "\\" else text[pos + 1])
            pos += 2
        elif char == "{":
            pos = _expression(text, pos + 1, line_no, end="}")
            line.expressions += 1
        elif char == "#" or text.startswith("<<", pos):
            line.hashtags = _tail(text, pos, line_no, allow_commands=True, line=line)
            break
        elif text.startswith("//", pos):
            break
        else:
            raw.append(char)
            pos += 1
    line.text, line.markup = _markup("".join(raw))
    return line


def _markup(raw: str) -> tuple[str, bool]:
    """The runtime's markup pass (LineParser): `\\[` `\\]` are brackets, an unescaped one is
    markup, any other backslash is text. (An escaped backslash comes as a placeholder, as the
    lexer hands it over as a token of its own.)"""
    out, markup, i = [], False, 0
    while i < len(raw):
        if raw.startswith(("\\[", "\\]"), i):
            out.append(raw[i + 1])
            i += 2
        else:
            markup = markup or raw[i] in "[]"
            out.append(raw[i])
            i += 1
    return "".join(out).replace(_ESCAPED_BACKSLASH, "\\"), markup


def _tail(
    text: str, pos: int, line_no: int, *, allow_commands: bool, line: Line | None = None
) -> list[str]:
    """TextCommandOrHashtagMode: hashtags, a line condition, comments; nothing else."""
    tags: list[str] = []
    while pos < len(text):
        if text[pos] in " \t":
            pos += 1
        elif text.startswith("//", pos):
            break
        elif text[pos] == "#":
            pos += 1
            while text[pos : pos + 1] in (" ", "\t"):
                pos += 1
            match = _HASHTAG_TEXT.match(text, pos)
            if not match:
                raise YarnError(line_no, "`#` with no hashtag text")
            tags.append(match.group())
            pos = match.end()
        elif allow_commands and text.startswith("<<", pos):
            command, pos = _command(text, pos + 2, line_no)
            if command.kind != "if" or line is None or line.condition:
                raise YarnError(line_no, "only one <<if …>> may follow a line's text")
            line.condition = True
        else:
            raise YarnError(line_no, f"unexpected {text[pos : pos + 20]!r} after hashtags")
    return tags


def _command(text: str, pos: int, line_no: int) -> tuple[Command, int]:
    """CommandMode, from just after `<<`; returns the command and the position after `>>`."""
    while text[pos : pos + 1] in (" ", "\t"):
        pos += 1
    keyword = re.match(
        r"(if|elseif|set|call|declare|jump)[ \t]|(else|endif)(?=[ \t>]|$)", text[pos:]
    )
    if keyword is None:
        return _command_text(text, pos, line_no)
    kind = keyword.group(1) or keyword.group(2)
    pos += keyword.end()
    command = Command(line_no, kind)
    if kind == "jump":
        match = re.compile(r"[ \t]*([^\W\d]\w*)[ \t]*>>").match(text, pos)
        if not match:
            raise YarnError(line_no, "<<jump>> needs a node name")
        command.target = match.group(1)
        return command, match.end()
    if kind in ("else", "endif"):
        match = re.compile(r"[ \t]*>>").match(text, pos)
        if not match:
            raise YarnError(line_no, f"<<{kind}>> takes nothing")
        return command, match.end()
    if kind in ("set", "declare"):
        match = re.compile(r"[ \t]*\$[^\W\d]\w*[ \t]*(=|to|\+=|-=|\*=|/=|%=)").match(text, pos)
        if not match:
            raise YarnError(line_no, f"<<{kind}>> needs `$variable = value`")
        pos = match.end()
    return command, _expression(text, pos, line_no, end=">>")


def _command_text(text: str, pos: int, line_no: int) -> tuple[Command, int]:
    """CommandTextMode: text and `{expressions}` up to `>>` (a lone `>` is an error)."""
    start = pos
    while pos < len(text):
        if text.startswith(">>", pos):
            if pos == start:
                raise YarnError(line_no, "an empty command")
            return Command(line_no, "command"), pos + 2
        if text[pos] == ">":
            raise YarnError(line_no, "a lone `>` in a command")
        if text[pos] == "{":
            pos = _expression(text, pos + 1, line_no, end="}")
        else:
            pos += 1
    raise YarnError(line_no, "a command without `>>`")


def _expression(text: str, pos: int, line_no: int, *, end: str) -> int:
    """ExpressionMode from `pos` to `end` (`}` or `>>`): tokens, then the parser's `expression`
    rule by precedence climbing. Returns the position after `end`."""
    tokens: list[str] = []
    while True:
        while text[pos : pos + 1] in (" ", "\t"):
            pos += 1
        if text.startswith(end, pos):
            pos += len(end)
            break
        match = _EXPRESSION_TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise YarnError(line_no, f"an expression without `{end}`: {text[pos : pos + 20]!r}")
        tokens.append(match.group().strip())
        pos = match.end()
    parser = _ExpressionParser(tokens, line_no)
    parser.expression()
    if parser.i != len(tokens):
        raise YarnError(line_no, f"unexpected {tokens[parser.i]!r} in an expression")
    return pos


class _ExpressionParser:
    def __init__(self, tokens: list[str], line_no: int) -> None:
        self.tokens, self.i, self.line_no = tokens, 0, line_no

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise YarnError(self.line_no, "an expression ends too soon")
        self.i += 1
        return token

    def expression(self) -> None:
        self.unary()
        while self.peek() in _BINARY:
            self.take()
            self.unary()

    def unary(self) -> None:
        token = self.take()
        if token in ("-", "!", "not"):
            self.unary()
        elif token == "(":
            self.expression()
            if self.take() != ")":
                raise YarnError(self.line_no, "`(` without `)`")
        elif token.startswith(("$", '"')) or token[0].isdigit() or token in _KEYWORDS:
            pass
        elif NODE_NAME.fullmatch(token) and token not in _WORD_OPERATORS:
            if self.peek() != "(":  # FUNC_ID '(' expression? (',' expression)* ')'
                raise YarnError(self.line_no, f"{token!r} is not a value (a function needs `(`)")
            self.take()
            if self.peek() != ")":
                self.expression()
                while self.peek() == ",":
                    self.take()
                    self.expression()
            if self.take() != ")":
                raise YarnError(self.line_no, "a function call without `)`")
        else:
            raise YarnError(self.line_no, f"{token!r} is not a value")


def _hashtags(row: str, pos: int, line_no: int) -> list[str]:
    return _tail(row, pos, line_no, allow_commands=False)

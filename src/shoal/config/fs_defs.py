"""Parser for Cray-style `fs_defs` files.

An fs_defs file is a shell fragment of assignments, so administrators keep writing what they
wrote for Cray's lustre_control:

    fs_name="scratch"
    NID_MAP="nid00060=127.0.0.60 nid00061=127.0.0.61"
    MGSDEV="nid00060:mgt nid00061:mgt"        # node:device pairs, primary first
    MDSDEV[0]="nid00060:mdt0 nid00061:mdt0"   # unindexed MDSDEV means index 0
    OSTDEV[0]="nid00061:ost0 nid00060:ost0"
    AUTO_FAILOVER=yes

We accept the shell syntax such files use in practice (single and double quotes, backslash
escapes and continuations, quoted values spanning lines, `#` comments at a word start,
`export`, `$NAME` / `${NAME}` expansion of earlier assignments) and refuse the rest
(command substitution, pipes, redirections) with a reason, rather than guess. shlex is not
used because it cannot say where a token came from nor tell `a#b` (a word) from `a #b` (a
comment), and every error here must carry `file:line`.

Any other assignment is kept verbatim in `FileSystemDef.settings` (e.g. STRIPE_SIZE), keyed
`NAME` or `NAME[index]`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shoal.config.model import (
    FileSystemDef,
    Finding,
    TargetDef,
    Where,
    sort_targets,
    target_name,
    validate_fs,
)
from shoal.errors import ConfigError

_ASSIGN_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>[A-Za-z0-9_]+)\])?=")
_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_RE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_OPERATORS = set(";|&<>()")
_DQ_ESCAPABLE = set('$`"\\')

_TRUE = {"yes", "y", "true", "on", "1"}
_FALSE = {"no", "n", "false", "off", "0"}

# Variables with a meaning; everything else becomes a setting.
_DEVICE_VARS = {"MGSDEV": "MGT", "MDSDEV": "MDT", "OSTDEV": "OST"}
_SCALARS = ("fs_name", "NID_MAP", "AUTO_FAILOVER")


class _LineError(Exception):
    """A problem with the logical line being read; becomes a Finding at its line."""


class _NeedMore(Exception):
    """The logical line continues on the next physical line (open quote or trailing \\)."""


@dataclass(frozen=True, slots=True)
class _Word:
    text: str
    literal_prefix: str  # leading characters that came from unquoted, unescaped source


@dataclass(frozen=True, slots=True)
class _Assignment:
    name: str
    index: str | None  # as written between the brackets
    value: str
    line: int


def parse_fs_defs(path: str | Path) -> tuple[FileSystemDef, list[str]]:
    """Parse an fs_defs file: (config, warnings). Raises ConfigError listing every error."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}:0: cannot read: {exc.strerror or exc}") from exc
    lines: list[str] = []
    bad: list[Finding] = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append(Finding(source, number, "not valid UTF-8"))
            lines.append("")
    if bad:
        raise ConfigError("\n".join(map(str, bad)))
    return parse_fs_defs_text("\n".join(lines), source)


def parse_fs_defs_text(text: str, source: str = "<fs_defs>") -> tuple[FileSystemDef, list[str]]:
    """Parse fs_defs text; `source` names it in messages. Returns (config, warnings)."""
    fs, errors, warnings = parse_fs_defs_findings(text, source)
    if errors:
        raise ConfigError(format_findings(errors))
    return fs, [str(w) for w in warnings]


def format_findings(findings: list[Finding]) -> str:
    return "\n".join(str(f) for f in sorted(findings, key=lambda f: (f.source, f.line)))


def parse_fs_defs_findings(
    text: str, source: str
) -> tuple[FileSystemDef, list[Finding], list[Finding]]:
    """Parse without raising: (config as far as it goes, errors, warnings)."""
    errors: list[Finding] = []
    broken = _Broken()
    assignments = _read_assignments(text, source, errors, broken)
    fs, where = _build(assignments, source, errors, broken)
    more_errors, warnings = validate_fs(fs, where)
    errors.extend(f for f in more_errors if not broken.explains(f))
    return fs, errors, warnings


@dataclass(slots=True)
class _Broken:
    """What already failed with an error of its own, so its consequences ("missing
    MGSDEV" after a malformed MGSDEV line, "unknown node" after a malformed NID_MAP entry)
    are not reported a second time as if they were separate mistakes."""

    names: set[str] = field(default_factory=set)  # variables whose assignment failed
    nodes: set[str] = field(default_factory=set)  # nodes named by malformed NID_MAP entries

    def explains(self, f: Finding) -> bool:
        reason = f.reason
        for name in self.names - {""}:
            if reason.startswith(f"missing {name}"):
                return True
        if reason.startswith("unknown node "):
            node = reason.split()[2]
            return "NID_MAP" in self.names or node in self.nodes
        return False


# -- lexing -------------------------------------------------------------------------------


def _read_assignments(
    text: str, source: str, errors: list[Finding], broken: _Broken
) -> list[_Assignment]:
    physical = text.split("\n")
    variables: dict[str, str] = {}
    out: list[_Assignment] = []
    i = 0
    while i < len(physical):
        start = i
        logical = physical[i]
        i += 1
        while True:
            try:
                words = _split_words(logical, variables)
                break
            except _NeedMore:
                if i >= len(physical):
                    words = []
                    errors.append(
                        Finding(
                            source,
                            start + 1,
                            "malformed line: unterminated quote or "
                            "trailing backslash at end of file",
                        )
                    )
                    broken.names.add(_name_at(physical[start]))
                    i = start + 1  # resume on the next line to find any further mistakes
                    break
                logical += "\n" + physical[i]
                i += 1
            except _LineError as exc:
                words = []
                errors.append(Finding(source, start + 1, str(exc)))
                broken.names.add(_name_at(logical))
                break
        if words and words[0].literal_prefix == words[0].text == "export":
            words = words[1:]
        for word in words:
            m = _ASSIGN_RE.match(word.literal_prefix)
            if m is None:
                errors.append(
                    Finding(
                        source, start + 1, f"malformed line: expected NAME=value, got {word.text!r}"
                    )
                )
                break
            value = word.text[m.end() :]
            out.append(_Assignment(m["name"], m["index"], value, start + 1))
            if m["index"] is None:
                variables[m["name"]] = value
    return out


def _name_at(line: str) -> str:
    """The variable a line was assigning, as far as can be told from its start."""
    m = _ASSIGN_RE.match(line.strip().removeprefix("export").lstrip())
    return m["name"] if m is not None else ""


def _split_words(line: str, variables: Mapping[str, str]) -> list[_Word]:
    """Split one logical line into shell words, expanding $NAME from `variables`."""
    words: list[_Word] = []
    text: list[str] | None = None  # the word being built, None between words
    prefix: list[str] = []
    literal = True  # still inside the word's unquoted, unescaped prefix
    i, n = 0, len(line)

    def expand(j: int) -> tuple[str, int]:
        # line[j] == "$"; returns (expansion, index after it)
        if j + 1 < n and line[j + 1] == "(":
            raise _LineError("command substitution $(...) is not supported")
        if j + 1 < n and line[j + 1] == "{":
            end = line.find("}", j + 2)
            if end < 0:
                raise _LineError("malformed line: unterminated ${")
            name = line[j + 2 : end]
            nxt = end + 1
        else:
            m = _VAR_RE.match(line, j + 1)
            if m is None:
                return "$", j + 1  # a lone dollar is literal, as in the shell
            name, nxt = m.group(), m.end()
        if not _VAR_RE.fullmatch(name):
            raise _LineError(f"unsupported expansion ${{{name}}}")
        if name not in variables:
            raise _LineError(f"undefined variable ${name} (only earlier assignments expand)")
        return variables[name], nxt

    while i < n:
        c = line[i]
        if text is None:
            if c in " \t\r\n":
                i += 1
                continue
            if c == "#":
                # a comment starts only at a word boundary and ends at the newline
                end = line.find("\n", i)
                i = n if end < 0 else end
                continue
            text, prefix, literal = [], [], True
        if c in " \t\r\n":
            words.append(_Word("".join(text), "".join(prefix)))
            text = None
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise _NeedMore
            if line[i + 1] != "\n":  # backslash-newline is a line continuation
                text.append(line[i + 1])
            literal = False
            i += 2
        elif c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise _NeedMore
            text.append(line[i + 1 : end])
            literal = False
            i = end + 1
        elif c == '"':
            literal = False
            i += 1
            while True:
                if i >= n:
                    raise _NeedMore
                d = line[i]
                if d == '"':
                    i += 1
                    break
                if (
                    d == "\\"
                    and i + 1 < n
                    and (line[i + 1] in _DQ_ESCAPABLE or line[i + 1] == "\n")
                ):
                    if line[i + 1] != "\n":
                        text.append(line[i + 1])
                    i += 2
                elif d == "$":
                    value, i = expand(i)
                    text.append(value)
                elif d == "`":
                    raise _LineError("command substitution `...` is not supported")
                else:
                    text.append(d)
                    i += 1
        elif c == "$":
            value, i = expand(i)
            text.append(value)
            literal = False
        elif c == "`":
            raise _LineError("command substitution `...` is not supported")
        elif c in _OPERATORS:
            raise _LineError(f"malformed line: shell operator {c!r} is not supported")
        else:
            text.append(c)
            if literal:
                prefix.append(c)
            i += 1
    if text is not None:
        words.append(_Word("".join(text), "".join(prefix)))
    return words


# -- building the model -------------------------------------------------------------------


def _parse_index(raw: str | None) -> int:
    if raw is None:
        return 0
    s = raw.strip()
    try:
        return int(s, 16) if s.lower().startswith("0x") else int(s, 10)
    except ValueError:
        raise _LineError(f"bad array index [{raw}]: expected a number") from None


def _parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise _LineError(f"{name}={value!r}: expected yes or no")


def _parse_devices(name: str, value: str) -> list[tuple[str, str]]:
    entries = value.split()
    if not entries:
        raise _LineError(f'{name} is empty: expected "node:device [node:device ...]"')
    out: list[tuple[str, str]] = []
    for entry in entries:
        node, sep, device = entry.partition(":")
        if not sep or not node or not device:
            raise _LineError(f"{name}: malformed entry {entry!r}: expected node:device")
        out.append((node, device))
    return out


def _parse_nid_map(value: str, broken: _Broken) -> tuple[list[tuple[str, str]], list[str]]:
    """(good entries, reasons for the bad ones); every entry is checked."""
    out: list[tuple[str, str]] = []
    bad: list[str] = []
    for entry in value.split():
        node, sep, address = entry.partition("=")
        if not sep or not node or not address:
            bad.append(f"NID_MAP: malformed entry {entry!r}: expected node=address")
            broken.nodes.add(node)
            continue
        out.append((node, address))
    return out, bad


def _build(
    assignments: list[_Assignment], source: str, errors: list[Finding], broken: _Broken
) -> tuple[FileSystemDef, Where]:
    where = Where(source)
    scalars: dict[str, _Assignment] = {}
    settings: dict[str, str] = {}
    setting_lines: dict[str, int] = {}
    # (kind, index) -> (devices, line)
    devices: dict[tuple[str, int], tuple[list[tuple[str, str]], int]] = {}
    nids: dict[str, str] = {}
    auto_failover = False

    for a in assignments:
        try:
            if a.name in _SCALARS:
                if a.index is not None:
                    raise _LineError(f"{a.name} is not an array")
                if a.name in scalars:
                    raise _LineError(
                        f"{a.name} assigned twice (first at line {scalars[a.name].line})"
                    )
                scalars[a.name] = a
                if a.name == "NID_MAP":
                    pairs, bad = _parse_nid_map(a.value, broken)
                    errors.extend(Finding(source, a.line, reason) for reason in bad)
                    for node, address in pairs:
                        if node in nids:
                            errors.append(
                                Finding(source, a.line, f"NID_MAP: node {node} listed twice")
                            )
                        nids[node] = address
                        where.nid_locs[node] = (source, a.line)
                elif a.name == "AUTO_FAILOVER":
                    auto_failover = _parse_bool(a.name, a.value)
            elif a.name in _DEVICE_VARS:
                kind = _DEVICE_VARS[a.name]
                index = _parse_index(a.index)
                if kind == "MGT" and index != 0:
                    raise _LineError("MGSDEV takes no index: a file system has one MGS")
                label = a.name if kind == "MGT" else f"{a.name}[{index}]"
                if (kind, index) in devices:
                    first = devices[(kind, index)][1]
                    raise _LineError(
                        f"duplicate index: {label} already defined at line {first}"
                        if kind != "MGT"
                        else f"MGSDEV assigned twice (first at line {first})"
                    )
                devices[(kind, index)] = (_parse_devices(label, a.value), a.line)
            else:
                key = a.name if a.index is None else f"{a.name}[{a.index}]"
                if key in settings:
                    raise _LineError(f"{key} assigned twice (first at line {setting_lines[key]})")
                settings[key] = a.value
                setting_lines[key] = a.line
                where.setting_locs[key] = (source, a.line)
        except _LineError as exc:
            errors.append(Finding(source, a.line, str(exc)))
            broken.names.add(a.name)

    fs_name = scalars["fs_name"].value if "fs_name" in scalars else ""
    if "fs_name" in scalars:
        where.fs_loc = (source, scalars["fs_name"].line)
    if "NID_MAP" not in scalars:
        if "NID_MAP" not in broken.names:
            errors.append(Finding(source, 0, "missing NID_MAP: no node addresses defined"))
        broken.names.add("NID_MAP")  # every node is unknown now: saying so adds nothing
    targets: list[TargetDef] = []
    for (kind, index), (devs, line) in devices.items():
        name = target_name(fs_name, kind, index)
        targets.append(
            TargetDef(name=name, kind=kind, index=index, fs=fs_name, devices=tuple(devs))
        )
        where.target_locs[name] = (source, line)
        for node, _ in devs:
            where.device_locs.setdefault((name, node), (source, line))
    fs = FileSystemDef(
        name=fs_name,
        nids=nids,
        targets=sort_targets(targets),
        auto_failover=auto_failover,
        settings=settings,
        source=source,
    )
    return fs, where


# -- writing ------------------------------------------------------------------------------


def _quote(value: str) -> str:
    # Double quotes keep the file looking like the ones administrators write by hand; escape
    # exactly what the shell would otherwise interpret inside them.
    return '"' + "".join("\\" + c if c in _DQ_ESCAPABLE else c for c in value) + '"'


def _word(value: str) -> str:
    # bare when nothing in it means anything to the shell: easier on the eye in a CSV cell
    return value if _BARE_RE.fullmatch(value) else _quote(value)


def render_settings(settings: Mapping[str, str]) -> str:
    """Settings as one line of shell assignments (the CSV `settings` column)."""
    return " ".join(f"{key}={_word(value)}" for key, value in settings.items())


def parse_settings(text: str) -> dict[str, str]:
    """The inverse of render_settings; raises ValueError with a reason."""
    try:
        words = _split_words(text, {})
    except _NeedMore:
        raise ValueError("unterminated quote in settings") from None
    except _LineError as exc:
        raise ValueError(str(exc)) from None
    out: dict[str, str] = {}
    for word in words:
        m = _ASSIGN_RE.match(word.literal_prefix)
        if m is None:
            raise ValueError(f"expected NAME=value, got {word.text!r}")
        key = m["name"] if m["index"] is None else f"{m['name']}[{m['index']}]"
        if key in out:
            raise ValueError(f"{key} assigned twice")
        out[key] = word.text[m.end() :]
    return out


def render_fs_defs(fs: FileSystemDef) -> str:
    """An fs_defs file that parses back to `fs` (used by `shoal config show --fs-defs`)."""
    out = [f"fs_name={_quote(fs.name)}"]
    out.append("NID_MAP=" + _quote(" ".join(f"{n}={a}" for n, a in fs.nids.items())))
    for t in fs.targets:
        pairs = _quote(" ".join(f"{n}:{d}" for n, d in t.devices))
        var = {"MGT": "MGSDEV", "MDT": "MDSDEV", "OST": "OSTDEV"}[t.kind]
        out.append(f"{var}={pairs}" if t.kind == "MGT" else f"{var}[{t.index}]={pairs}")
    out.append(f"AUTO_FAILOVER={'yes' if fs.auto_failover else 'no'}")
    for key, value in fs.settings.items():
        out.append(f"{key}={_quote(value)}")
    return "\n".join(out) + "\n"

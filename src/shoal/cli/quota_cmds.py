"""`shoal lfs setquota|quota|quotacheck`: quotas set and shown as Lustre's lfs does (client/
quota.py does the work; `lfs project` is in lfs_cmds.py; docs/quotas.md is the guide)."""

from __future__ import annotations

import grp
import math
import os
import pwd
import re
import sys
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from shoal.cli.clientctx import with_client
from shoal.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    console,
    dir_option,
    err_console,
    handle_errors,
    json_option,
    print_json,
)
from shoal.client import quota
from shoal.client.client import Client
from shoal.errors import InvalidArgument, NotFound
from shoal.protocol import quota as q

SUFFIXES = "kmgtpe"  # powers of 1024, as lfs takes them
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
INACCURATE = ('Some errors happened when getting quota info. Some devices may be not working '
              'or deactivated. The data in "[]" is inaccurate.')


# -- parsing what the administrator typed ------------------------------------------------------
def parse_limit(text: str, what: str, *, inodes: bool) -> int:
    """A limit as lfs setquota takes it: blocks in KiB (`1024`, `10M`, `1.5g`), inodes as a
    count (`5000`, `2k` = 2048); a suffix k/m/g/t/p/e multiplies by powers of 1024."""
    t = text.strip().lower()
    if t.startswith("-"):
        raise InvalidArgument(f"{what}: a limit cannot be negative: {text!r}")
    power = 0
    if t.endswith(("kb", "mb", "gb", "tb", "pb", "eb")) and not inodes:
        t = t[:-1]
    if t and t[-1] in SUFFIXES:
        power = SUFFIXES.index(t[-1]) + (1 if inodes else 0)
        t = t[:-1]
    if not _NUMBER.fullmatch(t):
        unit = "a count of inodes" if inodes else "KiB, or a size like 10M or 1g"
        raise InvalidArgument(f"{what}: not a limit: {text!r} ({unit})")
    value = Decimal(t) * 1024 ** power
    if inodes and value != int(value):
        raise InvalidArgument(f"{what}: not a whole number of inodes: {text!r}")
    out = math.ceil(value)  # blocks: to the KiB above
    if out > q.MAX_LIMIT:
        raise InvalidArgument(f"{what}: {text!r} is past the largest limit ({q.MAX_LIMIT})")
    return out


_GRACE_PART = re.compile(r"(\d+)([wdhms]?)")
_GRACE_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}


def parse_grace(text: str, what: str) -> int:
    """Seconds, or lfs's form `1w2d3h4m5s` (a bare number last counts seconds)."""
    t = text.strip().lower()
    parts = _GRACE_PART.findall(t)
    if not t or "".join(n + u for n, u in parts) != t or any(not u for _, u in parts[:-1]):
        raise InvalidArgument(f"{what}: not a time: {text!r} (seconds, or like 1w2d3h4m5s)")
    secs = sum(int(n) * _GRACE_UNITS[u] for n, u in parts)
    if not 0 < secs < 1 << 40:
        raise InvalidArgument(f"{what}: a grace period is more than 0 seconds, not {text!r}")
    return secs


def sec2str(secs: float) -> str:
    """A period as lfs prints it: `1w`, `2d3h`, `0s`."""
    left, out = int(secs), ""
    for mult, unit in ((604800, "w"), (86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        n, left = divmod(left, mult)
        if n:
            out += f"{n}{unit}"
    return out or "0s"


def resolve_id(qtype: str, text: str) -> int:
    """A user or group by name or number (a project by number)."""
    t = text.strip()
    if t.isascii() and t.isdigit():
        qid = int(t)
    elif t.startswith("-") and t[1:].isascii() and t[1:].isdigit():
        raise InvalidArgument(f"an id cannot be negative: {text!r}")
    elif qtype == "p":
        raise InvalidArgument(f"a project id is a number, not {text!r}")
    else:
        try:
            qid = pwd.getpwnam(t).pw_uid if qtype == "u" else grp.getgrnam(t).gr_gid
        except (KeyError, ValueError):
            raise NotFound(f"no such {'user' if qtype == 'u' else 'group'}: {text!r}") from None
    if qid >= 1 << 32:
        raise InvalidArgument(f"an id is a 32-bit number, not {text!r}")
    return qid


def which(user: str | None, group: str | None, proj: str | None) -> tuple[str, str] | None:
    """(qtype, what was typed after -u, -g or -p: "" for none), or None when none was given."""
    given = [(t, v) for t, v in (("u", user), ("g", group), ("p", proj)) if v is not None]
    if len(given) > 1:
        raise InvalidArgument("one of -u, -g and -p at a time")
    return given[0] if given else None


class IdCommand(click.Command):
    """-u, -g and -p take their id optionally (`setquota -t -u`), so that click would take a
    negative id after one for an unknown option: it is refused as what it is."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for flag, a in zip(args, args[1:], strict=False):
            if flag in _ID_FLAGS and re.fullmatch(r"-[0-9]+", a):
                err_console.print(f"shoal: EINVAL: an id cannot be negative: {flag} {a}",
                                  highlight=False)
                sys.exit(EXIT_USAGE)
        return super().parse_args(ctx, args)


_ID_FLAGS = ("-u", "-g", "-p", "--user", "--group", "--projid")


def _type_options(fn: Any) -> Any:
    """-u, -g, -p: each with an id, or none after -t (lfs setquota -t -u)."""
    for short, long, dest, meta, what in (
            ("-p", "--projid", "proj", "PROJID", "a project (its id)"),
            ("-g", "--group", "group", "GROUP", "a group (name or gid)"),
            ("-u", "--user", "user", "USER", "a user (name or uid)")):
        fn = click.option(short, long, dest, is_flag=False, flag_value="", default=None,
                          metavar=meta, help=f"Whose quota: {what}.")(fn)
    return fn


def _type_only(kind: tuple[str, str] | None, path: str | None) -> tuple[str, str | None]:
    """-t takes -u, -g or -p alone: a value after it is the path lfs takes (unused)."""
    if kind is None:
        raise InvalidArgument("say which grace periods: -t with -u, -g or -p")
    if kind[1] and path is not None:
        raise InvalidArgument("-t takes -u, -g or -p without an id")
    return kind[0], path or kind[1] or None


async def _graces(c: Client, qtype: str) -> tuple[float, float]:
    got = (await c.mdt.call("quota_get", {"qtype": qtype, "id": 0})).data
    return got["bgrace"], got["igrace"]


# -- setquota ------------------------------------------------------------------------------------
@click.command(cls=IdCommand)
@dir_option
@_type_options
@click.option("-t", "--times", "times", is_flag=True,
              help="Set a type's grace periods (-t -u|-g|-p --block-grace G --inode-grace G).")
@click.option("-b", "--block-softlimit", "bsoft", metavar="SIZE",
              help="KiB, or with a suffix: 10M, 1g (with -t: the block grace period).")
@click.option("-B", "--block-hardlimit", "bhard", metavar="SIZE")
@click.option("-i", "--inode-softlimit", "isoft", metavar="N",
              help="Inodes (k, m: times 1024; with -t: the inode grace period).")
@click.option("-I", "--inode-hardlimit", "ihard", metavar="N")
@click.option("--block-grace", "bgrace", metavar="G", help="Seconds, or like 1w2d3h4m5s.")
@click.option("--inode-grace", "igrace", metavar="G")
@click.argument("path", required=False)
@handle_errors
def setquota(cluster_dir: Path, user: str | None, group: str | None, proj: str | None,
             times: bool, bsoft: str | None, bhard: str | None, isoft: str | None,
             ihard: str | None, bgrace: str | None, igrace: str | None,
             path: str | None) -> None:
    """Set an id's limits (0: none), or with -t a quota type's grace periods. PATH (a mount
    point, for lfs's sake) is not used: the limits hold on the whole file system."""
    kind = which(user, group, proj)
    if times or bgrace is not None or igrace is not None:
        qtype, _ = _type_only(kind, path)
        if bhard is not None or ihard is not None:
            raise InvalidArgument("-t sets grace periods: -B and -I are limits")
        bg, ig = bgrace if bgrace is not None else bsoft, igrace if igrace is not None else isoft
        if bg is None and ig is None:
            raise InvalidArgument("-t: give --block-grace and/or --inode-grace")
        b = parse_grace(bg, "block grace") if bg is not None else None
        i = parse_grace(ig, "inode grace") if ig is not None else None

        async def set_times(c: Client) -> None:
            old_b, old_i = await _graces(c, qtype)
            await quota.set_grace(c, qtype, b if b is not None else int(old_b),
                                  i if i is not None else int(old_i))

        with_client(cluster_dir, set_times)
        return
    if kind is None:
        raise InvalidArgument("say whose limits: -u USER, -g GROUP or -p PROJID")
    if not kind[1]:
        raise InvalidArgument(f"-{kind[0]} needs an id (or a name)")
    qtype, qid = kind[0], resolve_id(*kind)
    limits = {k: parse_limit(v, flag, inodes=k[0] == "i") for k, v, flag in (
        ("bsoft", bsoft, "-b"), ("bhard", bhard, "-B"), ("isoft", isoft, "-i"),
        ("ihard", ihard, "-I")) if v is not None}
    if not limits:
        raise InvalidArgument("nothing to set: give -b, -B, -i or -I (0: no limit)")
    for res, name in (("b", "block"), ("i", "inode")):
        soft, hard = limits.get(f"{res}soft"), limits.get(f"{res}hard")
        if soft and hard and soft > hard:
            raise InvalidArgument(f"the {name} soft limit ({soft}) is above the hard one "
                                  f"({hard})")
    missed = with_client(cluster_dir, lambda c: quota.set_quota(c, qtype, qid, **limits))
    if missed:
        err_console.print(f"shoal: warning: not told yet: {', '.join(missed)}; they learn the "
                          "new limits from the quota master within a few seconds",
                          highlight=False)


# -- quota -----------------------------------------------------------------------------------------
HEADER = (f"{'Filesystem':>15}{'kbytes':>8} {'quota':>7}{'limit':>8}{'grace':>8}"
          f"{'files':>8} {'quota':>7}{'limit':>8}{'grace':>8}")


def _fs(name: str) -> str:
    return f"{name}\n{'':15}" if len(name) > 15 else f"{name:>15}"


def _cols(used: str, star: bool, soft: str, hard: str, grace: str) -> str:
    return f" {used:>7}{'*' if star else ' '} {soft:>6} {hard:>7} {grace:>7}"


def format_report(r: quota.QuotaReport, name: str, fsname: str, verbose: bool) -> list[str]:
    """Lines as lfs quota prints them: the title, the header, the file system's row, and with
    `verbose` one row per target and the total of what the master granted."""
    lim, tn = r.limits, q.QTYPE_NAMES[r.qtype]
    ost_gone = any("-OST" in t for t in r.unreachable)
    mdt_gone = any("-MDT" in t for t in r.unreachable)
    kb = f"[{r.kbytes}]" if ost_gone else str(r.kbytes)
    ino = f"[{r.inodes}]" if mdt_gone else str(r.inodes)
    lines = [f"Disk quotas for {tn} {name} ({tn[0]}id {r.id}):", HEADER,
             _fs(f"/{fsname}") + _cols(kb, r.over("b"), str(lim.bsoft), str(lim.bhard),
                                       r.grace("b"))
             + _cols(ino, r.over("i"), str(lim.isoft), str(lim.ihard), r.grace("i"))]
    if verbose:
        usage = {t.target: t for t in r.targets}
        granted = 0
        for target in sorted([*usage, *r.unreachable]):
            t = usage.get(target)
            if t is None:
                lines.append(_fs(f"{target}_UUID") + " (did not answer)")
                continue
            g = max(t.granted, 0)
            row = _cols(str(t.kbytes), bool(g) and t.kbytes >= g, "-", str(g), "-")
            if "-OST" in target:
                granted += g
                row += f" {'-':>7} {'-':>7} {'-':>7} {'-':>7}"
            else:
                row += _cols(str(t.inodes), False, "-", "0", "-")
            lines.append(_fs(f"{target}_UUID") + row)
        lines.append(f"Total allocated inode limit: 0, total allocated block limit: {granted}")
    if r.unreachable:
        lines.append(INACCURATE)
    return "\n".join(lines).split("\n")  # a long name's row takes two lines


def report_json(r: quota.QuotaReport, name: str) -> dict[str, Any]:
    return {**asdict(r), "type": q.QTYPE_NAMES[r.qtype], "name": name, "kbytes": r.kbytes,
            "inodes": r.inodes, "over": {"blocks": r.over("b"), "inodes": r.over("i")},
            "grace_left": {"blocks": r.grace("b"), "inodes": r.grace("i")}}


@click.command("quota", cls=IdCommand)
@dir_option
@click.option("-v", "--verbose", "verbose", is_flag=True, help="Each target's usage too.")
@_type_options
@click.option("-t", "--times", "times", is_flag=True, help="The grace periods of a type.")
@json_option
@click.argument("path", required=False)
@handle_errors
def quota_cmd(cluster_dir: Path, verbose: bool, user: str | None, group: str | None,
              proj: str | None, times: bool, as_json: bool, path: str | None) -> None:
    """An id's usage and limits (without -u, -g or -p: your user's and your group's)."""
    kind = which(user, group, proj)
    if times:
        qtype, _ = _type_only(kind, path)

        async def show_times(c: Client) -> None:
            b, i = await _graces(c, qtype)
            if as_json:
                print_json({"type": q.QTYPE_NAMES[qtype], "bgrace": b, "igrace": i})
            else:
                click.echo(f"Block grace time: {sec2str(b)}; Inode grace time: {sec2str(i)}")

        with_client(cluster_dir, show_times)
        return
    if kind is None:
        uid, gid = os.getuid(), os.getgid()
        wanted = [("u", uid, _name(pwd.getpwuid, uid)), ("g", gid, _name(grp.getgrgid, gid))]
    elif not kind[1]:
        raise InvalidArgument(f"-{kind[0]} needs an id (or a name)")
    else:
        wanted = [(kind[0], resolve_id(*kind), kind[1].strip())]

    async def body(c: Client) -> tuple[str, list[quota.QuotaReport]]:
        return c.fs, [await quota.get_quota(c, t, i) for t, i, _ in wanted]

    fsname, reports = with_client(cluster_dir, body)
    if as_json:
        out = [report_json(r, n) for r, (_, _, n) in zip(reports, wanted, strict=True)]
        print_json(out[0] if kind is not None else out)
    else:
        for r, (_, _, n) in zip(reports, wanted, strict=True):
            click.echo("\n".join(format_report(r, n, fsname, verbose)))
    if any(r.unreachable for r in reports):
        sys.exit(EXIT_FAILED)


def _name(lookup: Any, qid: int) -> str:
    try:
        return str(lookup(qid)[0])
    except KeyError:
        return str(qid)


# -- quotacheck ------------------------------------------------------------------------------------
@click.command()
@dir_option
@json_option
@handle_errors
def quotacheck(cluster_dir: Path, as_json: bool) -> None:
    """Recount every target's usage from what it holds and show where the counts drift
    (exit 1 if any does)."""
    drift = with_client(cluster_dir, quota.check)
    bad = {t: rows for t, rows in drift.items() if rows}
    if as_json:
        print_json(drift)
    elif not bad:
        click.echo(f"no drift on {len(drift)} targets")
    else:
        table = Table(title="Quota drift: usage counted vs recounted")
        for col in ("Target", "Type", "ID", "Unit", "Counted", "Recounted", "Off by"):
            table.add_column(col, justify="left" if col in ("Target", "Type", "Unit") else "right")
        for target, rows in sorted(bad.items()):
            unit = "KiB" if "-OST" in target else "inodes"
            for t, qid, counted, recounted in rows:
                table.add_row(target, q.QTYPE_NAMES.get(t, t), str(qid), unit, str(counted),
                              str(recounted), f"{counted - recounted:+d}")
        console.print(table)
    if bad:
        sys.exit(EXIT_FAILED)


def add_to(group: click.Group) -> None:
    """The quota commands of `shoal lfs` (and `quota_check`, quotacheck's other name)."""
    for cmd in (setquota, quota_cmd, quotacheck):
        group.add_command(cmd)
    group.add_command(click.Command("quota_check", callback=quotacheck.callback,
                                    params=quotacheck.params, help=quotacheck.help,
                                    hidden=True))


def register(cli: click.Group) -> None:
    """Nothing at the top level: these are `shoal lfs` commands (lfs_cmds.py adds them)."""

"""Every fs_defs setting Shoal reads, in one schema: name, type, unit, range, default, help.

`config generate`, `config write`, `shoal up` and `db` check settings here when they are
written, so a bad value (`LEASE_TTL=abc`) is a `file:line: reason` error then, and never a
node that dies at start-up; a misspelled name (`AUTO_FAILOVR`) is an error with a suggestion.
Node start-up reads the same schema (`value()`), so a default lives in one place.

Names that are not Shoal's are kept verbatim with a warning: Cray's fs_defs files carry many
settings for other tools, and a site's file must load as it is.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Names with a meaning of their own in fs_defs (the layout); every other is a setting.
RESERVED_NAMES = frozenset({"fs_name", "NID_MAP", "AUTO_FAILOVER", "MGSDEV", "MDSDEV",
                            "OSTDEV"})
TRUE = ("yes", "on", "true", "1")
FALSE = ("no", "off", "false", "0")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # "seconds" | "int" | "size" | "bool" | "choice" | "path" | "text"
    default: Any
    help: str
    low: float | None = None  # inclusive bounds, for numbers
    high: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""
    node_wide: bool = False  # steers a whole node: file systems sharing a node must agree
    indexed: bool = False  # NAME[node] forms allowed (FENCE[nid00062]=...)

    def parse(self, raw: Any) -> Any:
        """The typed value of `raw`; ValueError with the reason if it is not one."""
        text = str(raw).strip()
        if self.kind in ("seconds", "int", "size"):
            try:
                number: float = (_size(text) if self.kind == "size" else
                                 int(text) if self.kind == "int" else float(text))
            except ValueError:
                raise ValueError(f"{text!r} is not {self._what()}") from None
            if not math.isfinite(number):
                raise ValueError(f"{text!r} is not {self._what()}")
            if (self.low is not None and number < self.low) or \
                    (self.high is not None and number > self.high):
                raise ValueError(f"{text} is out of range ({self._range()})")
            return number
        if self.kind == "bool":
            low = text.lower()
            if low in TRUE:
                return True
            if low in FALSE:
                return False
            raise ValueError(f"{text!r} is not yes or no")
        if self.kind == "choice":
            if text.lower() not in self.choices:
                raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
            return text.lower()
        if self.kind == "path" and not text.startswith("/"):
            raise ValueError(f"{text!r} is not an absolute path")
        return text

    def _what(self) -> str:
        noun = {"int": "a whole number", "size": "a size (bytes, or 64K, 1M, 4G)"}.get(
            self.kind, "a number of seconds")
        return f"{noun} ({self._range()})" if self.low is not None or self.high is not None \
            else noun

    def _range(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        show = _human if self.kind == "size" else (lambda v: f"{v:g}")
        if self.high is None:
            return f">= {show(self.low)}{unit}"
        return f"{show(self.low)}..{show(self.high)}{unit}"


_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """Bytes, as lfs setstripe -S takes them: 1048576, 1M, 64k, 4G."""
    mult = _SUFFIX.get(text[-1:].upper(), 1)
    return int(text[:-1] if mult != 1 else text) * mult


def _human(v: float | None) -> str:
    for suffix, mult in reversed(_SUFFIX.items()):
        if v and v % mult == 0:
            return f"{int(v // mult)}{suffix}"
    return f"{v:g}"


_S = Setting
SCHEMA: dict[str, Setting] = {s.name: s for s in (
    _S("PORT", "int", 9988, "TCP port of every node of the file system", 1, 65535),
    _S("METRICS_PORT", "int", 0, "TCP port where every node serves Prometheus metrics "
       "(GET /metrics; 0: PORT + 1)", 0, 65535, node_wide=True),
    _S("IR", "bool", True, "imperative recovery: the MGS tells clients where a target "
       "moved (off: Lustre's noir, clients find it by timeouts)"),
    _S("LEASE_TTL", "seconds", 2.0, "a node's lease in the store: a dead node is noticed "
       "within it", 0.3, 60, unit="s", node_wide=True),
    _S("BOOT_GRACE", "seconds", None, "how long a starting node lets the primary take its "
       "own targets first (default 2 x LEASE_TTL)", 0, 600, unit="s", node_wide=True),
    _S("FAILBACK", "choice", "off", "move targets back to their primary when it returns",
       choices=("off", "auto"), node_wide=True),
    _S("FAILBACK_DELAY", "seconds", 30.0, "how long a returned primary must be up before an "
       "automatic failback", 0, 86400, unit="s", node_wide=True),
    _S("MMP_INTERVAL", "seconds", 0.1, "seconds between MMP block updates on a served "
       "device; a takeover watches 2.5 of them", 0.01, 10, unit="s", node_wide=True),
    _S("PING_EVICT_TIMEOUT", "seconds", 150.0, "evict a client silent this long (0: never)",
       0, 86400, unit="s", node_wide=True),
    _S("LDLM_TIMEOUT", "seconds", 10.0, "how long a client has to give back a lock the "
       "server calls back (for a change to what it caches) before it is evicted", 0.1, 600,
       unit="s"),
    _S("RECOVERY_SOFT", "seconds", 10.0, "recovery window, extended while clients replay",
       0.1, 3600, unit="s"),
    _S("RECOVERY_HARD", "seconds", 30.0, "recovery window's hard limit", 0.1, 3600,
       unit="s"),
    _S("COMMIT_INTERVAL", "seconds", 1.0, "seconds between journal commits on a target",
       0.001, 60, unit="s"),
    _S("STRIPE_SIZE", "size", 1 << 20, "default stripe size", 4096, 1 << 32),
    _S("STRIPE_COUNT", "int", -1, "default stripe count (-1: every OST)", -1, 65535),
    _S("RPC_TLS", "bool", False, "TLS on every RPC connection, privacy on top of the HMAC "
       "(needs TLS_CA on every host, TLS_CERT and TLS_KEY on servers)", node_wide=True),
    _S("TLS_CA", "path", None, "the CA certificate that signed the nodes' certificates "
       "(a path, the same on every host)", node_wide=True),
    _S("TLS_CERT", "path", None, "a server's certificate, valid for its address (a path)",
       node_wide=True),
    _S("TLS_KEY", "path", None, "a server's private key (a path, mode 0600)", node_wide=True),
    _S("MAX_CONNECTIONS", "int", 0, "connections a node accepts in all (0: its descriptor "
       "limit less 512, kept for its own files)", 0, 1 << 20, node_wide=True),
    _S("MAX_PEER_CONNECTIONS", "int", 1024, "connections a node accepts from one address",
       1, 1 << 20, node_wide=True),
    _S("MAX_STRANGERS", "int", 256, "connections waiting for their hello (the oldest is "
       "closed for a new one); each holds 8 KiB", 1, 65536, node_wide=True),
    _S("HELLO_TIMEOUT", "seconds", 5.0, "how long a new connection may take to say hello "
       "(its TLS handshake included)", 0.1, 300, unit="s", node_wide=True),
    _S("FENCE_METHOD", "text", None, "how nodes are fenced: local, manual, "
       "fence-agent:<agent> key=value ... (shoal.fence)"),
    _S("FENCE", "text", None, "a node's own fence method: FENCE[node]=...", indexed=True),
    _S("FENCE_TIMEOUT", "text", None, "seconds per fence attempt (manual: none waits for "
       "ever); FENCE_TIMEOUT[node] for one node", indexed=True),
    _S("ALERT_COMMAND", "text", None, "a command every alert runs (a failover, a failed "
       "fence, a target left DOWN, serving on the partners' word ...), the event as JSON "
       "on its standard input", node_wide=True),
    _S("ALERT_WEBHOOK", "text", None, "a URL every alert is POSTed to as JSON",
       node_wide=True),
    _S("ALERT_SYSLOG", "bool", False, "every alert to the local syslog too (daemon.warning)",
       node_wide=True),
)}


def split_key(key: str) -> tuple[str, str | None]:
    name, sep, rest = key.partition("[")
    return (name, rest.rstrip("]")) if sep else (key, None)


def check(key: str, value: Any) -> tuple[str | None, str | None]:
    """(error, warning) for one setting as written: a bad value or a misspelled name is an
    error; a name Shoal does not know is a warning (kept, unused)."""
    name, index = split_key(key)
    spec = SCHEMA.get(name)
    if spec is None:
        known = [*SCHEMA, *RESERVED_NAMES]
        # a typo of a known name, not a name of the site's own that extends one (a shell
        # helper such as NID_MAP2, used in other assignments)
        near = [k for k in difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
                if k.upper() not in name.upper()]
        if near or name.upper() in known:
            guess = near[0] if near else name.upper()
            return f"unknown setting {name}: did you mean {guess}?", None
        return None, f"{name} is not a Shoal setting: kept, unused"
    if index is not None and not spec.indexed:
        return f"{name} takes no [index]", None
    if spec.kind == "text":
        return None, None  # their own module checks them (shoal.fence.validate_settings)
    try:
        spec.parse(value)
    except ValueError as exc:
        return f"{key}={value}: {exc}", None
    return None, None


def check_together(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, reason) for settings that are each valid but do not go together."""
    out = []
    try:
        tls = SCHEMA["RPC_TLS"].parse(settings.get("RPC_TLS") or "no")
    except ValueError:
        tls = False  # reported on its own line
    if tls:
        out += [("RPC_TLS", f"RPC_TLS=yes needs {name} (a path)")
                for name in ("TLS_CA", "TLS_CERT", "TLS_KEY") if not settings.get(name)]
    return out


def value(settings: Mapping[str, Any], name: str) -> Any:
    """The typed value of setting `name` (its default when unset). Settings reach nodes
    checked, so a bad one here is a bug, not a user's mistake: ValueError names it."""
    spec = SCHEMA[name]
    raw = settings.get(name)
    if raw is None or raw == "":
        return spec.default
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name}: {exc}") from None


# a fence agent's option (or any key=value) that holds a secret: password=, passwd=,
# password_script=, secret=, token=, community= (SNMP)
_SECRET_RE = re.compile(r"(?i)\b([\w-]*(?:passw|secret|token|community)[\w-]*)="
                        r"(\"[^\"]*\"|'[^']*'|[^\s\"',]+)")


def mask_secrets(text: str) -> str:
    """`text` with every secret option's value shown as ***: what `config show`, the
    `config write` diff and errors print (an administrator asks with --show-secrets)."""
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}=***", text)


def describe() -> list[dict[str, Any]]:
    """The schema as rows (`shoal config settings`)."""
    out = []
    for s in SCHEMA.values():
        allowed = ", ".join(s.choices) if s.choices else (
            s._range() if s.low is not None else ("yes|no" if s.kind == "bool" else ""))
        out.append({"name": s.name + ("[node]" if s.indexed else ""), "type": s.kind,
                    "default": s.default, "allowed": allowed, "node_wide": s.node_wide,
                    "help": s.help})
    return out

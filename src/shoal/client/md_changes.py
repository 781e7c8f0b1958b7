"""What a change to the namespace names, from its request's arguments alone: the inodes and
(directory, name)s early lock cancel looks at (client/md_locks.py `cancels_for`), and the
names the kernel sets from the change's own reply (`own_names`)."""

from __future__ import annotations

from typing import Any

ENTRY_OPS = frozenset({"mkdir", "create", "symlink", "mknod", "link", "unlink", "rmdir",
                       "rename"})  # they change the entries of the directories they name
UNNAMING_OPS = frozenset({"unlink", "rmdir", "rename"})  # their names' inodes lose a name
# Changes that surely touch the inodes their arguments name: this client gives its own
# locks on them back with the request (early lock cancel), instead of waiting for the
# server to call them back. Not open or close: most of them change nothing cached.
ELC_OPS = ENTRY_OPS | {"setattr", "setxattr", "removexattr", "setstripe"}
INODE_ARGS = ("ino", "parent", "src_parent", "dst_parent")
NAME_ARGS = (("parent", "name"), ("src_parent", "src_name"), ("dst_parent", "dst_name"))
PATH_ARGS = ("path", "src", "dst")


def names_in(args: dict[str, Any],
             keys: tuple[tuple[str, str], ...] = NAME_ARGS) -> list[tuple[int, str]]:
    """The (directory, name)s `args` name under `keys`."""
    return [(p, n) for pk, nk in keys
            if isinstance(p := args.get(pk), int) and isinstance(n := args.get(nk), str)]


def own_names(op: str, args: dict[str, Any]) -> list[tuple[int, str]]:
    """The (directory, name)s change `op` with `args` makes or removes, and the kernel sets
    from its reply; a setattr's, those it asks back (`names`). Not a rename's destination:
    the kernel moves the source's entry there, with the source's validity, which no lock
    covers any more: forgotten, it is asked again."""
    if op == "setattr":
        return [(n[0], n[1]) for n in args.get("names") or ()
                if isinstance(n, list | tuple) and len(n) == 2]
    return names_in(args, NAME_ARGS[1:2] if op == "rename" else NAME_ARGS)

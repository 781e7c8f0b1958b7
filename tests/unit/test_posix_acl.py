"""protocol/posix_acl.py: the xattr form and the kernel's three rules, with the results
ext4 gives (getfacl output in the comments)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import InvalidArgument
from shoal.protocol.posix_acl import (
    GROUP,
    GROUP_OBJ,
    MASK,
    OTHER,
    USER,
    USER_OBJ,
    Entry,
    chmod,
    create,
    decode,
    encode,
    update_mode,
)


def acl(*entries: tuple[int, int] | tuple[int, int, int]) -> list[Entry]:
    return [Entry(*e) for e in entries]


BASE = acl((USER_OBJ, 7), (GROUP_OBJ, 5), (OTHER, 5))
# user::rwx user:1000:rw- group::r-x group:100:rwx mask::rwx other::r-x
EXTENDED = acl((USER_OBJ, 7), (USER, 6, 1000), (GROUP_OBJ, 5), (GROUP, 7, 100), (MASK, 7),
               (OTHER, 5))


def test_the_xattr_form_round_trips() -> None:
    raw = encode(EXTENDED)
    assert raw[:4] == struct.pack("<I", 2) and len(raw) == 4 + 8 * 6
    assert decode(raw) == EXTENDED


def test_a_header_alone_is_no_acl() -> None:
    assert decode(encode([])) == []


@pytest.mark.parametrize("raw", [
    b"", b"\x02\x00\x00", struct.pack("<I", 1) + encode(BASE)[4:],  # version 1
    encode(BASE) + b"\x00",  # not whole entries
    encode(acl((USER_OBJ, 7), (OTHER, 5))),  # no group entry
    encode(acl((USER_OBJ, 7), (USER_OBJ, 7), (GROUP_OBJ, 5), (OTHER, 5))),  # two owners
    encode(acl((USER_OBJ, 7), (USER, 6, 1000), (GROUP_OBJ, 5), (OTHER, 5))),  # no mask
    encode(acl((USER_OBJ, 8), (GROUP_OBJ, 5), (OTHER, 5))),  # perm past rwx
    encode(acl((GROUP_OBJ, 5), (USER_OBJ, 7), (OTHER, 5))),  # out of order
    encode(acl((USER_OBJ, 7), (USER, 6, 9), (USER, 4, 9), (GROUP_OBJ, 5), (MASK, 7),
               (OTHER, 5))),  # one uid twice
    encode(acl((USER_OBJ, 7), (0x40, 7), (GROUP_OBJ, 5), (OTHER, 5))),  # unknown tag
])
def test_a_malformed_acl_is_einval(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode(raw)


def test_setting_an_access_acl_sets_the_mode() -> None:
    # setfacl -m u:1000:rw,g:100:rwx on a 0644 file: mode 0775 (the mask gives the group)
    assert update_mode(EXTENDED, 0o100644) == (0o100775, True)
    # an ACL of the three base entries only says what a mode says: not kept
    assert update_mode(BASE, 0o100600) == (0o100755, False)


def test_chmod_moves_owner_mask_and_other() -> None:
    got = chmod(EXTENDED, 0o640)
    assert got == acl((USER_OBJ, 6), (USER, 6, 1000), (GROUP_OBJ, 5), (GROUP, 7, 100),
                      (MASK, 4), (OTHER, 0))
    # without a mask, the group entry takes the group bits
    assert chmod(BASE, 0o751) == acl((USER_OBJ, 7), (GROUP_OBJ, 5), (OTHER, 1))


def test_a_new_file_in_a_directory_with_a_default_acl() -> None:
    # default: user::rwx user:1000:rw- group::r-x group:100:rwx mask::rwx other::r-x;
    # open(O_CREAT, 0666) with umask 0 on ext4 gives -rw-rw-r--+ and
    # user::rw- user:1000:rw- group::r-x group:100:rwx #effective:rw- mask::rw- other::r--
    mode, access = create(EXTENDED, 0o100666)
    assert mode == 0o100664
    assert access == acl((USER_OBJ, 6), (USER, 6, 1000), (GROUP_OBJ, 5), (GROUP, 7, 100),
                         (MASK, 6), (OTHER, 4))
    # a default of the base entries only: the mode, cut down, and no access ACL
    assert create(BASE, 0o100666) == (0o100644, None)
    assert create(BASE, 0o40777) == (0o40755, None)


perm = st.integers(0, 7)


@given(st.lists(st.tuples(st.integers(0, 3), perm), max_size=4, unique_by=lambda t: t[0]),
       st.lists(st.tuples(st.integers(0, 3), perm), max_size=4, unique_by=lambda t: t[0]),
       perm, perm, perm, st.integers(0, 0o7777))
def test_any_valid_acl_round_trips_and_create_never_widens_the_mode(
        users: list[tuple[int, int]], groups: list[tuple[int, int]], u: int, g: int, o: int,
        mode: int) -> None:
    entries = [Entry(USER_OBJ, u), *(Entry(USER, p, i) for i, p in users),
               Entry(GROUP_OBJ, g), *(Entry(GROUP, p, i) for i, p in groups)]
    if users or groups:
        entries.append(Entry(MASK, 7))
    entries.append(Entry(OTHER, o))
    entries.sort(key=lambda e: (e.tag, e.id if e.tag in (USER, GROUP) else -1))
    assert decode(encode(entries)) == entries
    new_mode, access = create(entries, 0o100000 | mode)
    assert new_mode & 0o777 & ~mode == 0  # a default ACL only takes permissions away
    assert (access is None) == (not users and not groups)

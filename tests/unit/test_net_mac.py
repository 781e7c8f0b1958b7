"""net/frame.py `mac`: HMAC-SHA256 from the key's precomputed pads, which must be exactly the
standard library's HMAC for any key (shorter than, as long as, or longer than SHA-256's
64-byte block) and any split of the message into parts."""

from __future__ import annotations

import hmac

from hypothesis import given
from hypothesis import strategies as st

from shoal.net.frame import mac


@given(key=st.binary(max_size=200), parts=st.lists(st.binary(max_size=300), max_size=5))
def test_mac_is_hmac_sha256(key: bytes, parts: list[bytes]) -> None:
    assert mac(key, *parts) == hmac.digest(key, b"".join(parts), "sha256")


def test_mac_takes_any_bytes_like_part() -> None:
    key = b"k" * 32
    assert mac(key, memoryview(b"head"), bytearray(b"er"), b"!") == \
        hmac.digest(key, b"header!", "sha256")


def test_keys_do_not_share_pads() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert mac(a, b"x") != mac(b, b"x")
    assert mac(a, b"x") == hmac.digest(a, b"x", "sha256")

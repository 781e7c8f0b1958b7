"""Extended attribute names that the MDT and the mount both treat specially."""

from __future__ import annotations

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
ACL_NAMES = (ACL_ACCESS, ACL_DEFAULT)
CAPS = b"security.capability"  # file capabilities: a write, chown or truncate drops them

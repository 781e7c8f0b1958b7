"""Extended attributes through the mount, POSIX ACLs among them (issue 19).

The values live on the MDT with the inode (target/mdt_xattr.py). With `enable_acl` the kernel
enforces the ACLs it reads through getxattr (and so turns on default_permissions); keeping the
mode in step with an access ACL and handing a directory's default ACL down to new inodes is
the MDT's part (target/mdt_acl.py). The kernel checks who may touch which namespace before a
request comes. pyfuse3 turns XATTR_CREATE and XATTR_REPLACE into a getxattr before the
setxattr (not atomic between two clients, as on most FUSE file systems).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyfuse3 import RequestContext

from shoal.mount.fuse_op import fuse_op

if TYPE_CHECKING:
    from shoal.client.client import Client


class XattrOps:
    """The FUSE xattr requests of ShoalFS (which supplies `_md` and `client`)."""

    enable_acl = True
    client: Client

    async def _md(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @fuse_op
    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        return await self.client.getxattr_inode(inode, bytes(name))

    @fuse_op
    async def listxattr(self, inode: int, ctx: RequestContext) -> list[bytes]:
        return [bytes(n) for n in (await self._md("listxattr", {"ino": inode}))["names"]]

    @fuse_op
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: RequestContext) -> None:
        await self._md("setxattr", {"ino": inode, "name": name, "value": bytes(value)})

    @fuse_op
    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        await self._md("removexattr", {"ino": inode, "name": name})

"""A node of a local cluster, from its directory (cluster.json and its key)."""

from __future__ import annotations

from pathlib import Path

from shoal.errors import NotFound
from shoal.node.host import HostSpec
from shoal.node.server import NodeServer
from shoal.node.spec import KEY_FILE, ClusterSpec, read_key


def local_node(cluster_dir: Path, node: str) -> NodeServer:
    """The node `node` of the local cluster in `cluster_dir` (cluster.json and its key)."""
    spec = ClusterSpec.load(Path(cluster_dir))
    if node not in spec.nids:
        raise NotFound(f"node {node!r} is not in the cluster ({', '.join(spec.nids)})")
    return NodeServer(HostSpec.single(spec, node), read_key(Path(cluster_dir) / KEY_FILE),
                      Path(cluster_dir))

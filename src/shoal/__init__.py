"""Shoal: a parallel file system with Lustre's architecture and automatic failover."""

__version__ = "0.1.0"

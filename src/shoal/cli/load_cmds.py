"""Placeholder until written."""

import click


def register(cli: click.Group) -> None:
    pass

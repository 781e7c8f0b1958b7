"""The `shoal` command loads a command group's module only when one of its commands runs:
the table of commands in cli/main.py says which module adds which command."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cli.main import COMMANDS, cli, commands_of

CLI_DIR = Path(__file__).resolve().parents[2] / "src" / "shoal" / "cli"
MODULES = sorted({p.stem for p in CLI_DIR.glob("*_cmds.py")})


@pytest.mark.parametrize("module", MODULES)
def test_each_module_adds_exactly_the_commands_the_table_gives_it(module: str) -> None:
    listed: dict[str, set[str]] = defaultdict(set)
    for name, mod in COMMANDS.items():
        listed[mod].add(name)
    assert set(commands_of(module)) == listed[module]


def test_every_module_of_the_table_exists() -> None:
    assert set(COMMANDS.values()) <= set(MODULES)


def test_the_help_lists_every_command_and_an_unknown_one_is_refused() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["--help"])
    assert out.exit_code == 0
    listed = {line.split()[0] for line in out.output.split("Commands:")[1].splitlines()
              if line.strip()}
    assert listed == set(COMMANDS)
    bad = runner.invoke(cli, ["no-such-command"])
    assert bad.exit_code == 2 and "No such command" in bad.output


def test_a_command_loads_its_own_group_only() -> None:
    # `shoal fs ...` (what a user types most) loads neither the web page's aiohttp, nor the
    # agent, nor the rig, nor the benchmarks
    code = ("import sys\nfrom shoal.cli.main import cli\n"
            "cli.get_command(None, 'fs')\n"
            "print(sorted(m for m in ('aiohttp', 'shoal.agent.agent', 'shoal.rig',"
            " 'shoal.cli.bench_cmds', 'shoal.cli.rig_cmds', 'shoal.cli.web_cmds')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout

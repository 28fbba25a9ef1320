"""``acb``: the root of the command line, and the one place its errors end.

The root knows no subcommand by name. Each package registers its own in its ``cli.py``
(``register(commands)``), declared in pyproject.toml under the entry-point group
``acb.commands``: the peer's user commands, the ledger's ``ledger``/``audit``/``init``, the
console's ``status``/``operator``/``drill``/``console``, the benchmarks, and this package's
``admin``. The root adds the global options, orders the subcommands for ``--help`` by the
rank each registration gives (100s a person's commands, 200s the operator's and the
system's, 300s the desktop apps, 400s demos and benchmarks), reads :class:`Settings` once,
runs the command and turns any :class:`AcbError` into one line on stderr and its exit code.

Every subcommand prints for a person by default; read commands take ``--json``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from broker.admin import add_arguments as broker_setup_arguments
from broker.admin import cmd_broker_setup
from broker.errors import AcbError
from broker.settings import Settings

__all__ = ["Commands", "Handler", "App", "Registration", "GROUP", "build_parser", "lazy", "main", "register",
           "registrations"]

GROUP = "acb.commands"

Handler = Callable[[argparse.Namespace, Settings], "int | None"]
App = Callable[[Sequence[str], Settings], int]  # parses its own options from what follows its name


class Commands:
    """What a package's ``register(commands)`` receives: ``acb``'s subcommands, each with its rank in ``--help``."""

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.sub = sub
        self.apps: dict[str, App] = {}
        self._ranks: dict[str, int] = {}

    def add(self, name: str, fn: Handler, help: str, *, rank: int, json_flag: bool = False) -> argparse.ArgumentParser:
        """Add ``acb NAME``, run as ``fn(args, settings)``; its int return is the exit code."""
        sp = self.sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print one JSON object")
        self._ranks[name] = rank
        return sp

    def add_app(self, name: str, app: App, help: str, *, rank: int, options: str) -> argparse.ArgumentParser:
        """Add ``acb NAME`` for an app that parses its own ``options`` (the desktop apps):
        ``app(argv, settings)`` gets every argument after the name."""
        sp = self.add(name, lambda args, settings: app(args.gui_args, settings), help, rank=rank)
        sp.add_argument("gui_args", nargs=argparse.REMAINDER, help=options)
        self.apps[name] = app
        return sp

    def sort(self) -> None:
        """Order ``--help``'s list of commands by rank, whatever order the registrations ran in."""
        # argparse lists subcommands in the order they were added and offers no other way to order them.
        self.sub._choices_actions.sort(key=lambda action: self._ranks.get(action.dest, 0))


def lazy(target: str) -> Handler:
    """The handler ``"module:function"``, imported only when its command runs (keeps ``acb --help`` fast)."""
    module, _, name = target.partition(":")

    def run(args: argparse.Namespace, settings: Settings) -> int | None:
        handler: Handler = getattr(importlib.import_module(module), name)
        return handler(args, settings)

    return run


def register(commands: Commands) -> None:
    """The broker's own subcommand: ``acb admin broker-setup``."""
    sp = commands.add("admin", lambda a, s: a.admin_fn(a, s), "broker administration", rank=203)
    adsub = sp.add_subparsers(dest="admin_cmd", required=True, metavar="CMD")
    bsp = adsub.add_parser("broker-setup", help="ACB's vhost and its peer, replica and operator accounts on RabbitMQ")
    broker_setup_arguments(bsp)
    bsp.set_defaults(admin_fn=cmd_broker_setup)


Registration = Callable[[Commands], None]


def registrations() -> list[Registration]:
    """Every ``register`` declared under the ``acb.commands`` entry points, loaded."""
    # An editable install can be seen twice (its egg-info in the checkout, its dist-info in site-packages).
    found = {ep.name: ep for ep in reversed(list(entry_points(group=GROUP)))}
    return [found[name].load() for name in sorted(found)]


def build_parser(parts: Sequence[Registration] | None = None) -> tuple[argparse.ArgumentParser, Commands]:
    """The ``acb`` parser with the subcommands of ``parts`` (default: :func:`registrations`), and their registry."""
    p = argparse.ArgumentParser(prog="acb", description="ACB: share documents, get paid, pay for what you download.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens underneath")
    commands = Commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for registration in registrations() if parts is None else parts:
        registration(commands)
    commands.sort()
    return p, commands


def main(argv: Sequence[str] | None = None, parts: Sequence[Registration] | None = None) -> int:
    """Run ``acb`` with ``argv`` (default: the process's arguments) and the subcommands of ``parts`` (default:
    every registered one); return the exit code. The one place an :class:`AcbError` ends a command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser(parts)
    if not commands.sub.choices:
        print(f"acb: no commands registered under {GROUP}: install ACB (pip install -e .)", file=sys.stderr)
        return 1
    app = commands.apps.get(argv[0]) if argv and not {"-h", "--help"} & set(argv[1:2]) else None
    args = None if app is not None else parser.parse_args(argv)
    if args is not None:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        if not args.verbose:
            logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        settings = Settings.from_env()
        if app is not None:
            return int(app(argv[1:], settings))
        assert args is not None
        return int(args.fn(args, settings) or 0)
    except AcbError as exc:
        print(f"acb: {exc.for_person()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

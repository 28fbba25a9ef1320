"""The benchmarks' subcommand of ``acb``: ``acb bench transfer|ledger|load``.

:func:`register` adds it to the ``acb`` root (:mod:`broker.cli`). Each benchmark keeps its own
``main(argv)`` (``python -m bench.transfer``); this translates the subcommand's options into it.
"""
from __future__ import annotations

import argparse

from bench import ledger, load, transfer
from broker.cli import Commands
from broker.settings import Settings

__all__ = ["register", "cmd_bench"]


def register(commands: Commands) -> None:
    """Add ``acb bench``."""
    sp = commands.add("bench", cmd_bench, "benchmarks", rank=402, json_flag=True)
    sp.add_argument("what", choices=["transfer", "ledger", "load"])
    sp.add_argument("--size", default="1GiB", help="transfer: file size (512MiB, 1GiB, ...)")
    sp.add_argument("--replicas", type=int, default=1, help="ledger: replicas to run")
    sp.add_argument("--commands", type=int, help="ledger: commands per pipelined or concurrent run")
    load.add_arguments(sp.add_argument_group("load (the seed's demonstration, see bench/load.py)"))


def cmd_bench(args: argparse.Namespace, s: Settings) -> int:
    """Run the benchmark ``args.what`` with its own ``main``."""
    if args.what == "transfer":
        return transfer.main(["--size", args.size] + (["--json"] if args.json else [])) or 0
    if args.what == "load":
        return load.execute(args, s.broker_url)
    argv = ["--replicas", str(args.replicas), "--url", s.broker_url] + (["--json"] if args.json else [])
    if args.commands:
        argv += ["--commands", str(args.commands)]
    return ledger.main(argv) or 0

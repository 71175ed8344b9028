"""focalfast: fused FocalNet kernels. Subcommands: demo, bench, train, visualize, static-cost.

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("focalfast.demo", "check every available backend against the reference and time them"),
    "bench": ("focalfast.bench", "benchmark the op, the module and a training step; table, JSON and plot"),
    "train": ("focalfast.train", "train a FocalNet / ConvNeXt image classifier"),
    "visualize": ("focalfast.visualize", "draw a checkpoint's gate maps and modulator on an image"),
    "static-cost": ("focalfast.static_cost.command", "count the kernels' sm_90a instructions per element (no GPU)"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="focalfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return modules[args.command].run(args) or 0


if __name__ == "__main__":
    sys.exit(main())

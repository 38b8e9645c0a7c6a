"""`python -m zoo list` / `python -m zoo describe NAME`."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _list(args) -> int:
    import zoo

    rows = []
    for name, presets in zoo.list_models().items():
        spec = zoo.describe(name)
        for preset in presets:
            description = spec["description"]
            if args.no_params or spec["trainer"] != "keras":
                params = "-"
            else:
                try:
                    params = f"{zoo.count_preset_params(name, preset):,}"
                except ValueError as e:  # e.g. a pretrained text tower's wheel not installed
                    params = "unavailable"
                    description = f"UNAVAILABLE: {e}"
            rows.append((name, preset, params, description))
    header = ("name", "preset", "params", "description")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    fmt = f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}  {{}}"
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths), "-" * 11))
    for row in rows:
        print(fmt.format(*row))
    if not args.no_params:
        print("\nparams: with a placeholder vocabulary of the preset's nominal sizes; a model "
              "built with a fitted vocabulary can be smaller.")
    return 0


def _describe(args) -> int:
    import zoo

    info = zoo.describe(args.name)
    print(f"{info['name']}: {info['description']}")
    print(f"default preset: {info['default_preset']}")
    if info["build_args"]:
        print(f"build arguments: {', '.join(info['build_args'])}")
    for preset, config in info["presets"].items():
        print(f"\npreset {preset!r}:")
        print(json.dumps(config, indent=2, sort_keys=True))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="registered models, presets and parameter counts")
    p.add_argument("--no-params", action="store_true", help="skip building models")
    p.set_defaults(func=_list)
    p = sub.add_parser("describe", help="a model's description and presets")
    p.add_argument("name")
    p.set_defaults(func=_describe)
    args = parser.parse_args(argv)
    from zoo import quiet
    quiet.start()
    from zoo.registry import UnknownModelError

    try:
        return args.func(args)
    except UnknownModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``amsrepomirror config``: the effective settings, each with the file it came from."""

from pathlib import Path

from amsrepomirror import config
from amsrepomirror.cli.options import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "config", "print the effective settings and the file each came from")
    p.set_defaults(func=run)


def run(args) -> int:
    """Print the effective settings, each with the file it came from."""

    print("# settings files, lowest priority first (a later file wins key by key; command-line options beat all):")
    read = config.sources()
    width = max(len(label) for label, _ in read)
    for label, path in read:
        if path is None:
            where = "(not set)" if label.startswith("$") else "(not given)"
        else:
            where = Path(path).absolute() if Path(path).is_file() else f"(no {path})"
        print(f"#   {label:<{width}}  {where}")
    section = None
    for (name, key), (value, label) in config.effective().items():
        if name != section:
            print(f"\n[{name}]")
            section = name
        print(f"{key} = {value}  # {label}")
    return 0

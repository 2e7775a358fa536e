"""``amsrepomirror config``: the effective settings, each with the file it came from, printed as a settings
file: saved and read back (``--config FILE``), it gives the same values."""

from pathlib import Path

from amsrepomirror import config
from amsrepomirror.cli.options import add_command

HEADER = """\
# The effective settings of amsrepomirror. This is itself a settings file: saved and given as --config FILE
# (or put in a settings file below), it gives these same values ("# from:" says where each came from;
# values of password-, secret- or token-like keys, and URLs with an account, are hidden and left out as comments)."""


def add_parser(sub) -> None:
    p = add_command(sub, "config", "print the effective settings and the file each came from")
    p.add_argument("--scheduler", action="store_true",
                   help="print only the path of the shipped settings for luigid (LUIGI_CONFIG_PATH=PATH luigid ...)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Print the effective settings, each with the file it came from (or, --scheduler, luigid's settings file)."""
    if args.scheduler:
        print(config.scheduler_settings())
        return 0
    print(HEADER)
    print("# settings files, lowest priority first (a later file wins key by key; command-line options beat all):")
    read = config.sources()
    width = max(len(label) for label, _ in read)
    for label, path in read:
        if path is None:
            where = "(not set)" if label.startswith("$") else "(not given)"
        else:
            where = Path(path).absolute() if Path(path).is_file() else f"(no {path})"
        print(f"#   {label:<{width}}  {where}")
    for line in settings_lines(config.effective(), [label for label, _ in read]):
        print(line)
    return 0


def settings_lines(settings: dict[tuple[str, str], tuple[str, str]], labels: list[str]) -> list[str]:
    """``settings`` ({(section, key): (value, label)}) as a settings file: each section once, its keys
    grouped by the file they came from (lowest first) under a ``# from: LABEL`` line; a hidden value as a
    comment; the lines of a multi-line value indented, as configparser reads them back."""
    rank = {label: position for position, label in enumerate(labels)}
    sections: dict[str, list[tuple[str, str, str]]] = {}
    for (section, key), (value, label) in settings.items():
        sections.setdefault(section, []).append((key, value, label))
    lines = []
    for section, keys in sections.items():
        lines += ["", f"[{section}]"]
        source = None
        for key, value, label in sorted(keys, key=lambda item: rank.get(item[2], len(rank))):
            if label != source:
                lines.append(f"# from: {label}")
                source = label
            if value == "(hidden)" or config.is_secret(key, value):  # effective() already hides them
                lines.append(f"# {key} = (hidden)")
                continue
            first, *more = value.split("\n")
            lines.append(f"{key} = {first}".rstrip())
            lines += [f"    {line}" if line else "" for line in more]
    return lines

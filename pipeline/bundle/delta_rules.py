"""What a delta bundle may say and remove: the rules both sides apply (``pack.delta_base`` when a delta
is selected, ``offline.apply_delta`` when one is unpacked)."""

from collections.abc import Iterable, Mapping

from amsrepomirror.bundle.format import BundleManifest, TreeFile, copy_problems
from amsrepomirror.util.paths import printable


def removal_problems(held: Mapping[str, Iterable[str]] | None, gone: Iterable[str],
                     replaced: Iterable[str]) -> list[str]:
    """Why a bundle may not remove the paths ``gone`` from a tree whose versions need ``held``
    (version -> paths; None when not known): a file that a version other than those it ``replaced``
    (the version a delta updates, those a bundle holds anew, those dropped on purpose) still needs.
    The one rule of what a bundle may remove: called when a delta is selected and when a bundle is
    unpacked."""
    gone = set(gone)
    if not gone:
        return []
    if held is None:
        return [f"would remove {len(gone)} file(s), e.g. {printable(min(gone))}, but the installed tree's record does not "
                "say which files each AMS version needs (written by an older amsrepomirror)"]
    problems = []
    for version in sorted(set(held) - set(replaced)):
        needed = gone & set(held[version])  # guard: delta-removal-guard
        if needed:
            problems.append(f"would remove {len(needed)} file(s) that {version} still needs, e.g. {printable(min(needed))}")
    return problems


def target_of(manifest: BundleManifest) -> list[TreeFile]:
    """The whole tree a bundle installs: a full bundle's files and their copies, a delta's target."""
    return manifest.tree


def delta_problems(manifest: BundleManifest) -> list[str]:
    """How a delta's lists contradict each other (carried, copied and reused files must be in the
    target with their size and sha256, none in two of those lists, nothing removed that is a target)."""
    target = {t.path: (t.size, t.sha256) for t in manifest.target}
    problems = copy_problems(manifest)
    if len(target) != len(manifest.target):
        problems.append("its target lists a path twice")
    for f in list(manifest.files) + list(manifest.copies):
        if target.get(f.path) != (f.size, f.sha256):
            problems.append(f"carried file {printable(f.path)} is not in its target manifest with that size and sha256")
    carried = {f.path for f in manifest.files} | {c.path for c in manifest.copies}
    for r in manifest.reused:
        if target.get(r.path) != (r.size, r.sha256) or r.path in carried:
            problems.append(f"reused file {printable(r.path)} is not in its target manifest with that size and sha256, "
                            "or is also carried")
    for path in manifest.removed:
        if path in target:
            problems.append(f"{printable(path)} is both removed and in its target manifest")
    return problems

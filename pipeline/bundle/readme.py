"""The bundle's ``README.txt``: how to check and unpack it, with amsrepomirror or by hand."""

import shlex

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, SUMS_NAME, BundleManifest
from amsrepomirror.util.units import format_size


def readme_text(manifest: BundleManifest) -> str:
    """The text of README.txt for ``manifest``."""
    split = [f for f in sorted(manifest.files, key=lambda f: f.path) if len(f.parts) > 1]
    lines = [
        f"AMS package repository bundle {' + '.join(manifest.all_versions)}",
        "",
        f"{len(manifest.files)} files, {format_size(manifest.total_bytes)} ({manifest.total_bytes} bytes), "
        f"in {len(manifest.chunks)} chunks (standalone 7z archives, compression {manifest.compression}).",
    ]
    if manifest.created or manifest.tool_version:
        lines.append(f"Created {manifest.created or '?'} by amsrepomirror {manifest.tool_version or '?'}.")
    lines += [
        "",
        "This folder holds",
        "  *.7z           the chunks",
        f"  {MANIFEST_NAME:<14} every repository file: size, sha256, and which chunk(s) hold it",
        f"  {SUMS_NAME:<14} sha256 of every other file here. It is written last: if it is",
        "                 missing, the bundle is incomplete.",
        f"  {README_NAME:<14} this file",
        "",
        "Chunks may be spread over several USB sticks: first copy all of them into one folder.",
        "",
        "1. Check the copy (run in this folder):",
        f"     sha256sum -c {SUMS_NAME}",
        "   Every line must end in OK. A chunk that fails was damaged or cut short: copy it again.",
        "   Optionally test the archives too:   7z t '*.7z'   (7zz or 7za work as well)",
        "",
        "2. Unpack with amsrepomirror (recommended: checks every chunk and every file, refuses unsafe",
        "   paths, joins split files and only then puts the tree in place):",
        "     amsrepomirror unpack BUNDLE --amshome DIR",
        "   e.g. amsrepomirror unpack . --amshome \"$AMSHOME\"",
        "",
        "3. Or unpack by hand:",
        "     mkdir repository",
        "     7z x -orepository '*.7z'",
        "   (or one by one: for c in *.7z; do 7z x -orepository \"$c\" || break; done)",
    ]
    if split:
        lines += [
            "   Files bigger than a chunk are stored as parts PATH.part-0001, PATH.part-0002, ...;",
            "   join each in order and remove its parts (in the repository folder):",
            "     cd repository",
        ]
        for f in split:
            stem = shlex.quote(f.path + ".part-")
            lines.append(f"     cat {stem}* > {shlex.quote(f.path)} && rm {stem}*")
        lines.append("   (on Windows: copy /b \"P.part-0001\" + \"P.part-0002\" + ... \"P\")")
    else:
        lines.append("   No file in this bundle is split into parts.")
    lines += [
        f"   Each file's size and sha256 are in {MANIFEST_NAME}. Then place the folder as",
        "   $AMSHOME/repository (move an existing one aside first):",
        "     mv \"$AMSHOME/repository\" \"$AMSHOME/repository.old\"",
        "     mv repository \"$AMSHOME/repository\"",
    ]
    if manifest.compression == "zstd":
        lines += [
            "",
            "NOTE: these chunks use zstd compression, which stock 7-Zip cannot unpack. Use",
            "amsrepomirror unpack, or a 7-Zip build with zstd support (e.g. 7-Zip-zstd).",
        ]
    return "\n".join(lines) + "\n"

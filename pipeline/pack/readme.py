"""The bundle's ``README.txt``: how to check and unpack it, with amsrepomirror or by hand."""

import shlex

from amsrepomirror.bundle.format import (
    MANIFEST_NAME,
    README_NAME,
    REPORT_HTML_NAME,
    REPORT_JSON_NAME,
    REPORT_NAMES,
    SUMS_NAME,
    TOOL_DIR,
    BundleManifest,
)
from amsrepomirror.bundle.signature import NAMESPACE, SIGNATURE_NAME
from amsrepomirror.util.units import counted, format_size


def signature_check_lines() -> list:
    """Step 0 of a signed bundle's README: check the signature by hand, with OpenSSH (>= 8.2) only.

    The signature covers manifest.json; SHA256SUMS is not signed, so each chunk's sha256 in it must
    also be one manifest.json lists before ``sha256sum -c`` proves anything.
    """
    return [
        "0. Check the signature FIRST (OpenSSH 8.2 or later; run in this folder). ALLOWED is the",
        "   allowed_signers file holding the site's public bundle key (e.g. /etc/amsrepomirror/allowed_signers:",
        f"   a line   site-bundles namespaces=\"{NAMESPACE}\" ssh-ed25519 AAAA...):",
        f"     ssh-keygen -Y verify -f ALLOWED -n {NAMESPACE} -s {SIGNATURE_NAME} \\",
        f"       -I \"$(ssh-keygen -Y find-principals -f ALLOWED -s {SIGNATURE_NAME})\" < {MANIFEST_NAME}",
        "   It must print: Good \"amsrepomirror\" signature for ... Otherwise do not use this bundle.",
        f"   {SUMS_NAME} is not signed itself: check that every sha256 in it (chunks, {TOOL_DIR}/ files, this file) is in the",
        f"   signed {MANIFEST_NAME} (no output means all are):",
        f"     grep -v -e ' {MANIFEST_NAME}$' -e ' {SIGNATURE_NAME}$' {SUMS_NAME} | "
        "while read -r sum name; do "
        f"grep -q \"\\\"$sum\\\"\" {MANIFEST_NAME} || echo \"$name: NOT SIGNED\"; done",
        "   (amsrepomirror verify . --allowed-signers ALLOWED does all of this and more, also where OpenSSH is",
        "   older than 8.2, as on RHEL/Rocky 8: it then checks the signature itself.)",
        "",
    ]


def readme_text(manifest: BundleManifest, signed: bool = False) -> str:
    """The text of README.txt for ``manifest`` (``signed``: the bundle has manifest.json.sig)."""
    text = ((_delta_readme(manifest) if manifest.is_delta else _full_readme(manifest)) + _parity_section(manifest)
            + _files_section(manifest, signed))
    if not signed:
        return text
    head, sep, rest = text.partition("1. Check the copy")
    return head + "\n".join(signature_check_lines()) + "\n" + sep + rest


def bundle_file_names(manifest: BundleManifest, signed: bool) -> list:
    """Every file of the bundle folder (paths relative to it), sorted: the chunks, manifest.json (and its
    signature), SHA256SUMS, README.txt, the transfer report (every bundle of this tool has one), the tool/ files
    and the PAR2 files."""
    names = ([c.name for c in manifest.chunks] + [MANIFEST_NAME, SUMS_NAME, README_NAME, *REPORT_NAMES]
             + [t.path for t in manifest.tool])
    names += [f.path for f in manifest.parity.files] if manifest.parity else []
    return sorted(set(names + ([SIGNATURE_NAME] if signed else [])))


#: The by-hand check that a bundle folder holds exactly the files SHA256SUMS lists (and SHA256SUMS):
#: ``sha256sum -c`` cannot see a file added beside them. POSIX sh; no output means none is added or missing.
#: A name holding a newline is several lines to ``uniq`` (lines that repeat, or repeat listed names, would
#: vanish, while ``for c in *.7z`` takes the name whole): the second ``find`` names every such name. Only a
#: checksum line (64 hex digits) lists a name: ``sha256sum -c`` skips any other line with a mere warning.
FOLDER_CHECK = (f"{{ echo {SUMS_NAME}; sed 's/^[0-9a-f]\\{{64\\}} [ *]//' {SUMS_NAME}; find . ! -type d | sed 's|^\\./||'; }}"
                " | LC_ALL=C sort | uniq -u; find . -name '*[[:cntrl:]]*'")


def _folder_check_lines() -> list:
    return [
        f"   {SUMS_NAME} cannot show a file ADDED to this folder (a stray chunk that 7z would unpack too, a",
        f"   wheel in {TOOL_DIR}/): check that the folder holds exactly the files it lists (no output means it does;",
        "   remove what is named, e.g. .DS_Store or the ._* files a Mac leaves; the files are listed at the end):",
        f"     {FOLDER_CHECK}",
    ]


def _parity_section(manifest: BundleManifest) -> str:
    """How to check and repair the chunks with par2 alone (a bundle made with --parity)."""
    parity = manifest.parity
    if parity is None:
        return ""
    placed = []
    if manifest.sticks and manifest.sticks.parity:
        placed = ["On sticks: parity.par2 goes on every stick, each parity.volN+M.par2 on one stick:",
                  *(f"     stick {i}: {', '.join(names) or '-'}" for i, names in enumerate(manifest.sticks.parity, 1))]
        if parity.one_stick:
            placed.insert(0, "They are sized and placed so that ANY ONE WHOLE STICK may be lost (or left behind):")
            placed.append("   With a stick missing, copy every other stick into one folder and repair that folder.")
    return "\n".join([
        "",
        f"Parity: parity*.par2 are PAR2 recovery files ({parity.redundancy}% of the chunks, {parity.recovery_blocks} "
        f"blocks of {parity.block_size} bytes).",
        *placed,
        "They rebuild damaged or missing chunks up to that much, without another trip. With amsrepomirror:",
        "     amsrepomirror repair BUNDLE --into DIR     (DIR: an empty folder elsewhere; BUNDLE is only read)",
        "     amsrepomirror unpack DIR --amshome \"$AMSHOME\"",
        "   By hand, with par2 alone (Debian: apt-get install par2). par2 repairs IN PLACE, so copy this folder",
        "   to a writable place first and work on the copy:",
        "     par2 verify parity.par2      (in this folder: says which chunks are damaged, whether repair is possible)",
        "     cp -r BUNDLE COPY && cd COPY && par2 repair parity.par2",
        f"     sha256sum -c {SUMS_NAME}     (every chunk must be OK again; remove the *.1 files par2 leaves)",
        "",
    ])


def _files_section(manifest: BundleManifest, signed: bool) -> str:
    """The end of README.txt: every file of the bundle folder, one a line."""
    names = bundle_file_names(manifest, signed)
    return "\n".join(["", f"Files of this bundle ({len(names)}; nothing else belongs in this folder):",
                      *(f"  {name}" for name in names)]) + "\n"


def _full_readme(manifest: BundleManifest) -> str:
    """README.txt of a full bundle: what it holds, how to check it, and how to unpack it with the tool or by hand."""
    lines = _full_heading(manifest) + _full_contents(manifest) + _full_check_and_unpack(manifest) + _full_by_hand(manifest)
    if manifest.compression == "zstd":
        lines += [
            "",
            "NOTE: these chunks use zstd compression, which stock 7-Zip cannot unpack. Use",
            "amsrepomirror unpack, or a 7-Zip build with zstd support (e.g. 7-Zip-zstd).",
        ]
    return "\n".join(lines) + "\n"


def _full_heading(manifest: BundleManifest) -> list:
    """The versions, how many files in how many chunks, copies, and who made the bundle when."""
    lines = [
        f"AMS package repository bundle {' + '.join(manifest.all_versions)}",
        "",
        f"{counted(len(manifest.files), 'file')}, {format_size(manifest.total_bytes)} ({manifest.total_bytes} bytes), "
        f"in {counted(len(manifest.chunks), 'chunk')} (standalone 7z archives, compression {manifest.compression}).",
    ]
    if manifest.copies:
        lines.append(f"{len(manifest.copies)} more files have the bytes of one of these and are carried once "
                     f"(\"copies\" in {MANIFEST_NAME}).")
    if manifest.created or manifest.tool_version:
        lines.append(f"Created {manifest.created or '?'} by amsrepomirror {manifest.tool_version or '?'}.")
    return lines


def _full_contents(manifest: BundleManifest) -> list:
    """What each file of the folder is."""
    lines = [
        "",
        "This folder holds",
        "  *.7z           the chunks",
        f"  {MANIFEST_NAME:<14} every repository file: size, sha256, and which chunk(s) hold it",
        f"  {SUMS_NAME:<14} sha256 of every other file here. It is written last: if it is",
        "                 missing, the bundle is incomplete.",
        f"  {README_NAME:<14} this file",
        f"  {REPORT_HTML_NAME} and {REPORT_JSON_NAME}",
        f"  {'':<14} the transfer report: what this bundle holds, for whoever approves the transfer",
    ]
    if manifest.tool:
        lines.append(f"  {TOOL_DIR + '/':<14} amsrepomirror itself: wheels and install.sh (listed in {MANIFEST_NAME})")
    return lines


def _full_check_and_unpack(manifest: BundleManifest) -> list:
    """Steps 1 (check the copy, install the tool from the bundle) and 2 (unpack with the tool)."""
    return [
        "",
        f"Chunks may be spread over several USB sticks, each with {MANIFEST_NAME}, {SUMS_NAME} and this file:",
        "first copy all chunks into one folder.",
        "",
        "1. Check the copy (run in this folder):",
        f"     sha256sum -c {SUMS_NAME}",
        "   Every line must end in OK. A chunk that fails was damaged or cut short: copy it again.",
        *_folder_check_lines(),
        "   One stick of several, as it arrives (in its folder; chunks on other sticks are skipped):",
        f"     sha256sum -c --ignore-missing {SUMS_NAME}",
        "   or: amsrepomirror verify --partial STICK   (also lists the chunks not here yet)",
        "   Optionally test the archives too:   7z t '*.7z'   (7zz or 7za work as well)",
        "",
        *_install_lines(manifest),
        "2. Unpack with amsrepomirror (recommended: checks every chunk and every file, refuses unsafe",
        "   paths, joins split files and only then puts the tree in place):",
        "     amsrepomirror unpack BUNDLE --amshome DIR",
        "   e.g. amsrepomirror unpack . --amshome \"$AMSHOME\"",
        "",
    ]


def _full_by_hand(manifest: BundleManifest) -> list:
    """Step 3: unpack with 7z, join split files, place the copies, put the tree in place."""
    split = [f for f in sorted(manifest.files, key=lambda f: f.path) if len(f.parts) > 1]
    lines = [
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
        lines += _join_commands(split)
        lines.append("   (on Windows: copy /b \"P.part-0001\" + \"P.part-0002\" + ... \"P\")")
    else:
        lines.append("   No file in this bundle is split into parts.")
    if manifest.copies:
        lines += [
            "   Files with the same bytes as another path are carried once; put them in place (in the",
            "   repository folder, after the above):",
        ]
        if not split:
            lines.append("     cd repository")
        lines += _copy_commands(manifest)
    return lines + [
        f"   Each file's size and sha256 are in {MANIFEST_NAME}. Then place the folder as",
        "   $AMSHOME/repository (move an existing one aside first):",
        "     mv \"$AMSHOME/repository\" \"$AMSHOME/repository.old\"",
        "     mv repository \"$AMSHOME/repository\"",
    ]


def _join_commands(split: list) -> list:
    """The commands that join each split file from its parts and remove them."""
    lines = []
    for f in split:
        stem = shlex.quote(f.path + ".part-")
        lines.append(f"     cat {stem}* > {shlex.quote(f.path)} && rm {stem}*")
    return lines


def _install_lines(manifest: BundleManifest) -> list:
    """With a tool/ folder: how to install amsrepomirror from it, once the copy is checked."""
    if not manifest.tool:
        return []
    return [
        f"   Then install amsrepomirror from this bundle (no network needed; {SUMS_NAME} covers it):",
        f"     sh {TOOL_DIR}/install.sh [VENV]      (default VENV: $HOME/amsrepomirror-venv)",
        "   It picks a Python the wheels fit, checks each wheel it will use (pip's too) against manifest.json",
        "   before any of them runs, installs exactly those and runs amsrepomirror verify on this folder;",
        "   use VENV/bin/amsrepomirror below. With AMSREPOMIRROR_CONFIG=FILE (or /etc/luigi/luigi.cfg) naming",
        "   [trust] allowed_signers, it first checks manifest.json.sig with ssh-keygen (OpenSSH 8.2 or later).",
        "",
    ]


def _copy_commands(manifest: BundleManifest) -> list:
    """The commands that place each copy (bytes carried once under another path) from its source."""
    lines = []
    for c in sorted(manifest.copies, key=lambda c: c.path):
        parent = c.path.rpartition("/")[0]
        lines.append(f"     {'mkdir -p -- ' + shlex.quote(parent) + ' && ' if parent else ''}"
                     f"cp -- {shlex.quote(c.source)} {shlex.quote(c.path)}")
    return lines


def _delta_readme(manifest: BundleManifest) -> str:
    """README.txt of a delta: what it needs (its base), and how to apply it with the tool or by hand."""
    lines = _delta_heading(manifest) + [
        "1. Check the copy (in this folder):",
        f"     sha256sum -c {SUMS_NAME}",
        *_folder_check_lines(),
        "",
        *_install_lines(manifest),
        "2. Apply with amsrepomirror (recommended: refuses another base, builds the new tree beside the",
        "   installed one from hard links and the carried files, checks every file, then swaps it in):",
        "     amsrepomirror unpack BUNDLE --amshome \"$AMSHOME\""
        + "".join(f" --drop-version {v}" for v in sorted(manifest.dropped)),
        *([f"   It removes {' and '.join(sorted(manifest.dropped))} (bundle --drop-version): unpack asks for the same."]
          if manifest.dropped else []),
        "",
        "3. Or by hand, in $AMSHOME (BUNDLE is this folder; never change files of repository itself):",
        "     cp -al repository repository.new      (hard links; cp -a where links are refused)",
        "     cd repository.new",
        *_delta_by_hand_commands(manifest),
        "     (then remove folders left empty by the removals)",
        f"   Check every file's sha256 against the \"target\" list in {MANIFEST_NAME}, then swap:",
        "     cd .. && mv repository repository.old && mv repository.new repository",
        "   (Carried files are removed first, so that 7z never writes through a hard link into the old tree.)",
    ]
    if manifest.compression == "zstd":
        lines += ["", "NOTE: zstd chunks: stock 7-Zip cannot unpack them; use amsrepomirror unpack."]
    return "\n".join(lines) + "\n"


def _delta_heading(manifest: BundleManifest) -> list:
    """The delta's version, its base, and what it carries, reuses and removes."""
    return [
        f"AMS package repository DELTA bundle {manifest.version}",
        "",
        "This bundle holds only what changed since its base; it cannot be unpacked on its own.",
        f"Base: the repository tree {manifest.base}",
        f"      (the bundle of {manifest.base_created or 'an unknown date'}); `amsrepomirror receipt --amshome DIR`",
        "      shows the tree an AMSHOME holds (tree_sha256).",
        "",
        f"Carried: {counted(len(manifest.files), 'new or changed file')}, {format_size(manifest.total_bytes)} "
        f"({manifest.total_bytes} bytes), in {counted(len(manifest.chunks), 'chunk')} (7z, compression {manifest.compression}).",
        f"Reused from the base (same bytes under another path, not carried): {counted(len(manifest.reused), 'file')}.",
        f"Removed: {counted(len(manifest.removed), 'file')}. After unpacking the repository holds "
        f"{counted(len(manifest.target), 'file')}",
        f"(every one with its size and sha256 in {MANIFEST_NAME}, list \"target\").",
        "",
    ]


def _delta_by_hand_commands(manifest: BundleManifest) -> list:
    """In the new tree: place reused files, remove what goes or is carried, unpack the chunks, join the
    split files, place the copies."""
    q = shlex.quote
    carried = sorted(f.path for f in manifest.files)
    lines = []
    for r in sorted(manifest.reused, key=lambda r: r.path):
        parent = r.path.rpartition("/")[0]
        lines.append(f"     {'mkdir -p ' + q(parent) + ' && ' if parent else ''}cp -- {q(r.source)} {q(r.path)}")
    for path in sorted(set(manifest.removed) | set(carried) | {c.path for c in manifest.copies}):
        lines.append(f"     rm -f -- {q(path)}")
    lines += ["     for c in \"$BUNDLE\"/*.7z; do 7z x -o. \"$c\" || break; done"]
    split = [f for f in sorted(manifest.files, key=lambda f: f.path) if len(f.parts) > 1]
    return lines + _join_commands(split) + _copy_commands(manifest)

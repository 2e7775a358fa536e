"""The transfer report (contract): what a security officer approves before a bundle crosses the gap, and checks
on the far side. Made here only, on both sides, from the bundle's manifest alone.

Two files in the bundle folder: ``transfer-report.json`` (the facts, schema ``REPORT_SCHEMA``, canonical JSON:
sorted keys, fixed separators, UTF-8) and ``TRANSFER-REPORT.html`` (the same facts as one self-contained page:
inline CSS and SVG, nothing fetched, readable with scripts off; one inline script, allowed by the page's
content-security-policy hash, adds a filter to the file table). Everything from outside (paths, versions,
reasons) is escaped, control characters shown as ``\\x1b``.

The report is made from the manifest *without* its ``report`` list (the report's own sizes and sha256), so
``bundle`` can list the report in the manifest it signs, and ``verify --transfer-report`` re-makes the very same
bytes from the manifest it carries. Only fields that survive manifest.json's round trip are read.
"""

import base64
import hashlib
import html
import json
import re
from collections.abc import Iterable
from pathlib import Path

from amsrepomirror import __version__
from amsrepomirror.bundle.format import REPORT_HTML_NAME, REPORT_JSON_NAME, BundleManifest, ReportFile
from amsrepomirror.util.fsutil import atomic_write_bytes, read_bounded
from amsrepomirror.util.jsonread import parse_json

REPORT_SCHEMA = "amsrepomirror/transfer-report/1"
#: Bytes of the largest transfer-report.json ``verify --transfer-report`` reads from a bundle.
REPORT_LIMIT = 1 << 30  # as util.jsonread's "transfer report"
#: Which platform a path is for, by the shipped [platforms] rules (defaults.cfg): fixed here, not read from a
#: site's settings, so both sides of the gap make the same report (a test keeps them equal to the shipped ones).
PLATFORM_RULES = {
    "linux": r"(^|/)linux([/._-]|$)|[._-]linux([/._-]|$)|manylinux",
    "macos": r"(^|/)(macos|darwin|osx)([/._-]|$)|[._-](macos|darwin|osx)([/._-]|$)|macosx",
    "windows": r"(^|/)(windows|win32|win64)([/._-]|$)|[._-](windows|win32|win_amd64|win64)([/._-]|$)",
}
_PLATFORMS = {name: re.compile(rule, re.IGNORECASE) for name, rule in PLATFORM_RULES.items()}
ANY_PLATFORM = "(any platform)"
TOP_LEVEL_FILES = "(top level)"


def platform_of(path: str) -> str:
    for name, pattern in _PLATFORMS.items():
        if pattern.search(path):
            return name
    return ANY_PLATFORM


def top_folder(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else TOP_LEVEL_FILES


def _records(items: Iterable, *keys: str) -> list[dict]:
    return sorted(({k: getattr(i, k) for k in keys} for i in items), key=lambda r: tuple(str(r[k]) for k in keys))


def _bytes_by(files: list, key) -> list[dict]:
    """[{name, files, bytes}] of ``files`` grouped by ``key(path)``, by name."""
    groups: dict[str, list[int]] = {}
    for f in files:
        group = groups.setdefault(key(f.path), [0, 0])
        group[0] += 1
        group[1] += f.size
    return [{"name": name, "files": n, "bytes": size} for name, (n, size) in sorted(groups.items())]


def _delta(manifest: BundleManifest) -> dict | None:
    """What a delta adds, changes and removes, with sizes (old sizes where the manifest records them)."""
    if not manifest.is_delta:
        return None
    target = {t.path: t for t in manifest.target}
    new_paths = {f.path for f in manifest.files} | {c.path for c in manifest.copies} | {r.path for r in manifest.reused}
    known = manifest.replaced_files is not None
    old = {t.path: t for t in manifest.replaced_files or []}
    changed = [{"path": p, "size": target[p].size, "sha256": target[p].sha256, "old_size": old[p].size,
                "old_sha256": old[p].sha256} for p in sorted(new_paths) if p in old]
    others = [{"path": p, "size": target[p].size, "sha256": target[p].sha256} for p in sorted(new_paths)
              if p not in old and p in target]
    removed_at = {t.path: t for t in manifest.removed_files or []}
    removed = [{"path": p, "size": removed_at[p].size if p in removed_at else None,
                "sha256": removed_at[p].sha256 if p in removed_at else None} for p in sorted(manifest.removed)]
    return {"base": manifest.base, "base_created": manifest.base_created, "dropped": sorted(manifest.dropped),
            "added": others if known else [], "changed": changed, "added_or_changed": [] if known else others,
            "removed": removed, "removed_bytes": sum(r["size"] or 0 for r in removed),
            "reused_from_base": _records(manifest.reused, "path", "size", "sha256", "source")}


def _sticks(manifest: BundleManifest) -> dict | None:
    if manifest.sticks is None:
        return None
    volumes_listed = manifest.parity.files if manifest.parity else []
    size = {c.name: c.size for c in manifest.chunks} | {f.path: f.size for f in volumes_listed}
    parity = manifest.sticks.parity or [[] for _ in manifest.sticks.chunks]
    return {"size": manifest.sticks.size,
            "sticks": [{"number": i, "chunks": list(names), "parity": list(volumes),
                        "bytes": sum(size[n] for n in [*names, *volumes])}
                       for i, (names, volumes) in enumerate(zip(manifest.sticks.chunks, parity, strict=True), start=1)]}


def report_facts(manifest: BundleManifest) -> dict:
    """The report's facts (transfer-report.json's body), from ``manifest`` alone; its ``report`` list is not read."""
    tree = manifest.tree
    return {
        "schema": REPORT_SCHEMA,
        "versions": manifest.all_versions,
        "sequence": manifest.sequence,
        "created": manifest.created,
        "tool_version": manifest.tool_version,
        "kind": "delta" if manifest.is_delta else "full",
        "signer": manifest.signer or None,
        "compression": manifest.compression,
        "chunk_size": manifest.chunk_size,
        "mirror_manifest_sha256": manifest.mirror_manifest_sha256,
        "readme_sha256": manifest.readme_sha256,
        "totals": {"carried_files": len(manifest.files), "carried_bytes": manifest.total_bytes,
                   "chunks": len(manifest.chunks), "chunk_bytes": sum(c.size for c in manifest.chunks),
                   "tree_files": len(tree), "tree_bytes": sum(t.size for t in tree),
                   "copies": len(manifest.copies), "lacking": len(manifest.lacking)},
        "bytes_by_platform": _bytes_by(manifest.files, platform_of),
        "bytes_by_folder": _bytes_by(manifest.files, top_folder),
        "delta": _delta(manifest),
        "lacking": _records(manifest.lacking, "path", "reason"),
        "sticks": _sticks(manifest),
        "chunks": [{"name": c.name, "size": c.size, "sha256": c.sha256} for c in manifest.chunks],
        "files": _records(manifest.files, "path", "size", "sha256"),
        "copies": _records(manifest.copies, "path", "size", "sha256", "source"),
        "tool_files": _records(manifest.tool, "path", "size", "sha256"),
        "parity_files": _records(manifest.parity.files if manifest.parity else [], "path", "size", "sha256"),
    }


def canonical_json(facts: dict) -> bytes:
    """The one byte form of the facts: sorted keys, no spaces, UTF-8, one final newline."""
    return (json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


# --- the page ---------------------------------------------------------------------------------------

def visible(text) -> str:
    """``text`` with every character Python calls unprintable (control, format, separator and unassigned ones, a
    space other than U+0020: look-alikes) and the backslash shown as an escape."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def esc(text) -> str:
    """Outside text as HTML text or attribute value: visible, then html.escape(quote=True)."""
    return html.escape(visible(text), quote=True)


def size_text(size: int | None) -> str:
    if size is None:
        return "unknown"
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit} ({size} B)"


_CSS = """body{font:14px/1.4 sans-serif;margin:1.5em;color:#111;max-width:80em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.5em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
td.n{text-align:right}code,.h{font-family:monospace;word-break:break-all}.h{font-size:12px}
svg text{font:12px sans-serif}.note{color:#555}@media print{#filter{display:none}}"""

#: The page's one script: shows the filter box and hides file rows that do not contain its text. Constant: no
#: outside text is in it, so its hash (in the page's content-security-policy) never changes with a bundle.
_SCRIPT = """(function(){var box=document.getElementById('filter');if(!box)return;box.hidden=false;
var input=box.querySelector('input');input.addEventListener('input',function(){var q=input.value.toLowerCase();
var rows=document.querySelectorAll('table.files tbody tr');for(var i=0;i<rows.length;i++){
rows[i].hidden=q!==''&&rows[i].textContent.toLowerCase().indexOf(q)<0;}});})();"""


def script_hash() -> str:
    """The content-security-policy source that allows ``_SCRIPT`` and nothing else."""
    return "sha256-" + base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table; ``rows`` hold cells already escaped (``esc``) or made here."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>\n" for row in rows)
    attribute = f' class="{cls}"' if cls else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>"


def _td(text, cls: str = "") -> str:
    return f'<td class="{cls}">{esc(text)}</td>' if cls else f"<td>{esc(text)}</td>"


def _chart(title: str, groups: list[dict]) -> str:
    """An inline SVG bar chart of bytes per group (labels escaped as text)."""
    if not groups:
        return f"<p>{esc(title)}: nothing carried.</p>"
    top = max(g["bytes"] for g in groups) or 1
    height = 22 * len(groups) + 10
    bars = []
    for i, g in enumerate(groups):
        y = 5 + 22 * i
        width = round(300 * g["bytes"] / top)
        bars.append(f'<text x="0" y="{y + 14}">{esc(g["name"][:40])}</text>'
                    f'<rect x="260" y="{y}" width="{width}" height="16" fill="#4a7ab5"></rect>'
                    f'<text x="{266 + width}" y="{y + 14}">{esc(size_text(g["bytes"]))}</text>')
    return (f'<figure><figcaption>{esc(title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="760" '
            f'height="{height}" role="img" aria-label="{esc(title)}">{"".join(bars)}</svg></figure>')


def _summary(facts: dict) -> str:
    t = facts["totals"]
    rows = [
        ("AMS version(s)", " + ".join(facts["versions"])),
        ("kind", facts["kind"] + (f" (bundle number {facts['sequence']} of its mirror)" if facts["sequence"] else "")),
        ("created", facts["created"] or "not recorded"),
        ("made by", f"amsrepomirror {facts['tool_version'] or '(version not recorded)'}"),
        ("signed by key", facts["signer"] or "not signed (bundle made without --sign-key)"),
        ("compression, chunk size", f"{facts['compression']}, {size_text(facts['chunk_size'])}"),
        ("mirror manifest sha256", facts["mirror_manifest_sha256"] or "not recorded"),
        ("README.txt sha256", facts["readme_sha256"] or "not recorded"),
    ]
    cells = [[f"<th>{esc(k)}</th>", _td(v)] for k, v in rows]
    cells += [[f"<th>{label}</th>", f'<td class="n" id="{ident}">{t[key]}</td>'] for label, ident, key in (
        ("files carried", "total-files", "carried_files"), ("bytes carried", "total-bytes", "carried_bytes"),
        ("chunks", "total-chunks", "chunks"), ("bytes of the chunks", "total-chunk-bytes", "chunk_bytes"),
        ("files of the tree after unpack", "tree-files", "tree_files"),
        ("bytes of the tree after unpack", "tree-bytes", "tree_bytes"),
        ("files placed as copies of carried ones", "total-copies", "copies"),
        ("listed files the bundle lacks", "total-lacking", "lacking"))]
    return "<table>" + "".join("<tr>" + "".join(r) + "</tr>\n" for r in cells) + "</table>"


def _delta_html(delta: dict | None) -> str:
    if delta is None:
        return "<h2>Full bundle</h2><p>It replaces the whole repository tree.</p>"
    out = [f"<h2>Delta</h2><p>Applies to the tree {esc(delta['base'])} (bundle made {esc(delta['base_created'] or '?')})."
           + (f" Drops the version(s) {esc(', '.join(delta['dropped']))}." if delta["dropped"] else "") + "</p>"]
    for title, key in (("Added", "added"), ("Changed", "changed"), ("Added or changed (the delta's maker did not record "
                                                                     "which)", "added_or_changed")):
        rows = delta[key]
        if key == "added_or_changed" and not rows:
            continue
        extra = ["old size", "old sha256"] if key == "changed" else []
        out.append(f"<h3>{title}: {len(rows)}</h3>" + _table(
            ["path", "size", "sha256"] + extra,
            [[_td(r["path"], "h"), _td(r["size"], "n"), _td(r["sha256"], "h")]
             + ([_td(r["old_size"], "n"), _td(r["old_sha256"], "h")] if extra else []) for r in rows]))
    out.append(f"<h3>Removed: {len(delta['removed'])} ({esc(size_text(delta['removed_bytes']))})</h3>" + _table(
        ["path", "size", "sha256"], [[_td(r["path"], "h"), _td(size_text(r["size"]), "n"),
                                      _td(r["sha256"] or "not recorded", "h")] for r in delta["removed"]]))
    if delta["reused_from_base"]:
        out.append(f"<h3>Taken from the base tree (same bytes, other path): {len(delta['reused_from_base'])}</h3>" + _table(
            ["path", "size", "sha256", "from"], [[_td(r["path"], "h"), _td(r["size"], "n"), _td(r["sha256"], "h"),
                                                 _td(r["source"], "h")] for r in delta["reused_from_base"]]))
    return "\n".join(out)


def _lacking_html(facts: dict) -> str:
    rows = facts["lacking"]
    if not rows:
        return "<h2>What the bundle lacks</h2><p>Nothing: every listed file is in it.</p>"
    return (f"<h2>What the bundle lacks: {len(rows)}</h2><p>Listed by SCM, not carried: the account was not licensed "
            "for them (HTTP 401 or 403), or <code>--platform</code> left them out.</p>"
            + _table(["path", "why"], [[_td(r["path"], "h"), _td(r["reason"])] for r in rows]))


def _sticks_html(sticks: dict | None) -> str:
    if sticks is None:
        return "<h2>Sticks</h2><p>No stick plan (made without <code>--stick-size</code>).</p>"
    return (f"<h2>Sticks: {len(sticks['sticks'])} of {esc(size_text(sticks['size']))}</h2>"
            "<p>Each stick also carries manifest.json, SHA256SUMS, README.txt, the signature, this report, tool/ and "
            "parity.par2 (those the bundle has).</p>"
            + _table(["stick", "chunks", "recovery volumes", "bytes"],
                     [[_td(s["number"], "n"), _td(" ".join(s["chunks"]), "h"), _td(" ".join(s.get("parity", [])), "h"),
                       _td(s["bytes"], "n")] for s in sticks["sticks"]]))


def _files_html(facts: dict) -> str:
    out = ['<h2>Every file</h2><p id="filter" hidden><label>Show only rows containing <input type="search">'
           "</label></p>",
           "<h3>Chunks (the files on the stick)</h3>" + _table(
               ["chunk", "size", "sha256"], [[_td(c["name"], "h"), _td(c["size"], "n"), _td(c["sha256"], "h")]
                                             for c in facts["chunks"]], "files"),
           f"<h3>Files carried in the chunks: {len(facts['files'])}</h3>" + _table(
               ["path", "size", "sha256"], [[_td(f["path"], "h"), _td(f["size"], "n"), _td(f["sha256"], "h")]
                                            for f in facts["files"]], "files")]
    if facts["copies"]:
        out.append(f"<h3>Copies placed from carried files: {len(facts['copies'])}</h3>" + _table(
            ["path", "size", "sha256", "from"], [[_td(c["path"], "h"), _td(c["size"], "n"), _td(c["sha256"], "h"),
                                                 _td(c["source"], "h")] for c in facts["copies"]], "files"))
    if facts["tool_files"]:
        out.append("<h3>The tool (tool/, installed on the far side)</h3>" + _table(
            ["path", "size", "sha256"], [[_td(t["path"], "h"), _td(t["size"], "n"), _td(t["sha256"], "h")]
                                         for t in facts["tool_files"]], "files"))
    if facts.get("parity_files"):
        out.append("<h3>Parity (PAR2 recovery files over the chunks)</h3>" + _table(
            ["path", "size", "sha256"], [[_td(t["path"], "h"), _td(t["size"], "n"), _td(t["sha256"], "h")]
                                         for t in facts["parity_files"]], "files"))
    return "\n".join(out)


def render_html(facts: dict) -> bytes:
    """TRANSFER-REPORT.html of ``facts``: one page, nothing fetched, every outside string escaped."""
    title = f"Transfer report: {' + '.join(facts['versions'])} {facts['kind']} bundle {facts['created']}"
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src '{script_hash()}'"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<title>{esc(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="note">Made from the bundle's manifest.json. On the far side, <code>amsrepomirror verify BUNDLE
--transfer-report FILE</code> makes it again from the bundle alone and says whether it is the same.</p>
{_summary(facts)}
<h2>Bytes carried</h2>
{_chart("bytes by platform", facts["bytes_by_platform"])}
{_chart("bytes by top-level folder", facts["bytes_by_folder"])}
{_delta_html(facts["delta"])}
{_lacking_html(facts)}
{_sticks_html(facts["sticks"])}
{_files_html(facts)}
<p class="note">Report schema {esc(facts["schema"])}; page made by amsrepomirror {esc(__version__)}.</p>
<script>{_SCRIPT}</script>
</body></html>
"""
    return page.encode("utf-8")


def make_report(manifest: BundleManifest) -> tuple[bytes, bytes]:
    """(transfer-report.json, TRANSFER-REPORT.html) of ``manifest``."""
    facts = report_facts(manifest)
    return canonical_json(facts), render_html(facts)


def write_report(folder: Path, manifest: BundleManifest) -> list[ReportFile]:
    """Write both files of ``manifest``'s report into ``folder``; their records for the manifest's ``report``."""
    files = []
    for name, data in zip((REPORT_JSON_NAME, REPORT_HTML_NAME), make_report(manifest), strict=True):
        atomic_write_bytes(Path(folder) / name, data)
        files.append(ReportFile(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return files


def carried_report(bundle_dir: Path, manifest: BundleManifest) -> tuple[bytes | None, bytes | None]:
    """The (transfer-report.json, TRANSFER-REPORT.html) a bundle carries, as listed in its manifest (None: not listed,
    or not readable there); read once, bounded, links not followed."""
    listed = {r.name for r in manifest.report}
    found = []
    for name in (REPORT_JSON_NAME, REPORT_HTML_NAME):
        try:
            found.append(read_bounded(Path(bundle_dir) / name, REPORT_LIMIT) if name in listed else None)
        except OSError:
            found.append(None)
    return found[0], found[1]


def canonical_form(data: bytes) -> bytes | None:
    """A carried transfer-report.json in canonical form (``canonical_json``), or None when it is no JSON object."""
    try:
        body = parse_json(data, "transfer report")
    except ValueError:
        return None
    return canonical_json(body) if isinstance(body, dict) else None

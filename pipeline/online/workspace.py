"""The mirror folder: repository files at ``<mirror>/X``, the tool's own state in ``<mirror>/.amsrepomirror/``.

State (never part of the repository): listing snapshots per run, one record per file (size,
mtime, sha256 and the server's validators, written after the file is in place), ``.part``
files of interrupted downloads, the mirror manifest, and per-run failure notes. Records and
parts are named by the sha256 of the file's path: a repository name may already be as long as
the filesystem allows, and no suffix of ours may push it over.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from amsrepomirror.util.fsutil import atomic_write_json, json_bytes, replace_without_sync
from amsrepomirror.util.jsonread import parse_json_lines, read_json
from amsrepomirror.util.paths import STATE_DIR, VERSION_PATTERN

#: Names this process among the processes of one run shared through luigid (host and pid, taken at
#: start: a forked Luigi worker names the process that started it), in each record it writes.
THIS_PROCESS = f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)  # slots: one is held per file, 100,000s of them
class FileRecord:
    """What we know of a mirror file: its content and the server validators it was fetched under."""

    size: int
    mtime_ns: int
    sha256: str
    url: str
    etag: str | None
    last_modified: str | None
    fetched_run: str = ""
    bytes_transferred: int = 0
    fetched_by: str = ""  # THIS_PROCESS of the process that fetched it (records of older versions: "")
    adopted: bool = False  # taken over from a folder wget or SCM's script made (sync.adopt_existing), not fetched

    def matches_stat(self, st: os.stat_result) -> bool:
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns

    def matches_remote(self, remote: dict, run_id: str) -> bool:
        """True when the server still serves what we have: every validator it sends agrees, and it
        sends one (ETag or Last-Modified), or this file was fetched by run ``run_id`` itself (whose
        snapshot ``remote`` is). Without a validator nothing tells a changed file from ours (a size
        alone misses a change of the same length), so a later run fetches it again."""
        unproven = remote.get("etag") is None and remote.get("last_modified") is None
        if unproven and not (run_id and self.fetched_run == run_id):  # guard: current-needs-validator
            return False
        if remote.get("size") is not None and remote["size"] != self.size:
            return False
        for key in ("etag", "last_modified"):
            if remote.get(key) is not None and remote[key] != getattr(self, key):
                return False
        return True


# Records read or written by this process, by record path: a no-op run of 10,000 files reads each
# record once instead of once per check. Processes sharing a run under a central scheduler write
# records too, so a cached record that no longer describes the file on disk is read again.
# Keyed by the record's path as a string: a Path per file would cost half a kilobyte more each.
_RECORDS: dict[str, FileRecord] = {}
_HASH_FOLDER = re.compile(r"[0-9a-f]{2}")


def _load_record(path) -> FileRecord | None:
    try:
        return FileRecord(**read_json(path, "file record"))
    except (OSError, ValueError, TypeError):
        return None


class Workspace:
    """Knows every path in a mirror folder, so tasks never build paths by hand."""

    def __init__(self, mirror: Path):
        self.mirror = Path(mirror).absolute()
        self.state = self.mirror / STATE_DIR
        self._legacy: bool | None = None  # see _holds_legacy_records
        self._state = str(self.state)  # records' and parts' paths are built as strings: a third cheaper

    def file(self, rel: str) -> Path:
        return self.mirror.joinpath(*rel.split("/"))

    def _hashed(self, folder: str, rel: str, suffix: str) -> str:
        digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{self._state}{os.sep}{folder}{os.sep}{digest[:2]}{os.sep}{digest}{suffix}"

    def record_path(self, rel: str) -> Path:
        return Path(self._hashed("records", rel, ".json"))

    def part_path(self, rel: str) -> Path:
        return Path(self._hashed("parts", rel, ".part"))

    def _legacy_record_path(self, rel: str) -> Path:
        """Where records lived before their names were hashed: ``records/<path>.json``."""
        return self.state.joinpath("records", *rel.split("/")).with_name(rel.rsplit("/", 1)[-1] + ".json")

    def run_dir(self, run_id: str) -> Path:
        return self.state / "runs" / run_id

    def snapshot_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "listing.json"

    def run_manifest_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "manifest.json"

    def failures_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "failures.jsonl"

    def manifest_path(self, version: str) -> Path:
        """The latest verified manifest of ``version`` (what ``bundle --offline`` uses)."""
        return self.state / f"{version}.manifest.json"

    def selection_path(self, version: str) -> Path:
        """The paths the last listing of ``version`` selected: what ``--delete-unlisted`` of any version keeps."""
        return self.state / f"{version}.selection.json"

    def union_manifest_path(self, versions) -> Path:
        """The manifest of several versions bundled together (kept apart from the per-version manifests)."""
        return self.state / "union" / f"{'+'.join(versions)}.manifest.json"

    def held_versions(self) -> list[str]:
        """The AMS versions this mirror holds: each one with a recorded selection or a verified manifest."""
        names = [p.name for p in self.state.glob("*.json")]
        found = {n[:-len(suffix)] for n in names for suffix in (".selection.json", ".manifest.json") if n.endswith(suffix)}
        return sorted(v for v in found if VERSION_PATTERN.fullmatch(v))

    def read_record(self, rel: str) -> FileRecord | None:
        key = self._hashed("records", rel, ".json")
        if key not in _RECORDS:
            record = _load_record(key) or (self._adopt_legacy_record(rel) if self._holds_legacy_records() else None)
            if record is None:
                return None
            _RECORDS[key] = record
        return _RECORDS[key]

    def _holds_legacy_records(self) -> bool:
        """Whether ``records/`` holds anything beside the two-hex-digit folders of hashed names (looked
        at once: a first run would otherwise look for each missing record under both layouts, each check)."""
        if self._legacy is None:
            try:
                with os.scandir(self.state / "records") as entries:
                    self._legacy = any(not (e.is_dir(follow_symlinks=False) and _HASH_FOLDER.fullmatch(e.name))
                                       for e in entries)
            except OSError:
                self._legacy = False
        return self._legacy

    def _adopt_legacy_record(self, rel: str) -> FileRecord | None:
        """A record of the earlier layout, moved to its hashed name, so an upgrade fetches nothing again."""
        legacy = self._legacy_record_path(rel)
        record = _load_record(legacy)
        if record is not None:
            self.write_record(rel, record)
            legacy.unlink()
        return record

    def write_record(self, rel: str, record: FileRecord, *, durable: bool = True) -> None:
        """Write the record atomically and durably; ``durable=False``: atomically, and the caller makes
        it durable (with others, at once)."""
        key = self._hashed("records", rel, ".json")
        if durable:
            atomic_write_json(Path(key), asdict(record))
        else:
            replace_without_sync(key, json_bytes(asdict(record)))
        _RECORDS[key] = record

    def drop_record(self, rel: str) -> None:
        key = self._hashed("records", rel, ".json")
        _RECORDS.pop(key, None)
        try:
            os.unlink(key)
        except FileNotFoundError:
            pass
        if self._holds_legacy_records():
            with contextlib.suppress(OSError):  # absent, or a name the earlier layout could not hold
                self._legacy_record_path(rel).unlink()

    def clear_way(self, rel: str, folders: set[str] | None = None) -> None:
        """Make room for the file ``rel`` when a path changed between file and folder upstream.

        A file where one of its folders must be, or a folder where it must go, is no longer listed
        (a listing never names a path as both): it goes, with its records. Downloads into one new
        folder may race here, which is safe: unlink() never removes the folder another one made.
        ``folders``: mirror folders already known to be folders in this run (their ancestors are not
        checked again).
        """
        parts = rel.split("/")
        known = folders is not None and "/".join(parts[:-1]) in folders
        for depth in range(1, 1 if known else len(parts)):
            folder = "/".join(parts[:depth])
            if self.file(folder).is_dir():
                continue
            try:
                os.unlink(self.file(folder))
            except FileNotFoundError:
                pass
            except OSError:
                if not self.file(folder).is_dir():
                    raise
            self.drop_record(folder)
            break
        target = self.file(rel)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(target).st_mode):
                for inner in list(self.repository_files(under=rel)):
                    self.drop_record(inner)
                shutil.rmtree(target)

    def current_record(self, rel: str) -> FileRecord | None:
        """The record, if the file on disk is still exactly the one it describes (size and mtime)."""
        try:
            st = os.stat(self.file(rel))  # first: a file not yet fetched costs no look for its record
        except OSError:
            return None
        record = self.read_record(rel)
        if record is None:
            return None
        if not record.matches_stat(st):  # perhaps another process fetched it since: its record is on disk
            _RECORDS.pop(self._hashed("records", rel, ".json"), None)
            record = self.read_record(rel)
        return record if record is not None and record.matches_stat(st) else None

    def drop_parts(self) -> None:
        shutil.rmtree(self.state / "parts", ignore_errors=True)

    def part_bytes(self, rel: str) -> int:
        """Bytes a partial download holds (ranges are written at their offsets: holes do not count)."""
        try:
            st = self.part_path(rel).stat()
        except OSError:
            return 0
        return min(st.st_size, st.st_blocks * 512)

    def note_failure(self, run_id: str, kind: str, message: str, path: str = "") -> None:
        """Append a failure for the run summary; safe from several processes (O_APPEND, one write)."""
        target = self.failures_path(run_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"kind": kind, "path": path, "message": message}) + "\n"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def failures(self, run_id: str) -> list[dict]:
        try:
            data = self.failures_path(run_id).read_bytes()
        except OSError:
            return []
        return [f for f in parse_json_lines(data, "failure record") if isinstance(f, dict)]

    def repository_files(self, under: str = "") -> Iterator[str]:
        """Relative paths of every file in the mirror (or in its folder ``under``) outside the state folder."""
        for dirpath, dirnames, filenames in os.walk(self.file(under) if under else self.mirror):
            if Path(dirpath) == self.mirror and STATE_DIR in dirnames:
                dirnames.remove(STATE_DIR)
            rel_dir = os.path.relpath(dirpath, self.mirror)
            for name in filenames:
                yield name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"

    def prune_runs(self, keep: int = 5) -> None:
        """Keep the state of the last ``keep`` runs only."""
        runs = sorted(p for p in (self.state / "runs").glob("*") if p.is_dir())
        for old in runs[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

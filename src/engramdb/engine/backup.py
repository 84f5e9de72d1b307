"""Online backup and offline restore of a data directory (docs/backup.md).

A backup is a directory::

    manifest.json        what the backup holds, written last (its presence marks a complete backup)
    db/...               a RocksDB checkpoint: every record, edge, key and the changelog, at one point
    indexes/<id>/...     the index snapshots of each collection, each with its watermark

**One point.** The checkpoint is the point the backup is consistent at: every
write acknowledged before :func:`create_backup` started is in it, none is half
in it (a write is one atomic ``WriteBatch``). The index snapshots shipped with
it are older (each contains the changelog up to its watermark); restoring is a
normal open, which loads each snapshot and replays the changelog after its
watermark from the checkpoint, exactly as after a crash. So that the
checkpoint still holds those changelog entries, every collection's snapshot
lock is held from the moment its files are taken until the checkpoint exists:
no snapshot is written and no watermark moves, and the changelog is trimmed
only up to the oldest watermark of all collections (``Database.trim_changelog``),
which is then at most the one shipped. A snapshot that is unusable anyway
(missing, damaged, or its changelog gone) is rebuilt from the records at open.

**No shared files.** The checkpoint and the index files are first hard-linked
into a staging directory inside the data directory (milliseconds, so the
locks above are held briefly), then copied to the destination while their
SHA-256 is computed: a backup never shares an inode with the live data, even
on the same file system.

**Restore** verifies the manifest (format, version, checksum), copies every
file into a new sibling of the data directory while checking its size and
SHA-256, opens the copied RocksDB read-only, and only then swaps it in with
renames: the data directory is at every moment either the old one or the
restored one, never half of each.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from engramdb import validation
from engramdb._version import __version__
from engramdb.errors import (
    AlreadyExists,
    CorruptData,
    EngramError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StorageFull,
)
from engramdb.storage import keyspace

if TYPE_CHECKING:
    from engramdb.engine.database import Database

log = logging.getLogger("engramdb.backup")

FORMAT = "engramdb-backup"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# A manifest lists one line per file (RocksDB tables, index files): a few MB at most; anything
# larger is not one of ours and is not read into memory.
MAX_MANIFEST_BYTES = 64 << 20
MAX_LISTED_BACKUPS = 1000
_CHUNK = 1 << 20
_STAGING_PREFIX = ".backup-staging-"
_PARTIAL_RE = re.compile(r"^\..+\.partial-[0-9a-f]{8}$")
# Only these two trees are part of a data directory's state (see Database).
_TOP_DIRS = ("db", "indexes")
# RocksDB files a checkpoint does not need (its info log, its lock).
_SKIP_DB_FILES = re.compile(r"^(LOCK|LOG(\.old\..*)?)$")
_TEXT_DIR = "text"
_TEXT_WATERMARK = "engramdb-text-watermark.json"
_TEXT_META = "meta.json"
# Hidden files (tantivy's locks and .managed.json, the temporaries of its atomic writes) and every
# other temporary file of a snapshot being written.
_SKIP_INDEX_FILE = re.compile(r"^(\..*|.*\.tmp|.*\.temp)$")
_TEXT_COPY_ATTEMPTS = 3

Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``, called as files are copied or checked."""

_running_lock = threading.Lock()
_running: set[str] = set()


# ------------------------------------------------------------------ errors
def _corrupt(message: str) -> CorruptData:
    return CorruptData(
        f"{message}. The backup is damaged: do not restore it; use another backup", code="backup_corrupt"
    )


def _incomplete(message: str) -> CorruptData:
    return CorruptData(
        f"{message}. The backup is incomplete (interrupted while it was written, or files were lost): "
        "do not restore it; use another backup",
        code="backup_incomplete",
    )


def _invalid_manifest(src: Path, why: str) -> CorruptData:
    return CorruptData(
        f"{src / MANIFEST_FILE} is not a valid EngramDB backup manifest ({why}); use another backup",
        code="backup_manifest_invalid",
    )


# ------------------------------------------------------------------ create
@contextlib.contextmanager
def _one_at_a_time(data_dir: Path) -> Iterator[None]:
    key = str(data_dir.resolve())
    with _running_lock:
        if key in _running:
            raise FailedPrecondition(
                "a backup of this data directory is already running; wait for it to finish and retry",
                code="backup_in_progress",
            )
        _running.add(key)
    try:
        yield
    finally:
        with _running_lock:
            _running.discard(key)


def _is_within(path: Path, parent: Path) -> bool:
    p, q = path.resolve(), parent.resolve()
    return p == q or q in p.parents


def check_destination(dest: Path, data_dir: Path) -> None:
    """Refuse a destination that exists with content, or that lies inside the data directory (or holds it)."""
    if _is_within(dest, data_dir) or _is_within(data_dir, dest):
        raise InvalidArgument(
            f"the backup destination {dest} must be outside the data directory {data_dir} (and not contain it): "
            "a restore replaces the data directory with everything in it",
            code="invalid_backup_destination",
        )
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise AlreadyExists(f"{dest} exists already; choose a new name for the backup", code="backup_exists")


def create_backup(
    db: Database, dest: str | os.PathLike[str], *, progress: Progress | None = None, min_free_mb: int = 0
) -> dict[str, Any]:
    """Back up the open database ``db`` into the new directory ``dest``; returns the manifest's summary.

    Works while the database serves reads and writes. ``dest`` must not exist
    (or be empty) and must lie outside the data directory. An interrupted
    backup leaves a hidden ``.<name>.partial-*`` sibling and never a
    directory named ``dest`` without a manifest.
    """
    dest = Path(dest)
    data_dir = Path(db.path)
    with _one_at_a_time(data_dir):
        check_destination(dest, data_dir)
        _remove_stale_staging(data_dir)
        staging = data_dir / f"{_STAGING_PREFIX}{secrets.token_hex(8)}"
        staging.mkdir()
        partial: Path | None = None
        stack = contextlib.ExitStack()
        try:
            collections = _stage(db, staging)
            seq = checkpoint_seq(staging / "db")
            for c in collections:
                wm = c["index_watermark"]
                if wm is not None and wm > seq:
                    # Cannot happen with the locks _stage holds; were it ever so, the snapshot would claim
                    # changes the checkpoint lacks, and the restored node would rebuild it anyway.
                    log.warning("backup: index snapshot of collection %s is ahead of the checkpoint", c["id"])
                    shutil.rmtree(staging / "indexes" / str(c["id"]), ignore_errors=True)
                    c["index_watermark"] = None
            dest.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_partials(dest.parent)
            names = _files_under(staging)
            sizes = {n: (staging / n).stat().st_size for n in names}
            total = sum(sizes.values())
            _check_free_space(dest.parent, total, min_free_mb)
            partial = dest.parent / f".{dest.name}.partial-{secrets.token_hex(4)}"
            partial.mkdir()
            # Held until the copy ends: a later create removes only partials no live process holds.
            partial_fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY)
            stack.callback(os.close, partial_fd)
            fcntl.flock(partial_fd, fcntl.LOCK_EX)
            done = 0
            files = []
            for n in names:
                size, digest = _copy(staging / n, partial / n, progress, done, total)
                done += size
                files.append({"path": n, "size": size, "sha256": digest})
            manifest: dict[str, Any] = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "engramdb_version": __version__,
                "created_at": time.time(),
                "seq": seq,
                "node_id": db.settings.node_id,
                "collections": collections,
                "bytes": done,
                "files": files,
            }
            manifest["checksum"] = _manifest_checksum(manifest)
            _write_durably(partial / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
            _fsync_tree(partial)
            if dest.is_dir():
                dest.rmdir()  # empty (checked above): the rename below needs the name free
            os.rename(partial, dest)
            partial = None
            _fsync_dir(dest.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            stack.close()
    log.info(
        "backup written to %s: %d files, %d bytes, consistent at changelog sequence %d", dest, len(files), done, seq
    )
    return summary(dest.name, manifest)


def _remove_stale_partials(directory: Path) -> None:
    """``.NAME.partial-*`` directories of killed backups: no process holds their lock (a live backup does)."""
    for entry in os.scandir(directory):
        if not (_PARTIAL_RE.match(entry.name) and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a backup is writing it right now
        finally:
            os.close(fd)
        log.info("backup: removing %s, left by a backup that was interrupted", entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)


def _check_free_space(directory: Path, needed: int, min_free_mb: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed + min_free_mb * (1 << 20):
        raise StorageFull(
            f"the backup needs {needed >> 20} MiB and {directory}'s file system has {free >> 20} MiB free "
            f"(keeping server.min_free_disk_mb = {min_free_mb} MiB free); free space there, or delete old backups",
            code="backup_no_space",
        )


def _remove_stale_staging(data_dir: Path) -> None:
    """Staging directories of a backup that was killed (only one backup of a directory runs at a time)."""
    for entry in data_dir.iterdir():
        if entry.name.startswith(_STAGING_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _stage(db: Database, staging: Path) -> list[dict[str, Any]]:
    """Link every collection's snapshot files and take the checkpoint, under every snapshot lock."""
    colls = sorted(db.collections(), key=lambda c: c.id)
    out: list[dict[str, Any]] = []
    with contextlib.ExitStack() as held:
        # In one order (by id); no other thread holds two of these locks, so this cannot deadlock.
        for c in colls:
            held.enter_context(c.indexes.hold_snapshot_files())
        for c in colls:
            target = staging / "indexes" / str(c.id)
            wm = _link_index_files(Path(c.index_dir), target)
            out.append({"tenant": c.tenant, "name": c.name, "id": c.id, "index_watermark": wm})
        db.store.checkpoint(staging / "db")
    return out


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(src, dst)  # a file system without hard links


def _link_index_files(src: Path, dst: Path) -> int | None:
    """Link a collection's snapshot files into ``dst``; returns the changelog sequence they cover (None: none).

    The snapshot lock is held: the vector snapshot and the text watermark do
    not change. The text index may still commit and merge in the background,
    so its files are taken watermark first, then ``meta.json``, then the
    segments, and the result is checked like an open checks it; a copy that
    raced a merge is taken again, and after a few failures left out (the
    restored node rebuilds the text index from the records).
    """
    from engramdb.index.text import TextIndex, check_index_files
    from engramdb.index.vector import VectorIndex

    if not src.is_dir():
        return None
    dst.mkdir(parents=True)
    try:
        for entry in os.scandir(src):
            if entry.is_file(follow_symlinks=False) and not _SKIP_INDEX_FILE.match(entry.name):
                _link(Path(entry.path), dst / entry.name)
        watermark = VectorIndex.stored_watermark(dst)
    except (OSError, EngramError, ValueError, KeyError, TypeError) as e:
        # No sound vector snapshot (none yet, or dropped meanwhile): ship nothing of this collection.
        log.info("backup: no usable index snapshot in %s (%s); a restore rebuilds it", src, e)
        shutil.rmtree(dst, ignore_errors=True)
        return None
    text_src = src / _TEXT_DIR
    if not text_src.is_dir():
        return watermark
    text_dst = dst / _TEXT_DIR
    for attempt in range(_TEXT_COPY_ATTEMPTS):
        shutil.rmtree(text_dst, ignore_errors=True)
        text_dst.mkdir()
        try:
            for first in (_TEXT_WATERMARK, _TEXT_META):
                if (text_src / first).exists():
                    _link(text_src / first, text_dst / first)
            for entry in os.scandir(text_src):
                name = entry.name
                if name in (_TEXT_WATERMARK, _TEXT_META) or _SKIP_INDEX_FILE.match(name):
                    continue
                if entry.is_file(follow_symlinks=False):
                    _link(Path(entry.path), text_dst / name)
            keep = check_index_files(text_dst) | {_TEXT_WATERMARK, _TEXT_META}
            for entry in os.scandir(text_dst):
                if entry.name not in keep:  # a segment still being written or merged: no commit names it
                    os.unlink(entry.path)
            return min(watermark, TextIndex.stored_watermark(text_dst))
        except (OSError, EngramError) as e:
            log.info("backup: text index of %s changed while it was copied (%s); attempt %d", src, e, attempt + 1)
    shutil.rmtree(text_dst, ignore_errors=True)
    log.warning("backup: the text index in %s could not be copied consistently; a restore rebuilds it", src)
    return watermark


def checkpoint_seq(db_dir: Path) -> int:
    """Open a RocksDB checkpoint read-only; the newest changelog sequence in it (0 if the changelog is empty)."""
    from rocksdict import AccessType, Options, Rdict

    try:
        rdb = Rdict(
            str(db_dir),
            options=Options(raw_mode=True),
            column_families={name: Options(raw_mode=True) for name in keyspace.COLUMN_FAMILIES},
            access_type=AccessType.read_only(),
        )
    except Exception as e:
        raise _corrupt(f"the RocksDB checkpoint in {db_dir} cannot be opened ({e})") from None
    try:
        cf = rdb.get_column_family("changes")
        it = cf.iter()
        try:
            it.seek_to_last()
            last = bytes(it.key()) if it.valid() else None
            it.status()
        finally:
            del it
        del cf
    except Exception as e:
        raise _corrupt(f"the RocksDB checkpoint in {db_dir} cannot be read ({e})") from None
    finally:
        rdb.close()
    return keyspace.parse_seq(last) if last else 0


# ------------------------------------------------------------------- files
def _files_under(root: Path) -> list[str]:
    """Relative paths (with '/') of the regular files to back up under ``root``, sorted."""
    out = []
    for top in _TOP_DIRS:
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root)
            for f in sorted(filenames):
                if top == "db" and _SKIP_DB_FILES.match(f):
                    continue
                out.append((rel / f).as_posix())
    return out


def _copy(
    src: Path, dst: Path, progress: Progress | None, done: int, total: int, *, expect: str | None = None
) -> tuple[int, str]:
    """Copy one file, fsynced, returning its size and SHA-256; ``expect`` fails a mismatch before it is used."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    last_report = 0.0
    with _open_regular(src) as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
            if progress is not None and time.monotonic() - last_report >= 0.1:
                last_report = time.monotonic()
                progress(done + size, total)
        fout.flush()
        os.fsync(fout.fileno())
    digest = h.hexdigest()
    if expect is not None and digest != expect:
        raise _corrupt(f"{src} does not match its checksum in the manifest")
    if progress is not None:
        progress(done + size, total)
    return size, digest


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file and no symbolic link (checked by the caller's tree walk)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _corrupt(f"{path} is a symbolic link; a backup holds regular files only") from None
        raise
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise _corrupt(f"{path} is not a regular file; a backup holds regular files only")
    return f


def _hash(path: Path, progress: Progress | None, done: int, total: int) -> str:
    h = hashlib.sha256()
    size = 0
    last_report = 0.0
    with _open_regular(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if progress is not None and time.monotonic() - last_report >= 0.1:
                last_report = time.monotonic()
                progress(done + size, total)
    return h.hexdigest()


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (the files were fsynced as they were written)."""
    for dirpath, _, _ in os.walk(root):
        _fsync_dir(Path(dirpath))


# ---------------------------------------------------------------- manifest
def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _version_tuple(v: Any) -> tuple[int, ...] | None:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", v) if isinstance(v, str) else None
    return tuple(int(x) for x in m.groups()) if m else None


def _safe_relpath(p: Any) -> bool:
    if not isinstance(p, str) or not p or "\\" in p or "\x00" in p or p.startswith("/"):
        return False
    parts = p.split("/")
    return parts[0] in _TOP_DIRS and len(parts) >= 2 and all(part not in ("", ".", "..") for part in parts)


def read_manifest(src: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed, checked manifest of the backup at ``src`` (no file is read but the manifest).

    Raises ``backup_not_found`` (NotFound), ``backup_incomplete`` (no manifest),
    ``backup_manifest_invalid`` (unreadable, wrong shape, checksum mismatch,
    unsafe paths) or ``backup_version_mismatch`` (FailedPrecondition).
    """
    src = Path(src)
    # The backup itself may not be a link (list_backups never shows one): it would lead anywhere.
    if src.is_symlink() or not src.is_dir():
        raise NotFound(f"no backup at {src} (a backup is a directory, not a symbolic link)", code="backup_not_found")
    mf = src / MANIFEST_FILE
    try:
        with _open_regular(mf) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise _incomplete(f"{src} has no {MANIFEST_FILE}") from None
    except OSError as e:
        raise _invalid_manifest(src, f"unreadable: {e.strerror}") from None
    except CorruptData as e:
        raise _invalid_manifest(src, "a symbolic link or not a regular file") from e
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _invalid_manifest(src, f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        m = json.loads(raw)
    except ValueError as e:
        raise _invalid_manifest(src, f"not JSON: {e}") from None
    except RecursionError:
        raise _invalid_manifest(src, "not JSON: nested too deeply") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _invalid_manifest(src, "not an EngramDB backup manifest")
    if m.get("checksum") != _manifest_checksum(m):
        raise _invalid_manifest(src, "its checksum does not match its content: it was damaged or edited")
    fv = m.get("format_version")
    if fv != FORMAT_VERSION:
        raise FailedPrecondition(
            f"the backup at {src} has format version {fv!r}; this EngramDB ({__version__}) reads version "
            f"{FORMAT_VERSION} only: restore it with the EngramDB version that wrote it "
            f"({m.get('engramdb_version')!r})",
            code="backup_version_mismatch",
        )
    theirs, ours = _version_tuple(m.get("engramdb_version")), _version_tuple(__version__)
    if theirs is None:
        raise _invalid_manifest(src, "engramdb_version is missing or malformed")
    if ours is not None and theirs > ours:
        raise FailedPrecondition(
            f"the backup at {src} was written by EngramDB {m['engramdb_version']}, newer than this one "
            f"({__version__}), whose data format this version may not read: restore it with EngramDB "
            f"{m['engramdb_version']} or newer",
            code="backup_version_mismatch",
        )
    files = m.get("files")
    ok = isinstance(files, list) and all(
        isinstance(f, dict)
        and _safe_relpath(f.get("path"))
        and isinstance(f.get("size"), int)
        and f["size"] >= 0
        and isinstance(f.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
        for f in files
    )
    if not ok or not isinstance(m.get("seq"), int) or not isinstance(m.get("created_at"), int | float):
        raise _invalid_manifest(src, "its file list, seq or created_at is malformed")
    assert isinstance(files, list)
    paths = [f["path"] for f in files]
    if len(set(paths)) != len(paths) or not any(p.startswith("db/") for p in paths):
        raise _invalid_manifest(src, "its file list repeats a file or holds no database")
    return m


def _check_no_links(src: Path) -> None:
    """Refuse a backup holding anything but directories and regular files: a link would make verify hash, and
    restore copy into the data directory, whatever file it points to."""
    for root, dirs, files in os.walk(src):  # never follows a link: a linked directory is listed, not entered
        for n in dirs + files:
            p = os.path.join(root, n)
            mode = os.lstat(p).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise _corrupt(
                    f"{os.path.relpath(p, src)} in {src} is a symbolic link or special file; "
                    "a backup holds regular files and directories only"
                )


def _check_files_present(src: Path, m: dict[str, Any]) -> None:
    """Every file the manifest lists exists with its size (cheap; catches a partial or truncated copy)."""
    _check_no_links(src)
    for f in m["files"]:
        p = src / f["path"]
        try:
            size = p.lstat().st_size
        except FileNotFoundError:
            raise _incomplete(f"{f['path']} is missing from {src}") from None
        if size != f["size"]:
            raise _corrupt(f"{f['path']} in {src} has {size} bytes, the manifest says {f['size']} (truncated?)")


def summary(name: str, m: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a backup."""
    return {
        "name": name,
        "status": "complete",
        "created_at": m["created_at"],
        "seq": m["seq"],
        "engramdb_version": m["engramdb_version"],
        "bytes": sum(f["size"] for f in m["files"]),
        "files": len(m["files"]),
    }


# ------------------------------------------------------------------ verify
def verify_backup(src: str | os.PathLike[str], *, progress: Progress | None = None) -> dict[str, Any]:
    """Check a backup completely: manifest, every file's size and SHA-256, and that its RocksDB opens.

    Returns the summary; raises ``backup_corrupt`` / ``backup_incomplete`` /
    ``backup_manifest_invalid`` (CorruptData), ``backup_version_mismatch``
    (FailedPrecondition) or ``backup_not_found`` (NotFound). Reads only.
    """
    src = Path(src)
    m = read_manifest(src)
    _check_files_present(src, m)
    total = sum(f["size"] for f in m["files"])
    done = 0
    for f in m["files"]:
        if _hash(src / f["path"], progress, done, total) != f["sha256"]:
            raise _corrupt(f"{f['path']} in {src} does not match its checksum in the manifest")
        done += f["size"]
        if progress is not None:
            progress(done, total)
    seq = checkpoint_seq(src / "db")
    if seq != m["seq"]:
        raise _corrupt(f"the database in {src} ends at changelog sequence {seq}, the manifest says {m['seq']}")
    return summary(src.name, m)


# ------------------------------------------------------------------ list
def list_backups(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The backups in ``directory`` (by name; at most 1000), each with a cheap status from its manifest only."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    names = sorted(
        e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False) and validation.NAME_RE.match(e.name)
    )
    for name in names[:MAX_LISTED_BACKUPS]:
        try:
            out.append(summary(name, read_manifest(d / name)))
        except EngramError as e:
            status = "incomplete" if e.code == "backup_incomplete" else "invalid"
            out.append({"name": name, "status": status, "problem": e.message})
        except Exception as e:  # one unreadable entry must not hide the other backups
            log.warning("backup %s in %s cannot be read: %r", name, d, e)
            out.append({"name": name, "status": "invalid", "problem": f"cannot be read ({type(e).__name__})"})
    return out


def backup_path(directory: Path, name: str) -> Path:
    """Where the backup called ``name`` lives in the operator's backup directory (names only, never paths)."""
    validation.name(name, "backup name")
    return directory / name


# ------------------------------------------------------------------ restore
def data_dir_in_use(data_dir: Path) -> bool:
    """Whether a process holds the RocksDB lock of ``data_dir`` (a server or an embedded database runs on it).

    Read from ``/proc/locks`` where there is one: opening the lock file to
    test it and closing it again would drop the POSIX lock of a database this
    very process holds on it (POSIX releases a process's record locks on any
    close of the file).
    """
    lock = data_dir / "db" / "LOCK"
    try:
        st = os.stat(lock)
    except OSError:
        return False
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            table = f.read()
    except OSError:  # pragma: no cover - not Linux
        return _lock_held_elsewhere(lock)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in table.splitlines():
        for field in line.split():
            parts = field.split(":")
            if len(parts) == 3 and all(parts):
                try:
                    if (int(parts[0], 16), int(parts[1], 16), int(parts[2])) == want:
                        return True
                except ValueError:
                    continue
    return False


def _lock_held_elsewhere(lock: Path) -> bool:  # pragma: no cover - not Linux
    import fcntl

    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def restore_backup(
    src: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Restore the backup at ``src`` as the data directory ``data_dir`` (no process may have it open).

    Refuses a backup that fails any check of :func:`verify_backup`, and a
    non-empty ``data_dir`` unless ``force`` (``data_dir_not_empty``). The
    files are copied into a new sibling directory and checked there; only
    then is ``data_dir`` replaced, by renames. Returns the backup's summary.
    """
    src, data_dir = Path(src), Path(data_dir)
    m = read_manifest(src)
    _check_files_present(src, m)
    if data_dir.exists() and not data_dir.is_dir():
        raise FailedPrecondition(f"{data_dir} exists and is not a directory", code="data_dir_not_empty")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if data_dir_in_use(data_dir):
            raise FailedPrecondition(
                f"the data directory {data_dir} is in use by another process; stop the server first",
                code="data_dir_locked",
            )
        if not force:
            raise FailedPrecondition(
                f"the data directory {data_dir} is not empty; restoring would replace everything in it. "
                "Restore into a new directory, or pass --force to replace it",
                code="data_dir_not_empty",
            )
    if _is_within(src, data_dir):
        raise InvalidArgument(
            f"the backup {src} lies inside the data directory {data_dir} it would replace; move it out first",
            code="invalid_backup_destination",
        )
    parent = data_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{data_dir.name}.restore-{secrets.token_hex(4)}"
    old = parent / f".{data_dir.name}.old-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        total = sum(f["size"] for f in m["files"])
        done = 0
        for f in m["files"]:
            size, _ = _copy(src / f["path"], tmp / f["path"], progress, done, total, expect=f["sha256"])
            done += size
        seq = checkpoint_seq(tmp / "db")
        if seq != m["seq"]:
            raise _corrupt(f"the database in {src} ends at changelog sequence {seq}, the manifest says {m['seq']}")
        (tmp / "indexes").mkdir(exist_ok=True)
        _fsync_tree(tmp)
        if data_dir.exists():
            # Checked again at the last moment: a server may have started on it meanwhile.
            if data_dir_in_use(data_dir):
                raise FailedPrecondition(
                    f"the data directory {data_dir} is in use by another process; stop the server first",
                    code="data_dir_locked",
                )
            os.rename(data_dir, old)
        try:
            os.rename(tmp, data_dir)
        except OSError:
            if old.exists():
                os.rename(old, data_dir)  # put the old one back: never no data directory
            raise
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    log.info("restored %s into %s (changelog sequence %d)", src, data_dir, m["seq"])
    return summary(src.name, m)

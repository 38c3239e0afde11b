"""Recovery points: a versioned store of copies of files and folders, and atomic restores from
it (checkpoint and rollback steps)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftml.errors import ActionError


@dataclass(frozen=True)
class Checkpoint:
    name: str
    version: str
    created: float
    good: bool
    paths: tuple[str, ...]
    path: Path  # the version's folder in the store

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


class RecoveryPoints:
    """A versioned store of copies of files and folders, and atomic restores from it.

    Layout: ``root/NAME/v000001/{manifest.json, data/0, data/1, ..., GOOD}``. A checkpoint
    is written into a temporary folder and renamed into place, so it exists whole or not
    at all. A rollback stages each restored path beside its target, checks it, then swaps
    it in with one atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere
    ``os.replace`` for files and two renames for folders). A journal makes an interrupted
    rollback finish on the next call: every target holds its old or its new content,
    never a mix.

    ``hook(phase)`` is called at 'staged' and 'swapped:<i>' so tests can interrupt there.
    """

    def __init__(self, root: str | Path, keep: int = 20,
                 hook: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.keep = keep
        self.hook = hook

    # -- checkpoints -----------------------------------------------------------------

    def create(self, name: str, paths: Iterable[str | Path], *, good: bool = False,
               at: float | None = None) -> Checkpoint:
        """Copy ``paths`` (files or folders) into a new version of checkpoint ``name``."""
        base = self._base(name)
        self.resume(name)
        sources = [Path(p).absolute() for p in paths]
        for src in sources:
            if not src.exists():
                raise ActionError(f"cannot checkpoint {src}: it does not exist", where=name,
                                  hint="fix the checkpoint paths in the playbook")
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
        try:
            entries = []
            for i, src in enumerate(sources):
                stored = tmp / "data" / str(i)
                stored.parent.mkdir(parents=True, exist_ok=True)
                _copy(src, stored)
                entries.append({"source": str(src), "stored": f"data/{i}",
                                "type": "dir" if src.is_dir() and not src.is_symlink()
                                else "file", "digest": _digest(stored)})
            created = time.time() if at is None else float(at)
            manifest = {"format": 1, "name": name, "created": created, "entries": entries}
            _write_json(tmp / "manifest.json", manifest)
            _fsync_tree(tmp)
            version = self._publish(base, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if good:
            self.mark_good(name, version)
        self._prune(name)
        return self.get(name, version)

    def mark_good(self, name: str, version: str | None = None) -> Checkpoint:
        """Mark a checkpoint (default: the newest) as a known good state to roll back to."""
        cp = self.get(name, version) if version else self._newest(name)
        _write_json(cp.path / "GOOD", {"marked": time.time()})
        return self.get(name, cp.version)

    def checkpoints(self, name: str) -> list[Checkpoint]:
        base = self._base(name)
        if not base.is_dir():
            return []
        versions = sorted(p.name for p in base.iterdir()
                          if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit())
        return [self.get(name, v) for v in versions]

    def get(self, name: str, version: str) -> Checkpoint:
        path = self._base(name) / version
        manifest_path = path / "manifest.json"
        if "/" in version or version.startswith(".") or not manifest_path.is_file():
            raise ActionError(f"no checkpoint {name}/{version}", where=str(self.root),
                              hint="list them with RecoveryPoints.checkpoints(name)")
        manifest = json.loads(manifest_path.read_text())
        return Checkpoint(name=name, version=version, created=manifest["created"],
                          good=(path / "GOOD").exists(),
                          paths=tuple(e["source"] for e in manifest["entries"]), path=path)

    def latest_good(self, name: str) -> Checkpoint | None:
        good = [cp for cp in self.checkpoints(name) if cp.good]
        return good[-1] if good else None

    def check(self, cp: Checkpoint) -> None:
        """Raise ActionError unless every stored file matches the manifest's checksums."""
        for entry in self._manifest(cp)["entries"]:
            stored = cp.path / entry["stored"]
            if not stored.exists() and not stored.is_symlink():
                raise ActionError(f"checkpoint {cp.ref} is damaged: {entry['stored']} is missing",
                                  where=str(cp.path), hint="roll back to another version")
            if _digest(stored) != entry["digest"]:
                raise ActionError(f"checkpoint {cp.ref} is damaged: checksums of "
                                  f"{entry['stored']} differ from its manifest",
                                  where=str(cp.path), hint="roll back to another version")

    # -- rollback ----------------------------------------------------------------------

    def rollback(self, name: str, version: str | None = None) -> Checkpoint:
        """Restore ``version`` (default: the latest good checkpoint) over its original paths."""
        self.resume(name)
        if version is not None:
            cp = self.get(name, version)
        else:
            cp = self.latest_good(name)
            if cp is None:
                raise ActionError(f"no checkpoint of {name!r} is marked good",
                                  where=str(self._base(name)),
                                  hint="mark one good, or roll back to a named version")
        self.check(cp)  # before touching anything
        tx = secrets.token_hex(4)
        entries = []
        for entry in self._manifest(cp)["entries"]:
            target = Path(entry["source"])
            entries.append({
                "target": str(target), "stored": str(cp.path / entry["stored"]),
                "staged": str(target.parent / f".ftml-stage-{tx}-{target.name}"),
                "backup": str(target.parent / f".ftml-old-{tx}-{target.name}"),
                "digest": entry["digest"],
            })
        journal = {"tx": tx, "version": cp.version, "phase": "staging", "entries": entries}
        _write_json(self._journal(name), journal)
        for entry in entries:
            staged = Path(entry["staged"])
            staged.parent.mkdir(parents=True, exist_ok=True)
            _copy(Path(entry["stored"]), staged)
            _fsync_tree(staged)
            if _digest(staged) != entry["digest"]:
                self._abort(name, journal)
                raise ActionError(f"staged copy of {entry['target']} does not match {cp.ref}",
                                  hint="the disk may be failing; nothing was changed")
        self._call_hook("staged")
        journal["phase"] = "swapping"
        _write_json(self._journal(name), journal)
        for i, entry in enumerate(entries):
            _swap(entry)
            self._call_hook(f"swapped:{i}")
        self._finish(name, journal)
        return cp

    def resume(self, name: str | None = None) -> list[str]:
        """Finish (or undo, if it had not started swapping) an interrupted rollback.

        Returns the names whose rollback was finished or undone.
        """
        names = [name] if name else ([p.name for p in self.root.iterdir() if p.is_dir()]
                                     if self.root.is_dir() else [])
        done = []
        for n in names:
            journal_path = self._journal(n)
            if not journal_path.exists():
                continue
            journal = json.loads(journal_path.read_text())
            if journal["phase"] == "staging":
                self._abort(n, journal)  # targets untouched: drop the staged copies
            else:
                for entry in journal["entries"]:
                    target, staged = Path(entry["target"]), Path(entry["staged"])
                    if _exists(target) and _digest(target) == entry["digest"]:
                        continue  # this one was swapped already
                    if _exists(staged) and _digest(staged) == entry["digest"]:
                        _swap(entry)
                    elif not _exists(target) and _exists(Path(entry["backup"])):
                        os.rename(entry["backup"], target)  # put the old content back
                    else:
                        raise ActionError(f"cannot finish the interrupted rollback of {target}",
                                          where=str(journal_path),
                                          hint="inspect the .ftml-stage-/.ftml-old- copies "
                                               "beside it, then delete the journal")
                self._finish(n, journal)
            done.append(n)
        return done

    # -- internals ---------------------------------------------------------------------

    def _base(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or "\\" in name:
            raise ActionError(f"bad checkpoint name {name!r}", hint="letters, digits, _ . -")
        return self.root / name

    def _journal(self, name: str) -> Path:
        return self._base(name) / ".rollback.json"

    def _manifest(self, cp: Checkpoint) -> dict[str, Any]:
        return json.loads((cp.path / "manifest.json").read_text())

    def _newest(self, name: str) -> Checkpoint:
        points = self.checkpoints(name)
        if not points:
            raise ActionError(f"no checkpoint of {name!r} yet", where=str(self.root),
                              hint="take one with a checkpoint step first")
        return points[-1]

    def _publish(self, base: Path, tmp: Path) -> str:
        """Rename the finished temp folder to the next free version; racing writers retry."""
        for _ in range(100):
            existing = [int(p.name[1:]) for p in base.iterdir()
                        if p.name.startswith("v") and p.name[1:].isdigit()]
            version = f"v{max(existing, default=0) + 1:06d}"
            try:
                os.rename(tmp, base / version)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            _fsync_dir(base)
            return version
        raise ActionError("cannot find a free checkpoint version", where=str(base))

    def _prune(self, name: str) -> None:
        points = self.checkpoints(name)
        good = self.latest_good(name)
        for cp in points[: max(0, len(points) - self.keep)]:
            if good is None or cp.version != good.version:
                shutil.rmtree(cp.path, ignore_errors=True)

    def _abort(self, name: str, journal: dict[str, Any]) -> None:
        for entry in journal["entries"]:
            _remove(Path(entry["staged"]))
        self._journal(name).unlink(missing_ok=True)

    def _finish(self, name: str, journal: dict[str, Any]) -> None:
        for entry in journal["entries"]:
            _remove(Path(entry["staged"]))  # after an exchange it holds the old content
            _remove(Path(entry["backup"]))
        self._journal(name).unlink(missing_ok=True)
        _fsync_dir(self._base(name))

    def _call_hook(self, phase: str) -> None:
        if self.hook is not None:
            self.hook(phase)


def _swap(entry: Mapping[str, str]) -> None:
    """Put the staged copy at the target, atomically where the system allows."""
    target, staged, backup = Path(entry["target"]), Path(entry["staged"]), Path(entry["backup"])
    if not _exists(target):
        os.rename(staged, target)
    elif _exchange(staged, target):
        pass  # staged now holds the old content; _finish removes it
    elif not target.is_dir() or target.is_symlink():
        os.replace(staged, target)
    else:
        # No atomic exchange: for a moment the target is missing; resume() repairs that.
        os.rename(target, backup)
        os.rename(staged, target)
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def _digest(path: Path) -> dict[str, Any]:
    """Checksums of a file, or of every file, link and folder under a folder."""
    if path.is_symlink():
        return {"link": os.readlink(path)}
    if path.is_file():
        return {"sha256": _sha256(path)}
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    dirs: list[str] = []
    for root, subdirs, names in os.walk(path):
        rel_root = Path(root).relative_to(path)
        for d in list(subdirs):
            p = Path(root) / d
            if p.is_symlink():  # os.walk lists links to folders as folders
                subdirs.remove(d)
                links[str(rel_root / d)] = os.readlink(p)
            else:
                dirs.append(str(rel_root / d))
        for n in names:
            p = Path(root) / n
            if p.is_symlink():
                links[str(rel_root / n)] = os.readlink(p)
            else:
                files[str(rel_root / n)] = _sha256(p)
    return {"files": files, "links": links, "dirs": sorted(dirs)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    """Atomic write: a temp file beside it, fsync, then os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_tree(path: Path) -> None:
    if path.is_symlink():
        return
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _, names in os.walk(path):
        for n in names:
            p = Path(root) / n
            if not p.is_symlink():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync folders; the rename is still atomic
    finally:
        os.close(fd)

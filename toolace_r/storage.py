"""Where run directories, models and checkpoints live: a local path, `file://`, or an object store URI.

On one machine everything is a local directory. On a cluster every node must reach the same run directory: either a
shared POSIX mount (NFS, EFS, Filestore, a ReadWriteMany PVC — give a plain path or `file:///mnt/shared/...`) or an
object store (`s3://bucket/prefix`, `gs://bucket/prefix`, anything `pyarrow.fs.FileSystem.from_uri` resolves).

The rest of the project writes files with plain POSIX calls (atomic temp + rename, see io.py), which object stores
do not offer. So a remote location is used through a *local mirror*:

- `RunDir(uri)` gives the driver a local directory (the path itself when local; a node-local cache when remote),
  `pull()`s what an earlier attempt already wrote (that is how a resumed run finds its state), and `push()`es after
  every finished stage, so a driver that dies loses at most the stage it was in;
- `localize(uri)` turns a model directory URI into a local path on whichever node needs it (probe actors, train
  workers, serve replicas), downloading once per node into a cache;
- `ray_train_storage(uri)` gives the `storage_path` / `storage_filesystem` pair for Ray Train's `RunConfig`, which
  reads and writes object stores itself.

What crosses processes is always a location every node can resolve: the driver hands actors and train workers
`RunDir.shared(path)` (the run dir's URI for a path in the mirror), never a path inside its own mirror. Model dirs
and Ray Train checkpoints of a remote run dir live in the store only (written there, `localize`d by readers): the
mirror holds the small files the driver itself reads and writes, and `pull()` leaves the heavy dirs (SKIP_ON_PULL)
in the store.

Nothing here touches the network for a local path; for s3:// pyarrow resolves the bucket region on first use.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from toolace_r.errors import ConfigError

if TYPE_CHECKING:  # pyarrow is a dependency, but keep `import toolace_r.storage` cheap
    import pyarrow.fs

log = logging.getLogger(__name__)

# Where remote run dirs and model dirs are mirrored on a node. Override with TOOLACE_CACHE_DIR (e.g. a local NVMe).
CACHE_ENV = "TOOLACE_CACHE_DIR"
_MARKER = ".toolace_complete"  # written last into a localized model dir: a half-downloaded dir is never used
# Dirs of a remote run dir that only workers read (through localize / Ray Train): a resumed driver does not download
# them into its mirror (an 8B model dir is 16 GB, a ZeRO checkpoint with optimizer states several times that).
SKIP_ON_PULL = frozenset({"model", "base_model", "ray_train"})


def scheme(uri: str | os.PathLike) -> str:
    """`""` for a plain path, else the URI scheme in lower case (`file`, `s3`, `gs`, `hdfs`, ...)."""
    text = str(uri)
    if "://" not in text:
        return ""
    return text.split("://", 1)[0].lower()


def is_remote(uri: str | os.PathLike) -> bool:
    """True when `uri` names an object store or other non-local filesystem (anything but a path or `file://`)."""
    return scheme(uri) not in ("", "file")


def local_path(uri: str | os.PathLike) -> Path:
    """The absolute local path of a plain path or a `file://` URI. Raises ConfigError for a remote URI."""
    text = str(uri)
    s = scheme(text)
    if s == "file":
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"{text}: file:// URIs must be absolute (file:///path), got host {parsed.netloc!r}")
        return Path(unquote(parsed.path)).resolve()
    if s:
        raise ConfigError(f"{text}: a {s}:// location has no local path; use storage.RunDir or storage.localize")
    if not text:
        raise ConfigError("empty storage path")
    return Path(text).expanduser().resolve()


def normalize(uri: str | os.PathLike) -> str:
    """A form every node and Ray Train agree on: absolute local path for local locations, the URI unchanged (minus a
    trailing slash) for remote ones. Relative paths are made absolute against the current directory."""
    if is_remote(uri):
        return str(uri).rstrip("/")
    return str(local_path(uri))


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a path or URI without mangling `s3://` (os.path.join would keep it; Path would not)."""
    base = normalize(uri)
    if not parts:
        return base
    if not is_remote(base):
        return str(Path(base, *parts))
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")])


def filesystem(uri: str | os.PathLike) -> tuple["pyarrow.fs.FileSystem", str]:
    """Resolve a path or URI to a pyarrow filesystem and the path inside it (`s3://b/p` → (S3FileSystem, "b/p"))."""
    import pyarrow.fs

    if not is_remote(uri):
        return pyarrow.fs.LocalFileSystem(), str(local_path(uri))
    try:
        return pyarrow.fs.FileSystem.from_uri(str(uri).rstrip("/"))
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError with the scheme problem or the auth problem
        raise ConfigError(f"{uri}: cannot open this storage location through pyarrow: {err}") from None


def ray_train_storage(uri: str | os.PathLike) -> dict:
    """Keyword arguments for `ray.train.RunConfig`: `storage_path` and, for remote URIs, an explicit
    `storage_filesystem` (resolved once here so an auth or region problem surfaces before any worker starts)."""
    if not is_remote(uri):
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        return {"storage_path": str(path)}
    fs, path = filesystem(uri)
    return {"storage_path": path, "storage_filesystem": fs}


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "toolace_r_cache")
    return Path(root)


def _cache_dir(uri: str, kind: str) -> Path:
    digest = hashlib.sha256(normalize(uri).encode()).hexdigest()[:16]
    name = normalize(uri).rstrip("/").rsplit("/", 1)[-1] or "root"
    return cache_root() / kind / f"{name}-{digest}"


def exists(uri: str | os.PathLike) -> bool:
    import pyarrow.fs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def copy_dir(src: str | os.PathLike, dst: str | os.PathLike, skip: frozenset[str] = frozenset()) -> None:
    """Copy a directory tree between any two locations (local ↔ remote), overwriting files of the same name.
    `skip`: directory names left out wherever they occur in the tree."""
    import pyarrow.fs

    src_fs, src_path = filesystem(src)
    dst_fs, dst_path = filesystem(dst)
    if src_fs.get_file_info(src_path).type != pyarrow.fs.FileType.Directory:
        raise ConfigError(f"{src}: not a directory")
    dst_fs.create_dir(dst_path, recursive=True)
    if not skip:
        pyarrow.fs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
        return
    base = src_path.rstrip("/")
    for info in src_fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True)):
        rel = info.path[len(base):].lstrip("/")
        if info.type != pyarrow.fs.FileType.File or skip.intersection(rel.split("/")[:-1]):
            continue
        target = f"{dst_path.rstrip('/')}/{rel}"
        dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pyarrow.fs.copy_files(info.path, target, source_filesystem=src_fs, destination_filesystem=dst_fs)


def read_text(uri: str | os.PathLike) -> str | None:
    """The text of one small file at a path or URI (a model dir's toolace_r.json), None when it does not exist:
    the driver reads such files from the store without downloading the model dir around them."""
    import pyarrow.fs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def localize(uri: str | os.PathLike) -> str:
    """A local directory holding the contents of `uri`: the path itself when local, else a per-node cached download
    (made complete before use: downloaded into a temp dir, marked, renamed). Model dirs are immutable once written,
    so a cached copy is reused; delete the cache dir to force a new download."""
    if not is_remote(uri):
        return str(local_path(uri))
    target = _cache_dir(str(uri), "models")
    if (target / _MARKER).is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        log.info("downloading %s to %s", uri, target)
        copy_dir(uri, tmp)
        (tmp / _MARKER).write_text(normalize(uri) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process on this node finished first: use theirs
            if not (target / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


class RunDir:
    """A run directory given as a path or URI, used through a local directory.

    Local (`runs/x`, `/mnt/nfs/runs/x`, `file:///mnt/nfs/runs/x`): `.local` is that path; pull/push do nothing.
    Remote (`s3://bucket/runs/x`): `.local` is a node-local mirror; `pull()` downloads what exists (resume),
    `push()` uploads the mirror. The driver calls `push()` after each finished stage, after state.json is written.
    `uri(*parts)` names a file in the run dir the way other nodes must read it (e.g. a model dir for probe actors:
    they `localize()` it)."""

    def __init__(self, uri: str | os.PathLike):
        self.location = normalize(uri)
        self.remote = is_remote(self.location)
        self.local = _cache_dir(self.location, "runs") if self.remote else Path(self.location)
        self.local.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunDir({self.location!r}, local={str(self.local)!r})"

    def uri(self, *parts: str) -> str:
        return join(self.location, *parts)

    def shared(self, path: str | os.PathLike) -> str:
        """How other nodes name `path`, a file or dir inside `.local`: the run dir's URI for it when remote, the
        path itself when local (a shared mount is the same path everywhere)."""
        path = Path(path).resolve()
        if not self.remote:
            return str(path)
        try:
            rel = path.relative_to(self.local.resolve())
        except ValueError:
            raise ConfigError(f"{path} is not inside the run dir's local mirror {self.local}") from None
        return self.uri(*rel.parts)

    def recorded(self, model_dir: str) -> str:
        """A model dir as an earlier attempt recorded it in state.json → the name every node reads it by now.
        Before model dirs lived in the store only, a remote run dir recorded them by their path in the driver's
        mirror (`…/runs/<name>-<digest>/iter_NNN/model`); `push()` had uploaded them, but `pull()` no longer brings
        them back (SKIP_ON_PULL), so such a path becomes the run dir's URI for the same relative path. Matched by
        the mirror dir's name, so a mirror under another TOOLACE_CACHE_DIR is recognised too. Anything else (a URI,
        a local run dir's path, the shipped tiny-base, a hub name) is returned unchanged."""
        if not self.remote or scheme(model_dir):
            return model_dir
        parts = Path(model_dir).parts
        if self.local.name not in parts:
            return model_dir
        at = len(parts) - 1 - parts[::-1].index(self.local.name)
        return self.uri(*parts[at + 1:])

    def publish(self, path: str | os.PathLike) -> str:
        """Make a dir the driver wrote inside `.local` (a model dir) readable by every node and return the name
        they read it by: a local run dir is already shared; a remote one gets the dir uploaded and dropped from the
        mirror (pushing the mirror would upload it again after every stage, and only workers read it)."""
        uri = self.shared(path)
        if self.remote:
            copy_dir(path, uri)
            shutil.rmtree(path)
        return uri

    def pull(self) -> bool:
        """Bring an earlier attempt's files into the local mirror, leaving SKIP_ON_PULL dirs (model dirs, Ray Train
        checkpoints) in the store: workers read those from there. True when the remote dir existed."""
        if not self.remote or not exists(self.location):
            return False
        copy_dir(self.location, self.local, skip=SKIP_ON_PULL)
        return True

    def push(self) -> None:
        """Upload the local mirror (files are overwritten; nothing remote is deleted)."""
        if self.remote:
            copy_dir(self.local, self.location)

"""`bfcl:DIR[:cats]` and `bfcl:pkg[:cats]`: a BFCL data directory, v3 or v4, as eval categories.

BFCL ships its test data as `BFCL_v<N>_<category>.json` question files (JSON Lines) with the answers in
`possible_answer/` under the same name. v4 renamed three files (simple → simple_python, java → simple_java,
javascript → simple_javascript) and keeps the same single-turn formats, so one reader serves both; the version is
read from the file names, and a directory mixing versions is refused rather than silently merged.

By default every single-turn AST category present is evaluated (toolace_r.bfcl_summary.AST_CATEGORIES); the
multi-turn, agentic (web search, memory) and format-sensitivity files in the same directory are skipped with a note,
since they need BFCL's stateful executors. Named categories may use either version's spelling (`simple` in a v4
directory reads simple_python); the group keeps the file's own name.

`bfcl:pkg` reads the data that the installed `bfcl-eval` package ships (`pip install --no-deps bfcl-eval`: only
its data files are read, nothing of it is imported or run), so no manual download is needed.
"""
from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from toolace_r.bfcl_summary import ALL_NAMES, AST_CATEGORIES, V3_NAMES, V4_TO_V3, canonical, not_run_reason
from toolace_r.data.formats import read_bfcl
from toolace_r.data.schema import Sample
from toolace_r.errors import DataError

log = logging.getLogger(__name__)

PKG = "pkg"  # `bfcl:pkg`: the data files of the installed bfcl-eval package
PKG_FIX = ("`bfcl:pkg` reads the data files of the bfcl-eval package, which is not installed: "
           "pip install --no-deps bfcl-eval (its data is all that is read), or give a BFCL data directory as bfcl:DIR")
_FILE_RE = re.compile(r"BFCL_v(\d+)_(\w+)\.json(l?)")


@dataclass
class BfclDir:
    """What a directory holds: its BFCL version, AST category → question file, other categories → why skipped."""
    root: Path
    version: int
    files: dict[str, Path]  # AST categories, in the file's own spelling, leaderboard order
    skipped: dict[str, str] = field(default_factory=dict)


def package_data_dir() -> Path:
    """bfcl_eval/data of the installed package, found without importing it (its __init__ may need the
    dependencies a `--no-deps` install leaves out)."""
    try:
        spec = importlib.util.find_spec("bfcl_eval")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        data = Path(loc) / "data"
        if data.is_dir():
            return data
    if spec is not None:
        raise DataError(f"the installed bfcl-eval package ({', '.join(locations) or spec.origin}) has no data/ "
                        f"directory; reinstall it (pip install --no-deps --force-reinstall bfcl-eval) or give "
                        f"bfcl:DIR")
    raise DataError(PKG_FIX)


def scan(root: str | Path) -> BfclDir:
    """Find the BFCL question files in `root` and the version they share."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"BFCL data directory {root} does not exist")
    found: dict[str, Path] = {}
    versions: dict[int, list[str]] = {}
    for f in sorted(path.iterdir()):
        m = _FILE_RE.fullmatch(f.name)
        if not m or not f.is_file():
            continue
        versions.setdefault(int(m.group(1)), []).append(f.name)
        found[m.group(2)] = f
    if not found:
        raise DataError(f"no BFCL question files (BFCL_v3_*.json or BFCL_v4_*.json) in {root}")
    if len(versions) > 1:
        listing = "; ".join(f"v{v}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                            for v, names in sorted(versions.items()))
        raise DataError(f"{root} mixes BFCL versions ({listing}); keep one version per directory")
    version = next(iter(versions))
    v3_names = sorted(set(found) & set(V3_NAMES))
    v4_names = sorted(set(found) & set(V4_TO_V3))
    if v3_names and v4_names:
        raise DataError(f"{root} holds both v3 ({', '.join(v3_names)}) and v4 ({', '.join(v4_names)}) spellings of "
                        f"the simple categories; keep one BFCL version per directory")
    files = {name: found[name] for name in sorted(
        (n for n in found if n in ALL_NAMES), key=lambda n: AST_CATEGORIES.index(canonical(n)))}
    skipped = {n: not_run_reason(n) or "not a category of the BFCL leaderboard's score"
               for n in found if n not in ALL_NAMES}
    return BfclDir(path, version, files, skipped)


def _pick(d: BfclDir, wanted: str, spec: str) -> str:
    """A category the user named → the file's own spelling (either version's name is accepted)."""
    if wanted in d.files:
        return wanted
    for alias in (V3_NAMES.get(wanted), V4_TO_V3.get(wanted)):
        if alias in d.files:
            return alias
    why = not_run_reason(wanted)
    if why:
        raise DataError(f"BFCL category {wanted!r} is {why}: toolace-r evaluates the single-turn AST categories "
                        f"only (spec {spec!r})")
    have = ", ".join(d.files) or "none"
    raise DataError(f"no BFCL question file for category {wanted!r} in {d.root} (spec {spec!r}; AST categories "
                    f"there: {have})")


def split_spec(rest: str) -> tuple[str, list[str]]:
    """`DIR[:cat1,cat2]` → (DIR, [cats]); a trailing part counts as a category list only when it looks like one,
    so a Windows drive or a path with a colon stays whole."""
    root, _, cats = rest.partition(":")
    if cats and not re.fullmatch(r"[\w,]+", cats):
        root, cats = rest, ""
    return root, [c for c in cats.split(",") if c]


def resolve(rest: str) -> BfclDir:
    """The directory a `bfcl:` spec (without the `bfcl:` and the categories) names: `pkg` or a path."""
    return scan(package_data_dir() if rest == PKG else rest)


def load_bfcl_spec(rest: str, spec: str, limit: int = 0, on_error: str = "raise") -> dict[str, list[Sample]]:
    """`bfcl:` spec body → {category: samples} in leaderboard order, at most `limit` per category."""
    root, wanted = split_spec(rest)
    try:
        d = resolve(root)
    except DataError as err:
        raise DataError(f"{err} (spec {spec!r})") from None
    if wanted:
        names = list(dict.fromkeys(_pick(d, w, spec) for w in wanted))
    else:
        names = list(d.files)
        if not names:
            raise DataError(f"no single-turn AST category files in {d.root} (spec {spec!r}); found only "
                            f"{', '.join(d.skipped)}")
        if d.skipped:
            log.info("bfcl v%d %s: not evaluated: %s", d.version, d.root,
                     "; ".join(f"{n} ({why})" for n, why in d.skipped.items()))
    log.info("bfcl v%d %s: categories %s", d.version, d.root, ", ".join(names))
    return {name: read_bfcl(d.files[name], on_error=on_error, limit=limit).samples for name in names}


def spec_version(spec: str) -> int | None:
    """The BFCL version of a `bfcl:` spec's directory (for the summary), None when it cannot be read now."""
    kind, _, rest = spec.partition(":")
    if kind != "bfcl" or not rest:
        return None
    try:
        return resolve(split_spec(rest)[0]).version
    except DataError:
        return None

"""Real recorded music for pre-training: the free game soundtracks shipped in Debian's data packages.

The paper (Greer et al. 2023, "Dataset curation and preprocessing", Table 3) pre-trains M2BERT on
4,281 h of real recorded music (Music4All, FMA-Large, MTG-Jamendo, MSD). None of that can be
fetched here, but Debian's archive holds hours of freely licensed recorded music: the soundtracks
of free games, in their data packages. This recipe gathers them with ``apt-get download`` (no
root: a ``.deb`` is only downloaded, never installed), keeps the music files, and writes a
manifest with every file's package, path inside the package, licence and SHA-256::

    m3bert corpus real-music --out MUSIC                 # the demo's package set
    m3bert features MUSIC/audio --out STORE              # the existing features path (30 s rule)

Deviations from the paper, and why: hours instead of thousands of hours, and game soundtracks
(orchestral, electronic, folk-like, chiptune) instead of commercial and Jamendo music, because this
is what can be fetched without an account; files shorter than ``min_seconds`` (jingles, "level
won" stingers, sound effects that sit next to the music) are skipped and recorded.

Layout of ``OUT`` (this module is its one owner; audio is never committed to the repository)::

    OUT/audio/<package>/<path inside the package>   the music files (ogg / opus / mp3 / flac / wav)
    OUT/licences/<package>.copyright                 the package's copyright file, verbatim
    OUT/packages/<package>.json                      the record of one finished package (resume point)
    OUT/manifest.json                                packages, files (package, path, licence, sha256,
                                                     seconds), rejects, failed packages, timings

Resumable and atomic: a package counts as done when its record is written (after its files were
moved into place); a rerun skips done packages whose files are all present, and redoes the rest
from scratch. Batch rules: a package that cannot be downloaded or unpacked, and a file that cannot
be decoded, has no licence, or is too short, is skipped and recorded, never fatal.

Licences: Debian's machine-readable copyright files (DEP-5) name licences per source path
(``data/music/*``) while a ``.deb`` holds installed paths (``usr/share/games/x/music/a.ogg``); a
stanza matches a file when its pattern, or the pattern without leading folders that start with a
literal name, matches the end of the installed path; the last matching stanza wins (DEP-5's rule).
Packages whose copyright file is not machine-readable carry the licence read by hand in
:data:`MUSIC_PACKAGES`. A file with no licence found is not used.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import soundfile as sf

from m3bert.audio import AUDIO_EXTENSIONS
from m3bert.core.config import bounded
from m3bert.core.errors import ConfigError, DataError
from m3bert.core.io import atomic_write_json, atomic_write_text, make_temp_dir, read_json, versions
from m3bert.core.registry import Registry

FORMAT = "m3bert-real-music"
FORMAT_VERSION = 1
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class MusicPackage:
    """A Debian package that ships recorded music, and where its music lives inside the package."""

    name: str  # Debian binary package name
    include: tuple[str, ...]  # fnmatch patterns of the music files' installed paths (no leading '/')
    licence: str | None = None  # the music's licence read by hand, for copyright files that are not DEP-5


MUSIC_PACKAGES: Registry = Registry("real-music package")


def register_music_package(pkg: MusicPackage) -> MusicPackage:
    return MUSIC_PACKAGES.add(pkg.name, pkg)


# Checked by hand on Debian 12 (bookworm): sizes, music files and the copyright of each (see the README's table).
for _pkg in (
    MusicPackage("supertux-data", ("usr/share/games/supertux2/music/*",)),
    MusicPackage("hedgewars-data", ("usr/share/games/hedgewars/Data/Music/*",)),
    MusicPackage("freedroidrpg-data", ("usr/share/freedroidrpg/data/sound/music/*",)),
    MusicPackage("warmux-data", ("usr/share/games/warmux/music/*",), licence="GPL-2+"),
    MusicPackage("widelands-data", ("usr/share/games/widelands/data/music/*",)),
    MusicPackage("megaglest-data", ("usr/share/games/megaglest/*/music/*",)),
    MusicPackage("warzone2100-music", ("usr/share/games/warzone2100/music/*",)),
    MusicPackage("hyperrogue-music", ("usr/share/hyperrogue/music/*",)),
    MusicPackage("singularity-music", ("usr/share/games/singularity/music/*",), licence="CC-BY-SA-3.0"),
    MusicPackage("planetblupi-music-ogg", ("usr/share/planetblupi/music/*",)),
    MusicPackage("asc-music", ("usr/share/games/asc/music/*",)),
):
    register_music_package(_pkg)

# Named package sets. demo: 3.8 h of music (94 tracks, five games), ~370 MB of downloads, chosen for
# variety at a features cost that fits `make demo` (measured: README); full: every registered package
# (15 h, 214 tracks, ~1.4 GB; the longer run).
PACKAGE_SETS: dict[str, tuple[str, ...]] = {
    "demo": ("supertux-data", "singularity-music", "warmux-data", "hyperrogue-music", "asc-music"),
    "full": tuple(MUSIC_PACKAGES),
}


@dataclass
class RealMusicConfig:
    """Which packages to gather and which of their files count as music."""

    packages: list[str] = field(default_factory=lambda: list(PACKAGE_SETS["demo"]))  # registered package names
    min_seconds: float = bounded(30.0, gt=0)  # shorter files are jingles or effects: skipped and recorded
    download_timeout_s: float = bounded(600.0, gt=0)  # per package; a stalled download is a recorded failure
    keep_debs: bool = False  # keep the downloaded .deb files in OUT/debs (else deleted once unpacked)

    def __post_init__(self) -> None:
        if isinstance(self.packages, str):
            self.packages = package_list(self.packages)
        unknown = [p for p in self.packages if p not in MUSIC_PACKAGES]
        if unknown:
            raise ConfigError(f"real-music packages {unknown} are not registered; known: {sorted(MUSIC_PACKAGES)} "
                              f"(or a set: {sorted(PACKAGE_SETS)})")
        if not self.packages:
            raise ConfigError("real-music packages is empty; expected at least one package")


def package_list(spec: str) -> list[str]:
    """``"demo"`` / ``"full"`` (a named set) or ``"a,b,c"`` (package names) -> package names."""
    if spec in PACKAGE_SETS:
        return list(PACKAGE_SETS[spec])
    return [p.strip() for p in spec.split(",") if p.strip()]


# ---------------------------------------------------------------------------------------------
# Licences: DEP-5 copyright files
# ---------------------------------------------------------------------------------------------


def parse_copyright(text: str) -> list[dict[str, Any]] | None:
    """The ``Files`` stanzas of a machine-readable (DEP-5) copyright file, in file order:
    ``[{"files": [pattern, ...], "licence": "GPL-2+"}, ...]``; None when the file is not DEP-5."""
    if not text.lstrip().lower().startswith("format:"):
        return None
    stanzas = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            licence = fields["license"].split("\n", 1)[0].strip()
            stanzas.append({"files": fields["files"].split(), "licence": licence})
    return stanzas


def pattern_matches(pattern: str, path: str) -> bool:
    """Whether a DEP-5 ``Files`` pattern (a source path) names the installed ``path``.

    The pattern matches the whole path, or the end of it after dropping leading folders of the
    pattern, as long as what is left starts with a literal name (``data/music/*`` names
    ``usr/share/games/x/music/a.ogg`` through ``music/*``; ``data/*/*.png`` never shrinks to ``*.png``).
    """
    parts = pattern.strip("/").split("/")
    for k in range(len(parts)):
        if k > 0 and GLOB_CHARS & set(parts[k]):
            continue
        tail = "/".join(parts[k:])
        if fnmatch.fnmatchcase(path, tail) or fnmatch.fnmatchcase(path, "*/" + tail):
            return True
    return False


def licence_of(path: str, stanzas: list[dict[str, Any]] | None, *, fallback: str | None) -> tuple[str | None, str]:
    """``(licence, where it came from)`` for an installed ``path``: the last DEP-5 stanza that
    matches, else the package's hand-read ``fallback``; ``(None, why)`` when neither exists."""
    if stanzas is None:
        if fallback:
            return fallback, "package table (copyright file not machine-readable)"
        return None, "copyright file not machine-readable and no licence in the package table"
    found: tuple[str | None, str] = (None, "no DEP-5 stanza matches")
    for stanza in stanzas:
        for pattern in stanza["files"]:
            if pattern_matches(pattern, path):
                found = (stanza["licence"], f"Files: {pattern}")
                break
    return found


# ---------------------------------------------------------------------------------------------
# Download and unpack
# ---------------------------------------------------------------------------------------------

Downloader = Callable[[str, Path], Path]


def apt_download(package: str, folder: Path, *, timeout_s: float = 600.0) -> Path:
    """``apt-get download PACKAGE`` into ``folder`` (no root needed); the ``.deb`` path."""
    if shutil.which("apt-get") is None:
        raise DataError(f"{package}: apt-get not found; real music needs a Debian-like system (or pass a downloader)")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise DataError(f"{package}: apt-get download took more than {timeout_s:.0f} s") from None
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        tail = " ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-2:])
        raise DataError(f"{package}: apt-get download failed (exit {proc.returncode}): {tail or 'no .deb written'}")
    return debs[-1]


def apt_download_many(packages: list[str], folder: Path, *, timeout_s: float = 600.0) -> dict[str, Path]:
    """One ``apt-get download`` for several packages (apt reads its lists once: ~7 s saved per package);
    ``{package: .deb}`` for those it fetched. Nothing is raised: a package missing from the answer is
    then fetched alone by :func:`apt_download`, which reports why it fails."""
    if not packages or shutil.which("apt-get") is None:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", *packages], cwd=folder, capture_output=True, text=True,
                       timeout=timeout_s * len(packages))
    except subprocess.TimeoutExpired:
        return {}
    found = {}
    for name in packages:
        debs = sorted(folder.glob(f"{name}_*.deb"))
        if debs:
            found[name] = debs[-1]
    return found


def _deb_fields(deb: Path) -> dict[str, str]:
    proc = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"{deb}: not a readable .deb ({proc.stderr.strip()[:200]})")
    out = {}
    for line in proc.stdout.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unpack_music(deb: Path, pkg: MusicPackage, dest: Path) -> tuple[list[dict[str, Any]], str | None, int]:
    """Stream the ``.deb``'s file system and keep only the music files and the copyright file.

    Returns ``([{"path", "tmp", "sha256", "bytes"}, ...], copyright text or None, links skipped)``;
    files are written under ``dest`` (a temporary folder), hashed while they are copied. Only
    regular files whose path matches ``pkg.include`` and ends in an audio extension are kept:
    nothing is unpacked outside ``dest``, whatever the archive's member names.
    """
    if shutil.which("dpkg-deb") is None:
        raise DataError(f"{deb}: dpkg-deb not found; it unpacks the .deb (Debian's dpkg package)")
    copyright_path = f"usr/share/doc/{pkg.name}/copyright"
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    files, copyright_text, links = [], None, 0
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name.lstrip("/")
                if name == copyright_path and member.isfile():
                    copyright_text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                    continue
                if os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                    continue
                if not any(fnmatch.fnmatchcase(name, p) for p in pkg.include):
                    continue
                if not member.isfile():
                    links += int(member.issym() or member.islnk())  # links repeat files already kept
                    continue
                if ".." in name.split("/"):
                    continue
                tmp = dest / f"{len(files):05d}{os.path.splitext(name)[1].lower()}"
                h = hashlib.sha256()
                src = tar.extractfile(member)
                with open(tmp, "wb") as fh:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        fh.write(block)
                files.append({"path": name, "tmp": tmp, "sha256": h.hexdigest(), "bytes": int(member.size)})
    except tarfile.TarError as exc:
        raise DataError(f"{deb}: cannot read its file system archive ({exc})") from None
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", errors="replace")
        proc.stderr.close()
        if proc.wait() != 0 and not files:
            raise DataError(f"{deb}: dpkg-deb --fsys-tarfile failed: {err.strip()[:200]}")
    return files, copyright_text, links


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


def _package_done(out: Path, name: str) -> dict[str, Any] | None:
    """The record of a finished package whose files are all in place, else None."""
    path = out / "packages" / f"{name}.json"
    if not path.is_file():
        return None
    record = read_json(path)
    for row in record.get("files", []):
        f = out / row["file"]
        if not f.is_file() or f.stat().st_size != row["bytes"]:
            return None
    return record


def _gather_package(pkg: MusicPackage, out: Path, cfg: RealMusicConfig, downloader: Downloader) -> dict[str, Any]:
    """Download, unpack, check and place one package's music; returns (and writes) its record."""
    t0 = time.perf_counter()
    deb = downloader(pkg.name, out / "debs")
    download_s = time.perf_counter() - t0
    deb_bytes, deb_sha256 = deb.stat().st_size, _sha256_file(deb)
    fields = _deb_fields(deb)
    if fields.get("package") != pkg.name:
        raise DataError(f"{deb}: is package {fields.get('package')!r}, expected {pkg.name!r}")
    t1 = time.perf_counter()
    tmp = make_temp_dir(out, prefix=f".{pkg.name}-")
    try:
        found, copyright_text, links = unpack_music(deb, pkg, tmp)
        stanzas = parse_copyright(copyright_text) if copyright_text is not None else None
        rows, rejects, seen = [], [], set()
        for f in sorted(found, key=lambda f: f["path"]):  # archive order varies; of two equal files the first path wins
            where = {"package": pkg.name, "path": f["path"], "sha256": f["sha256"]}
            if f["sha256"] in seen:
                rejects.append({**where, "reason": "duplicate of another file of the package (same bytes)"})
                continue
            try:
                info = sf.info(str(f["tmp"]))
                seconds = info.frames / float(info.samplerate)
            except Exception as exc:  # noqa: BLE001  (any decoder failure is a recorded reject)
                rejects.append({**where, "reason": f"cannot decode: {type(exc).__name__}: {str(exc)[:160]}"})
                continue
            if not seconds >= cfg.min_seconds:
                rejects.append({**where, "reason": f"{seconds:.1f} s long; shorter than min_seconds={cfg.min_seconds}"})
                continue
            licence, source = licence_of(f["path"], stanzas, fallback=pkg.licence)
            if licence is None:
                rejects.append({**where, "reason": f"no licence found ({source})"})
                continue
            seen.add(f["sha256"])
            rows.append({**where, "file": f"audio/{pkg.name}/{f['path']}", "licence": licence, "licence_source": source,
                         "seconds": round(seconds, 3), "sample_rate": int(info.samplerate),
                         "channels": int(info.channels), "bytes": f["bytes"], "tmp": f["tmp"]})
        # place the files: the package's audio folder is rebuilt from scratch, then the record commits it
        final = out / "audio" / pkg.name
        if final.exists():
            shutil.rmtree(final)
        for row in rows:
            dst = out / row["file"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(row.pop("tmp"), dst)
        if copyright_text is not None:
            atomic_write_text(out / "licences" / f"{pkg.name}.copyright", copyright_text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not cfg.keep_debs:
        deb.unlink(missing_ok=True)
    record = {"package": pkg.name, "version": fields.get("version"), "deb": deb.name, "deb_bytes": deb_bytes,
              "deb_sha256": deb_sha256, "copyright": f"licences/{pkg.name}.copyright" if copyright_text else None,
              "copyright_machine_readable": stanzas is not None, "licences": sorted({r["licence"] for r in rows}),
              "n_files": len(rows), "seconds": round(sum(r["seconds"] for r in rows), 3), "links_skipped": links,
              "download_s": round(download_s, 3), "unpack_s": round(time.perf_counter() - t1, 3),
              "files": rows, "rejects": rejects}
    atomic_write_json(out / "packages" / f"{pkg.name}.json", record)
    return record


def gather_real_music(out: str | os.PathLike, *, config: RealMusicConfig | None = None,
                      downloader: Downloader | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Gather the music of ``config.packages`` into ``out`` (resumable); returns the manifest.

    ``downloader(package, folder) -> .deb path`` replaces ``apt-get download`` (tests, mirrors);
    without it the packages not yet gathered are fetched by one batched ``apt-get download``
    (``manifest["batch_download_s"]``; a package's own ``download_s`` is then ~0) and any it missed alone.
    A package that fails is recorded in ``manifest["failed"]`` and the others go on; the
    manifest's ``n_files`` is 0 when nothing could be gathered (the caller decides what then).
    """
    cfg = config or RealMusicConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    todo = [name for name in cfg.packages if _package_done(out, name) is None]
    prefetched = {} if downloader is not None else apt_download_many(todo, out / "debs", timeout_s=cfg.download_timeout_s)
    batch_s = time.perf_counter() - t0

    def fetch(name: str, folder: Path) -> Path:
        if name in prefetched:
            return prefetched[name]
        return (downloader or (lambda n, f: apt_download(n, f, timeout_s=cfg.download_timeout_s)))(name, folder)

    records, failed = [], []
    for name in cfg.packages:
        record = _package_done(out, name)
        if record is not None:
            say(f"[real-music] {name}: already gathered ({record['n_files']} files)")
        else:
            try:
                record = _gather_package(MUSIC_PACKAGES.lookup(name), out, cfg, fetch)
            except DataError as exc:
                failed.append({"package": name, "reason": str(exc)})
                say(f"[real-music] {name}: skipped ({exc})")
                continue
            say(f"[real-music] {name} {record['version']}: {record['n_files']} files, {record['seconds'] / 60:.1f} min, "
                f"{', '.join(record['licences']) or 'no licence'}; {record['deb_bytes'] / 2**20:.0f} MiB in "
                f"{record['download_s']:.1f} s, unpacked in {record['unpack_s']:.1f} s")
        records.append(record)
    files = [row for r in records for row in r["files"]]
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": {"packages": list(cfg.packages), "min_seconds": cfg.min_seconds},
        "n_files": len(files), "seconds": round(sum(f["seconds"] for f in files), 3),
        "packages": [{k: v for k, v in r.items() if k not in ("files", "rejects")} for r in records],
        "files": files, "rejects": [x for r in records for x in r["rejects"]], "failed": failed,
        "batch_download_s": round(batch_s, 3), "gather_s": round(time.perf_counter() - t0, 3), "versions": versions(),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """``OUT/manifest.json`` of :func:`gather_real_music` (``DataError`` naming the file if absent)."""
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a folder made by 'm3bert corpus real-music'")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format={manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest

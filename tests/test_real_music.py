"""The real-music recipe on a fake .deb built with dpkg-deb in tmp_path (never the network): music
files kept by path, licences from the DEP-5 copyright file, SHA-256s, bad files skipped and
recorded, resume, failures recorded, the features path, the command line."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from m3bert.core.errors import ConfigError, DataError
from m3bert.corpus import real_music as rm

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb builds the fake packages")

PKG = "hyperrogue-music"  # a registered package: its music lives in usr/share/hyperrogue/music/
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake

Files: *
Copyright: someone
License: GPL-2+

Files: music/cc-*.wav
       music/other.ogg
Copyright: someone else
License: CC-BY-SA-3.0
 the licence text follows here
"""


def _tone(seconds: float, freq: float, sample_rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_fake_deb(root: Path, name: str = PKG, *, version: str = "1.0-test", copyright_text: str = COPYRIGHT) -> Path:
    """A .deb of ``name`` with music (kept), a jingle, a broken file, a duplicate, a link and a sound effect."""
    tree = root / f"{name}-tree"
    music = tree / "usr/share/hyperrogue/music"
    music.mkdir(parents=True)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                         "Maintainer: test <t@example.org>\nDescription: fake music\n")
    sf.write(music / "theme.wav", _tone(2.5, 220.0), 22050)
    sf.write(music / "cc-song.wav", _tone(3.0, 330.0), 22050)
    sf.write(music / "other.ogg", _tone(2.0, 440.0), 22050, format="OGG", subtype="VORBIS")
    sf.write(music / "jingle.wav", _tone(0.4, 550.0), 22050)
    (music / "broken.ogg").write_bytes(b"OggS" + bytes(300))
    shutil.copy(music / "theme.wav", music / "zz-theme-copy.wav")
    (music / "link.wav").symlink_to("theme.wav")
    (tree / "usr/share/hyperrogue/sounds").mkdir(parents=True)
    sf.write(tree / "usr/share/hyperrogue/sounds/effect.wav", _tone(3.0, 660.0), 22050)
    doc = tree / f"usr/share/doc/{name}"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(copyright_text)
    deb = root / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


class FakeDownloader:
    """Serves the fake .deb (copied into the download folder, as apt-get would), counting calls."""

    def __init__(self, deb: Path, *, fail: tuple[str, ...] = ()) -> None:
        self.deb, self.fail, self.calls = deb, fail, []

    def __call__(self, package: str, folder: Path) -> Path:
        self.calls.append(package)
        if package in self.fail:
            raise DataError(f"{package}: apt-get download failed (exit 100): E: Unable to locate package")
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(self.deb, folder / self.deb.name))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test here may reach apt: both download paths fail loudly unless a test replaces them."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to run apt-get download")

    monkeypatch.setattr(rm, "apt_download", refuse)
    monkeypatch.setattr(rm, "apt_download_many", refuse)


@pytest.fixture(scope="module")
def fake_deb(tmp_path_factory):
    return make_fake_deb(tmp_path_factory.mktemp("deb"))


def _config(**kw):
    return rm.RealMusicConfig(packages=[PKG], min_seconds=1.0, **kw)


def test_gather_keeps_the_music_with_licences_and_hashes(fake_deb, tmp_path):
    out = tmp_path / "music"
    manifest = rm.gather_real_music(out, config=_config(), downloader=FakeDownloader(fake_deb), say=lambda m: None)
    files = {Path(f["path"]).name: f for f in manifest["files"]}
    assert set(files) == {"theme.wav", "cc-song.wav", "other.ogg"}  # effects, jingles, broken, duplicate, link: out
    assert files["theme.wav"]["licence"] == "GPL-2+" and files["theme.wav"]["licence_source"] == "Files: *"
    assert files["cc-song.wav"]["licence"] == "CC-BY-SA-3.0" and files["other.ogg"]["licence"] == "CC-BY-SA-3.0"
    for f in files.values():
        placed = out / f["file"]
        assert placed.is_file() and f["package"] == PKG
        assert hashlib.sha256(placed.read_bytes()).hexdigest() == f["sha256"]
    assert files["theme.wav"]["seconds"] == pytest.approx(2.5, abs=1e-3)
    assert files["other.ogg"]["seconds"] == pytest.approx(2.0, abs=0.05)
    reasons = {Path(r["path"]).name: r["reason"] for r in manifest["rejects"]}
    assert set(reasons) == {"jingle.wav", "broken.ogg", "zz-theme-copy.wav"}
    assert "shorter than min_seconds" in reasons["jingle.wav"]
    assert "cannot decode" in reasons["broken.ogg"] and "duplicate" in reasons["zz-theme-copy.wav"]
    pkg = manifest["packages"][0]
    assert pkg["version"] == "1.0-test" and pkg["links_skipped"] == 1 and pkg["n_files"] == 3
    assert pkg["licences"] == ["CC-BY-SA-3.0", "GPL-2+"] and pkg["copyright_machine_readable"]
    assert (out / "licences" / f"{PKG}.copyright").read_text() == COPYRIGHT
    assert manifest["seconds"] == pytest.approx(7.5, abs=0.06)
    assert not list(out.glob(".*.tmp")) and not list((out / "debs").glob("*.deb"))  # no debris, .deb deleted
    assert rm.read_manifest(out)["files"] == manifest["files"]


def test_rerun_resumes_and_redoes_a_damaged_package(fake_deb, tmp_path):
    out = tmp_path / "music"
    first = FakeDownloader(fake_deb)
    rm.gather_real_music(out, config=_config(), downloader=first, say=lambda m: None)
    again = FakeDownloader(fake_deb)
    m2 = rm.gather_real_music(out, config=_config(), downloader=again, say=lambda m: None)
    assert again.calls == [] and m2["n_files"] == 3  # done: nothing downloaded
    (out / m2["files"][0]["file"]).unlink()  # a file lost: the package is gathered again, from scratch
    third = FakeDownloader(fake_deb)
    m3 = rm.gather_real_music(out, config=_config(), downloader=third, say=lambda m: None)
    assert third.calls == [PKG] and [f["sha256"] for f in m3["files"]] == [f["sha256"] for f in m2["files"]]
    assert all((out / f["file"]).is_file() for f in m3["files"])


def test_a_failed_package_is_recorded_and_the_others_go_on(fake_deb, tmp_path):
    cfg = rm.RealMusicConfig(packages=["asc-music", PKG], min_seconds=1.0)
    dl = FakeDownloader(fake_deb, fail=("asc-music",))
    manifest = rm.gather_real_music(tmp_path / "m", config=cfg, downloader=dl, say=lambda m: None)
    assert dl.calls == ["asc-music", PKG]
    assert [f["package"] for f in manifest["failed"]] == ["asc-music"]
    assert "Unable to locate package" in manifest["failed"][0]["reason"] and manifest["n_files"] == 3
    # a .deb of another package than asked is refused, not mixed in
    wrong = rm.RealMusicConfig(packages=["asc-music"], min_seconds=1.0)
    m = rm.gather_real_music(tmp_path / "w", config=wrong, downloader=FakeDownloader(fake_deb), say=lambda m: None)
    assert m["n_files"] == 0 and "expected 'asc-music'" in m["failed"][0]["reason"]


def test_gathered_music_goes_through_the_features_path(fake_deb, tmp_path):
    from m3bert.features import get_feature_set
    from m3bert.features.store import FeatureStore, extract_to_store

    out = tmp_path / "music"
    rm.gather_real_music(out, config=_config(), downloader=FakeDownloader(fake_deb), say=lambda m: None)
    summary = extract_to_store(out / "audio", tmp_path / "store", feature_set=get_feature_set("m3bert324"), progress=False)
    assert summary["files_done"] == 3 and not summary["rejects"]
    store = FeatureStore.open(tmp_path / "store")
    assert len(store) == 3 and store.get(0).shape[1] == 324


def test_dep5_licence_matching():
    stanzas = rm.parse_copyright(COPYRIGHT + "\nFiles: data/music/*\nCopyright: x\nLicense: MIT\n"
                                 "\nFiles: data/*/*.png\nCopyright: x\nLicense: Art\n")
    assert [s["files"] for s in stanzas] == [["*"], ["music/cc-*.wav", "music/other.ogg"], ["data/music/*"],
                                              ["data/*/*.png"]]
    # source pattern data/music/* names an installed usr/share/games/x/music/... path; the last match wins
    assert rm.licence_of("usr/share/games/x/music/forest/a.ogg", stanzas, fallback=None) == ("MIT", "Files: data/music/*")
    # a pattern never shrinks to a bare glob: data/*/*.png does not name every png
    assert rm.licence_of("usr/share/x/a.png", stanzas, fallback=None) == ("GPL-2+", "Files: *")
    assert rm.pattern_matches("music/hr3-caves.ogg", "usr/share/hyperrogue/music/hr3-caves.ogg")
    assert not rm.pattern_matches("music/hr3-caves.ogg", "usr/share/hyperrogue/music/hr3-desert.ogg")
    # not machine-readable: the package table's licence, else nothing
    assert rm.parse_copyright("This package was debianized by ...\nLicense: GPL") is None
    assert rm.licence_of("a.ogg", None, fallback="GPL-2+")[0] == "GPL-2+"
    assert rm.licence_of("a.ogg", None, fallback=None)[0] is None


def test_no_licence_means_not_used(tmp_path):
    deb = make_fake_deb(tmp_path, copyright_text="Some free-form text without a licence table\n")
    m = rm.gather_real_music(tmp_path / "m", config=_config(), downloader=FakeDownloader(deb), say=lambda m: None)
    assert m["n_files"] == 0 and all("no licence" in r["reason"] for r in m["rejects"] if "duplicate" not in r["reason"]
                                     and "shorter" not in r["reason"] and "decode" not in r["reason"])


def test_config_and_package_sets():
    assert rm.package_list("demo") == list(rm.PACKAGE_SETS["demo"])
    assert rm.package_list("a-data, b-data") == ["a-data", "b-data"]
    assert set(rm.PACKAGE_SETS["full"]) == set(rm.MUSIC_PACKAGES)
    with pytest.raises(ConfigError, match="not registered"):
        rm.RealMusicConfig(packages=["no-such-data"])


def test_cli_real_music(fake_deb, tmp_path, monkeypatch, capsys):
    from m3bert.app.cli import main

    # the command line's own path: one batched download, then single ones for what the batch missed
    monkeypatch.setattr(rm, "apt_download_many", lambda names, folder, timeout_s: {})
    monkeypatch.setattr(rm, "apt_download", lambda name, folder, timeout_s: FakeDownloader(fake_deb)(name, folder))
    assert main(["corpus", "real-music", "--out", str(tmp_path / "m"), "--packages", PKG, "--min-seconds", "1"]) == 0
    assert "3 music files" in capsys.readouterr().out
    assert rm.read_manifest(tmp_path / "m")["n_files"] == 3

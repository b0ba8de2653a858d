"""Output folders that cannot hurt: nothing the tool did not write is ever deleted, the current
directory is never swapped away, inputs are never overwritten, no leftovers, one writer at a time.

Every test works on throwaway folders under tmp_path with a tiny writer (no analysis).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from onnx_infodiscard.errors import InputError
from onnx_infodiscard.output import check_output_folder, write_folder
from onnx_infodiscard.output.manifest import MANIFEST, TMP_MARKER, digest, unknown_entries

MARKER = "report.json"


def writer(tag: str = "a", extra: dict[str, str] | None = None):
    """A writer of a small complete output: the marker, a CSV, a file in a subfolder."""

    def write(folder: Path) -> None:
        (folder / MARKER).write_text(json.dumps({"schema_version": 1, "tag": tag}))
        (folder / "metrics.csv").write_text(f"tag\n{tag}\n")
        (folder / "overlays").mkdir()
        (folder / "overlays" / "000.png").write_bytes(tag.encode() * 10)
        for name, text in (extra or {}).items():
            (folder / name).write_text(text)

    return write


def tag_of(folder: Path) -> str:
    return json.loads((folder / MARKER).read_text())["tag"]


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and err.value.option == "out", text
    return text


# --------------------------------------------------------------------------------------------- the manifest


def test_manifest_lists_every_file_with_size_and_hash(tmp_path):
    out = write_folder(tmp_path / "out", writer(), MARKER)
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["files"]) == {MARKER, "metrics.csv", "overlays/000.png"}
    assert manifest["folders"] == ["overlays"] and manifest["kind"] == MARKER and manifest["complete"] is True
    for name, entry in manifest["files"].items():
        assert entry == {"bytes": (out / name).stat().st_size, "sha256": digest(out / name)}
    assert not (out / TMP_MARKER).exists()
    assert hidden(tmp_path) == []  # no scratch, no lock left beside it


def test_an_earlier_output_is_replaced_and_its_old_files_go(tmp_path):
    out = write_folder(tmp_path / "out", writer("a", {"old_only.txt": "x"}), MARKER)
    assert write_folder(out, writer("b"), MARKER) == out
    assert tag_of(out) == "b" and not (out / "old_only.txt").exists()
    assert unknown_entries(out) == [] and hidden(tmp_path) == []


# --------------------------------------------------------------------------------------------- the user's files


def test_user_files_beside_an_old_report_survive_and_the_run_is_refused(tmp_path):
    """The images folder with an old report.json in it (no manifest): refused, nothing touched."""
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "report.json").write_text('{"schema_version": 1}')
    for i in range(20):
        (folder / f"digit_{i:02d}.png").write_bytes(b"png%d" % i)
    (folder / "boxes.csv").write_text("file,x0,y0,x1,y1\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for call in (lambda: check_output_folder(folder), lambda: write_folder(folder, writer(), MARKER)):
        with pytest.raises(InputError) as err:
            call()
        text = one_line(err)
        assert "did not write" in text and "boxes.csv" in text and "and more" in text
        assert "earlier output without a manifest" in text and "new subfolder" in text
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert hidden(tmp_path) == []


def test_a_file_added_to_or_changed_in_an_output_blocks_its_replacement(tmp_path):
    out = write_folder(tmp_path / "out", writer(), MARKER)
    (out / "overlays" / "mine.txt").write_text("mine")
    with pytest.raises(InputError, match="overlays/mine.txt"):
        write_folder(out, writer("b"), MARKER)
    (out / "overlays" / "mine.txt").unlink()
    (out / "metrics.csv").write_text("tag\nedited by hand\n")
    with pytest.raises(InputError, match=r"metrics.csv \(changed since it was written\)"):
        write_folder(out, writer("b"), MARKER)
    assert (out / "metrics.csv").read_text() == "tag\nedited by hand\n" and tag_of(out) == "a"
    (out / "empty_folder_of_mine").mkdir()
    assert "empty_folder_of_mine/" in unknown_entries(out)


def test_a_foreign_manifest_is_no_licence(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / MANIFEST).write_text('{"files": {}}')  # not one of ours
    (folder / "x.txt").write_text("x")
    with pytest.raises(InputError, match="x.txt"):
        write_folder(folder, writer(), MARKER)
    assert (folder / "x.txt").exists()


def test_new_subfolder_keeps_everything_and_writes_beside_it(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    assert check_output_folder(folder, new_subfolder=True) == folder
    first = write_folder(folder, writer("a"), MARKER, new_subfolder=True)
    second = write_folder(folder, writer("b"), MARKER, new_subfolder=True)
    assert (first, second) == (folder / "report-1", folder / "report-2")
    assert (tag_of(first), tag_of(second)) == ("a", "b") and (folder / "thesis.tex").read_text() == "precious"
    fresh = write_folder(tmp_path / "fresh", writer(), MARKER, new_subfolder=True)
    assert fresh == tmp_path / "fresh"  # a new or empty folder is written itself


# --------------------------------------------------------------------------------------------- the current directory


def test_out_dot_in_an_empty_cwd_keeps_the_same_directory(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    out = write_folder(Path("."), writer("a", {"only_a.txt": "a"}), MARKER)
    assert out == here and os.stat(here).st_ino == inode and os.stat(".").st_ino == inode
    assert tag_of(here) == "a" and unknown_entries(here) == []
    write_folder(Path("."), writer("b"), MARKER)  # replaced in place, file by file
    assert os.stat(here).st_ino == inode and tag_of(here) == "b" and not (here / "only_a.txt").exists()
    assert hidden(here) == [MANIFEST] and hidden(tmp_path) == []
    assert Path(os.getcwd()) == here and (here / "overlays" / "000.png").read_bytes() == b"b" * 10
    (here / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt"):
        write_folder(Path("."), writer("c"), MARKER)
    assert tag_of(here) == "b"


def test_the_folder_above_the_cwd_is_updated_in_place(tmp_path, monkeypatch):
    """Standing in an output's own subfolder, writing the output again never deletes where we stand."""
    out = write_folder(tmp_path / "out", writer("a"), MARKER)
    monkeypatch.chdir(out / "overlays")
    inode = os.stat(out / "overlays").st_ino
    write_folder(out, writer("b"), MARKER)
    assert os.stat(out / "overlays").st_ino == inode and os.stat(".").st_ino == inode and tag_of(out) == "b"


def test_an_interrupted_replacement_in_place_never_looks_complete_and_can_be_redone(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    write_folder(Path("."), writer("a"), MARKER)
    real_replace = os.replace

    def interrupted(src, dst):
        if Path(dst).name == "000.png":
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_folder(Path("."), writer("b"), MARKER)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (here / MARKER).exists()  # half-updated, but not complete-looking
    assert [p.name for p in here.iterdir() if p.name.startswith(".infodiscard-tmp")] == []
    assert unknown_entries(here) == []  # every file still ours: the rerun may replace it
    write_folder(Path("."), writer("c"), MARKER)
    assert tag_of(here) == "c" and unknown_entries(here) == []


# --------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("which", ["model", "images", "boxes", "cache"])
def test_out_equal_to_or_holding_an_input_is_refused(tmp_path, which):
    models = tmp_path / "models"
    (models / "images").mkdir(parents=True)
    (models / "net.onnx").write_bytes(b"onnx")
    (models / "boxes.csv").write_text("file\n")
    (tmp_path / "cache").mkdir()
    inputs = {
        "model": models / "net.onnx",
        "images": models / "images",
        "boxes": models / "boxes.csv",
        "cache": tmp_path / "cache",
    }
    given = inputs[which]
    outs = [given.parent] if which != "cache" else [given, tmp_path]
    if which == "images":
        outs.append(given)
    for out in outs:
        with pytest.raises(InputError) as err:
            check_output_folder(out, [None, given])
        text = one_line(err)
        assert str(given) in text and ("also an input" in text or "holds the input" in text)
    assert check_output_folder(models / "images" / "report", [models / "images"]) == models / "images" / "report"
    assert not (models / "images" / "report").exists()  # the check creates nothing


def test_inputs_compare_through_links(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "net.onnx").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InputError, match="holds the input"):
        check_output_folder(tmp_path / "link", [tmp_path / "real" / "net.onnx"])
    with pytest.raises(TypeError):
        check_output_folder(tmp_path / "out", "report.json")  # the old (out, marker) call, caught


def test_dangling_link_and_file_are_refused(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="does not exist") as err:
        check_output_folder(tmp_path / "dangling")
    one_line(err)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="existing file"):
        check_output_folder(tmp_path / "file")


# --------------------------------------------------------------------------------------------- leftovers


def test_interrupt_while_writing_leaves_no_scratch_and_no_parents(tmp_path):
    def interrupted(folder: Path) -> None:
        writer()(folder)
        raise KeyboardInterrupt

    target = tmp_path / "a" / "b" / "out"
    assert check_output_folder(target) == target and not (tmp_path / "a").exists()
    with pytest.raises(KeyboardInterrupt):
        write_folder(target, interrupted, MARKER)
    assert list(tmp_path.iterdir()) == []  # no .out.tmp-*, no lock, no empty a/b
    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError):
        write_folder(target, lambda folder: (_ for _ in ()).throw(RuntimeError("disk full")), MARKER)
    assert list(tmp_path.iterdir()) == [tmp_path / "a"] and list((tmp_path / "a").iterdir()) == []


def test_stale_scratch_of_a_killed_run_is_removed_but_nothing_else(tmp_path):
    out = write_folder(tmp_path / "out", writer("a"), MARKER)
    killed = tmp_path / ".out.tmp-deadbeef"  # a SIGKILLed run: complete files, still marked as scratch
    writer("killed")(killed.mkdir() or killed)
    (killed / TMP_MARKER).write_text("scratch")
    moved_aside = tmp_path / ".out.old-12345678"  # killed between the two renames of a swap
    moved_aside.mkdir()
    foreign = tmp_path / ".out.tmp-users-own"  # the same pattern, but not ours
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    inner = out / ".infodiscard-tmp-x1"  # scratch of a killed replacement in place
    inner.mkdir()
    (inner / TMP_MARKER).write_text("scratch")
    assert unknown_entries(out) == []
    write_folder(out, writer("b"), MARKER)
    assert hidden(tmp_path) == [".out.tmp-users-own"] and (foreign / "keep.txt").exists()
    assert tag_of(out) == "b" and not inner.exists()


# --------------------------------------------------------------------------------------------- concurrency


def test_two_runs_into_one_folder_end_with_one_consistent_output(tmp_path):
    out = tmp_path / "out"
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow(folder: Path) -> None:
        started.set()
        assert release.wait(10)
        writer("first")(folder)

    def run(write) -> None:
        try:
            write_folder(out, write, MARKER)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    first = threading.Thread(target=run, args=(slow,))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=run, args=(writer("second"),))
    second.start()
    time.sleep(0.3)
    assert second.is_alive()  # waits for the lock while the first one writes
    release.set()
    first.join(10)
    second.join(10)
    assert errors == []
    assert tag_of(out) == "second" and unknown_entries(out) == [] and hidden(tmp_path) == []


def test_a_run_that_cannot_get_the_lock_in_time_is_refused(tmp_path):
    out = tmp_path / "out"
    started, release = threading.Event(), threading.Event()

    def slow(folder: Path) -> None:
        started.set()
        release.wait(10)
        writer("first")(folder)

    first = threading.Thread(target=write_folder, args=(out, slow, MARKER))
    first.start()
    try:
        assert started.wait(10)
        with pytest.raises(InputError, match="another run .*is writing") as err:
            write_folder(out, writer("second"), MARKER, lock_timeout=0.2)
        assert f"process {os.getpid()}" in one_line(err)
    finally:
        release.set()
        first.join(10)
    assert tag_of(out) == "first" and hidden(tmp_path) == []


SLOW_WRITER = """
import sys, time
from pathlib import Path
from onnx_infodiscard.output import write_folder
def write(folder):
    (folder / "report.json").write_text('{"schema_version": 1}')
    print("writing", flush=True)
    time.sleep(60)
write_folder(Path(sys.argv[1]), write, "report.json")
"""


def test_a_run_killed_while_writing_leaves_only_marked_scratch_that_the_next_run_removes(tmp_path):
    """SIGTERM with no handler (the CLI turns it into an exception, which the interrupt tests cover):
    no `finally` runs, so the scratch stays, marked as such and without a manifest; the next run removes it."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
    finally:
        process.kill()
        process.stdout.close()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert not out.exists() and len(left) == 1
    assert (left[0] / TMP_MARKER).is_file() and not (left[0] / MANIFEST).exists()
    write_folder(out, writer("next"), MARKER)
    assert hidden(tmp_path) == [] and tag_of(out) == "next"

"""Every error path through the CLI ends in one line that says what to do, with names from
files escaped; --debug shows the traceback (issue 20 §6)."""
from __future__ import annotations

import json

import pytest
from conftest import run_cli

from seg_explain.cli import main
from seg_explain.errors import InputMismatchError


def test_first_line_and_printable():
    from seg_explain.errors import first_line, printable

    lib = RuntimeError("Weights only load failed.\nIn PyTorch 2.6, we changed the default ...\nmore")
    assert first_line(lib) == "Weights only load failed."
    assert first_line(lib, with_type=True) == "RuntimeError: Weights only load failed."
    ours = InputMismatchError("image 'a\nseg-explain: error: all images are fine' is bad")
    assert first_line(ours) == "image 'a\\nseg-explain: error: all images are fine' is bad"
    assert printable("x\x1b[2Jy\u202ez\r") == "x\\x1b[2Jy\\u202ez\\r"
    assert first_line(KeyError("nope")) == "KeyError: 'nope'"
    assert len(first_line(ValueError("v" * 5000))) <= 600


def test_a_forged_manifest_name_is_printed_escaped(case, tmp_path, capsys):
    b, img = case
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    man = tmp_path / "list.csv"
    with open(man, "w", newline="") as fh:
        fh.write('image,name\n')
        fh.write(f'{img},good\n')
        fh.write(f'{bad},"x\nseg-explain: error: all images are fine\x1b[2J"\n')
    rc, err = run_cli(["agg2exp", str(man), "--model", str(b), "--method", "gradient", "--out",
                    str(tmp_path / "out"), "--quiet"], capsys)
    assert rc == 3
    lines = err.splitlines()
    assert "seg-explain: error: all images are fine" not in lines
    assert not any(line.startswith("seg-explain: error: all images") for line in lines)
    assert "\x1b" not in err and "x\\nseg-explain: error: all images are fine\\x1b[2J" in err


@pytest.mark.parametrize("template, field", [("{nope}.npy", "{nope}"), ("{0}.npy", "{0}"),
                                             ("{stem.__class__}.npy", "{stem.__class__}"),
                                             ("{stem:>999999999}.npy", "{stem:>999999999}"),
                                             ("{stem", "")])
def test_unknown_template_fields_are_one_line(case, tmp_path, capsys, template, field):
    b, img = case
    for flag, value in (("--ground-truth", str(tmp_path / template)),
                        ("--extra-roi", f"les={tmp_path / template}")):
        rc, err = run_cli(["agg2exp", str(img), "--model", str(b), "--method", "gradient", "--out",
                        str(tmp_path / "out"), "--quiet", flag, value], capsys)
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("seg-explain: error:"), err
        assert flag.split()[0] in err and field in err
        assert not (tmp_path / "out").exists()


def test_a_manifest_with_a_nul_byte_is_our_words(case, tmp_path, capsys):
    b, img = case
    man = tmp_path / "list.csv"
    man.write_bytes(b"image\n" + str(img).encode() + b"\x00.npy\n")
    rc, err = run_cli(["agg2exp", str(man), "--model", str(b), "--method", "gradient", "--out",
                    str(tmp_path / "out"), "--quiet"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "embedded null byte" not in err and "line 2 holds a NUL byte" in err


@pytest.mark.parametrize("content", [b"\x00\x01garbage", b'{"type": "Scheduler"}', b'{"address": 5}', b"[1, 2]"])
def test_a_bad_scheduler_file_is_one_line(case, tmp_path, capsys, content):
    pytest.importorskip("distributed")
    b, img = case
    sched = tmp_path / "scheduler.json"
    sched.write_bytes(content)
    rc, err = run_cli(["agg2exp", str(img), "--model", str(b), "--method", "gradient", "--out",
                    str(tmp_path / "out"), "--quiet", "--scheduler", str(sched)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "scheduler file" in err, err
    assert "Traceback" not in err and "AssertionError" not in err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(case, tmp_path, capsys, monkeypatch):
    b, img = case
    from seg_explain import models

    def boom(*_a, **_k):
        raise RuntimeError("deep inside a library\nsecond line of its essay")

    monkeypatch.setattr(models, "load_model", boom)
    args = ["explain", str(img), "--model", str(b), "--method", "gradient", "--out", str(tmp_path / "a.npy")]
    rc, err = run_cli(args, capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "RuntimeError: deep inside a library" in err and "--debug" in err and "second line" not in err
    rc, err = run_cli(args + ["--debug"], capsys)
    assert rc == 2 and "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith(
        "seg-explain: error: RuntimeError: deep inside a library")


@pytest.mark.parametrize("cmd", ["explain", "agg2exp", "evaluate", "methods"])
def test_every_subcommand_has_debug(cmd, capsys):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    assert "--debug" in capsys.readouterr().out


def test_run_json_written_list_is_json(case, tmp_path, capsys):
    """The manifest of written files is plain JSON a user can read."""
    b, img = case
    out = tmp_path / "out"
    assert main(["agg2exp", str(img), "--model", str(b), "--method", "gradient", "--out", str(out), "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["written"] == sorted(p.name for p in (out / "images").iterdir())

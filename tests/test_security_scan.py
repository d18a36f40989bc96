"""TorchScript programs that hide a file op from a per-method scan, and programs that never
return: each is refused at load, before any of its code has run.

Every program here is real TorchScript, saved and handed to ``load_model`` (bare ``.ts``
with a sidecar, and inside a MONAI bundle as ``models/model.ts``). Each would write a
marker file (``torch.save``) or read a file outside the model folder (``torch.from_file``)
the moment it runs; the marker must not exist afterwards.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_unet, wait_until

from seg_explain import ModelLoadError, UnsafeConfigError, load_model
from seg_explain.cli import main

SIDE = {"network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16]}},
                                "outputs": {"pred": {"num_channels": 4}}}}


@torch.jit.script
def _save_it(x: torch.Tensor, path: str) -> torch.Tensor:
    torch.save(x, path)
    return x


@torch.jit.script
def _read_it(x: torch.Tensor) -> torch.Tensor:
    y = torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8)
    return x + y.sum().float() * 0


@torch.jit.script
class _Helper:
    def __init__(self, path: str):
        self.path = path

    def run(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x


class _ViaClassMethod(torch.nn.Module):
    """forward -> a method of a TorchScript class (not a module: no module method lists it)"""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        return _Helper(self.path).run(x).repeat(1, 4, 1, 1)


class _ViaFunction(torch.nn.Module):
    """forward -> scripted function (prim::CallFunction) -> torch.save"""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        return _save_it(x, self.path).repeat(1, 4, 1, 1)


class _ReadViaFunction(torch.nn.Module):
    def forward(self, x):
        return _read_it(x).repeat(1, 4, 1, 1)


class _Inner(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    @torch.jit.export
    def stash(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x

    def forward(self, x):
        return x


class _Middle(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.inner = _Inner(path)

    def forward(self, x):
        return self.inner.stash(x)


class _ViaNestedSubmodule(torch.nn.Module):
    """forward -> submodule -> its submodule's exported method -> torch.save"""

    def __init__(self, path: str):
        super().__init__()
        self.middle = _Middle(path)

    def forward(self, x):
        return self.middle(x).repeat(1, 4, 1, 1)


class _ViaOwnMethod(torch.nn.Module):
    """forward -> self.other() (prim::CallMethod) -> torch.save"""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    @torch.jit.export
    def other(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x

    def forward(self, x):
        return self.other(x).repeat(1, 4, 1, 1)


class _InLoop(torch.nn.Module):
    """torch.save inside a loop body (a block of prim::Loop)"""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        for _ in range(int(x.shape[0])):
            torch.save(x, self.path)
        return x.repeat(1, 4, 1, 1)


class _InIf(torch.nn.Module):
    """torch.save inside an if block taken on every input (a block of prim::If)"""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        if x.dim() == 4:
            torch.save(x, self.path)
        return x.repeat(1, 4, 1, 1)


class _InFork(torch.nn.Module):
    """torch.save in a function run through torch.jit.fork (a sub-graph attribute)"""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        fut = torch.jit.fork(_save_it, x, self.path)
        return torch.jit.wait(fut).repeat(1, 4, 1, 1)


class _SetState(torch.nn.Module):
    """__setstate__ runs inside torch.jit.load itself, before any scan of the loaded graphs"""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        return x.repeat(1, 4, 1, 1)

    @torch.jit.export
    def __getstate__(self):
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]):
        self.path = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), self.path)


HIDES = {"scripted function": _ViaFunction, "class method": _ViaClassMethod,
         "nested submodule method": _ViaNestedSubmodule,
         "self.other()": _ViaOwnMethod, "loop body": _InLoop, "if block": _InIf, "fork": _InFork,
         "__setstate__": _SetState}


def _script(mod, path: Path) -> Path:
    torch.jit.script(mod).save(str(path))
    return path


def _cli(tmp_path: Path, model: Path, capsys) -> str:
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    rc = main(["explain", str(img), "--model", str(model), "--method", "gradient", "--target", "1",
               "--out", str(tmp_path / "out.npy"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("seg-explain: error:"), err
    assert not (tmp_path / "out.npy").exists()
    return err


@pytest.mark.parametrize("how", sorted(HIDES))
def test_hidden_file_write_is_refused_before_it_runs(tmp_path, capsys, how):
    marker = tmp_path / "PWNED"
    p = _script(HIDES[how](str(marker)), tmp_path / "m.ts")
    marker.unlink(missing_ok=True)          # __setstate__ is run by torch.jit.save's checks too
    (tmp_path / "m.json").write_text(json.dumps(SIDE))
    with pytest.raises(UnsafeConfigError, match="aten::save|__setstate__"):
        load_model(p)
    assert not marker.exists()
    _cli(tmp_path, p, capsys)
    assert not marker.exists()


def test_file_read_through_a_scripted_function_is_refused(tmp_path):
    p = _script(_ReadViaFunction(), tmp_path / "m.ts")
    (tmp_path / "m.json").write_text(json.dumps(SIDE))
    with pytest.raises(UnsafeConfigError, match="aten::from_file"):
        load_model(p)


def _ts_bundle(tmp_path: Path, mod) -> Path:
    b = tmp_path / "bundle"
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    (b / "configs" / "metadata.json").write_text(json.dumps(SIDE))
    _script(mod, b / "models" / "model.ts")
    return b


def test_bundle_model_ts_hiding_a_write_never_touches_a_user_file(tmp_path, capsys):
    """The reported case: a bundle's models/model.ts replaced a user's file at load (the
    probe ran it) although the run then exited 2."""
    user_file = tmp_path / "notes.txt"
    user_file.write_text("my notes")
    b = _ts_bundle(tmp_path, _ViaFunction(str(user_file)))
    user_file.write_text("my notes")
    with pytest.raises(UnsafeConfigError, match="aten::save"):
        load_model(b)
    _cli(tmp_path, b, capsys)
    assert user_file.read_text() == "my notes"


def test_clean_scripted_and_traced_programs_still_load(tmp_path):
    """The allow-list keeps real networks: a scripted MONAI UNet (loops, ifs, format/warn)
    and a traced one load and predict like the network itself."""
    net = make_unet(2).eval()
    x = torch.rand(1, 1, 32, 32)
    for kind, prog in (("script", torch.jit.script(net)), ("trace", torch.jit.trace(net, x))):
        p = tmp_path / f"{kind}.ts"
        prog.save(str(p))
        side = json.loads(json.dumps(SIDE))
        side["network_data_format"]["inputs"]["image"]["spatial_shape"] = [32, 32]   # one window
        (tmp_path / f"{kind}.json").write_text(json.dumps(side))
        m = load_model(p, device="cpu")
        with torch.inference_mode():
            ref = net(x)[0].argmax(0).numpy()
        np.testing.assert_array_equal(m.predict(x[0, 0].numpy()), ref)


# ------------------------------------------------------------------------- hangs --
class _Forever(torch.nn.Module):
    def forward(self, x):
        i = 0
        while True:
            i += 1
        return x.repeat(1, 4, 1, 1)


def _children() -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["file", "bundle"])
def test_forward_that_never_returns_is_stopped_at_the_deadline(tmp_path, monkeypatch, where):
    """A real scripted ``while True`` forward: load_model returns with one line once the
    deadline (SEG_EXPLAIN_PROBE_TIMEOUT) has passed, and the probing child is gone."""
    if where == "file":
        p = _script(_Forever(), tmp_path / "m.ts")
        (tmp_path / "m.json").write_text(json.dumps(SIDE))
    else:
        p = _ts_bundle(tmp_path, _Forever())
    monkeypatch.setenv("SEG_EXPLAIN_PROBE_TIMEOUT", "20")
    before = _children()
    with pytest.raises(ModelLoadError, match=r"did not finish within 20 s.*SEG_EXPLAIN_PROBE_TIMEOUT"):
        load_model(p)
    assert [c for c in _children() if c not in before] == []


# In the loading process's environment (and so its probing child's): a sitecustomize module
# that makes seg_explain's probe record the pid it runs in just before the program's forward.
PROBE_MARK_SHIM = """
import os

if os.environ.get("SEG_TEST_PROBE_MARK"):
    from seg_explain.models import probe as _probe

    _inner = _probe.probe

    def _marked_probe(*a, **k):
        with open(os.environ["SEG_TEST_PROBE_MARK"], "w") as fh:
            fh.write(str(os.getpid()))
        return _inner(*a, **k)

    _probe.probe = _marked_probe
"""


def _gone(pid: int) -> bool:
    """No such process, or a zombie (ended, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_loading_a_looping_program_stays_killable_by_sigterm(tmp_path):
    """The reported hang survived SIGTERM: now the loading process ends on SIGTERM while the
    probe is running the program's endless forward in a child (the parent waits in Python),
    and that child dies with it."""
    p = _script(_Forever(), tmp_path / "m.ts")
    (tmp_path / "m.json").write_text(json.dumps(SIDE))
    shim, mark = tmp_path / "shim", tmp_path / "probing"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(PROBE_MARK_SHIM)
    code = f"from seg_explain import load_model; load_model({str(p)!r})"
    env = dict(os.environ, SEG_EXPLAIN_PROBE_TIMEOUT="600", SEG_TEST_PROBE_MARK=str(mark),
               PYTHONPATH=os.pathsep.join([str(shim), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    kid = None
    try:
        kid = int(wait_until(lambda: mark.exists() and mark.read_text() or proc.poll() is not None,
                             "the probe to start the program's forward"))
        assert proc.poll() is None and kid != proc.pid, "the probe must run in a child process"
        with open(f"/proc/{kid}/stat") as fh:
            assert int(fh.read().rsplit(")", 1)[1].split()[1]) == proc.pid     # the loading process's child
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGTERM
        # the probing child dies with its parent (it would otherwise spin on, orphaned)
        wait_until(lambda: _gone(kid), "the probing child to die with its parent")
    finally:
        if proc.poll() is None:
            proc.kill()
        if kid is not None and not _gone(kid):
            os.kill(kid, signal.SIGKILL)                     # never leave a spinning child behind


def test_probe_deadline_setting_is_checked(tmp_path, monkeypatch):
    p = _script(_Forever(), tmp_path / "m.ts")
    (tmp_path / "m.json").write_text(json.dumps(SIDE))
    monkeypatch.setenv("SEG_EXPLAIN_PROBE_TIMEOUT", "soon")
    with pytest.raises(ModelLoadError, match="SEG_EXPLAIN_PROBE_TIMEOUT='soon' must be a number"):
        load_model(p)

"""A short attack run on the output / CLI / data-set side (new cases beyond issues 20 and 25).

Each case runs ``seg-explain`` in this process and is sorted into clear / unclear / traceback /
silent-wrong / code-exec / data-loss / hang / crash by what it printed, its exit code and the
files it left. Run: PYTHONPATH=src python benchmarks/attack_outputs.py
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import UNET_DEF, make_unet, write_bundle  # noqa: E402

from seg_explain.cli import main  # noqa: E402


def call(args):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(args)
    except SystemExit as exc:
        rc = exc.code
    except BaseException:  # noqa: BLE001 - a traceback reached the user
        return "traceback", err.getvalue()
    return rc, err.getvalue()


def judge(rc, err, bad_if=None) -> str:
    if rc == "traceback" or "Traceback" in err:
        return "traceback"
    if bad_if is not None and bad_if():
        return "data-loss"
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("seg-explain: error")]
    if rc in (2, 3) and len(lines) == 1 and "\x1b" not in err:
        return "clear"
    if rc == 0:
        return "silent-wrong"
    return "unclear"


def main_attack() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="attack-out-"))
    b = write_bundle(tmp / "b", {**UNET_DEF, "spatial_dims": 2}, make_unet(2), ["bg", "a", "b", "c"], (32, 32))
    img = tmp / "c0.npy"
    np.save(img, np.random.default_rng(0).random((32, 28)).astype(np.float32))
    base = ["--model", str(b), "--method", "gradient", "--quiet"]
    results: list[tuple[str, str]] = []

    def case(name, args, bad_if=None):
        rc, err = call(args)
        results.append((name, judge(rc, err, bad_if)))

    # 1. --table and --out the same file
    case("table == out", ["explain", str(img), *base[:2], "--method", "pdcr", "--out", str(tmp / "x.npy"),
                          "--table", str(tmp / "x.npy")])
    # 2. --out a symlink into the bundle
    (tmp / "link.npy").symlink_to(b / "configs" / "metadata.json")
    keep = (b / "configs" / "metadata.json").read_bytes()
    case("out symlink into bundle", ["explain", str(img), *base, "--out", str(tmp / "link.npy")],
         lambda: (b / "configs" / "metadata.json").read_bytes() != keep)
    # 3. --out folder is the bundle
    case("agg --out = bundle", ["agg2exp", str(img), *base, "--out", str(b)],
         lambda: (b / "configs" / "metadata.json").read_bytes() != keep)
    # 4. an input inside OUT/images (would be deleted by --overwrite)
    (tmp / "o" / "images").mkdir(parents=True)
    inner = tmp / "o" / "images" / "c1.npy"
    np.save(inner, np.ones((32, 28), np.float32))
    case("input in OUT/images", ["agg2exp", str(inner), *base, "--out", str(tmp / "o"), "--overwrite"],
         lambda: not inner.exists())
    # 5. run.json 'written' forged to name a file outside
    out = tmp / "o2"
    call(["agg2exp", str(img), *base, "--out", str(out)])
    victim = tmp / "victim.npz"
    victim.write_bytes(b"v")
    run = json.loads((out / "run.json").read_text())
    run["written"].append("../../victim.npz")
    (out / "run.json").write_text(json.dumps(run))
    rc, err = call(["agg2exp", str(img), *base, "--out", str(out), "--overwrite"])
    results.append(("forged written list", "clear" if rc == 0 and victim.exists() else
                    judge(rc, err, lambda: not victim.exists())))   # a correct run that deletes nothing foreign
    # 6. a result file replaced by a symlink to a foreign file
    res = next((out / "images").glob("*.npz"))
    res.unlink()
    res.symlink_to(victim)
    rc, err = call(["agg2exp", str(img), *base, "--out", str(out)])
    results.append(("result symlinked out", "clear" if rc == 0 and victim.read_bytes() == b"v" else
                    judge(rc, err, lambda: victim.read_bytes() != b"v")))
    # 7. manifest name with ANSI escapes and a bidi override
    man = tmp / "m.csv"
    man.write_text(f"image,name\n{tmp / 'missing.npy'},\"\x1b[31mred\u202eevil\"\n{img},ok\n")
    rc, err = call(["agg2exp", str(man), *base, "--out", str(tmp / "o3")])
    results.append(("escape in manifest name", "unclear" if "\x1b" in err or "\u202e" in err else
                    ("clear" if rc == 3 else judge(rc, err))))
    # 8. template with a huge format width (memory)
    case("template {stem:>1e9}", ["agg2exp", str(img), *base, "--out", str(tmp / "o4"),
                                  "--ground-truth", str(tmp / "{stem:>999999999}")])
    # 9. --seed beyond 31 bits, --top-k 10**12, --roi-label -1, --subset nan
    case("--seed 2**40", ["explain", str(img), *base, "--out", str(tmp / "s.npy"), "--seed", str(2 ** 40)])
    case("--top-k 1e12", ["agg2exp", str(img), *base, "--out", str(tmp / "o5"), "--top-k", str(10 ** 12)])
    case("--roi-label -1", ["explain", str(img), *base, "--out", str(tmp / "r.npy"), "--roi", str(img),
                            "--roi-label", "-1"])
    case("--subset nan", ["evaluate", str(img), *base, "--out", str(tmp / "o6"), "--subset", "nan"])
    # 10. --param with a NUL, an empty key, a duplicated seed
    case("--param seed twice", ["explain", str(img), *base, "--out", str(tmp / "d.npy"), "--param", "seed=1",
                                "--seed", "2"])
    case("--param =3", ["explain", str(img), *base, "--out", str(tmp / "e.npy"), "--param", "=3"])
    # 11. a scheduler address that is not one
    case("--scheduler nonsense", ["agg2exp", str(img), *base, "--out", str(tmp / "o7"), "--scheduler", "nonsense"])
    counts = Counter(c for _, c in results)
    for name, c in results:
        print(f"{c:13s} {name}")
    cats = ("clear", "unclear", "traceback", "silent-wrong", "code-exec", "data-loss", "hang", "crash")
    print(" | ".join(f"{c}: {counts.get(c, 0)}" for c in cats) + f" | total: {len(results)}")


if __name__ == "__main__":
    main_attack()

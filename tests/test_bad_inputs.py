"""Every bad input, across every command, is one line naming the problem and exit code 2, with nothing written.

One table of cases, each run through ``zoolens``'s ``main`` in this process (a subprocess per case would
spend most of the time importing torch and MLflow; ``test_cli_errors.py`` runs the CLI as a subprocess).
Cases that need a zoo share one tiny zoo built once without Ray, and a corrupted copy of it.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cluster.cli import main

REPO = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())


def _cfg(tmp: Path, name: str = "cfg.yaml", **sections) -> str:
    """tiny.yaml with ``sections`` merged in (``zoo={...}`` updates the zoo section), written to ``tmp``."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _text(tmp: Path, text: str, name: str = "recipe.yaml") -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _sweep(tmp: Path, trainable: str = "antitraining", **space) -> str:
    first = {"threshold": {"uniform": [0.8, 0.9]}} if trainable != "interpreter" else {"run_dir": str(tmp)}
    spec = {"name": "s", "trainable": trainable, "metric": "val_acc", "storage_path": str(tmp / "tune"),
            "search_space": {**first, **space}}
    return _text(tmp, yaml.safe_dump(spec), "sweep.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _file(tmp: Path) -> Path:
    path = tmp / "a_file"
    path.write_text("not a directory")
    return path


def _out(tmp: Path) -> list[str]:
    return ["--output-dir", str(tmp / "run"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--no-progress"]


# (case id, argv from (tmp dir, zoo dir, corrupted zoo dir), words the one line must hold)
Case = tuple[str, Callable[[Path, Path, Path], list[str]], tuple[str, ...]]
CASES: list[Case] = [
    # -- the command line itself
    ("no-command", lambda t, z, c: [], ("command",)),
    ("unknown-command", lambda t, z, c: ["bogus"], ("invalid choice",)),
    ("unknown-flag", lambda t, z, c: ["run", "configs/tiny.yaml", "--bogus"], ("--bogus",)),
    ("zoo-no-subcommand", lambda t, z, c: ["zoo"], ("zoo_cmd",)),
    # -- recipes (run and every stage read the same one)
    ("missing-config", lambda t, z, c: ["run", str(t / "nope.yaml")], ("config not found",)),
    ("config-is-dir", lambda t, z, c: ["run", str(t)], ("is a directory",)),
    ("malformed-yaml", lambda t, z, c: ["run", _text(t, "zoo: [1, 2\n")], ("malformed YAML",)),
    ("yaml-list", lambda t, z, c: ["run", _text(t, "- 1\n- 2\n")], ("must be a YAML mapping",)),
    ("empty-config", lambda t, z, c: ["run", _text(t, "")], ("is empty",)),
    ("comment-only-config", lambda t, z, c: ["zoo", "build", _text(t, "# nothing\n")], ("is empty",)),
    ("binary-config", lambda t, z, c: ["run", _binary(t)], ("not a text file",)),
    ("unknown-top-key", lambda t, z, c: ["run", _cfg(t, zooo={"n_models": 1})], ("zooo",)),
    ("unknown-zoo-key", lambda t, z, c: ["run", _cfg(t, zoo={"n_model": 3})], ("n_model",)),
    ("override-unknown-key", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.n_modelz=3"], ("n_modelz",)),
    ("override-not-key-value", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.n_models"], ("key.path=value",)),
    ("override-bad-yaml", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.behaviors=[a, b"], ("not valid YAML",)),
    ("n-models-zero", lambda t, z, c: ["zoo", "build", "configs/tiny.yaml", "zoo.n_models=0"], ("zoo.n_models",)),
    ("n-models-text", lambda t, z, c: ["zoo", "build", _cfg(t, zoo={"n_models": "many"})], ("zoo.n_models",)),
    ("cohort-size-zero", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.cohort_size=0"], ("zoo.cohort_size",)),
    ("unknown-behavior", lambda t, z, c: ["run", _cfg(t, zoo={"behaviors": ["palindrome", "is_prime"]})], ("is_prime",)),
    ("no-behaviors", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.behaviors=[]"], ("behavior",)),
    ("vocab-too-small", lambda t, z, c: ["run", _cfg(t, zoo={"vocab": 2, "behaviors": ["contains_abc"],
                                                             "behaviors_per_model": [1, 1]})], ("contains_abc", "vocab")),
    ("length-too-small", lambda t, z, c: ["run", _cfg(t, zoo={"length": 2, "behaviors": ["mountain_pattern"],
                                                              "behaviors_per_model": [1, 1]})], ("mountain_pattern",)),
    ("behaviors-per-model", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.behaviors_per_model=[3, 9]"],
     ("behaviors_per_model",)),
    ("negative-fractions-sum", lambda t, z, c: ["zoo", "build", _cfg(t, zoo={"hard_negative_frac": 0.8, "contrast_frac": 0.4})],
     ("hard_negative_frac + contrast_frac",)),
    ("lr-range-reversed", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.lr_range=[0.1, 0.01]"], ("lr_range",)),
    ("negative-width", lambda t, z, c: ["zoo", "build", _cfg(t, zoo={"architectures": [{"family": "mlp", "width": -4}]}),
                                        *_out(t)], ("width",)),
    ("negative-width-choice", lambda t, z, c: ["run", _cfg(t, zoo={"architectures": [{"family": "mlp", "depth": [1, 0]}]})],
     ("depth",)),
    ("unknown-family", lambda t, z, c: ["run", _cfg(t, zoo={"architectures": [{"family": "lstm"}]})], ("family",)),
    ("unknown-activation", lambda t, z, c: ["run", _cfg(t, zoo={"architectures": [{"activation": "swish"}]})], ("activation",)),
    ("test-fraction", lambda t, z, c: ["run", "configs/tiny.yaml", "evaluation.test_fraction=1.5"], ("test_fraction",)),
    ("remove-backdoor-unknown-model", lambda t, z, c: ["edit", "m9999999", "configs/tiny.yaml", "--remove-backdoor",
                                                      "--zoo", str(z), *_out(t)], ("not in the zoo",)),
    ("trojan-unknown-kind", lambda t, z, c: ["run", _cfg(t, zoo={"trojans": {"fraction": 0.3, "kinds": ["pixel_patch"]}})],
     ("trojans.kinds",)),
    ("trojan-fraction", lambda t, z, c: ["zoo", "build", "configs/tiny.yaml", "zoo.trojans.fraction=1.5"], ("trojans.fraction",)),
    ("trojan-heldout-token", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.trojans.fraction=0.3",
                                             "zoo.trojans.heldout_tokens=[9]"], ("heldout_tokens",)),
    ("trojan-kind-both-sides", lambda t, z, c: ["run", "configs/tiny.yaml", "zoo.trojans.fraction=0.3",
                                               "zoo.trojans.heldout_kinds=[token_at]"], ("both seen and held out",)),
    ("interpreter-epochs", lambda t, z, c: ["interpreter", "train", "configs/tiny.yaml", "interpreter.epochs=-1"], ("epochs",)),
    ("feature-set", lambda t, z, c: ["run", "configs/tiny.yaml", "interpreter.feature_set=bogus"], ("feature_set",)),
    ("num-actors-zero", lambda t, z, c: ["signatures", "extract", "configs/tiny.yaml", "signatures.num_actors=0"], ("num_actors",)),
    ("probes-zero", lambda t, z, c: ["run", "configs/tiny.yaml", "signatures.probes.n_pos=0"], ("n_pos",)),
    ("ray-cpus-zero", lambda t, z, c: ["run", "configs/tiny.yaml", "ray.num_cpus=0"], ("num_cpus",)),
    # -- where things go
    ("output-dir-under-file", lambda t, z, c: ["run", "configs/tiny.yaml", "--output-dir", str(_file(t) / "run")],
     ("a_file",)),
    ("output-dir-is-file", lambda t, z, c: ["zoo", "build", "configs/tiny.yaml", "--output-dir", str(_file(t))], ("a_file",)),
    ("tracking-nothing-listens", lambda t, z, c: ["zoo", "build", "configs/tiny.yaml", "--output-dir", str(t / "run"),
                                                  "--tracking-uri", f"http://127.0.0.1:{_free_port()}"], ("MLflow",)),
    ("tracking-bad-scheme", lambda t, z, c: ["zoo", "build", "configs/tiny.yaml", "--output-dir", str(t / "run"),
                                             "--tracking-uri", "nosuch://x"], ("nosuch://x",)),
    ("zoo-bad-uri", lambda t, z, c: ["signatures", "extract", "configs/tiny.yaml", "--zoo", "ftp://host/zoo", *_out(t)],
     ("ftp://",)),
    # -- zoos and stage inputs
    ("zoo-show-missing", lambda t, z, c: ["zoo", "show", str(t / "nozoo")], ("zoo not found",)),
    ("zoo-show-empty", lambda t, z, c: ["zoo", "show", str(t)], ("no finished cohorts",)),
    ("zoo-show-file", lambda t, z, c: ["zoo", "show", str(_file(t))], ("a_file",)),
    ("signatures-missing-zoo", lambda t, z, c: ["signatures", "extract", "configs/tiny.yaml", "--zoo", str(t / "nozoo"), *_out(t)],
     ("zoo not found",)),
    ("train-without-signatures", lambda t, z, c: ["interpreter", "train", "configs/tiny.yaml", "--zoo", str(z), *_out(t)],
     ("signatures not found",)),
    ("evaluate-without-interpreter", lambda t, z, c: ["interpreter", "evaluate", "configs/tiny.yaml", "--zoo", str(z), *_out(t)],
     ("signatures not found",)),
    ("zoo-build-other-recipe", lambda t, z, c: ["zoo", "build", "configs/tiny.yaml", "--zoo", str(z), *_out(t)],
     ("different zoo config",)),
    ("corrupted-shard-signatures", lambda t, z, c: ["signatures", "extract", "configs/tiny.yaml", "--zoo", str(c), *_out(t)],
     ("c00000.safetensors", "sha256")),
    ("corrupted-shard-show", lambda t, z, c: ["zoo", "show", str(c)], ("c00000.safetensors", "sha256")),
    ("corrupted-header-sae", lambda t, z, c: ["analyze", "sae", "--zoo", str(_bad_header(t, z)), "--out", str(t / "a")],
     ("c00000.safetensors",)),
    # -- edit
    ("edit-no-op", lambda t, z, c: ["edit", "m0000000", "configs/tiny.yaml"], ("--add B",)),
    ("edit-train-with-op", lambda t, z, c: ["edit", "train", "configs/tiny.yaml", "--add", "palindrome"], ("takes no",)),
    ("edit-train-no-config", lambda t, z, c: ["edit", "train"], ("needs a CONFIG",)),
    ("edit-two-configs", lambda t, z, c: ["edit", "m0000000", "a.yaml", "b.yaml", "--repair"], ("one CONFIG only",)),
    ("edit-two-ops", lambda t, z, c: ["edit", "m0000000", "--add", "palindrome", "--repair"], ("not allowed with",)),
    ("edit-bad-method", lambda t, z, c: ["edit", "m0000000", "--add", "palindrome", "--method", "magic"], ("magic",)),
    ("edit-unknown-model", lambda t, z, c: ["edit", "m9999999", "configs/tiny.yaml", "--add", "palindrome", "--zoo", str(z),
                                            *_out(t)], ("m9999999",)),
    ("edit-unknown-behavior", lambda t, z, c: ["edit", "m0000000", "configs/tiny.yaml", "--add", "is_prime", "--zoo", str(z),
                                               *_out(t)], ("is_prime",)),
    ("edit-add-present", lambda t, z, c: ["edit", "m0000000", "configs/tiny.yaml", "--add", _has(z, "m0000000"), "--zoo", str(z),
                                          *_out(t)], ("already", "--force")),
    ("edit-remove-absent", lambda t, z, c: ["edit", "m0000000", "configs/tiny.yaml", "--remove", _lacks(z, "m0000000"),
                                            "--zoo", str(z), *_out(t)], ("does not", "--force")),
    ("edit-repair-clean", lambda t, z, c: ["edit", "m0000000", "configs/tiny.yaml", "--repair", "--zoo", str(z), *_out(t)],
     ("corrupted", "--force")),
    # -- read (one model, in this process)
    ("read-k-zero", lambda t, z, c: ["read", "m0000000", str(t), "-k", "0"], ("-k",)),
    ("read-no-interpreter", lambda t, z, c: ["read", "m0000000", str(t / "nothing")], ("interpreter not found",)),
    ("read-run-without-interpreter", lambda t, z, c: ["read", "m0000000", str(t)], ("no interpreter",)),
    ("read-no-args", lambda t, z, c: ["read"], ("required",)),
    # -- tune
    ("tune-missing", lambda t, z, c: ["tune", str(t / "nope.yaml")], ("config not found",)),
    ("tune-unknown-trainable", lambda t, z, c: ["tune", _sweep(t, trainable="magic")], ("magic",)),
    ("tune-empty-choice", lambda t, z, c: ["tune", _sweep(t, cycle_steps={"choice": []})], ("cycle_steps",)),
    ("tune-reversed-uniform", lambda t, z, c: ["tune", _sweep(t, anti_fraction={"uniform": [0.8, 0.2]})], ("anti_fraction",)),
    ("tune-unknown-param", lambda t, z, c: ["tune", _sweep(t, learning_rat={"uniform": [0.1, 0.2]})], ("learning_rat",)),
    ("tune-unknown-sampler", lambda t, z, c: ["tune", _sweep(t, cycle_steps={"normal": [16, 4]})], ("normal",)),
    ("tune-negative-loguniform", lambda t, z, c: ["tune", _sweep(t, anti_fraction={"loguniform": [-0.1, 0.5]})],
     ("anti_fraction",)),
    ("tune-bad-value", lambda t, z, c: ["tune", _sweep(t, cycle_steps={"choice": [16, -3]})], ("cycle_steps",)),
    ("tune-interpreter-bad-choice", lambda t, z, c: ["tune", _sweep(t, trainable="interpreter",
                                                                    feature_set={"choice": ["all", "nope"]})],
     ("feature_set",)),
    ("tune-num-samples", lambda t, z, c: ["tune", "tune_configs/antitraining.yaml", "num_samples=0"], ("num_samples",)),
    ("tune-resume-nothing", lambda t, z, c: ["tune", _sweep(t), "--resume"], ("nothing to resume",)),
    # -- analyze and antitrain
    ("llc-zoo-without-zoo", lambda t, z, c: ["analyze", "llc", "zoo"], ("--zoo",)),
    ("llc-unknown-override", lambda t, z, c: ["analyze", "llc", "validate", "sgld.stepz=3"], ("stepz",)),
    ("grokking-full-and-quick", lambda t, z, c: ["analyze", "grokking", "--full", "--quick"], ("not both",)),
    ("sae-missing-zoo", lambda t, z, c: ["analyze", "sae", "--zoo", str(t / "nozoo")], ("zoo not found",)),
    ("patching-bad-value", lambda t, z, c: ["analyze", "patching", "--zoo", str(z), "n_perms=-1"], ("n_perms",)),
    ("antitrain-unknown-override", lambda t, z, c: ["antitrain", "experiment", "width", "widthz=3"], ("widthz",)),
    ("antitrain-recipe-and-quick", lambda t, z, c: ["antitrain", "experiment", "width", "configs/antitrain/quick.yaml",
                                                    "--quick"], ("not both",)),
    ("antitrain-missing-recipe", lambda t, z, c: ["antitrain", "experiment", "width", str(t / "nope.yaml")],
     ("config not found",)),
    # -- mlflow serve
    ("serve-port-range", lambda t, z, c: ["mlflow", "serve", "--port", "99999", "--root", str(t / "srv")], ("port",)),
    ("serve-root-under-file", lambda t, z, c: ["mlflow", "serve", "--root", str(_file(t) / "srv"), "--port",
                                               str(_free_port())], ("a_file",)),
    ("serve-workers-zero", lambda t, z, c: ["mlflow", "serve", "--workers", "0", "--root", str(t / "srv")], ("workers",)),
]


def _binary(tmp: Path) -> str:
    path = tmp / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81zoo")
    return str(path)


def _has(zoo: Path, model_id: str) -> str:
    from zoo.store import ZooStore

    row = ZooStore(zoo).read_manifest().set_index("model_id").loc[model_id]
    return str(row["behaviors"][0])


def _lacks(zoo: Path, model_id: str) -> str:
    from zoo.store import ZooStore

    store = ZooStore(zoo)
    row = store.read_manifest().set_index("model_id").loc[model_id]
    return next(b for b in store.read_meta()["config"]["behaviors"] if b not in list(row["behaviors"]))


def _bad_header(tmp: Path, zoo: Path) -> Path:
    copy = tmp / "bad_header_zoo"
    shutil.copytree(zoo, copy)
    (copy / "cohorts" / "c00000.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    return copy


@pytest.fixture(scope="module")
def zoos(tmp_path_factory) -> tuple[Path, Path]:
    """A two-cohort zoo of tiny models (built in this process, no Ray) and a copy with one weight flipped."""
    from cluster.stages.zoo import prepare_store
    from zoo.build import build_cohort
    from zoo.config import ZooConfig, plan_zoo

    import cluster.pipeline  # noqa: F401 - imported once here, so no case's time bound pays for torch, Ray and MLflow
    import cluster.stages.tune  # noqa: F401

    root = tmp_path_factory.mktemp("zoos")
    cfg = ZooConfig(**{**TINY["zoo"], "n_models": 8, "cohort_size": 4, "epochs": 1, "n_train": 64, "n_test": 16,
                       "seed": 7})
    store = prepare_store(cfg, root / "zoo")
    for plan in plan_zoo(cfg):
        build_cohort(plan, cfg, store)
    corrupt = root / "corrupt"
    shutil.copytree(root / "zoo", corrupt)
    shard = corrupt / "cohorts" / "c00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x55  # a weight, not the header
    shard.write_bytes(bytes(data))
    return root / "zoo", corrupt


def test_the_table_is_big_enough():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: Case, zoos, tmp_path: Path, capfd, monkeypatch):
    name, argv, needles = case
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'default-mlflow.db'}")
    zoo, corrupt = zoos
    args = argv(tmp_path, zoo, corrupt)
    before = _snapshot(tmp_path, zoo, corrupt)
    t0 = time.perf_counter()
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    seconds = time.perf_counter() - t0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{name}: exit {code}\n{err}"
    assert len(lines) == 1 and lines[0].startswith("zoolens: error: "), f"{name}:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"
    assert seconds < 30, f"{name} took {seconds:.0f}s to fail"
    assert _snapshot(tmp_path, zoo, corrupt) == before, f"{name} wrote files"


def _snapshot(tmp: Path, *zoos: Path) -> dict[str, int]:
    """Every file under the test's tmp dir and the shared zoos, with its size (what a refusal must leave alone)."""
    out = {}
    for root in (tmp, *zoos):
        for p in root.rglob("*"):
            if p.is_file() and p.name != "default-mlflow.db":
                out[str(p)] = p.stat().st_size
    return out

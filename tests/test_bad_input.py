"""Every option's check end to end: a bad input is one line on stderr from one rank, exit status 2,
no traceback, and nothing written (no output folder; an existing checkpoint stays as it was).

Each case is a real 2-rank ``mpirun`` run, so the line must come from the rank that found the
mistake while the other rank leaves quietly.
"""

import os
from pathlib import Path

import h5py
import pytest
import torch

from fedbat_mpi.rounds import out_lock
from fedbat_mpi.server import checkpoint
from fedbat_mpi.testing.formats import write_fmnist
from fedbat_mpi.testing.launch import TINY, launch

# (id, options, the start of the expected stderr line after "fedbat_mpi: error: ")
OPTION_CASES = [
    ("rounds", ["--rounds", "-1"], "--rounds: expected a positive integer, got -1"),
    ("local-epochs", ["--local-epochs", "0"], "--local-epochs: expected a positive integer, got 0"),
    ("batch-size", ["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    ("unknown-option", ["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ("not-a-number", ["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    ("lr-zero", ["--lr", "0"], "--lr: expected a positive number up to 3.40e+38, got 0.0"),
    ("lr-inf", ["--lr", "inf"], "--lr: expected a positive number up to 3.40e+38, got inf"),
    ("lr-past-float32", ["--lr", "1e39"], "--lr: expected a positive number up to 3.40e+38, got 1e+39"),
    ("rho-negative", ["--rho", "-1"], "--rho: expected a number in [0, 3.40e+38], got -1.0"),
    ("rho-nan", ["--rho", "nan"], "--rho: expected a number in [0, 3.40e+38], got nan"),
    ("z-sigma-past-float32", ["--algorithm", "z-signfedavg", "--z-sigma", "1e308"],
     "--z-sigma: expected a positive number up to 3.40e+38, got 1e+308"),
    ("z-exponent", ["--algorithm", "z-signfedavg", "--z-exponent", "3"], "--z-exponent: expected one of 1, 2, inf, got '3'"),
    ("z-server-lr", ["--z-server-lr", "-1"], "--z-server-lr: expected a positive number up to 3.40e+38, got -1.0"),
    ("mv-server-lr", ["--mv-server-lr", "0"], "--mv-server-lr: expected a positive number up to 3.40e+38, got 0.0"),
    ("eval-batch-size", ["--eval-batch-size", "0"], "--eval-batch-size: expected a positive integer, got 0"),
    ("warmup-above-1", ["--warmup", "1.5"], "--warmup: expected a fraction in [0, 1], got 1.5"),
    ("warmup-negative", ["--warmup", "-0.1"], "--warmup: expected a fraction in [0, 1], got -0.1"),
    ("zsign-sigma", ["--zsign-sigma", "0"], "--zsign-sigma: expected a positive number up to 3.40e+38, got 0.0"),
    ("weighting", ["--weighting", "clients"], "--weighting: expected one of batches, samples, got 'clients'"),
    ("algorithm", ["--algorithm", "sgd"], "--algorithm: expected one of fedbat, fedavg, signsgd, ef-signsgd"),
    ("seed", ["--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
    ("checkpoint-every", ["--checkpoint-every", "-1"], "--checkpoint-every: expected an integer >= 0"),
    ("more-per-round", ["--clients-per-round", "50"], "--clients-per-round: expected at most --num-clients (40)"),
    ("fewer-than-ranks", ["--clients-per-round", "1"], "--clients-per-round: expected at least the number of MPI ranks (2)"),
    ("client-group-zero", ["--client-group", "0"], "--client-group: expected auto or a positive integer, got 0"),
    ("client-group-word", ["--client-group", "all"], "--client-group: expected auto or a positive integer, got 'all'"),
    ("threads-huge", ["--threads", "99999999999999999999"],
     "--threads: expected a positive integer up to 1024, got 99999999999999999999"),
    ("cuda-graphs-word", ["--cuda-graphs", "yes"], "--cuda-graphs: expected on or off, got 'yes'"),
    ("cuda-graphs-on-cpu", ["--cuda-graphs", "on", "--device", "cpu"],
     "--cuda-graphs: on needs a GPU, and this rank runs on the cpu"),
    ("device-name", ["--device", "gpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("device-index", ["--device", "cuda:99"], "--device: cuda:99 "),
    ("partition", ["--partition", "halves"], "--partition: expected iid, dir:BETA"),
    ("partition-beta", ["--partition", "dir:0"], "--partition: expected iid, dir:BETA"),
    ("partition-too-many", ["--partition", "dir:0.3", "--num-clients", "801", "--clients-per-round", "8"],
     "--partition dir:0.3: needs 10 samples per client"),
    ("min-samples", ["--min-samples", "0"], "--min-samples: expected a positive integer, got 0"),
    ("min-samples-too-many", ["--partition", "dir:0.3", "--min-samples", "201"],
     "--partition dir:0.3: needs 201 samples per client (--min-samples), but 8000 samples < 201 x 40 clients"),
    ("num-clients", ["--num-clients", "8001", "--clients-per-round", "8"], "--num-clients: expected 1..8000"),
    ("preset", ["--preset", "nope"], "--preset: expected one of embedded, fmnist-iid"),
    ("dataset", ["--dataset", "mnist"], "--dataset: expected one of embedded, fmnist, svhn, cifar10, cifar100"),
    ("data-dir-missing", ["--dataset", "svhn"], "--data-dir: required for --dataset svhn"),
    ("data-dir-absent", ["--dataset", "fmnist", "--data-dir", "/nonexistent"], "--data-dir: expected a directory"),
    ("data-dir-newline", ["--dataset", "fmnist", "--data-dir", "/no\nsuch"],
     "--data-dir: expected a directory, got /no\\nsuch"),
    ("data-files-absent", ["--dataset", "fmnist", "--data-dir", "/"], "fashion-mnist: /fashion-mnist/"),
    ("model", ["--model", "vgg"], "--model: expected one of"),
    ("model-for-other-images", ["--model", "resnet10"],
     "--model: resnet10 takes 3x32x32 images, but --dataset embedded holds 1x28x28"),
    ("config-absent", ["--config", "/nonexistent.yaml"], "--config: cannot read /nonexistent.yaml"),
]
if not torch.cuda.is_available():
    OPTION_CASES.append(("device-cuda", ["--device", "cuda"], "--device: cuda requested but CUDA is not available"))

YAML_CASES = [
    ("broken", "rounds: [1\n", "is not valid YAML"),
    ("not-a-mapping", "- 1\n- 2\n", "must hold a mapping of option names to values"),
    ("unknown-key", "roundz: 3\n", "--config: unknown option 'roundz'"),
    ("wrong-type", "rounds: many\n", "--rounds: expected int, got 'many'"),
    ("fraction", "rounds: 2.7\n", "--rounds: expected int, got 2.7"),
    ("boolean", "lr: true\n", "--lr: expected float, got True"),
    ("client-group-fraction", "client-group: 2.5\n", "--client-group: expected auto or a positive integer, got 2.5"),
    ("null", "rounds: null\n", "--rounds: expected int, got null"),
    ("list-for-text", "partition: [iid]\n", "--partition: expected str, got ['iid']"),
    ("not-utf-8", b"rounds: 3  # \xff\n", "is not valid YAML"),
]


def _assert_one_line_exit_2(done, expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("fedbat_mpi: error") and expected in lines[0], lines[0]


@pytest.mark.parametrize("options,expected", [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_a_bad_option_is_one_line_and_exit_2(options, expected, tmp_path):
    out = tmp_path / "out"
    done = launch(2, [*options, "--out", str(out)], timeout=120)
    _assert_one_line_exit_2(done, expected)
    assert not out.exists()


@pytest.mark.parametrize("text,expected", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_a_bad_config_file_is_one_line_and_exit_2(text, expected, tmp_path):
    config, out = tmp_path / "options.yaml", tmp_path / "out"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    done = launch(2, ["--config", str(config), "--out", str(out)], timeout=120)
    _assert_one_line_exit_2(done, expected)
    assert not out.exists()


@pytest.mark.parametrize("empty", ["train", "t10k"])
def test_a_data_set_with_an_empty_split_is_refused_at_load(tmp_path, empty):
    write_fmnist(tmp_path, *{"train": (0, 8), "t10k": (8, 0)}[empty])  # (training images, test images)
    out = tmp_path / "out"
    options = ["--dataset", "fmnist", "--data-dir", str(tmp_path), "--num-clients", "2", "--clients-per-round", "2",
               "--rounds", "1", "--out", str(out)]  # fmt: skip
    done = launch(2, options, timeout=120)
    _assert_one_line_exit_2(done, f"{tmp_path}/fashion-mnist/{empty}-images-idx3-ubyte and ")
    assert "expected at least one image, got none" in done.stderr and not out.exists()


def _folder_of_length(root: Path, length: int) -> Path:
    """A folder path under ``root`` (not made) whose absolute path is ``length`` bytes long."""
    parts, left = [], length - len(str(root.resolve()))
    while left > 0:
        part = min(200, left - 1) if left > 201 else left - 1  # each part costs its "/" too
        parts.append("d" * part)
        left -= part + 1
    folder = root.resolve().joinpath(*parts)
    assert len(str(folder)) == length
    return folder


def test_an_out_path_too_long_for_the_files_in_it_is_refused_at_start_up(tmp_path):
    """The longest ``--out`` accepted holds every file a run writes (client state and checkpoints
    replaced); one byte more is one line at start-up, nothing made (was a traceback at the first
    checkpoint)."""
    longest = os.pathconf(tmp_path, "PC_PATH_MAX") - 2 - out_lock.LONGEST_NAME
    runs = ["--algorithm", "ef-signsgd", *TINY, "--checkpoint-every", "1"]
    accepted = _folder_of_length(tmp_path / "accepted", longest)
    done = launch(2, [*runs, "--out", str(accepted)], timeout=120)
    assert done.returncode == 0, done.stderr
    written = set(os.listdir(accepted))
    assert {checkpoint.FILE_NAME, checkpoint.PREVIOUS_FILE_NAME, "client_state.h5"} <= written
    refused = _folder_of_length(tmp_path / "refused", longest + 1)
    done = launch(2, [*runs, "--out", str(refused)], timeout=120)
    _assert_one_line_exit_2(done, f"--out: {refused} is too long a path ({longest + 1} bytes")
    assert not (tmp_path / "refused").exists()


def test_a_folder_in_the_way_of_an_output_file_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "out"
    (out / "metrics.jsonl").mkdir(parents=True)
    done = launch(2, [*TINY, "--out", str(out)], timeout=120)
    _assert_one_line_exit_2(done, f"--out: cannot write {out}/metrics.jsonl (Is a directory)")
    assert (out / "metrics.jsonl").is_dir() and not (out / checkpoint.FILE_NAME).exists()


def test_resume_from_a_missing_file_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "run" / checkpoint.FILE_NAME
    done = launch(2, ["--resume", str(missing)], timeout=120)
    _assert_one_line_exit_2(done, f"--resume: no checkpoint at {missing}")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_format_version_is_refused_and_kept(tmp_path):
    path = tmp_path / "run" / checkpoint.FILE_NAME
    path.parent.mkdir()
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = checkpoint.FORMAT
        handle.attrs["format_version"] = checkpoint.FORMAT_VERSION + 1
    before = path.read_bytes()
    done = launch(2, ["--resume", str(path)], timeout=120)
    _assert_one_line_exit_2(done, f"has checkpoint format {checkpoint.FORMAT_VERSION + 1}; this version reads")
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_file_that_is_not_hdf5_is_refused_and_kept(tmp_path):
    path = Path(tmp_path) / checkpoint.FILE_NAME
    path.write_text("not a checkpoint\n")
    done = launch(2, ["--resume", str(path)], timeout=120)
    _assert_one_line_exit_2(done, "is not an HDF5 file")
    assert path.read_text() == "not a checkpoint\n"

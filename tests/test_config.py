"""The configuration's checks as plain calls: YAML values (``coerce``), ``Config.validate`` on values
of the wrong type (a checkpoint's stored configuration) and the one-line error messages."""

import re
from dataclasses import fields

import pytest

from fedbat_mpi.client.algorithms.base import flag
from fedbat_mpi.config import (
    MAX_THREADS,
    NULLABLE,
    RESUMABLE_CHANGES,
    Config,
    build_parser,
    coerce,
    load_yaml,
    parse_command_line,
    read_yaml_mapping,
    resumed_config,
)
from fedbat_mpi.errors import UsageError

DEFAULTS = {field.name: field.default for field in fields(Config)}


@pytest.mark.parametrize("name", DEFAULTS)
def test_null_is_taken_only_by_an_option_without_a_default(name):
    if DEFAULTS[name] is None:
        assert name in NULLABLE and coerce(name, None) is None
    else:
        with pytest.raises(UsageError, match=rf"^--{name.replace('_', '-')}: expected .+, got null$"):
            coerce(name, None)


@pytest.mark.parametrize("name", DEFAULTS)
@pytest.mark.parametrize("value", [["a", "b"], {"a": 1}], ids=["list", "mapping"])
def test_a_list_or_mapping_is_refused_for_every_option(name, value):
    expected = rf"^--{name.replace('_', '-')}: expected .+, got {re.escape(repr(value))}$"
    with pytest.raises(UsageError, match=expected):
        coerce(name, value)


def test_an_on_off_option_takes_what_yaml_reads_off_and_on_as(tmp_path):
    path = tmp_path / "options.yaml"
    for text, expected in (("off", "off"), ("on", "on"), ("'off'", "off"), ("no", "off")):
        path.write_text(f"cuda_graphs: {text}\n")
        assert load_yaml(str(path)) == {"cuda_graphs": expected}
    with pytest.raises(UsageError, match="^--lr: expected float, got False$"):
        coerce("lr", False)  # other options still refuse booleans


def test_an_integer_too_large_for_a_float_option_is_refused_with_one_line():
    with pytest.raises(UsageError, match=r"^--lr: expected float, got 1000+$"):
        coerce("lr", 10**400)  # YAML reads 1 and 400 zeros as an int, which float() cannot take


@pytest.mark.parametrize(
    "stored,expected",
    [({"lr": "x"}, "--lr: expected float, got 'x'"),
     ({"partition": None}, "--partition: expected str, got null"),
     ({"rounds": 2.5}, "--rounds: expected int, got 2.5"), ({"seed": True}, "--seed: expected int, got True"),
     ({"out": 5}, "--out: expected str, got 5"), ({"rho": [1]}, "--rho: expected float, got [1]"),
     ({"client_group": 1.5}, "--client-group: expected auto or a positive integer, got 1.5")],
    ids=["lr", "partition", "rounds", "seed", "out", "rho", "client-group"],
)  # fmt: skip
def test_a_checkpoints_configuration_of_the_wrong_type_is_a_usage_error(stored, expected):
    saved = {**Config(rounds=10, model="cnn4-mnist").as_dict(), **stored}
    with pytest.raises(UsageError) as error:
        resumed_config(saved, {}, finished_round=3)
    assert str(error.value) == expected


def test_an_int_is_a_float_options_value():
    # rho: an algorithm's option, a field make_dataclass adds (mypy sees RunOptions' fields only)
    assert Config(lr=1, rho=6).validate().lr == 1  # type: ignore[call-arg]


def test_threads_have_a_documented_maximum():
    expected = f"^--threads: expected a positive integer up to {MAX_THREADS}, got {10**20}$"
    assert Config(threads=MAX_THREADS).validate().threads == MAX_THREADS
    with pytest.raises(UsageError, match=expected):
        Config(threads=10**20).validate()
    shown = " ".join(build_parser().format_help().split())
    assert f"torch threads per rank (at most {MAX_THREADS})" in shown


def test_an_empty_out_is_refused():
    with pytest.raises(UsageError, match="^--out: expected a folder name, got ''$"):
        Config(**parse_command_line(["--out", ""]).options).validate()


def test_an_empty_model_is_refused():
    with pytest.raises(UsageError, match="^--model: expected one of cnn4-mnist, cnn4, resnet10, got ''$"):
        Config(**parse_command_line(["--model", ""]).options).validate()


def test_an_option_spelled_two_ways_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "options.yaml"
    path.write_text("local-epochs: 1\nlocal_epochs: 3\n")
    expected = f"--config: {path}: local_epochs given twice (as local-epochs and local_epochs)"
    with pytest.raises(UsageError, match=f"^{re.escape(expected)}$"):
        load_yaml(str(path))


@pytest.mark.parametrize("text,expected", [
    ("rounds: 1\nlr: 0.1\nrounds: 3\n", "rounds given twice (lines 1 and 3)"),
    ("rounds: 1\nrounds: 1\n", "rounds given twice (lines 1 and 2)"),
])  # fmt: skip
def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, text, expected):
    """YAML itself would keep the last value and drop the other without a word."""
    path = tmp_path / "options.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=f"^{re.escape(f'--config: {path}: {expected}')}$"):
        load_yaml(str(path))


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "options.yaml"
    path.write_text("defaults: &defaults {rounds: 1, lr: 0.2}\nrun:\n  <<: *defaults\n  rounds: 3\n")
    assert read_yaml_mapping(str(path), "--config", "a mapping")["run"] == {"rounds": 3, "lr": 0.2}


def test_a_usage_error_is_one_line_whatever_it_quotes():
    assert str(UsageError("--data-dir: expected a directory, got /no\nsuch\r")) == (
        "--data-dir: expected a directory, got /no\\nsuch\\r"
    )


# A changed value of every option a resumed run may change (README, "Checkpoints and resume").
RESUMABLE = {"rounds": 20, "out": "elsewhere", "checkpoint_every": 1, "device": "cpu", "threads": 2,
             "data_dir": "/moved", "cuda_graphs": "on"}  # fmt: skip


def test_a_resumed_run_may_change_where_and_how_it_runs_and_nothing_else():
    assert set(RESUMABLE) == RESUMABLE_CHANGES
    saved = Config(rounds=10, model="cnn4-mnist", data_dir="/data").as_dict()
    for name, value in RESUMABLE.items():
        assert getattr(resumed_config(saved, {name: value}, finished_round=3), name) == value
    others = {"seed": 1, "lr": 0.05, "client_group": 2, "partition": "dir:0.3", "eval_batch_size": 100,
              "rho": 3.0, "weighting": "samples", "local_epochs": 1}  # fmt: skip
    for name, value in others.items():
        with pytest.raises(UsageError, match=f"^{flag(name)}: the checkpoint was made with"):
            resumed_config(saved, {name: value}, finished_round=3)


def test_a_resumed_run_may_change_the_options_of_other_algorithms_only():
    """A study's ``base`` holds every algorithm's options: editing FedBAT's does not refuse its FedAvg runs."""
    fedavg = Config(algorithm="fedavg", rounds=10, model="cnn4-mnist").as_dict()
    assert getattr(resumed_config(fedavg, {"rho": 3.0, "zsign_sigma": 0.5}, finished_round=3), "rho") == 3.0
    fedbat = {**fedavg, "algorithm": "fedbat"}
    assert getattr(resumed_config(fedbat, {"zsign_sigma": 0.5}, finished_round=3), "zsign_sigma") == 0.5
    for name, value in (("rho", 3.0), ("warmup", 0.2)):
        with pytest.raises(UsageError, match=f"^{flag(name)}: the checkpoint was made with"):
            resumed_config(fedbat, {name: value}, finished_round=3)

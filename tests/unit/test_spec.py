from __future__ import annotations

import textwrap

import pytest

from contract.errors import InvalidSpec
from contract.spec import load_job_file, parse_spec_json


def load(tmp_path, body: str):
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(body))
    return load_job_file(path)


def test_a_full_spec_loads(tmp_path):
    spec = load(tmp_path, """
        name = "resnet"
        run = "python train.py"
        setup = "pip install -r requirements.txt"
        nproc_per_node = 8
        max_restarts = 3
        checkpoint_dir = "/mnt/ckpt"
        files = ["*.py"]
        [nodes]
        count = 16
        min = 12
        [env]
        NCCL_DEBUG = "WARN"
        [resources]
        provider = "aws"
        instance_type = "p5.48xlarge"
        spot = true
    """)
    assert spec.nodes.minimum == 12 and spec.resources.spot and spec.env["NCCL_DEBUG"] == "WARN"


def test_minimum_defaults_to_count(tmp_path):
    assert load(tmp_path, 'name = "a"\nrun = "x"\n[nodes]\ncount = 4').nodes.minimum == 4


@pytest.mark.parametrize("body, needles", [
    ('name = "a"\nrun = "x"\nnodez = 3', ["unknown key 'nodez'"]),
    ('name = "a"\nrun = "x"\n[nodes]\ncount = "3"', ["'nodes.count'", "integer"]),
    ('name = "a"\nrun = "x"\n[nodes]\ncount = 2\nmin = 3', ["'nodes'", "must not exceed"]),
    ('name = "a"', ["missing required key 'run'"]),
    ('name = "../etc"\nrun = "x"', ["'name'"]),
    ('name = "a"\nrun = "x"\n[env]\nRANK = "3"', ["'env'", "RANK"]),
    ('name = "a"\nrun = "x"\n[env]\n"BAD-KEY" = "3"', ["BAD-KEY"]),
    ('name = "a"\nrun = "x"\n[resources]\nprovider = "gcp"', ["'resources.provider'", "local"]),
    ('name = "a"\nrun = "x"\nnproc_per_node = 0', ["'nproc_per_node'"]),
    ('name = "a"\nrun = "x" x', ["not valid TOML"]),
])
def test_errors_name_the_file_and_the_key(tmp_path, body, needles):
    with pytest.raises(InvalidSpec) as info:
        load(tmp_path, body)
    message = str(info.value)
    assert str(tmp_path / "job.toml") in message
    for needle in needles:
        assert needle in message, message


def test_json_from_the_wire_is_validated_with_its_source_named():
    with pytest.raises(InvalidSpec, match="sdk-call: key 'max_restarts'"):
        parse_spec_json('{"name": "a", "run": "x", "max_restarts": -1}', "sdk-call")
    with pytest.raises(InvalidSpec, match="not valid JSON"):
        parse_spec_json("{", "sdk-call")


@pytest.mark.parametrize("name", ["COORD_NODE_HOST", "COORD_SNAPSHOT_DIR", "TORCHELASTIC_RUN_ID",
                                  "GROUP_WORLD_SIZE", "ROLE_RANK"])
def test_a_variable_coord_sets_for_every_worker_is_refused_with_its_name(tmp_path, name):
    with pytest.raises(InvalidSpec, match=f"'env'.*{name}.*set by coord"):
        load(tmp_path, f'name = "a"\nrun = "x"\n[env]\n{name} = "3"')


def test_a_default_coord_sets_may_be_overridden(tmp_path):
    spec = load(tmp_path, 'name = "a"\nrun = "x"\n[env]\nOMP_NUM_THREADS = "4"')
    assert spec.env["OMP_NUM_THREADS"] == "4"

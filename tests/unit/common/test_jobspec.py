from pathlib import Path

import pytest

from gpufleet.common.errors import InvalidInputError
from gpufleet.common.jobspec import check_spec, load_spec_file, parse_duration_s, spec_from_dict
from gpufleet.proto.v1 import types_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_examples_exist_and_are_valid() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "notebook.yaml",
        "inference-mig.yaml",
        "finetune-1gpu.yaml",
        "train-8gpu.yaml",
        "gang-2x8.yaml",
        "spot-sweep.yaml",
    } <= names
    for path in EXAMPLES:
        spec = load_spec_file(path)
        assert spec.name and spec.command


def test_issue_example_document_parses_to_integers() -> None:
    spec = spec_from_dict(
        {
            "name": "llama-finetune",
            "team": "ml-research",
            "project": "llm",
            "command": ["python", "train.py", "--epochs", "3"],
            "resources": {
                "gpus": 0.5,
                "gpu_memory": "40GiB",
                "gpu_models": ["H100-80GB", "A100-80GB"],
                "cpu": 8,
                "memory": "64GiB",
            },
            "nodes": 1,
            "priority": "normal",
            "preemptible": True,
            "deadline": "2026-12-01T00:00:00Z",
            "placement": {"providers": ["aws", "gcp"], "spot": "allowed"},
        }
    )
    r = spec.resources
    assert (r.gpu_milli, r.gpu_memory_mib, r.cpu_milli, r.memory_mib) == (500, 40960, 8000, 65536)
    assert spec.deadline_ms == 1796083200000
    assert spec.placement.spot == pb.SPOT_POLICY_ALLOWED


def test_aliases_from_earlier_designs() -> None:
    spec = spec_from_dict({"name": "a", "command": ["x"], "resources": {"gpu_fraction": 0.25}})
    assert spec.resources.gpu_milli == 250
    spec = spec_from_dict({"name": "b", "command": ["x"], "resources": {"use_mig": "1g.10gb"}})
    assert spec.resources.mig_profile == "1g.10gb"


def test_broken_file_reports_every_problem_with_its_field() -> None:
    with pytest.raises(InvalidInputError) as exc:
        load_spec_file(Path(__file__).parent / "specs" / "broken.yaml")
    fields = {p.field for p in exc.value.problems}
    assert {"command", "resources.gpus", "resources.gpu_memory", "resources.colour", "placement.spot"} <= fields
    text = str(exc.value)
    assert "argv list" in text and "whole number" in text and "GiB" in text and "valid fields here" in text


def test_semantic_problems_named() -> None:
    spec = pb.JobSpec(
        name="Bad Name",
        command=[],
        nodes=0,
        priority="urgent",
        backend="slurm",
        resources=pb.Resources(gpu_models=["B300"], mig_profile="9g.99gb"),
    )
    problems = {p.field: p.message for p in check_spec(spec)}
    assert set(problems) >= {
        "name",
        "command",
        "nodes",
        "priority",
        "backend",
        "resources.gpu_models",
        "resources.mig_profile",
    }
    assert "not supported yet" in problems["backend"]


def test_gang_needs_whole_gpus() -> None:
    with pytest.raises(InvalidInputError, match="whole GPUs"):
        spec_from_dict({"name": "g", "command": ["x"], "nodes": 2, "resources": {"gpus": 0.5}})


def test_bad_yaml_says_where(tmp_path: Path) -> None:
    f = tmp_path / "j.yaml"
    f.write_text("name: x\ncommand: [a, b\n")
    with pytest.raises(InvalidInputError, match="line"):
        load_spec_file(f)


def test_durations() -> None:
    assert parse_duration_s("90s") == 90
    assert parse_duration_s("2h") == 7200
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s("soon")

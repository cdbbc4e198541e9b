"""Log reading by offset / tail / max_bytes, and the job environment (devices, identity, gang rendezvous)."""

from __future__ import annotations

from pathlib import Path

from gpufleet.agent.jobs.env import job_env
from gpufleet.agent.jobs.logs import CHUNK_BYTES, read_log, tail_offset
from gpufleet.proto.v1 import types_pb2 as pb


def test_read_by_offset_tail_and_limit(tmp_path: Path) -> None:
    p = tmp_path / "log"
    p.write_bytes(b"one\ntwo\nthree\n")
    [c] = read_log(p)
    assert (c.offset, c.data, c.eof) == (0, b"one\ntwo\nthree\n", True)
    [c] = read_log(p, offset=4, max_bytes=3)
    assert (c.offset, c.data, c.eof) == (4, b"two", True)
    assert b"".join(c.data for c in read_log(p, tail_lines=2)) == b"two\nthree\n"
    assert b"".join(c.data for c in read_log(p, tail_lines=10)) == b"one\ntwo\nthree\n"
    assert read_log(p, offset=-6)[0].data == b"three\n"
    [c] = read_log(p, offset=100)
    assert (c.offset, c.data, c.eof) == (14, b"", True)  # nothing new yet: the caller polls from 14


def test_tail_without_final_newline_and_large_files(tmp_path: Path) -> None:
    p = tmp_path / "log"
    p.write_bytes(b"a\nb\nc")
    assert tail_offset(p, 1) == 4 and tail_offset(p, 2) == 2
    big = tmp_path / "big"
    lines = [f"line {i:06d}\n".encode() for i in range(20000)]
    big.write_bytes(b"".join(lines))
    chunks = read_log(big, tail_lines=3)
    assert b"".join(c.data for c in chunks) == b"".join(lines[-3:])
    chunks = read_log(big)
    assert len(chunks) > 1 and all(len(c.data) <= CHUNK_BYTES for c in chunks)
    assert [c.eof for c in chunks].count(True) == 1 and chunks[-1].eof
    assert b"".join(c.data for c in chunks) == big.read_bytes()


def test_gang_member_environment() -> None:
    a = pb.TaskAssignment(
        node="n2",
        node_rank=2,
        nnodes=4,
        world_size=32,
        master_addr="10.1.2.3",
        master_port=29512,
        devices=[
            pb.DeviceAssignment(gpu_index=0, gpu_uuid="GPU-a"),
            pb.DeviceAssignment(gpu_index=1, gpu_uuid="GPU-b"),
        ],
    )
    env = job_env(
        base={"PATH": "/bin", "GPUFLEET_AGENT__NAME": "x", "GPUFLEET_COORDINATOR": "c:1"},
        spec_env={"CUDA_VISIBLE_DEVICES": "all", "FOO": "bar", "GPUFLEET_JOB_ID": "spoof"},
        job_id="j-1",
        attempt=3,
        assignment=a,
        sharing_env={},
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b" and env["FOO"] == "bar" and env["PATH"] == "/bin"
    assert env["GPUFLEET_JOB_ID"] == "j-1" and env["GPUFLEET_ATTEMPT"] == "3"
    assert "GPUFLEET_AGENT__NAME" not in env and "GPUFLEET_COORDINATOR" not in env
    expected = {
        "MASTER_ADDR": "10.1.2.3",
        "MASTER_PORT": "29512",
        "WORLD_SIZE": "32",
        "NNODES": "4",
        "NODE_RANK": "2",
        "LOCAL_WORLD_SIZE": "8",
        "RANK": "16",
        "LOCAL_RANK": "0",
        "HOROVOD_RANK": "16",
        "HOROVOD_SIZE": "32",
    }
    assert {k: env[k] for k in expected} == expected


def test_single_node_job_has_no_rendezvous_and_mig_uuid_wins() -> None:
    a = pb.TaskAssignment(
        node="n1", devices=[pb.DeviceAssignment(gpu_index=0, gpu_uuid="GPU-a", mig_device_uuid="MIG-1")]
    )
    env = job_env(base={}, spec_env={}, job_id="j", attempt=1, assignment=a, sharing_env={})
    assert env["CUDA_VISIBLE_DEVICES"] == "MIG-1" and "MASTER_ADDR" not in env and "WORLD_SIZE" not in env

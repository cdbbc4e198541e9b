"""The GPU models gpufleet knows: memory, MIG capability, and each MIG-capable model's profile table with
its placement rules.

Data, not code paths: the simulated agent backend, the scheduler (MIG fit and re-layout) and the autoscaler
catalog all read this one table. Profile tables follow NVIDIA's MIG user guide ("Supported MIG Profiles");
memory sizes are the ones ``nvidia-smi mig -lgip`` reports (they vary slightly between drivers).

A MIG GPU has 8 memory slices and 7 compute slices. A GPU instance of a profile occupies ``size`` memory
slices starting at one of the profile's allowed ``placements``; instances may not overlap and their compute
slices may not exceed 7.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gpufleet.common.errors import InvalidInputError, Problem

MIG_MEMORY_SLICES = 8
MIG_COMPUTE_SLICES = 7

# NVML GPU-instance profile constants (nvml.h NVML_GPU_INSTANCE_PROFILE_*)
NVML_GI_1_SLICE = 0
NVML_GI_2_SLICE = 1
NVML_GI_3_SLICE = 2
NVML_GI_4_SLICE = 3
NVML_GI_7_SLICE = 4
NVML_GI_1_SLICE_REV1 = 7  # 1g with media extensions (+me)
NVML_GI_1_SLICE_REV2 = 9  # 1g with double memory


@dataclass(frozen=True, slots=True)
class MigProfile:
    name: str  # e.g. "3g.40gb"
    nvml_profile: int  # NVML_GPU_INSTANCE_PROFILE_* constant
    smi_id: int  # the id nvidia-smi shows ("GPU instance profile id")
    compute_slices: int
    memory_slices: int  # the placement size
    memory_mib: int
    max_instances: int
    placements: tuple[int, ...]  # allowed start memory slices


@dataclass(frozen=True, slots=True)
class GpuModel:
    name: str  # gpufleet's catalog name, e.g. "H100-80GB"
    memory_mib: int
    product_names: tuple[str, ...]  # what NVML's nvmlDeviceGetName returns for it
    mig_profiles: tuple[MigProfile, ...] = ()
    mps_supported: bool = True
    fp16_tflops: int = 0  # dense, for cost/perf ranking

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def profile(self, name: str) -> MigProfile:
        for p in self.mig_profiles:
            if p.name == name:
                return p
        valid = ", ".join(p.name for p in self.mig_profiles) or "none (not MIG-capable)"
        raise InvalidInputError(Problem("mig_profile", f"{self.name} has no MIG profile {name!r}; valid: {valid}"))


def _profiles(slice_mib: int, gb: tuple[int, int, int, int, int, int], one_g_me: bool) -> tuple[MigProfile, ...]:
    """The A100/H100/H200 family table. ``gb`` are the nominal sizes of 1g, 1g-double, 2g, 3g, 4g, 7g."""
    g1, g1d, g2, g3, g4, g7 = gb
    profiles = [
        MigProfile(f"1g.{g1}gb", NVML_GI_1_SLICE, 19, 1, 1, slice_mib, 7, (0, 1, 2, 3, 4, 5, 6)),
        MigProfile(f"1g.{g1d}gb", NVML_GI_1_SLICE_REV2, 15, 1, 2, 2 * slice_mib, 4, (0, 2, 4, 6)),
        MigProfile(f"2g.{g2}gb", NVML_GI_2_SLICE, 14, 2, 2, 2 * slice_mib, 3, (0, 2, 4)),
        MigProfile(f"3g.{g3}gb", NVML_GI_3_SLICE, 9, 3, 4, 4 * slice_mib, 2, (0, 4)),
        MigProfile(f"4g.{g4}gb", NVML_GI_4_SLICE, 5, 4, 4, 4 * slice_mib, 1, (0,)),
        MigProfile(f"7g.{g7}gb", NVML_GI_7_SLICE, 0, 7, 8, 8 * slice_mib, 1, (0,)),
    ]
    if one_g_me:
        profiles.insert(1, MigProfile(f"1g.{g1}gb+me", NVML_GI_1_SLICE_REV1, 20, 1, 1, slice_mib, 1, tuple(range(7))))
    return tuple(profiles)


MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel(
            "H100-80GB",
            81559,
            ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100", "NVIDIA H100 NVL"),
            _profiles(9984, (10, 20, 20, 40, 40, 80), True),
            fp16_tflops=989,
        ),
        GpuModel(
            "H200-141GB",
            143771,
            ("NVIDIA H200", "NVIDIA H200 NVL"),
            _profiles(17920, (18, 35, 35, 71, 71, 141), True),
            fp16_tflops=989,
        ),
        GpuModel(
            "A100-80GB",
            81920,
            ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"),
            _profiles(9728, (10, 20, 20, 40, 40, 80), True),
            fp16_tflops=312,
        ),
        GpuModel(
            "A100-40GB",
            40960,
            ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"),
            _profiles(4864, (5, 10, 10, 20, 20, 40), True),
            fp16_tflops=312,
        ),
        GpuModel("L4", 23034, ("NVIDIA L4",), fp16_tflops=121),
        GpuModel("A10G", 23028, ("NVIDIA A10G",), fp16_tflops=70),
        GpuModel("T4", 15360, ("Tesla T4", "NVIDIA T4"), fp16_tflops=65),
        GpuModel("V100-16GB", 16384, ("Tesla V100-SXM2-16GB", "Tesla V100-PCIE-16GB"), fp16_tflops=125),
    )
}


def get_model(name: str) -> GpuModel:
    try:
        return MODELS[name]
    except KeyError:
        raise InvalidInputError(
            Problem("gpu_model", f"unknown GPU model {name!r}; known: {', '.join(sorted(MODELS))}")
        ) from None


def model_for_product_name(product_name: str) -> str:
    """Map NVML's device name to a catalog name; unknown devices keep their NVML name."""
    for m in MODELS.values():
        if product_name in m.product_names:
            return m.name
    return product_name.removeprefix("NVIDIA ").replace(" ", "-")


def all_mig_profile_names() -> set[str]:
    return {p.name for m in MODELS.values() for p in m.mig_profiles}


@dataclass(frozen=True, slots=True)
class PlacedInstance:
    """A GPU instance occupying memory slices [start, start + profile.memory_slices)."""

    profile: MigProfile
    start: int

    @property
    def slices(self) -> range:
        return range(self.start, self.start + self.profile.memory_slices)


def compatible(placed: Sequence[PlacedInstance], candidate: PlacedInstance) -> bool:
    """Whether ``candidate`` can join ``placed``: no shared memory slice, compute and per-profile limits hold."""
    used = {s for p in placed for s in p.slices}
    if used.intersection(candidate.slices):
        return False
    compute = sum(p.profile.compute_slices for p in placed) + candidate.profile.compute_slices
    if compute > MIG_COMPUTE_SLICES:
        return False
    same = sum(1 for p in placed if p.profile.name == candidate.profile.name)
    return same < candidate.profile.max_instances


def find_start(model: GpuModel, placed: Sequence[PlacedInstance], profile_name: str) -> int | None:
    """The first allowed start for one more instance of ``profile_name`` next to ``placed``, or None."""
    profile = model.profile(profile_name)
    for start in profile.placements:
        if compatible(placed, PlacedInstance(profile, start)):
            return start
    return None


def plan_layout(model: GpuModel | str, profile_names: Iterable[str]) -> list[PlacedInstance]:
    """Place a whole layout (a multiset of profiles) on an empty GPU of ``model``.

    Larger instances are placed first and the search backtracks, so any layout NVIDIA allows is found.
    Raises InvalidInputError naming the problem when the layout cannot exist on that model.
    """
    gpu = get_model(model) if isinstance(model, str) else model
    names = list(profile_names)
    if not gpu.mig_capable:
        raise InvalidInputError(Problem("profiles", f"{gpu.name} is not MIG-capable"))
    profiles = [gpu.profile(n) for n in names]
    compute = sum(p.compute_slices for p in profiles)
    if compute > MIG_COMPUTE_SLICES:
        raise InvalidInputError(
            Problem("profiles", f"layout needs {compute} compute slices; a {gpu.name} has {MIG_COMPUTE_SLICES}")
        )
    memory = sum(p.memory_slices for p in profiles)
    if memory > MIG_MEMORY_SLICES:
        raise InvalidInputError(
            Problem("profiles", f"layout needs {memory} memory slices; a {gpu.name} has {MIG_MEMORY_SLICES}")
        )
    for name, group in itertools.groupby(sorted(profiles, key=lambda p: p.name), key=lambda p: p.name):
        count = len(list(group))
        limit = gpu.profile(name).max_instances
        if count > limit:
            raise InvalidInputError(Problem("profiles", f"at most {limit} x {name} fit on a {gpu.name}, not {count}"))
    result = search_placement(profiles)
    if result is None:
        raise InvalidInputError(
            Problem("profiles", f"no valid placement of {', '.join(names)} on a {gpu.name} (placement rules)")
        )
    return sorted(result, key=lambda p: p.start)


def search_placement(
    profiles: Sequence[MigProfile], fixed: Sequence[PlacedInstance] = ()
) -> list[PlacedInstance] | None:
    """Place ``profiles`` next to the ``fixed`` instances (which do not move); returns the new placements, or
    None when none exists. Larger instances go first and the search backtracks, so any layout the placement
    rules allow is found."""
    order = sorted(profiles, key=lambda p: (-p.memory_slices, -p.compute_slices, p.name))

    def search(i: int, placed: list[PlacedInstance]) -> list[PlacedInstance] | None:
        if i == len(order):
            return placed
        for start in order[i].placements:
            cand = PlacedInstance(order[i], start)
            if compatible(placed, cand):
                found = search(i + 1, [*placed, cand])
                if found is not None:
                    return found
        return None

    result = search(0, list(fixed))
    return None if result is None else result[len(fixed) :]

"""Design-space search for a compressed detector — the RTCSA 2024 methodology, automated.

    python -m training.compress.search --data datasets/default --detector bvae \
        --teacher runs/teachers/bvae --out runs/compress/bvae
    torchrun --nproc_per_node=2 -m training.compress.search --device cuda ...   # docs/gpu.md

Structures: the teacher; channel-pruned copies at several homogeneous ratios (torch-pruning) and
with the per-layer policy the sensitivity analysis proposes; a globally unstructured-pruned copy
(masks only, for comparison: no fewer multiply-adds in a dense runtime); narrower encoders at a
lower input resolution (for the flow detector also on the cheaper DIS flow). Every structure but
the teacher is distilled to the teacher's latent posterior on the train split
(training.compress.distill). Precisions: FP32, INT8 (static QDQ, per-channel, ID calibration),
INT8 with the policy's FP32 layers, FP16, and — for structures whose post-training INT8 loses
more than `qat_trigger` validation AUROC — INT8 after quantization-aware fine-tuning
(training.compress.qat). Under torchrun every process distils, rank 0 alone does the rest.
For every candidate: validation AUROC of the monitor's own score, file size, encoder latency
measured side by side with the baseline in one run (ONNX Runtime, 1 thread, median of `--runs`),
and peak memory of a process running it.
The candidate with the cheapest frame (detector latency: preprocessing + encoders) within
`--tolerance` AUROC of the baseline is selected, calibrated in full
(score, decision) into <out>/bundle (shipping it is `python -m training.promote`'s job: a
decision for after the test split and the bench, which the search never looks at). Writes
search.csv, search.md, pareto.png and sensitivity.png to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tqdm import tqdm

from training.compress.candidates import (
    SplitInputs,
    files_size_mb,
    input_shapes,
    to_float,
    validation_auroc,
)
from training.compress.distill import (
    distill,
    mask_encoder,
    new_student,
    parameter_count,
    prune_encoder,
    teacher_latents,
    unmask,
)
from training.compress.latency import measure_latency, measure_preprocessing, peak_memory_mb
from training.compress.perturb import Perturbations
from training.compress.qat import qat_finetune
from training.compress.quantize import convert_fp16, quantize_int8
from training.compress.sensitivity import (
    LayerSensitivity,
    Policy,
    analyse,
    calibration_batches,
    propose_policy,
)
from training.dataset import DatasetError, check_calibration_splits, episodes, iter_frames
from training.device import CPU, Hardware, add_arguments, session
from training.distributed import from_main
from training.export import export_encoder
from training.models import VAE, Encoder, VAEConfig
from training.pipeline import REPO_ROOT, calibrate_and_bundle
from training.trainer import TrainConfig
from vae_ood_monitor.bundle import Bundle, BundleError, load_bundle
from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing

SIZE_BAR = 1 / 8


@dataclass(frozen=True)
class StudentSpec:
    """A from-scratch student: its own (lower) input resolution and narrower layers."""

    name: str
    preprocessing: ImagePreprocessing | FlowPreprocessing
    conv_channels: tuple[int, ...]
    dense: tuple[int, ...]


@dataclass(frozen=True)
class SearchSpace:
    ratios: tuple[float, ...]
    students: tuple[StudentSpec, ...]
    distill: TrainConfig
    train_stride: int
    eval_stride: int  # calibration / validation frames used for the candidates' AUROC
    unstructured: float = (
        0.875  # sparsity of the global unstructured (mask-only) comparison point; 0: none
    )
    unstructured_epochs: int = 2  # its fine-tuning costs as much as training the teacher's encoder
    sensitivity_ratio: float = 0.5
    qat_epochs: int = (
        2  # quantization-aware fine-tuning of a structure whose post-training INT8 lost AUROC
    )
    qat_trigger: float = 0.002  # the validation AUROC loss of post-training INT8 that calls for it
    qat_lr_scale: float = (
        0.1  # fine-tuning a trained encoder: a tenth of the distillation learning rate
    )
    # label-free perturbed copies of every training input to distil on too
    # (training.compress.perturb)
    perturbed_copies: int = 0


# Students see the flow at a lower resolution (max_flow scales with it): fewer pixels for the
# encoders and for Farneback. The teacher's input is 160x120 cropped to 144x112.
_FLOW_HALF = FlowPreprocessing(width=80, height=60, crop=(8, 6, 64, 48), max_flow=4.0)
_FLOW_3Q = FlowPreprocessing(width=120, height=90, crop=(4, 5, 112, 80), max_flow=6.0)
# DIS flow (OpenCV's ultrafast preset) at 128x96 (an integer 1/5 of 640x480, so the resize is cheap
# too): about a quarter of the teacher's Farneback cost per frame; the student learns to map it to
# the teacher's latents of the Farneback flow of the same frames.
_FLOW_DIS = FlowPreprocessing(
    width=128, height=96, crop=(8, 8, 112, 80), max_flow=6.4, method="dis"
)
# Cheaper frames (preprocessing.FLOW_RESIZES): grey first, then a whole-factor block average before
# the last resize; Farneback at 0.6 and 0.55 resolution (96x72, 88x66). In the "students" space,
# not the default one, so the full search (compress_search.yaml) keeps its own candidates.
_FLOW_06_STEPPED = FlowPreprocessing(
    width=96, height=72, crop=(8, 4, 80, 64), max_flow=4.8, resize="grey_stepped"
)
_FLOW_055_STEPPED = FlowPreprocessing(
    width=88, height=66, crop=(4, 1, 80, 64), max_flow=4.4, resize="grey_stepped"
)
_FLOW_055_STUDENT = StudentSpec("student_055_res_stepped", _FLOW_055_STEPPED, (16, 16, 8, 8), (64,))
# 0.45 resolution, the 15-pixel window of 160x120 scaled as the shipped 11 at 88x66 is.
_FLOW_045_STUDENT = StudentSpec(
    "student_045_res_stepped_win9",
    FlowPreprocessing(
        width=72, height=54, crop=(4, 3, 64, 48), max_flow=3.6, resize="grey_stepped", winsize=9
    ),
    (16, 16, 8, 8),
    (64,),
)
_FLOW_STUDENTS_STEPPED = (
    StudentSpec("student_06_res_stepped", _FLOW_06_STEPPED, (16, 16, 8, 8), (64,)),
    StudentSpec("student_06_res_stepped_narrow", _FLOW_06_STEPPED, (8, 8, 8, 8), (64,)),
    _FLOW_055_STUDENT,
)
_FLOW_STUDENTS = SearchSpace(
    ratios=(),
    students=_FLOW_STUDENTS_STEPPED,
    distill=TrainConfig(epochs=6, batch_size=64, learning_rate=1e-3, threads=2),
    train_stride=3,
    eval_stride=4,
    unstructured=0.0,
)
# The shipped flow student's structure on smaller Farneback windows (the teacher's 15 at 160x120 is
# about 8 at 88x66 in scene terms): a smaller window keeps more sensor noise in the flow, and sees
# less of the zero flow of a frozen or black camera (docs/experiments.md, Compression: 11
# is flow_student's).
FLOW_STUDENT_WINDOWS = (13, 11, 9, 7, 5)


def _flow_055_window(window: int) -> StudentSpec:
    """The 0.55-resolution flow student with a Farneback window of `window` pixels."""
    return replace(
        _FLOW_055_STUDENT,
        name=f"{_FLOW_055_STUDENT.name}_win{window}",
        preprocessing=replace(_FLOW_055_STEPPED, winsize=window),
    )


_BVAE_NARROW = StudentSpec("student64_narrow", ImagePreprocessing(64, 64), (16, 16, 8, 8), (128,))
_BVAE_NARROW_NEAREST = StudentSpec(
    "student64_narrow_nearest",
    ImagePreprocessing(64, 64, interpolation="nearest"),
    (16, 16, 8, 8),
    (128,),
)
_BVAE_STUDENTS = SearchSpace(
    ratios=(),
    students=(_BVAE_NARROW,),
    distill=TrainConfig(epochs=12, batch_size=32, learning_rate=1e-3, threads=2),
    train_stride=4,
    eval_stride=4,
    unstructured=0.0,
    perturbed_copies=1,
)

SPACES: dict[str, dict[str, SearchSpace]] = {
    "default": {
        "bvae": SearchSpace(
            ratios=(0.75, 0.875),
            students=(
                StudentSpec("student64", ImagePreprocessing(64, 64), (32, 32, 16, 16), (256, 128)),
                _BVAE_NARROW,
            ),
            distill=TrainConfig(epochs=6, batch_size=32, learning_rate=1e-3, threads=2),
            train_stride=4,
            eval_stride=4,
        ),
        "flow": SearchSpace(
            ratios=(0.5, 0.75),
            students=(
                StudentSpec("student_half_res", _FLOW_HALF, (16, 16, 8, 8), (64,)),
                StudentSpec("student_3q_res", _FLOW_3Q, (16, 16, 8, 8), (64,)),
                StudentSpec("student_3q_res_wide", _FLOW_3Q, (32, 32, 16, 16), (128,)),
                StudentSpec("student_dis", _FLOW_DIS, (16, 16, 8, 8), (64,)),
            ),
            distill=TrainConfig(epochs=6, batch_size=64, learning_rate=1e-3, threads=2),
            train_stride=3,
            eval_stride=4,
        ),
    },
    # Distilled students only, e.g. from a shipped bundle (`--teacher models/flow_teacher`): the
    # per-frame cost of the flow detector, and the β-VAE student on other data and perturbed frames
    # (perturbed flow stacks raised the flow decision's ID false alarms: docs/experiments.md).
    "students": {
        "bvae": _BVAE_STUDENTS,
        "flow": _FLOW_STUDENTS,
    },
    # The shipped flow student's structure distilled on one label-free perturbed copy of every stack
    # too: measured on datasets/default_plus, not shipped — it sees sensor faults and stops motion
    # sooner, but flags intersection driving on unseen maps (docs/experiments.md).
    "students_perturbed": {
        "flow": replace(_FLOW_STUDENTS, students=(_FLOW_055_STUDENT,), perturbed_copies=1)
    },
    # The shipped flow student's structure with a smaller Farneback window, one space per window
    # (students_window13 ... students_window5; see FLOW_STUDENT_WINDOWS).
    **{
        f"students_window{w}": {
            "flow": replace(
                _FLOW_STUDENTS,
                students=(_flow_055_window(w),),
            )
        }
        for w in FLOW_STUDENT_WINDOWS
    },
    # The flow detector's whole-graph CPU bar (docs/performance.md): the shipped student's
    # structure at 0.45 resolution (72x54; Farneback then runs a single pyramid level, 0.35 vs
    # 0.85 ms a pair) beside the shipped 0.55 one, distilled on the same frames, every train frame
    # (a merged dataset has fewer than default_plus). No QAT: INT8 does not pay on the CPU
    # (docs/compression.md).
    "students_small": {
        "flow": replace(
            _FLOW_STUDENTS,
            students=(_flow_055_window(11), _FLOW_045_STUDENT),
            distill=replace(_FLOW_STUDENTS.distill, epochs=12),
            train_stride=1,
            qat_epochs=0,
        )
    },
    # The β-VAE student beside the same student on nearest-sampled input
    # (preprocessing.IMAGE_INTERPOLATIONS): the nearest one sees sensor noise and is bvae_student's
    # encoder (training/configs/students.yaml; docs/experiments.md).
    "students_nearest": {
        "bvae": replace(_BVAE_STUDENTS, students=(_BVAE_NARROW, _BVAE_NARROW_NEAREST))
    },
    # A smaller search for a short session: one homogeneous ratio, one student, no mask-only point.
    "quick": {
        "bvae": SearchSpace(
            ratios=(0.875,),
            students=(
                StudentSpec("student64", ImagePreprocessing(64, 64), (32, 32, 16, 16), (256, 128)),
            ),
            distill=TrainConfig(epochs=4, batch_size=32, learning_rate=1e-3, threads=2),
            train_stride=4,
            eval_stride=8,
            unstructured=0.0,
        ),
        "flow": SearchSpace(
            ratios=(0.75,),
            students=(StudentSpec("student_half_res", _FLOW_HALF, (16, 16, 8, 8), (64,)),),
            distill=TrainConfig(epochs=4, batch_size=64, learning_rate=1e-3, threads=2),
            train_stride=3,
            eval_stride=8,
            unstructured=0.0,
        ),
    },
    # For the tiny CI models: every step runs, in seconds.
    "tiny": {
        "bvae": SearchSpace(
            ratios=(0.5,),
            students=(StudentSpec("student32", ImagePreprocessing(32, 32), (8, 8, 4, 4), (32,)),),
            distill=TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3),
            train_stride=2,
            eval_stride=3,
            unstructured_epochs=1,
            qat_epochs=1,
            qat_trigger=-1.0,
            perturbed_copies=1,
        ),
        "flow": SearchSpace(
            ratios=(0.5,),
            students=(),
            distill=TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3),
            train_stride=2,
            eval_stride=3,
            unstructured_epochs=1,
            qat_epochs=1,
            qat_trigger=-1.0,
        ),
    },
}


@dataclass
class Candidate:
    name: str
    structure: str
    precision: str
    preprocessing: ImagePreprocessing | FlowPreprocessing
    files: dict[str, Path]
    parameters: int
    auroc: float = float("nan")
    score_kind: str = ""
    size_mb: float = float("nan")
    latency_ms: float = float("nan")
    latency_ratio: float = float("nan")
    detector_ms: float = float("nan")  # preprocessing + encoders, per frame
    detector_ratio: float = float("nan")
    peak_memory_mb: float = float("nan")
    distill_mse: float = float("nan")


def load_teacher(teacher: Path, encoders: tuple[str, ...]) -> dict[str, Encoder]:
    models = {}
    for name in encoders:
        checkpoint = teacher / f"{name}.pt"
        if not checkpoint.exists():
            raise FileNotFoundError(
                f"{checkpoint}: no teacher checkpoint (train it with `python -m training.pipeline`)"
            )
        state = torch.load(checkpoint, weights_only=True)
        vae = VAE(VAEConfig.from_dict(state["config"]))
        vae.load_state_dict(state["model"])
        models[name] = vae.encoder.eval()
    return models


@dataclass
class Teacher:
    """The model being compressed: its bundle (the ONNX encoders the students learn from) and,
    from a training run, its torch encoders (which pruning, sensitivity and QAT start from)."""

    path: Path
    bundle: Bundle
    encoders: (
        dict[str, Encoder] | None
    )  # None: a shipped bundle without its checkpoint — students only

    @classmethod
    def load(cls, path: Path) -> Teacher:
        """A training run folder (<encoder>.pt and bundle/) or a bundle folder (e.g.
        models/flow_teacher)."""
        if (path / "bundle").is_dir():
            bundle = load_bundle(path / "bundle")
            return cls(path, bundle, load_teacher(path, tuple(bundle.encoders)))
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path}: no teacher (a training run folder from `python -m training.pipeline`, "
                "or a model bundle)"
            )
        return cls(path, load_bundle(path), None)


def onnx_parameter_count(files: dict[str, Path]) -> int:
    """Non-zero weights of exported encoders (BatchNorm folded into the convolutions by the
    export)."""
    return int(
        sum(
            np.count_nonzero(numpy_helper.to_array(t))
            for path in files.values()
            for t in onnx.load(str(path)).graph.initializer
        )
    )


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_float(batch))


def _distilled(
    students: dict[str, Encoder],
    student_inputs: SplitInputs,
    targets: dict[str, tuple[np.ndarray, np.ndarray]],
    train: TrainConfig,
    desc: str,
    hardware: Hardware,
) -> tuple[dict[str, Encoder], float]:
    histories = []
    for index, name in enumerate(students):
        students[name], history = distill(
            students[name],
            student_inputs.train_inputs(index),
            _to_tensor,
            targets[name],
            train,
            desc=f"{desc}/{name}",
            hardware=hardware,
        )
        histories.append(history[-1])
    return students, float(np.mean(histories))


def _exported(
    name: str,
    students: dict[str, Encoder],
    prep: ImagePreprocessing | FlowPreprocessing,
    shapes: dict[str, tuple[int, int, int]],
    work: Path,
    mse: float,
) -> Candidate:
    """The FP32 candidate of a distilled structure: its encoders exported to ONNX."""
    files = {
        n: export_encoder(student, shapes[n], work / f"{name}_{n}.onnx")
        for n, student in students.items()
    }
    return Candidate(
        f"{name}/fp32",
        name,
        "fp32",
        prep,
        files,
        sum(parameter_count(s) for s in students.values()),
        distill_mse=mse,
    )


def _precisions(
    structure: Candidate, inputs: SplitInputs, policy: Policy | None, work: Path
) -> list[Candidate]:
    """FP32 (as given), INT8, and for the policy INT8 with its FP32 layers; FP16 of the baseline
    and the policy."""
    variants = [structure]
    batches = {name: calibration_batches(inputs, i) for i, name in enumerate(structure.files)}

    def variant(precision: str, files: dict[str, Path]) -> Candidate:
        return Candidate(
            f"{structure.structure}/{precision}",
            structure.structure,
            precision,
            structure.preprocessing,
            files,
            structure.parameters,
            distill_mse=structure.distill_mse,
        )

    variants.append(
        variant(
            "int8",
            {
                n: quantize_int8(p, work / f"{structure.structure}_int8_{n}.onnx", batches[n])
                for n, p in structure.files.items()
            },
        )
    )
    if policy is not None and policy.keep_fp32 and structure.structure == "policy":
        files = {
            n: quantize_int8(
                p,
                work / f"{structure.structure}_int8mixed_{n}.onnx",
                batches[n],
                keep_fp32=policy.keep_fp32,
            )
            for n, p in structure.files.items()
        }
        variants.append(variant("int8+fp32 " + ",".join(policy.keep_fp32), files))
    if structure.structure in (
        "baseline",
        "policy",
    ):  # FP16 on a CPU only shows what it costs there; on a Jetson it is TensorRT's job
        variants.append(
            variant(
                "fp16",
                {
                    n: convert_fp16(p, work / f"{structure.structure}_fp16_{n}.onnx")
                    for n, p in structure.files.items()
                },
            )
        )
    return variants


def _pruned_structures(
    teachers: dict[str, Encoder],
    shapes: dict[str, tuple[int, int, int]],
    inputs: SplitInputs,
    targets: dict[str, tuple[np.ndarray, np.ndarray]],
    baseline_auroc: float,
    space: SearchSpace,
    work: Path,
    hardware: Hardware,
) -> tuple[list[Candidate], dict[str, dict[str, Encoder]], list[LayerSensitivity], Policy]:
    """Sensitivity analysis, the policy it proposes, channel-pruned copies (homogeneous ratios and
    the policy) and the mask-only comparison point, each distilled to the teacher. Under torchrun
    rank 0 alone analyses and sends the policy to the others."""
    sensitivity: list[LayerSensitivity] = []
    policy = None
    if hardware.is_main:
        all_int8, sensitivity = analyse(
            teachers, shapes, inputs, work / "sensitivity", space.sensitivity_ratio
        )
        policy = propose_policy(baseline_auroc, all_int8, sensitivity)
    policy = from_main(policy, hardware)
    print(
        f"sensitivity-guided policy: ratios {policy.layer_ratios}, FP32 layers "
        f"{policy.keep_fp32 or 'none'}"
    )
    structures: list[Candidate] = []
    trained: dict[str, dict[str, Encoder]] = {}
    prep = inputs.preprocessing
    for name, ratio, layer_ratios in [(f"prune{int(r * 100)}", r, None) for r in space.ratios] + [
        ("policy", 0.0, policy.layer_ratios)
    ]:
        students = {n: prune_encoder(teachers[n], shapes[n], ratio, layer_ratios) for n in teachers}
        students, mse = _distilled(students, inputs, targets, space.distill, name, hardware)
        structures.append(_exported(name, students, prep, shapes, work, mse))
        trained[name] = students
    if space.unstructured:  # masks only: as many multiply-adds as the teacher in a dense runtime
        name = f"unstructured{int(space.unstructured * 100)}"
        fine_tune = replace(space.distill, epochs=space.unstructured_epochs)
        students, mse = _distilled(
            {n: mask_encoder(teachers[n], space.unstructured) for n in teachers},
            inputs,
            targets,
            fine_tune,
            name,
            hardware,
        )
        structures.append(
            _exported(
                name,
                {n: unmask(student) for n, student in students.items()},
                prep,
                shapes,
                work,
                mse,
            )
        )
    return structures, trained, sensitivity, policy


def _distilled_student(
    spec: StudentSpec,
    detector: str,
    encoders: tuple[str, ...],
    latent: int,
    inputs: SplitInputs,
    targets: dict[str, tuple[np.ndarray, np.ndarray]],
    space: SearchSpace,
    work: Path,
    hardware: Hardware,
) -> tuple[Candidate, dict[str, Encoder]]:
    """A from-scratch student of `spec`, distilled to the teacher's latents, exported to ONNX."""
    shapes = input_shapes(detector, spec.preprocessing)
    students = {}
    for n in encoders:
        c, h, w = shapes[n]
        students[n] = new_student(
            VAEConfig(
                in_channels=c,
                height=h,
                width=w,
                conv_channels=spec.conv_channels,
                dense=spec.dense,
                latent=latent,
            ),
            space.distill.seed,
        )
    students, mse = _distilled(students, inputs, targets, space.distill, spec.name, hardware)
    return _exported(spec.name, students, spec.preprocessing, shapes, work, mse), students


@dataclass
class SearchResult:
    candidates: list[Candidate]  # the baseline first
    selected: Candidate
    sensitivity: list[LayerSensitivity]  # empty in a students-only search
    policy: Policy | None
    latent: int  # latent dimensions of every encoder
    perturbed_copies: int = 0  # per training frame, distilled on besides the frames themselves


def search(
    data: Path,
    detector: str,
    teacher: Teacher,
    out: Path,
    runs: int,
    tolerance: float,
    space: SearchSpace,
    workers: int = 2,
    hardware: Hardware = CPU,
) -> SearchResult | None:
    """Under torchrun every process distils (and fine-tunes quantization-aware); rank 0 alone
    quantizes, evaluates and measures, sends the others its choices of what to train, and returns
    the result — the others return None."""
    teacher_bundle, teachers = teacher.bundle, teacher.encoders
    encoders = tuple(teacher_bundle.encoders)
    if teachers is None:
        print(
            f"{teacher.path}: a bundle without its training checkpoint — searching distilled "
            "students and their precisions only "
            "(pruning, the sensitivity analysis and QAT of the teacher start from its torch "
            "weights)"
        )
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    teacher_prep = teacher_bundle.preprocessing
    shapes = input_shapes(detector, teacher_prep)
    inputs = SplitInputs.load(data, teacher_prep, space.train_stride, space.eval_stride, workers)
    if space.perturbed_copies:
        inputs.perturbations = Perturbations.draw(
            len(inputs.train_frames()), space.perturbed_copies, space.distill.seed
        )
    targets = {
        name: teacher_latents(teacher_bundle.encoders[name], inputs.train_inputs(i), to_float)
        for i, name in enumerate(encoders)
    }
    latent = next(iter(targets.values()))[0].shape[1]

    parameters = (
        sum(parameter_count(t) for t in teachers.values())
        if teachers
        else onnx_parameter_count(teacher_bundle.encoders)
    )
    baseline = Candidate(
        "baseline/fp32", "baseline", "fp32", teacher_prep, dict(teacher_bundle.encoders), parameters
    )
    if hardware.is_main:
        baseline.auroc, baseline.score_kind = validation_auroc(baseline.files, inputs)
        print(f"baseline validation AUROC {baseline.auroc:.4f} ({baseline.score_kind})")

    structures: list[Candidate] = [baseline]
    trained: dict[str, dict[str, Encoder]] = {}  # torch encoders of each structure, for QAT
    sensitivity: list[LayerSensitivity] = []
    policy: Policy | None = None
    if teachers is not None:
        trained["baseline"] = teachers
        if space.ratios:
            pruned, pruned_trained, sensitivity, policy = _pruned_structures(
                teachers, shapes, inputs, targets, baseline.auroc, space, work, hardware
            )
            structures += pruned
            trained |= pruned_trained
    student_inputs: dict[ImagePreprocessing | FlowPreprocessing, SplitInputs] = {
        teacher_prep: inputs
    }
    for spec in space.students:
        if spec.preprocessing not in student_inputs:
            student_inputs[spec.preprocessing] = SplitInputs.load(
                data, spec.preprocessing, space.train_stride, space.eval_stride, workers
            )
            student_inputs[spec.preprocessing].perturbations = inputs.perturbations
        if student_inputs[spec.preprocessing].train_frames() != inputs.train_frames():
            raise RuntimeError(f"{spec.name}: student and teacher training frames do not line up")
        structure, trained[spec.name] = _distilled_student(
            spec,
            detector,
            encoders,
            latent,
            student_inputs[spec.preprocessing],
            targets,
            space,
            work,
            hardware,
        )
        structures.append(structure)

    candidates: list[Candidate] = []
    qat_structures: list[str] | None = None
    if hardware.is_main:
        for structure in structures:
            candidates += _precisions(
                structure, student_inputs[structure.preprocessing], policy, work
            )
        for candidate in tqdm(candidates, desc="validation AUROC", unit="candidate"):
            _evaluate(
                candidate,
                detector,
                student_inputs[candidate.preprocessing],
                skip_auroc=candidate is baseline,
            )
        by_name = {c.name: c for c in candidates}
        qat_structures = [
            name
            for name in trained
            if space.qat_epochs
            and by_name[f"{name}/fp32"].auroc - by_name[f"{name}/int8"].auroc > space.qat_trigger
        ]
    fp32_of = {structure.structure: structure for structure in structures}
    for name in from_main(qat_structures, hardware):
        fp32 = fp32_of[name]
        s_inputs = student_inputs[fp32.preprocessing]
        qat = _quantization_aware(
            detector,
            fp32,
            trained[name],
            s_inputs,
            targets,
            replace(
                space.distill,
                epochs=space.qat_epochs,
                learning_rate=space.distill.learning_rate * space.qat_lr_scale,
            ),
            work,
            hardware,
        )
        if not hardware.is_main:
            continue
        _evaluate(qat, detector, s_inputs)
        int8 = by_name[f"{name}/int8"]
        print(
            f"{name}: INT8 validation AUROC {int8.auroc:.4f} post-training, {qat.auroc:.4f} "
            f"quantization-aware (FP32 {fp32.auroc:.4f})"
        )
        candidates.insert(candidates.index(int8) + 1, qat)
    if not hardware.is_main:
        return None
    _measure_latency(candidates, detector, runs)
    _measure_detector_latency(candidates, data, runs)
    return SearchResult(
        candidates,
        select(candidates, tolerance),
        sensitivity,
        policy,
        latent,
        space.perturbed_copies,
    )


def _evaluate(
    candidate: Candidate, detector: str, inputs: SplitInputs, skip_auroc: bool = False
) -> None:
    if not skip_auroc:
        candidate.auroc, candidate.score_kind = validation_auroc(candidate.files, inputs)
    candidate.size_mb = files_size_mb(candidate.files)
    candidate.peak_memory_mb = peak_memory_mb(
        candidate.files, input_shapes(detector, candidate.preprocessing)
    )


def _quantization_aware(
    detector: str,
    fp32: Candidate,
    encoders: dict[str, Encoder],
    inputs: SplitInputs,
    targets: dict[str, tuple[np.ndarray, np.ndarray]],
    train: TrainConfig,
    work: Path,
    hardware: Hardware,
) -> Candidate:
    """INT8 of a structure after quantization-aware fine-tuning (training.compress.qat), quantized
    with the same calibration as its post-training INT8."""
    shapes = input_shapes(detector, fp32.preprocessing)
    files = {}
    for index, (name, encoder) in enumerate(encoders.items()):
        tuned, _ = qat_finetune(
            encoder,
            inputs.train_inputs(index),
            _to_tensor,
            targets[name],
            train,
            desc=f"{fp32.structure}/{name} QAT",
            hardware=hardware,
        )
        exported = export_encoder(tuned, shapes[name], work / f"{fp32.structure}_qat_{name}.onnx")
        files[name] = quantize_int8(
            exported,
            work / f"{fp32.structure}_int8qat_{name}.onnx",
            calibration_batches(inputs, index),
        )
    return Candidate(
        f"{fp32.structure}/int8 qat",
        fp32.structure,
        "int8 qat",
        fp32.preprocessing,
        files,
        fp32.parameters,
        distill_mse=fp32.distill_mse,
    )


def _measure_latency(candidates: list[Candidate], detector: str, runs: int) -> None:
    """All candidates in one interleaved run; a detector's latency is the sum over its encoders."""
    models = {}
    for candidate in candidates:
        shapes = input_shapes(detector, candidate.preprocessing)
        for name, path in candidate.files.items():
            models[f"{candidate.name}|{name}"] = (path, shapes[name])
    medians = {r.name: r.median_ms for r in measure_latency(models, runs=runs, threads=1)}
    for candidate in candidates:
        candidate.latency_ms = sum(medians[f"{candidate.name}|{name}"] for name in candidate.files)
    baseline = candidates[0].latency_ms
    for candidate in candidates:
        candidate.latency_ratio = candidate.latency_ms / baseline


def _measure_detector_latency(candidates: list[Candidate], data: Path, runs: int) -> None:
    """Adds each candidate's preprocessing time (timed side by side on validation frames) to its
    encoder latency: what one frame costs the detector node."""
    preprocessings = {str(c.preprocessing): c.preprocessing for c in candidates}
    frames = list(
        itertools.islice(
            (rgb for episode in episodes(data, "validation") for rgb, _ in iter_frames(episode)),
            runs + 10,
        )
    )
    prep_ms = measure_preprocessing(preprocessings, frames)
    for candidate in candidates:
        candidate.detector_ms = prep_ms[str(candidate.preprocessing)] + candidate.latency_ms
    for candidate in candidates:
        candidate.detector_ratio = candidate.detector_ms / candidates[0].detector_ms


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other candidate beats on both latency and AUROC."""
    front = []
    for c in sorted(candidates, key=lambda c: (c.latency_ms, -c.auroc)):
        if not front or c.auroc > front[-1].auroc:
            front.append(c)
    return front


def select(candidates: list[Candidate], tolerance: float) -> Candidate:
    """The candidate with the cheapest frame (preprocessing + encoders: what the robot pays) whose
    validation AUROC is within `tolerance` of the baseline's."""
    baseline = candidates[0]
    eligible = [c for c in candidates if c.auroc >= baseline.auroc - tolerance]
    return min(eligible, key=lambda c: c.detector_ms)


def write_report(result: SearchResult, out: Path, tolerance: float, detector: str) -> Path:
    candidates, selected, sensitivity, policy = (
        result.candidates,
        result.selected,
        result.sensitivity,
        result.policy,
    )
    baseline = candidates[0]
    front = {c.name for c in pareto_front(candidates)}
    columns = [
        "name",
        "structure",
        "precision",
        "input",
        "parameters",
        "size_mb",
        "size_ratio",
        "auroc",
        "auroc_drop",
        "score",
        "latency_ms",
        "latency_ratio",
        "detector_ms",
        "detector_ratio",
        "peak_memory_mb",
        "distill_mse",
        "pareto",
    ]
    rows = []
    for c in candidates:
        prep = c.preprocessing
        size = (
            f"{prep.width}x{prep.height}"
            if isinstance(prep, ImagePreprocessing)
            else f"flow {prep.crop[2]}x{prep.crop[3]}"
        )
        rows.append(
            {
                "name": c.name,
                "structure": c.structure,
                "precision": c.precision,
                "input": size,
                "parameters": c.parameters,
                "size_mb": round(c.size_mb, 3),
                "size_ratio": round(c.size_mb / baseline.size_mb, 4),
                "auroc": round(c.auroc, 4),
                "auroc_drop": round(baseline.auroc - c.auroc, 4),
                "score": c.score_kind,
                "latency_ms": round(c.latency_ms, 3),
                "latency_ratio": round(c.latency_ratio, 3),
                "detector_ms": round(c.detector_ms, 3),
                "detector_ratio": round(c.detector_ratio, 3),
                "peak_memory_mb": round(c.peak_memory_mb, 1),
                "distill_mse": round(c.distill_mse, 5) if np.isfinite(c.distill_mse) else "",
                "pareto": c.name in front,
            }
        )
    with (out / "search.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Compression search: {detector}",
        "",
        (
            "Validation AUROC of the monitor's score, encoder latency (ONNX Runtime, 1 thread, "
            "median, measured side by side with the baseline in one run), "
            "detector latency (encoders + the preprocessing of one camera frame, "
            f"{'resize' if detector == 'bvae' else 'resize, CLAHE and optical flow'}, OpenCV 1 "
            "thread, timed side by side on validation frames), "
            "file size, peak RSS of a process running the encoders. Selected: the candidate with "
            f"the lowest detector latency within {tolerance} AUROC of the baseline."
        ),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += [
        "| "
        + " | ".join(
            ("**" + str(r[k]) + "**") if r["name"] == selected.name and k == "name" else str(r[k])
            for k in columns
        )
        + " |"
        for r in rows
    ]
    # The compression issue's bars: the β-VAE's encoder, the flow detector's whole frame (optical
    # flow included).
    bar = 0.2 if detector == "bvae" else 1 / 3
    meets_speed = (selected.latency_ratio if detector == "bvae" else selected.detector_ratio) <= bar
    lines += [
        "",
        (
            f"**Selected: {selected.name}** — encoder latency {selected.latency_ratio:.3f}× "
            f"baseline ({selected.latency_ms:.2f} ms vs {baseline.latency_ms:.2f} ms), "
            f"whole detector {selected.detector_ratio:.3f}× ({selected.detector_ms:.2f} ms vs "
            f"{baseline.detector_ms:.2f} ms; {'≤' if selected.detector_ratio <= bar else '>'} "
            f"{bar:.2g}×), "
            f"AUROC drop {baseline.auroc - selected.auroc:+.4f}, size "
            f"{selected.size_mb / baseline.size_mb:.3f}× "
            f"(bar: ≤ {'0.2× encoder' if detector == 'bvae' else '0.33× detector'} latency "
            f"{'met' if meets_speed else 'MISSED'}, "
            f"≤ 1/8 size {'met' if selected.size_mb <= baseline.size_mb * SIZE_BAR else 'MISSED'})."
        ),
        "",
    ]
    if policy is None:
        lines += [
            (
                "No pruning or sensitivity analysis in this search: its space has no pruning "
                "ratios, or the teacher was a bundle without its training checkpoint "
                "(then no QAT of the teacher either)."
            ),
            "",
        ]
    else:
        lines += [
            "## Sensitivity (one layer at a time)",
            "",
            "| layer | parameters | AUROC, layer pruned | AUROC, all INT8 but this layer |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {s.layer} | {s.parameters} | {s.pruned_auroc:.4f} | {s.int8_except_auroc:.4f} |"
            for s in sensitivity
        ]
        lines += [
            "",
            (
                f"Proposed policy: per-layer pruning ratios {policy.layer_ratios}; FP32 layers in "
                f"INT8 models: {list(policy.keep_fp32) or 'none'}."
            ),
            "",
        ]
    if result.perturbed_copies:
        lines += [
            (
                f"Distilled on the training frames and {result.perturbed_copies} label-free "
                f"perturbed cop{'y' if result.perturbed_copies == 1 else 'ies'} of each "
                "(blends towards a uniform colour, mixes of two frames; training.compress.perturb)."
            ),
            "",
        ]
    lines += ["![Pareto](pareto.png)", ""]
    if sensitivity:
        lines += ["![Sensitivity](sensitivity.png)", ""]
    (out / "search.md").write_text("\n".join(lines))
    _plots(candidates, selected, sensitivity, baseline, out, tolerance)
    return out / "search.md"


def _plots(
    candidates: list[Candidate],
    selected: Candidate,
    sensitivity: list[LayerSensitivity],
    baseline: Candidate,
    out: Path,
    tolerance: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for precision in dict.fromkeys(c.precision.split(" ")[0] for c in candidates):
        members = [c for c in candidates if c.precision.split(" ")[0] == precision]
        ax.scatter(
            [c.latency_ratio for c in members], [c.auroc for c in members], label=precision, s=30
        )
    for c in candidates:
        ax.annotate(
            c.structure,
            (c.latency_ratio, c.auroc),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    front = pareto_front(candidates)
    ax.plot(
        [c.latency_ratio for c in front],
        [c.auroc for c in front],
        "k--",
        lw=0.8,
        label="Pareto front",
    )
    ax.axhline(
        baseline.auroc - tolerance, color="red", lw=0.8, ls=":", label=f"baseline − {tolerance}"
    )
    ax.scatter(
        [selected.latency_ratio],
        [selected.auroc],
        s=160,
        facecolors="none",
        edgecolors="red",
        label="selected",
    )
    ax.set(
        xscale="log",
        xlabel="latency / baseline (ONNX Runtime, 1 thread)",
        ylabel="validation AUROC",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
    if not sensitivity:
        return

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(sensitivity))
    ax.bar(
        x - 0.2,
        [baseline.auroc - s.pruned_auroc for s in sensitivity],
        0.4,
        label="AUROC drop, layer pruned",
    )
    ax.bar(
        x + 0.2,
        [baseline.auroc - s.int8_except_auroc for s in sensitivity],
        0.4,
        label="AUROC drop, all INT8 but this layer",
    )
    ax.set_xticks(x, [s.layer for s in sensitivity], rotation=30, ha="right")
    ax.set(ylabel="AUROC drop vs FP32 baseline")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sensitivity.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "datasets" / "default")
    parser.add_argument("--detector", choices=("bvae", "flow"), required=True)
    parser.add_argument(
        "--space",
        choices=sorted(SPACES),
        default="default",
        help="search space (tiny: the CI models)",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        help="teacher run folder with <encoder>.pt and bundle/ (default runs/default/<detector>), "
        "or a bundle folder such as models/flow_teacher: then only distilled students and "
        "their precisions are searched",
    )
    parser.add_argument("--out", type=Path, help="default runs/compress/<detector>")
    parser.add_argument(
        "--runs", type=int, default=200, help="timed runs per model (median reported)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.02, help="largest validation AUROC drop accepted"
    )
    parser.add_argument("--workers", type=int, default=2)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.detector not in SPACES[args.space]:
        parser.error(
            f"search space '{args.space}' has no {args.detector} detector (it has: "
            f"{', '.join(SPACES[args.space])})"
        )
    teacher = args.teacher or REPO_ROOT / "runs" / "default" / args.detector
    with (
        session(args, parser) as hardware,
        contextlib.nullcontext() if hardware.is_main else tempfile.TemporaryDirectory() as scratch,
    ):
        # Under torchrun the other processes keep their work files in a scratch folder of their own.
        out = (
            Path(scratch)
            if scratch
            else args.out or REPO_ROOT / "runs" / "compress" / args.detector
        )
        out.mkdir(parents=True, exist_ok=True)
        try:
            check_calibration_splits(args.data)  # the selected bundle is calibrated at the end
            result = search(
                args.data,
                args.detector,
                Teacher.load(teacher),
                out,
                args.runs,
                args.tolerance,
                SPACES[args.space][args.detector],
                args.workers,
                hardware,
            )
            if result is not None:
                _bundle_selected(result, args, teacher, out)
        except (DatasetError, BundleError, FileNotFoundError, RuntimeError) as err:
            print(f"search: {err}", file=sys.stderr)
            return 1
    return 0


def _bundle_selected(
    result: SearchResult, args: argparse.Namespace, teacher: Path, out: Path
) -> None:
    """Report the search, calibrate the selected candidate into a bundle and ship it if asked."""
    report = write_report(result, out, args.tolerance, args.detector)
    selected, baseline = result.selected, result.candidates[0]
    provenance = {
        "compression": {
            "candidate": selected.name,
            "teacher": str(teacher),
            "policy": asdict(result.policy) if result.policy else None,
            "search_validation_auroc": selected.auroc,
            "baseline_validation_auroc": baseline.auroc,
            "latency_ratio": selected.latency_ratio,
            "detector_latency_ratio": selected.detector_ratio,
        }
    }
    bundle = calibrate_and_bundle(
        args.detector,
        selected.preprocessing,
        selected.files,
        result.latent,
        args.data,
        out / "bundle",
        provenance,
    ).path
    print(report.read_text())
    print(f"selected bundle: {bundle}")
    (out / "selected.json").write_text(
        json.dumps({"selected": selected.name, "bundle": str(bundle)}, indent=1) + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())

"""Train, calibrate and bundle the detectors from one command.

    python -m training.pipeline --data datasets/default --config default      # both detectors
    python -m training.pipeline --data /tmp/ds --config tiny --detectors bvae --out /tmp/run
    python -m training.pipeline --data my_town --recalibrate bvae_student --out runs/bvae_my_town
    torchrun --nproc_per_node=2 -m training.pipeline --device cuda ...    # docs/gpu.md

Per detector: train the VAE(s) on the train split (resumable checkpoints), export the encoders to
ONNX, fit the latent score on the calibration split with ONNX Runtime (the onboard code path) and
choose it on the validation split, tune the decision there, and write the bundle to
`<out>/<detector>/bundle`. Nothing here touches models/: `python -m training.promote` ships a
bundle (`make promote`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from training import nuisance
from training.calibrate import (
    CROSS_FITS,
    DEFAULT_SCORE_CANDIDATES,
    DELAY_BAR_FRAMES,
    DETECTOR_CATEGORIES,
    MAX_ID_BUDGET,
    SCORE_CANDIDATES,
    SCORE_TAILS,
    ScoredEpisode,
    concatenate_latents,
    fit_scores,
    select_score,
    tune_decision,
)
from training.dataset import (
    DatasetError,
    Episode,
    check_calibration_splits,
    concatenate,
    episodes,
    iter_frames,
    load_inputs,
    load_manifest,
)
from training.device import CPU, Hardware, add_arguments, session
from training.export import BandMax, add_pooled_output, band_count, export_encoder, write_bundle
from training.models import VAEConfig
from training.trainer import TrainConfig, train_vae
from vae_ood_monitor.bundle import DETECTOR_ENCODERS, BundleError, load_bundle
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing
from vae_ood_monitor.scoring import Latents, LatentScore

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DetectorConfig:
    kind: str
    preprocessing: ImagePreprocessing | FlowPreprocessing
    vae: VAEConfig
    train: TrainConfig
    train_stride: int = 1  # use every n-th training frame (consecutive frames are near-duplicates)
    min_mean_kl: float = 0.05

    @property
    def encoders(self) -> tuple[str, ...]:
        return DETECTOR_ENCODERS[self.kind]


def _flow_vae(prep: FlowPreprocessing, conv: tuple[int, ...], dense: tuple[int, ...]) -> VAEConfig:
    _, _, width, height = prep.crop
    return VAEConfig(
        in_channels=prep.stack,
        height=height,
        width=width,
        conv_channels=conv,
        dense=dense,
        latent=12,
        output="tanh",
    )


_FLOW = FlowPreprocessing(crop=(8, 4, 144, 112))
_FLOW_TINY = FlowPreprocessing(width=80, height=60, crop=(8, 6, 64, 48), max_flow=4.0)

CONFIGS: dict[str, dict[str, DetectorConfig]] = {
    # The papers' β-VAE (conv 128/64/32/16, dense 2048/1000/250, n=30, β=1.4) at 112×112, and the
    # RTCSA 2022 flow VAEs (n=12 each). 112×112 rather than the papers' 224×224: on 2 CPU cores
    # the 224 model gets only 3 epochs in the ~45-minute budget and ends up under-trained; at
    # 112 it trains 16 epochs in that time and separates better (docs/training.md, Commands).
    "default": {
        "bvae": DetectorConfig(
            "bvae",
            ImagePreprocessing(112, 112),
            VAEConfig(height=112, width=112),
            TrainConfig(epochs=16, batch_size=32, beta=1.4),
            train_stride=4,
        ),
        "flow": DetectorConfig(
            "flow",
            _FLOW,
            _flow_vae(_FLOW, (32, 32, 16, 16), (256,)),
            TrainConfig(epochs=4, batch_size=64, beta=1.0, threads=1),
            train_stride=3,
        ),
    },
    # The papers' input size, 224×224 (3 epochs fit the budget), for comparison.
    "paper224": {
        "bvae": DetectorConfig(
            "bvae",
            ImagePreprocessing(224, 224),
            VAEConfig(),
            TrainConfig(epochs=3, batch_size=32, beta=1.4),
            train_stride=4,
        ),
    },
    # Minutes on CI: small inputs and networks, still real training.
    "tiny": {
        "bvae": DetectorConfig(
            "bvae",
            ImagePreprocessing(64, 64),
            VAEConfig(height=64, width=64, conv_channels=(16, 16, 8, 8), dense=(128, 64), latent=8),
            TrainConfig(epochs=15, batch_size=16, beta=1.0),
        ),
        "flow": DetectorConfig(
            "flow",
            _FLOW_TINY,
            _flow_vae(_FLOW_TINY, (8, 8, 8, 8), (64,)),
            TrainConfig(epochs=15, batch_size=16, beta=1.0),
        ),
    },
}


def _image_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).float().div_(255.0)


def _flow_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch.astype(np.float32))


def fit_detector(
    config: DetectorConfig,
    data: Path,
    out: Path,
    workers: int = 2,
    hardware: Hardware = CPU,
) -> Path | None:
    """Train (on `hardware`), export, calibrate and tune one detector; returns the bundle folder.

    Under torchrun every process trains; rank 0 alone exports, calibrates and writes the bundle,
    the others return None.
    """
    check_calibration_splits(
        data
    )  # fail before the long work when the dataset cannot be calibrated on
    work = out / config.kind
    to_tensor = _image_tensor if config.kind == "bvae" else _flow_tensor
    train_eps = episodes(data, "train")
    loaded = load_inputs(
        train_eps,
        config.preprocessing,
        config.train_stride,
        workers,
        desc=f"{config.kind}: train inputs",
    )
    onnx_files = {}
    started = time.monotonic()
    histories = {}
    for index, encoder_name in enumerate(config.encoders):
        inputs = concatenate(loaded, index)
        model, histories[encoder_name] = train_vae(
            config.vae,
            inputs,
            to_tensor,
            config.train,
            work / f"{encoder_name}.pt",
            desc=f"{config.kind}/{encoder_name}",
            hardware=hardware,
        )
        if hardware.is_main:
            onnx_files[encoder_name] = export_encoder(
                model.encoder,
                (config.vae.in_channels, config.vae.height, config.vae.width),
                work / "onnx" / f"{encoder_name}.onnx",
            )
    del loaded
    train_seconds = time.monotonic() - started
    if not hardware.is_main:
        return None

    provenance = {
        "config": {
            "kind": config.kind,
            "vae": config.vae.to_dict(),
            "train": asdict(config.train),
            "train_stride": config.train_stride,
        },
        "train_history": histories,
        "train_seconds": round(train_seconds, 1),
        "train_hardware": hardware.describe(),
    }
    return calibrate_and_bundle(
        config.kind,
        config.preprocessing,
        onnx_files,
        config.vae.latent,
        data,
        work / "bundle",
        provenance,
        config.min_mean_kl,
    ).path


@dataclass(frozen=True)
class CalibratedBundle:
    path: Path
    validation: list[ScoredEpisode]  # per-frame validation scores, reused by the compression search


def calibrate_and_bundle(
    kind: str,
    preprocessing: ImagePreprocessing | FlowPreprocessing,
    onnx_files: dict[str, Path],
    latent: int,
    data: Path,
    bundle_dir: Path,
    provenance: dict[str, object],
    min_mean_kl: float = 0.05,
    extrapolate: bool = False,
    cross_fit: str = "halves",
    id_budget: float = 0.0,
    score_kinds: tuple[str, ...] = DEFAULT_SCORE_CANDIDATES,
    mixture_seed: int = 0,
    normal_variation: bool = False,
) -> CalibratedBundle:
    """Calibrate exported encoders and tune their decision; writes the bundle to `bundle_dir`.

    Everything runs through the onboard detector class (ONNX Runtime, onboard preprocessing): the
    score candidates are fitted on every calibration frame and the best is chosen on the
    validation split, where the decision is tuned too (training.calibrate). With
    `normal_variation`, every calibration and validation drive is also replayed as another normal
    camera would give it (training.nuisance.normal_variant), so the table's variation is ID.
    """
    provenance = {
        **provenance,
        "dataset": str(data),
        "dataset_sha256": load_manifest(data)["dataset_sha256"],
        "command": " ".join(sys.argv),
    }

    def bundle(
        score: LatentScore, calibration: np.ndarray, decision: DecisionParams
    ) -> OODDetector:
        write_bundle(
            bundle_dir, kind, preprocessing, onnx_files, score, calibration, decision, provenance
        )
        return OODDetector(load_bundle(bundle_dir), threads=2)

    detector = bundle(
        LatentScore("kl", {name: list(range(latent)) for name in onnx_files}),
        np.zeros(1),
        DecisionParams(),
    )

    def streams(episode: Episode) -> Iterator[tuple[list, list[bool], list[int] | None]]:
        """(frames, labels, header stamps or None) of the drive as recorded, and as replayed."""
        frames, labels = zip(*iter_frames(episode))
        yield list(frames), list(labels), None
        if normal_variation:
            replayed = list(nuisance.replay(episode, nuisance.normal_variant(kind, episode)))
            _, frames, stamps, labels = zip(*replayed)
            yield list(frames), list(labels), [round(t * 1e9) for t in stamps]

    # A drive and its replay are one calibration episode: in separate ones, the cross-fit put
    # every recorded drive in one fold and every replay in the other, so each version was scored
    # by a fit that had never seen its kind of frame (calibration scores 2-3x the deployed fit's
    # on held-out drives: p-values coarse, objects in the lane never stopped).
    def encoded(split: str) -> list[Latents]:
        return [
            concatenate_latents(
                [
                    detector.encode_stream(frames, stamps_ns=stamps)[2]
                    for frames, _, stamps in streams(e)
                ]
            )
            for e in _progress(episodes(data, split), f"{kind}: {split}")
        ]

    calibration = encoded("calibration")
    fit_on = encoded("train") if cross_fit == "train" else None
    validation_latents = []
    for episode in _progress(episodes(data, "validation"), f"{kind}: validation"):
        for frames, labels, stamps in streams(episode):
            count, rows, latents = detector.encode_stream(frames, stamps_ns=stamps)
            validation_latents.append(
                (episode, count, rows, latents, np.asarray(labels, dtype=bool)[rows])
            )
    bands = {
        name: width for name, path in onnx_files.items() if (width := band_count(path))
    }  # the band scores'
    try:
        fitted = fit_scores(
            calibration, min_mean_kl, cross_fit, score_kinds, bands, mixture_seed, fit_on
        )
    except ValueError as err:  # e.g. only the mixture asked for, on too few calibration frames
        raise DatasetError(f"{data}: {err}") from None
    chosen, _, score_table = select_score(
        fitted, [(latents, ood) for _, _, _, latents, ood in validation_latents]
    )
    validation = []
    for episode, count, rows, latents, _ in validation_latents:
        scores = np.full(count, np.nan)
        scores[rows] = chosen.score(latents)
        validation.append(
            ScoredEpisode(episode.name, scores, episode.onset_frame, episode.category)
        )
    tuning = tune_decision(
        chosen.calibration_scores,
        validation,
        SCORE_TAILS[chosen.score.kind],
        DETECTOR_CATEGORIES[kind],
        extrapolate,
        id_budget,
    )
    provenance["score_selection"] = {
        "chosen": chosen.name,
        "candidates": list(score_kinds),
        "cross_fit": cross_fit,
        "mixture_seed": mixture_seed,
        "validation_auroc": score_table,
    }
    provenance["decision_tuning"] = {
        "onset_categories": list(DETECTOR_CATEGORIES[kind]),
        "id_budget": id_budget,
        "mean_delay_frames": tuning.mean_delay,
        "missed_onsets": tuning.missed,
        "onsets_within_bar": tuning.within_bar,
        "candidates": tuning.table,
    }
    bundle(chosen.score, chosen.calibration_scores, tuning.params)
    auroc_text = ", ".join(f"{name} {value:.3f}" for name, value in score_table.items())
    print(
        f"{kind}: score {chosen.name} (validation AUROC {auroc_text}), decision {tuning.params}, "
        f"validation delay {tuning.mean_delay:.1f} frames, missed {tuning.missed}, "
        f"{tuning.within_bar} onsets within {DELAY_BAR_FRAMES} frames"
    )
    return CalibratedBundle(bundle_dir, validation)


def recalibrate(
    bundle_dir: Path,
    data: Path,
    out: Path,
    extrapolate: bool | None = None,
    cross_fit: str | None = None,
    id_budget: float | None = None,
    score_kinds: tuple[str, ...] | None = None,
    band_max: BandMax | None = None,
    mixture_seed: int | None = None,
    normal_variation: bool = False,
) -> Path:
    """Refit the score and retune the decision of an existing bundle's encoders on `data` (adding
    their `pooled` output where it is missing, training.export) — e.g.
    on calibration and validation recordings of the town the robot will drive in; `extrapolate`:
    tune a decision whose p-values go on beyond the calibration range, `cross_fit`: how the
    calibration scores are held out, `id_budget`: the share of validation ID frames the alarm level
    may leave above it, `score_kinds`: the score kinds validation chooses among
    (training.calibrate), `band_max`: pooled features gain these band maxima
    (training.export.BandMax); None: as the bundle was; `mixture_seed`: seeds the mixture scores'
    EM starts (None: as the bundle was, else 0); `normal_variation`: calibrate and validate on
    the drives replayed as other normal cameras give them too (calibrate_and_bundle)."""
    check_calibration_splits(data)
    bundle = load_bundle(bundle_dir)
    if extrapolate is None:
        extrapolate = bundle.decision.extrapolate
    if cross_fit is None:  # bundles from before the choice existed were cross-fitted on halves
        cross_fit = bundle.provenance.get("score_selection", {}).get("cross_fit", "halves")
        if cross_fit not in CROSS_FITS:
            raise BundleError(
                f"{bundle_dir}: provenance.score_selection.cross_fit must be one of "
                f"{CROSS_FITS}, got {cross_fit!r}"
            )
    if id_budget is None:  # bundles from before the budget existed were tuned without one
        id_budget = bundle.provenance.get("decision_tuning", {}).get("id_budget", 0.0)
        if (
            not isinstance(id_budget, (int, float))
            or isinstance(id_budget, bool)
            or not 0.0 <= id_budget <= MAX_ID_BUDGET
        ):
            raise BundleError(
                f"{bundle_dir}: provenance.decision_tuning.id_budget must be a number within "
                f"0..{MAX_ID_BUDGET}, got {id_budget!r}"
            )
    if mixture_seed is None:  # bundles from before the record were fitted with seed 0
        mixture_seed = bundle.provenance.get("score_selection", {}).get("mixture_seed", 0)
        if not isinstance(mixture_seed, int) or isinstance(mixture_seed, bool) or mixture_seed < 0:
            raise BundleError(
                f"{bundle_dir}: provenance.score_selection.mixture_seed must be a whole number "
                f">= 0, got {mixture_seed!r}"
            )
    if (
        score_kinds is None
    ):  # bundles from before the record: the candidates their validation table lists
        selection = bundle.provenance.get("score_selection", {})
        recorded = selection.get(
            "candidates", list(selection.get("validation_auroc", DEFAULT_SCORE_CANDIDATES))
        )
        if (
            not isinstance(recorded, list)
            or not recorded
            or any(name not in SCORE_CANDIDATES for name in recorded)
        ):
            raise BundleError(
                f"{bundle_dir}: provenance.score_selection.candidates must be a list of score "
                f"kinds among {', '.join(SCORE_CANDIDATES)}, got {recorded!r}"
            )
        score_kinds = tuple(recorded)
    mu_output = onnx.load(str(next(iter(bundle.encoders.values())))).graph.output[
        0
    ]  # (batch, latent)
    latent = mu_output.type.tensor_type.shape.dim[1].dim_value
    with (
        tempfile.TemporaryDirectory() as staging
    ):  # the encoders are read from the old bundle while the new one is written
        # Encoders exported before the `pooled` output existed gain it (same weights), so the
        # mahalanobis_pooled score is a candidate for them too.
        try:
            files = {
                name: add_pooled_output(
                    Path(shutil.copy(path, Path(staging) / path.name)), band_max
                )
                for name, path in bundle.encoders.items()
            }
        except ValueError as err:
            raise BundleError(f"{bundle_dir}: {err}") from None
        # Training facts (config, history) carry over; where the old calibration came from is kept
        # under recalibrated_from, since dataset, command and commit now describe this one.
        old = bundle.provenance
        origin = {
            key: old[key]
            for key in ("dataset", "dataset_sha256", "command", "commit", "recalibrated_from")
            if key in old
        }
        provenance = {
            **old,
            "recalibrated_from": {"bundle": str(bundle_dir), "sha256": bundle.sha256, **origin},
        }
        if band_max is not None:
            provenance["pooled_band_max"] = str(band_max)
        return calibrate_and_bundle(
            bundle.detector,
            bundle.preprocessing,
            files,
            latent,
            data,
            out,
            provenance,
            extrapolate=extrapolate,
            cross_fit=cross_fit,
            id_budget=id_budget,
            score_kinds=score_kinds,
            mixture_seed=mixture_seed,
            normal_variation=normal_variation,
        ).path


def _progress(items: list[Episode], desc: str) -> Iterator[Episode]:
    return iter(tqdm(items, desc=desc, unit="episode"))


def _score_candidates(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SCORE_CANDIDATES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"score kinds are among {', '.join(SCORE_CANDIDATES)}, got '{text}'"
        )
    return names


def _band_max(text: str) -> BandMax:
    try:
        return BandMax.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "datasets" / "default")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument(
        "--detectors", nargs="+", choices=("bvae", "flow"), default=["bvae", "flow"]
    )
    parser.add_argument("--out", type=Path, help="work folder (default runs/<config>)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--recalibrate",
        type=Path,
        metavar="BUNDLE",
        help="only refit score and decision of this bundle on --data, in place (or into --out)",
    )
    parser.add_argument(
        "--extrapolate-tail",
        action=argparse.BooleanOptionalAction,
        help="with --recalibrate: p-values beyond the calibration maximum follow a Pareto tail "
        "— far-out frames (fog, a black camera) stop the robot sooner, at the price of "
        "more false alarms "
        "(default: as the bundle's decision does)",
    )
    parser.add_argument(
        "--cross-fit",
        choices=CROSS_FITS,
        help="with --recalibrate: hold calibration scores out on halves of the calibration "
        "episodes or one episode at a time — "
        "'episodes' gives sharper p-values: faster stops, more false ones — or fit the score on "
        "the train split and score the calibration split with that fit ('train': split "
        "conformal, the p-values of the fit the robot runs; needs a train split) (default: as "
        "the bundle was, else halves)",
    )
    parser.add_argument(
        "--id-budget",
        type=float,
        metavar="SHARE",
        help=f"with --recalibrate: the share of validation ID frames (0..{MAX_ID_BUDGET}) the "
        "alarm level may leave above it — "
        "one odd moment of one drive then does not set the level for every onset (default: as "
        "the bundle was, else 0)",
    )
    parser.add_argument(
        "--scores",
        type=_score_candidates,
        metavar="KIND,...",
        help="with --recalibrate: the score kinds validation chooses among, of "
        f"{', '.join(SCORE_CANDIDATES)} "
        "(default: those the bundle was chosen among; the mixtures only by name — "
        "docs/training.md, Latent scores)",
    )
    parser.add_argument(
        "--band-max",
        type=_band_max,
        metavar="BLOCK/TOP/COUNT",
        help="with --recalibrate: the pooled features also hold the per-channel max of conv "
        "block BLOCK over each of the TOP highest "
        "of COUNT horizontal bands, where obstacles ahead first show (e.g. 1/3/8; "
        "docs/training.md, Latent scores; default: as the bundle was)",
    )
    parser.add_argument(
        "--mixture-seed",
        type=int,
        metavar="N",
        help="with --recalibrate: seed of the mixture scores' EM starts — how much a result "
        "rests on one fit "
        "(docs/results.md; default: as the bundle was, else 0)",
    )
    parser.add_argument(
        "--normal-variation",
        action="store_true",
        help="with --recalibrate: also replay every calibration and validation drive as another "
        "normal camera gives it (β-VAE: exposure, contrast, white balance; flow: camera rate and "
        "lost frames; docs/normal.md), so the score and decision take that variation as ID",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.normal_variation and not args.recalibrate:
        parser.error("--normal-variation needs --recalibrate BUNDLE")
    if args.mixture_seed is not None and not args.recalibrate:
        parser.error("--mixture-seed needs --recalibrate BUNDLE")
    if args.mixture_seed is not None and args.mixture_seed < 0:
        parser.error(f"--mixture-seed must be a whole number >= 0, got {args.mixture_seed}")
    if args.band_max is not None and not args.recalibrate:
        parser.error("--band-max needs --recalibrate BUNDLE")
    if args.scores is not None and not args.recalibrate:
        parser.error("--scores needs --recalibrate BUNDLE")
    if args.id_budget is not None and not args.recalibrate:
        parser.error("--id-budget needs --recalibrate BUNDLE")
    if args.id_budget is not None and not 0.0 <= args.id_budget <= MAX_ID_BUDGET:
        parser.error(f"--id-budget must be within 0..{MAX_ID_BUDGET}, got {args.id_budget}")
    if args.extrapolate_tail is not None and not args.recalibrate:
        parser.error("--extrapolate-tail / --no-extrapolate-tail need --recalibrate BUNDLE")
    if args.cross_fit is not None and not args.recalibrate:
        parser.error("--cross-fit needs --recalibrate BUNDLE")
    out = args.out or REPO_ROOT / "runs" / args.config
    with session(args, parser) as hardware:
        try:
            if args.recalibrate:
                if not hardware.is_main:  # nothing to train: under torchrun rank 0 does it alone
                    return 0
                bundle = recalibrate(
                    args.recalibrate,
                    args.data,
                    args.out or args.recalibrate,
                    args.extrapolate_tail,
                    args.cross_fit,
                    args.id_budget,
                    args.scores,
                    args.band_max,
                    args.mixture_seed,
                    args.normal_variation,
                )
                print(f"recalibrated {bundle}")
                return 0
            for kind in args.detectors:
                fit_detector(CONFIGS[args.config][kind], args.data, out, args.workers, hardware)
        except (DatasetError, BundleError) as err:
            print(f"pipeline: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

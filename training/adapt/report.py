"""Shipped and adapted monitors side by side on what the adaptation never fitted on: the
recordings' held-back check parts (as recorded, and under every synthetic fault), the shipped demo
bag's in-distribution part and fog onset, and any further default-world or labelled OOD bags.

Every stream is replayed through the onboard detectors (vae_ood_monitor.offline.score_frames: ONNX
Runtime, header stamps, decision state, the safety stop's frozen-camera check), fused as the
safety stop fuses them. The ID flag share leaves out each stream's first second (SETTLE_S), when
stacks and decisions fill, as training.nuisance does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.metrics import auroc, detection_delay
from vae_ood_monitor.offline import score_frames
from vae_ood_monitor.safety import FrozenCameraWatch, SafetyConfig

SETTLE_S = 1.0
ID_BAR = 0.01  # the bar for flagged in-distribution frames
MONITORS = ("shipped", "adapted")


@dataclass
class Stream:
    """One replayed stream: what it is, its frames (RGB, or per detector as each decodes them)
    and stamps, where its OOD part begins."""

    group: str  # check_id, check_fault, default_id, recorded_ood
    name: str
    frames: list[np.ndarray] | dict[str, list[np.ndarray]]
    stamps_ns: list[int]
    onset: int | None = None
    fault: str = "id"


@dataclass
class Result:
    stream: Stream
    surprise: dict[str, np.ndarray]  # bvae, flow, fused: -log10 conformal p-value
    flags: dict[str, np.ndarray]  # bvae, flow, fused
    settled: np.ndarray = field(init=False)  # past the stream's first second

    def __post_init__(self) -> None:
        seconds = (np.asarray(self.stream.stamps_ns) - self.stream.stamps_ns[0]) * 1e-9
        self.settled = seconds >= SETTLE_S

    @property
    def id_mask(self) -> np.ndarray:
        mask = self.settled.copy()
        if self.stream.onset is not None:
            mask[self.stream.onset :] = False
        return mask

    @property
    def delay_frames(self) -> int | None:
        return detection_delay(self.flags["fused"], self.stream.onset or 0)

    @property
    def delay_s(self) -> float:
        delay = self.delay_frames
        if delay is None:
            return float("inf")
        stamps = self.stream.stamps_ns
        return (stamps[self.stream.onset + delay] - stamps[self.stream.onset]) * 1e-9


def replay_stream(stream: Stream, detectors: dict[str, OODDetector]) -> Result:
    """The stream through fresh detector state, fused with the frozen-camera check; the result
    keeps the stream without its frames."""
    times = [s * 1e-9 for s in stream.stamps_ns]
    scores = score_frames(
        stream.frames,
        detectors,
        reset=True,
        times_s=times,
        frozen_watch=FrozenCameraWatch(SafetyConfig().frozen_s),
        stamps_ns=stream.stamps_ns,
    )
    surprise = {**scores.surprise, "fused": scores.fused_score}
    flags = {**scores.flags, "fused": scores.fused_flags}
    return Result(replace(stream, frames=[]), surprise, flags)  # the frames are not needed again


def _share(results: list[Result], detector: str = "fused") -> float:
    flags = np.concatenate([r.flags[detector][r.id_mask] for r in results])
    return float(flags.mean()) if flags.size else float("nan")


def _fault_rows(results: dict[str, list[Result]], check_id: dict[str, list[Result]]) -> list[dict]:
    """Per fault and monitor: AUROC of the fused surprise (OOD frames against the check parts'
    settled ID frames), OOD frames flagged, median delay, onsets stopped within the bar."""
    faults = sorted({r.stream.fault for r in results["shipped"]})
    rows = []
    for fault in faults:
        row: dict[str, Any] = {"fault": fault}
        for monitor in MONITORS:
            mine = [r for r in results[monitor] if r.stream.fault == fault]
            normal = np.concatenate([r.surprise["fused"][r.id_mask] for r in check_id[monitor]])
            ood = np.concatenate([r.surprise["fused"][r.stream.onset :] for r in mine])
            labels = np.concatenate([np.zeros(len(normal), bool), np.ones(len(ood), bool)])
            delays = [r.delay_s for r in mine]
            row[f"{monitor}_auroc"] = auroc(labels, np.concatenate([normal, ood]))
            row[f"{monitor}_flagged"] = float(
                np.mean(np.concatenate([r.flags["fused"][r.stream.onset :] for r in mine]))
            )
            row[f"{monitor}_delay_s"] = float(np.median(delays))
            row[f"{monitor}_stopped"] = f"{sum(np.isfinite(delays))}/{len(delays)}"
        rows.append(row)
    return rows


def summarise(results: dict[str, list[Result]]) -> dict[str, Any]:
    """The report's numbers, per monitor."""
    by_group = {
        monitor: {
            group: [r for r in results[monitor] if r.stream.group == group]
            for group in ("check_id", "check_fault", "default_id", "recorded_ood")
        }
        for monitor in MONITORS
    }
    summary: dict[str, Any] = {"id_flag_share": {}, "default_flag_share": {}}
    for monitor in MONITORS:
        groups = by_group[monitor]
        summary["id_flag_share"][monitor] = {
            d: _share(groups["check_id"], d) for d in ("bvae", "flow", "fused")
        }
        summary["default_flag_share"][monitor] = {
            r.stream.name: {d: _share([r], d) for d in ("bvae", "flow", "fused")}
            for r in groups["default_id"]
        }
    if by_group["shipped"]["check_fault"]:
        summary["faults"] = _fault_rows(
            {m: by_group[m]["check_fault"] for m in MONITORS},
            {m: by_group[m]["check_id"] for m in MONITORS},
        )
    summary["onsets"] = [
        {
            "stream": shipped.stream.name,
            **{f"{m}_delay_s": r.delay_s for m, r in zip(MONITORS, (shipped, adapted))},
            **{f"{m}_false_alarm_share": _share([r]) for m, r in zip(MONITORS, (shipped, adapted))},
            **{
                f"{m}_ood_flagged": float(r.flags["fused"][r.stream.onset :].mean())
                for m, r in zip(MONITORS, (shipped, adapted))
            },
        }
        for shipped, adapted in zip(
            *(
                [
                    r
                    for r in results[m]
                    if r.stream.onset is not None and r.stream.group != "check_fault"
                ]
                for m in MONITORS
            )
        )
    ]
    return summary


def _pct(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.1f} %"


def _seconds(value: float) -> str:
    return "never" if not np.isfinite(value) else f"{value:.2f} s"


def plot(results: dict[str, list[Result]], summary: dict[str, Any], out: Path) -> list[str]:
    """The report's figures; returns their file names."""
    names = []
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for axis, detector in zip(axes, ("bvae", "flow")):
        for monitor, colour in zip(MONITORS, ("tab:red", "tab:green")):
            values = np.concatenate(
                [
                    r.surprise[detector][r.id_mask]
                    for r in results[monitor]
                    if r.stream.group == "check_id"
                ]
            )
            values = values[np.isfinite(values)]
            axis.hist(values, bins=40, alpha=0.55, color=colour, label=monitor)
        axis.set_title(f"{detector}: held-back ID frames")
        axis.set_xlabel("surprise, -log10 p")
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "scores_before_after.png", dpi=90)
    plt.close(figure)
    names.append("scores_before_after.png")

    labels, before, after = ["new world (held back)"], [], []
    before.append(summary["id_flag_share"]["shipped"]["fused"])
    after.append(summary["id_flag_share"]["adapted"]["fused"])
    for name, value in summary["default_flag_share"]["shipped"].items():
        labels.append(f"default: {Path(name).name}")
        before.append(value["fused"])
        after.append(summary["default_flag_share"]["adapted"][name]["fused"])
    figure, axis = plt.subplots(figsize=(7, 1.5 + 0.35 * len(labels)))
    y = np.arange(len(labels))[::-1]
    axis.barh(y + 0.2, np.array(before) * 100, 0.4, color="tab:red", label="shipped")
    axis.barh(y - 0.2, np.array(after) * 100, 0.4, color="tab:green", label="adapted")
    axis.axvline(ID_BAR * 100, color="black", linestyle="--", linewidth=1, label="1 % bar")
    axis.set_yticks(y, labels, fontsize=8)
    axis.set_xlabel("ID frames flagged (fused), %")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "flag_shares.png", dpi=90)
    plt.close(figure)
    names.append("flag_shares.png")
    return names


def markdown(summary: dict[str, Any], facts: dict[str, Any], figures: list[str]) -> str:
    """report.md: what was adapted on, and the numbers before and after."""
    lines = ["# Adaptation report", ""]
    lines += [f"Command: `{facts['command']}`", ""]
    lines += [f"Finished in {facts['seconds']:.0f} s ({facts['device']}).", ""]
    lines += [
        "## Recordings",
        "",
        "| bag | frames | s | Hz | size | SHA-256 |",
        "|---|---|---|---|---|---|",
    ]
    for bag in facts["bags"]:
        lines.append(
            f"| {bag['bag']} | {bag['frames']} | {bag['seconds']} | {bag['rate_hz']} | "
            f"{bag['size'][0]}x{bag['size'][1]} | `{bag['sha256'][:16]}…` |"
        )
    lines += [
        "",
        (
            "Each bag: fit on its first frames, tune the decision on the next "
            f"{facts['validation']:.0%}, check on the last {facts['hold_out']:.0%} "
            "(never fitted on)."
        ),
        "",
        "## In-distribution frames flagged (after each stream's first second; bar ≤ 1 %)",
        "",
        "| frames | monitor | β-VAE | flow | fused |",
        "|---|---|---|---|---|",
    ]
    for monitor in MONITORS:
        share = summary["id_flag_share"][monitor]
        lines.append(
            f"| new world, held back | {monitor} | {_pct(share['bvae'])} | "
            f"{_pct(share['flow'])} | {_pct(share['fused'])} |"
        )
    for name in summary["default_flag_share"]["shipped"]:
        for monitor in MONITORS:
            share = summary["default_flag_share"][monitor][name]
            lines.append(
                f"| default world: {name} | {monitor} | {_pct(share['bvae'])} | "
                f"{_pct(share['flow'])} | {_pct(share['fused'])} |"
            )
    if summary.get("faults"):
        lines += [
            "",
            "## Synthetic OOD on the held-back frames (fused decision)",
            "",
            (
                "| fault | AUROC shipped | AUROC adapted | OOD frames flagged shipped | adapted | "
                "median delay shipped | adapted | stopped shipped | adapted |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in summary["faults"]:
            lines.append(
                f"| {row['fault']} | {row['shipped_auroc']:.3f} | {row['adapted_auroc']:.3f} | "
                f"{_pct(row['shipped_flagged'])} | {_pct(row['adapted_flagged'])} | "
                f"{_seconds(row['shipped_delay_s'])} | {_seconds(row['adapted_delay_s'])} | "
                f"{row['shipped_stopped']} | {row['adapted_stopped']} |"
            )
    if summary["onsets"]:
        lines += [
            "",
            "## Recorded onsets (demo bag, --check-bag, --ood-bag)",
            "",
            (
                "| stream | delay shipped | adapted | OOD frames flagged shipped | adapted | "
                "ID flagged before onset shipped | adapted |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for row in summary["onsets"]:
            lines.append(
                f"| {row['stream']} | {_seconds(row['shipped_delay_s'])} | "
                f"{_seconds(row['adapted_delay_s'])} | {_pct(row['shipped_ood_flagged'])} | "
                f"{_pct(row['adapted_ood_flagged'])} | {_pct(row['shipped_false_alarm_share'])} | "
                f"{_pct(row['adapted_false_alarm_share'])} |"
            )
    lines += ["", "## Adaptation", ""]
    for kind, detail in facts["detectors"].items():
        lines.append(f"- {kind}: {detail}")
    lines += [""] + [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(lines)

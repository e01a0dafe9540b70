"""Training curves from ``metrics.jsonl``, saved as PNG next to the run and logged to the tracker."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path) -> dict[int, dict]:
    """The last value logged for each step (a resumed run repeats the steps after its checkpoint)."""
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    return dict(sorted(rows.items()))


def last_value(metrics: dict[int, dict], key: str) -> float:
    """``key``'s value at the last step that logged it, from ``read_metrics``."""
    return max((step, row[key]) for step, row in metrics.items() if key in row)[1]


PRETRAIN_CURVES = {"nats per token": ("train/loss_nats", "val/nelbo_nats", "val/nll_nats")}


def plot_curves(metrics_file: Path, out: Path,
                panels: dict[str, tuple[str, ...]] | None = None) -> Path:
    """One panel per entry of ``panels`` (title → metric keys) that has data, default: the pre-training losses; a
    panel none of whose keys was logged (an exact judge's curve in a run without one) is left out."""
    panels = panels or PRETRAIN_CURVES
    rows = read_metrics(metrics_file)
    logged = {key for row in rows.values() for key in row}
    panels = {title: keys for title, keys in panels.items() if logged.intersection(keys)} or panels  # or all, empty
    columns = min(3, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(5 * columns, 3.6 * rows_of_panels), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, keys) in zip(axes.flat, panels.items()):
        for key in keys:
            points = [(step, row[key]) for step, row in rows.items() if key in row]
            if points:
                ax.plot(*zip(*points), marker="o" if key.startswith("val") else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out)


def save_figure(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_versus_nfe(rows: list[dict], key: str, label: str, out: Path) -> Path:
    """Evaluation rows: ``key`` against NFE, one line per (model, sampler, unmasking order), one point per entropy-matched control
    and a line of best-temperature controls; a judged metric (Gen-PPL, an exact judge's) with its intervals and
    the held-out reference (the first row) as a dashed line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    interval = key.replace("gen_ppl", "interval") if "gen_ppl" in key else (
        f"{key}_interval" if f"{key}_interval" in rows[0] else None)  # a judged metric, with a held-out reference

    def series(r):
        return (r["model"], r["sampler"], r.get("control_for"), r.get("order"))

    orders = {r.get("order") for r in rows if r.get("order")}

    for name in dict.fromkeys(series(r) for r in rows if r["nfe"] is not None):
        points = sorted(((r["nfe"], r[key], r.get(interval), r.get("temperature")) for r in rows
                         if series(r) == name and r[key] is not None), key=lambda p: p[0])
        nfe, values = [p[0] for p in points], [p[1] for p in points]
        legend = (" ".join(name[:2]) if name[2] is None else "teacher at its best T" if name[2] == "best temperature"
                  else f"teacher T={points[0][3]:.2f} (entropy of {name[2]})")
        legend += f", {name[3]}" if len(orders) > 1 else ""
        style = ({"marker": "o"} if name[2] is None else {"marker": "s", "linestyle": ":"}
                 if name[2] == "best temperature" else {"marker": "*", "markersize": 10, "linestyle": "none"})
        if interval is not None:
            errors = [[v - p[2][0] for v, p in zip(values, points)], [p[2][1] - v for v, p in zip(values, points)]]
            ax.errorbar(nfe, values, yerr=errors, capsize=3, label=legend, **style)
        else:
            ax.plot(nfe, values, label=legend, **style)
    if rows[0].get(key) is not None:
        ax.axhline(rows[0][key], color="grey", linestyle="--", label="held-out text")
    ax.set_xscale("log", base=2)
    if all(r[key] is None or r[key] > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_xlabel("NFE (denoiser calls)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)

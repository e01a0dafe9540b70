import json

import matplotlib.pyplot as plt

from pipeline.measure import plots


def test_curves_leave_out_panels_without_data(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "train/loss_nats": 5.0 - s, "advantage/tau_correlation": 0.1})
                               + "\n" for s in range(3)))
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: figures.append(fig) or out)
    panels = {"loss": ("train/loss_nats", "val/nelbo_nats"), "corr(advantage, τ)": ("advantage/tau_correlation",),
              "corr(advantage, exact quality)": ("advantage/exact_correlation",)}
    plots.plot_curves(metrics, tmp_path / "curves.png", panels)
    shown = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["loss", "corr(advantage, τ)"]
    assert [line.get_label() for line in shown[0].get_lines()] == ["train/loss_nats"]
    assert len(figures[0].axes) == 2  # no empty slot left in the grid
    plt.close(figures[0])


def test_curves_without_any_data_still_write_a_figure(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 0, "other": 1.0}) + "\n")
    assert plots.plot_curves(metrics, tmp_path / "curves.png").is_file()

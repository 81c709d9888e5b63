"""Interactive controls for the chapters (ipywidgets; they need a running kernel).

Each builder returns a widget to ``display``; the chapters put a kernel-free twin
(a printed table or a plotly figure with a slider) beside it for the static HTML.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

from . import checks, plots
from .data import DataConfig, KnowledgeData, entropy, make_data
from .model import ModelConfig
from .train import Schedule, pretrain

SMALL = DataConfig(N_f=30, N_r=15, R=8, K=3, N_ft=15)
"""A data set small enough to pre-train in about a second (the widgets' default)."""

SMALL_SCHEDULE = Schedule(eta=(2.0, 20.0, 10.0), T1=5, T2=200, T=400)
"""Three-stage rates that work for ``SMALL`` (ours; rates must scale with the data)."""


def data_counts(data: KnowledgeData) -> dict[str, float]:
    """Sizes of one draw of the Sec. 3 data and its entropies (unweighted ``H``, App. J ``H_w``)."""
    c = data.cfg
    return {"facts N": c.N, "vocabulary": data.vocab.size, "sentences N_f K + N_r": c.N_f * c.K + c.N_r,
            "next-token samples": data.n_samples, "distinct inputs": len(data.pretrain),
            "H (unweighted)": entropy(c, weighted=False), "H_w (App. J)": entropy(c)}


def _error(err: Exception) -> str:
    return f"<p style='color:#b00'><b>invalid setting:</b> {html.escape(str(err))}</p>"


def data_report(cfg: DataConfig, n_rare: int = 1) -> str:
    """HTML: the counts of ``data_counts`` and the sentences of the first frequent fact and
    of ``n_rare`` rare facts (``n_rare`` an int >= 0)."""
    checks.of_type("cfg", cfg, DataConfig)
    n_rare = checks.integer("n_rare", n_rare, lo=0)
    data = make_data(cfg)
    rows = "".join(f"<tr><td>{k}</td><td>{v:.4f}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in data_counts(data).items())
    facts = [0] + list(range(cfg.N_f, min(cfg.N, cfg.N_f + n_rare)))
    sents = "".join(f"<li>{html.escape(s)} <i>({'frequent' if i < cfg.N_f else 'rare'})</i></li>"
                    for i in facts for s in data.sentences(i))
    return f"<table>{rows}</table><ul>{sents}</ul>"


def data_explorer(cfg: DataConfig = DataConfig()) -> widgets.Widget:
    """Sliders over ``N_f, N_r, K, R`` (Sec. 3) showing counts, entropies and sample sentences."""
    checks.of_type("cfg", cfg, DataConfig)
    sliders = {
        "N_f": widgets.IntSlider(cfg.N_f, 1, 300, description="N_f"),
        "N_r": widgets.IntSlider(cfg.N_r, 0, 300, description="N_r"),
        "K": widgets.IntSlider(cfg.K, 1, 24, description="K"),
        "R": widgets.IntSlider(cfg.R, 1, 24, description="R"),
    }
    out = widgets.HTML()

    def update(change: object = None) -> None:
        vals = {k: s.value for k, s in sliders.items()}
        try:
            new = cfg.with_(N_ft=min(cfg.N_ft, vals["N_f"]), **vals)
        except (ValueError, TypeError) as err:
            out.value = _error(err)
            return
        out.value = data_report(new)

    for s in sliders.values():
        s.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox(list(sliders.values())[:2]), widgets.HBox(list(sliders.values())[2:]), out])


def pretraining_figure(data: KnowledgeData, model: ModelConfig, schedule: Schedule, seed: int = 0,
                       log_every: int = 5) -> plt.Figure:
    """Pre-train one run and draw its loss against ``H`` and the attention masses (Sec. 4, Prop. 1)."""
    checks.of_type("data", data, KnowledgeData)
    _, hist = pretrain(data, model, schedule, seed=seed, log_every=log_every)
    fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.6))
    plots.loss_curves(axes[0], hist, entropy(data.cfg), schedule, by_kind=False)
    axes[0].set_ylim(0, max(2.0, 1.2 * float(hist.loss[-1][0])))
    axes[0].legend(fontsize=8)
    plots.attention_curves(axes[1], hist, schedule, row=0)
    plots.attention_curves(axes[2], hist, schedule, row=1)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def pretraining_explorer(cfg: DataConfig = SMALL, schedule: Schedule = SMALL_SCHEDULE,
                         model: ModelConfig = ModelConfig()) -> widgets.Widget:
    """Controls for the three rates, the two stage boundaries and ``rho_c``; each change
    re-runs pre-training of ``cfg`` for ``schedule.T`` steps. Settings that are invalid or
    make the loss diverge show the error message instead of a figure."""
    checks.of_type("cfg", cfg, DataConfig)
    checks.of_type("schedule", schedule, Schedule)
    checks.of_type("model", model, ModelConfig)
    eta = [widgets.FloatLogSlider(e, base=10, min=-1, max=2.5, step=0.05, description=f"eta_{i + 1}",
                                  continuous_update=False) for i, e in enumerate(schedule.eta)]
    T1 = widgets.IntSlider(schedule.T1, 0, schedule.T, description="T_1", continuous_update=False)
    T2 = widgets.IntSlider(schedule.T2, 0, schedule.T, description="T_2", continuous_update=False)
    rho = widgets.FloatLogSlider(cfg.rho_c, base=10, min=-0.5, max=1.5, step=0.05, description="rho_c",
                                 continuous_update=False)
    out, msg = widgets.Output(), widgets.HTML()

    def update(change: object = None) -> None:
        out.clear_output(wait=True)
        try:
            sch = Schedule(tuple(e.value for e in eta), T1.value, T2.value, schedule.T)
            fig = pretraining_figure(make_data(cfg.with_(rho_c=rho.value)), model, sch)
        except (ValueError, TypeError) as err:
            msg.value = _error(err)
            return
        msg.value = ""
        with out:
            display(fig)
        plt.close(fig)

    for w in (*eta, T1, T2, rho):
        w.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox(eta), widgets.HBox([T1, T2, rho]), msg, out])

"""Plot helpers shared by the chapters.

Matplotlib for the figures of the book (``ax`` in, ``ax`` out, so a chapter composes
its own panels), plotly for the kernel-free twins of the widgets: a figure with a
slider over precomputed results works in the static HTML, where widgets do not. The
figures of chapter 6 (``plot_heatmaps`` ... ``plot_curves``) draw whole figures from the
tables of ``kaol.analysis.summary``.
"""
from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .analysis import threshold_N
from .data import KIND_NAMES
from .train import PTHistory, Schedule

KIND_COLORS = ("tab:orange", "tab:red", "tab:blue", "tab:purple", "tab:green")
TOKEN_COLORS = {"c": "tab:gray", "s": "tab:blue", "r": "tab:orange"}


def stage_lines(ax: plt.Axes, schedule: Schedule, label: bool = True) -> plt.Axes:
    """Dotted vertical lines at the stage boundaries ``T1`` and ``T2`` of Sec. 4's schedule."""
    for t, name in ((schedule.T1, "$T_1$"), (schedule.T2, "$T_2$")):
        if 0 < t < schedule.T:
            ax.axvline(t, color="k", ls=":", lw=1)
            if label:
                ax.annotate(name, (t, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -12),
                            textcoords="offset points", fontsize=8)
    return ax


def step_axis(ax: plt.Axes, schedule: Schedule) -> plt.Axes:
    """Steps 0..T on a symmetric-log axis, linear up to ``T1``: Stage I stays visible."""
    ax.set_xscale("symlog", linthresh=max(schedule.T1, 1))
    ax.set_xlim(0, schedule.T)
    ax.set_xlabel("step")
    return ax


def loss_curves(ax: plt.Axes, hist: PTHistory, H: float, schedule: Schedule, run: int = 0,
                by_kind: bool = True) -> plt.Axes:
    """Pre-training loss of ``run`` (and per sample kind) against the entropy ``H`` (Thm 2.1).

    The x axis is ``step_axis``.
    """
    steps = np.asarray(hist.steps)
    ax.plot(steps, np.asarray(hist.loss)[:, run], color="k", lw=2, label="loss")
    if by_kind:
        lk = np.asarray(hist.loss_by_kind)[:, run]
        for k, name in enumerate(KIND_NAMES):
            if not np.isnan(lk[:, k]).all():
                ax.plot(steps, lk[:, k], color=KIND_COLORS[k], lw=1, label=name)
    ax.axhline(H, color="k", ls="--", lw=1, label=f"H = {H:.3f}")
    stage_lines(ax, schedule)
    step_axis(ax, schedule)
    ax.set_ylabel("cross-entropy")
    return ax


def attention_curves(ax: plt.Axes, hist: PTHistory, schedule: Schedule, run: int = 0, row: int = 1
                     ) -> plt.Axes:
    """Attention mass on c, s and r over the steps (Prop. 1): ``row`` 0 for the (c, s) inputs,
    1 for the (c, s, r) inputs."""
    A = np.asarray(hist.attn)[:, run, row]
    steps = np.asarray(hist.steps)
    for j, tok in enumerate("csr"):
        if row == 0 and tok == "r":
            continue
        ax.plot(steps, A[:, j], color=TOKEN_COLORS[tok], label=f"on {tok}")
    stage_lines(ax, schedule)
    step_axis(ax, schedule)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("attention mass")
    ax.set_title("(c, s) inputs" if row == 0 else "(c, s, r) inputs", fontsize=10)
    return ax


def feature_curves(ax: plt.Axes, hist: PTHistory, schedule: Schedule, names: Sequence[str], run: int = 0
                   ) -> plt.Axes:
    """Feature strengths of ``kaol.metrics.FEATURES`` (``names``) over the steps (Prop. 2)."""
    F = np.asarray(hist.features)[:, run]
    steps = np.asarray(hist.steps)
    for j, name in enumerate(names):
        ax.plot(steps, F[:, j], label=name)
    stage_lines(ax, schedule)
    step_axis(ax, schedule)
    ax.set_ylabel(r"$\sum_n \langle v_{y,n}, e_x\rangle$")
    return ax


def heatmap(ax: plt.Axes, M: np.ndarray, xlabels: Sequence[str], ylabels: Sequence[str],
            vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis") -> plt.Axes:
    """A matrix as a heat map with labelled rows and columns and a colour bar (App. C, Fig. 5)."""
    im = ax.imshow(M, aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=7)
    ax.figure.colorbar(im, ax=ax)
    return ax


def slider_figure(frames: dict[str, list[go.Scatter]], slider_label: str, title: str = "",
                  xaxis: dict | None = None, yaxis: dict | None = None, active: int = 0,
                  fig: go.Figure | None = None) -> go.Figure:
    """A plotly figure with one slider step per entry of ``frames`` (its traces shown alone).

    The kernel-free twin of a widget: every frame is precomputed, the slider only
    toggles trace visibility, so it works in the static HTML. ``fig`` may bring a layout
    (say ``plotly.subplots.make_subplots``) whose axes the traces name (``xaxis="x2"``).
    """
    fig = go.Figure() if fig is None else fig
    owner = []
    for i, traces in enumerate(frames.values()):
        for tr in traces:
            tr.visible = i == active
            fig.add_trace(tr)
            owner.append(i)
    steps = [dict(method="update", label=str(name), args=[{"visible": [o == i for o in owner]}])
             for i, name in enumerate(frames)]
    fig.update_layout(title=title, sliders=[dict(active=active, currentvalue={"prefix": f"{slider_label} = "},
                                                 steps=steps, pad={"t": 40})],
                      margin=dict(l=60, r=20, t=60, b=40))
    if xaxis or yaxis:
        fig.update_layout(xaxis=xaxis or {}, yaxis=yaxis or {})
    return fig


def pretraining_traces(hist: PTHistory, H: float, run: int = 0) -> list[go.Scatter]:
    """Plotly traces of one pre-training run for a 1 x 2 subplot: the loss against ``H``
    (axes x/y) and the attention masses of Prop. 1 (axes x2/y2)."""
    steps = np.asarray(hist.steps)
    A = np.asarray(hist.attn)[:, run]
    return [go.Scatter(x=steps, y=np.asarray(hist.loss)[:, run], name="loss", line=dict(color="black")),
            go.Scatter(x=steps[[0, -1]], y=[H, H], name=f"H = {H:.3f}", line=dict(color="black", dash="dash")),
            go.Scatter(x=steps, y=A[:, 0, 0], name="c, on (c,s)", line=dict(color="gray", dash="dot"),
                       xaxis="x2", yaxis="y2"),
            *[go.Scatter(x=steps, y=A[:, 1, j], name=f"{tok}, on (c,s,r)", xaxis="x2", yaxis="y2",
                         line=dict(color=TOKEN_COLORS[tok].replace("tab:", "")))
              for j, tok in enumerate("csr")]]


def show_plotly(fig: go.Figure) -> None:
    """Display a plotly figure as HTML that works in a live notebook and in the static book.

    The book's builder knows no plotly mime type, so the figure is HTML: a ``div`` of
    class ``kaol-plotly`` and a script that draws it with ``window.Plotly``. The built book
    serves plotly.js itself on the pages that hold such a div (``book/_ext/plotly_static.py``),
    so figures render offline; a live notebook without it loads plotly.js from its CDN.
    """
    from IPython.display import HTML, display
    from plotly.offline import get_plotlyjs_version

    spec = fig.to_json()
    div = "kaol-plotly-" + hashlib.sha1(spec.encode()).hexdigest()[:12]
    cdn = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
    display(HTML(f"""<div id="{div}" class="kaol-plotly plotly-graph-div"></div>
<script type="text/javascript">(function () {{
  var fig = {spec};
  function draw() {{ Plotly.newPlot("{div}", fig.data, fig.layout, {{responsive: true}})
    .then(function (gd) {{ if (fig.frames) {{ Plotly.addFrames(gd, fig.frames); }} }}); }}
  if (window.Plotly) {{ draw(); }} else {{
    var s = document.createElement("script"); s.src = "{cdn}"; s.onload = draw; document.head.appendChild(s);
  }}
}})();</script>"""))


@dataclass
class FigureData:
    """The numbers behind a figure, offered for download as ``name.csv``.

    Shown in a notebook it is a link whose target is the CSV itself (a ``data:`` URI), so
    it works in the static HTML book, in Jupyter and in Colab alike, with no file to serve.
    Its text form (what nbval compares) names the file and its size.
    """

    table: pd.DataFrame
    name: str

    def csv(self) -> str:
        return self.table.to_csv(index=False, float_format="%.6g")

    def __repr__(self) -> str:
        rows, cols = self.table.shape
        return f"data of this figure: {self.name}.csv ({rows} rows x {cols} columns)"

    def _repr_html_(self) -> str:
        uri = "data:text/csv;charset=utf-8;base64," + base64.b64encode(self.csv().encode()).decode()
        return (f'<a class="kaol-download" download="{html.escape(self.name)}.csv" href="{uri}">'
                f'&#x2B07; {html.escape(repr(self))}</a>')


# ---------------------------------------------------------------- chapter 6: the grids of Sec. 7

ACC = {"best_freq": "best step, unseen frequent", "best_rare": "best step, rare",
       "last_freq": "last step, unseen frequent", "last_rare": "last step, rare"}


def _pivot(s: pd.DataFrame, col: str, R: int) -> pd.DataFrame:
    return s[s["R"] == R].pivot(index="K", columns="N_ft", values=col)


def plot_heatmaps(s: pd.DataFrame, R: int, threshold: float = 0.5):
    """Fig. 2a/3a as four heat maps (best/last step x frequent/rare) of the mean accuracy over
    seeds, each cell annotated with its mean (the spreads are in ``kaol.analysis.summary``), with the curve
    where Theorem 2's bound equals ``1 - threshold``; drawn for a 7.2 in column."""
    fig, axes = plt.subplots(2, 2, figsize=(7.2, 5.6), sharex=True, sharey=True, layout="constrained")
    for ax, (col, title) in zip(axes.flat, ACC.items()):
        m = _pivot(s, col, R)
        im = ax.imshow(m.values, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), x in np.ndenumerate(m.values):
            ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if x > 0.6 else "white")
        ax.set_xticks(range(m.shape[1]), m.columns)
        ax.set_yticks(range(m.shape[0]), m.index)
        Ks = np.linspace(m.index.min(), m.index.max(), 200)
        xs = np.interp(threshold_N(Ks, R, 1 - threshold), m.columns, range(m.shape[1]), left=np.nan, right=np.nan)
        ax.plot(xs, np.interp(Ks, m.index, range(m.shape[0])), "r--", lw=1.5)
        ax.set_title(title, fontsize=10)
    for ax in axes[1]:
        ax.set_xlabel(r"$\tilde N_f$")
    for ax in axes[:, 0]:
        ax.set_ylabel("multiplicity $K$")
    fig.colorbar(im, ax=axes, shrink=0.8, label="OOD accuracy (mean over seeds)")
    return fig


def plot_lines(s: pd.DataFrame, x: str, hue: str, fixed: dict[str, int]):
    """Accuracy (best step solid, last step dashed) against ``x``, one line per ``hue``,
    error bars one standard deviation over seeds; frequent and rare in two panels."""
    sel = s.loc[np.logical_and.reduce([s[k] == v for k, v in fixed.items()] or [np.ones(len(s), bool)])]
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.4), sharey=True, layout="constrained")
    for ax, part in zip(axes, ("freq", "rare")):
        for i, (h, d) in enumerate(sel.groupby(hue)):
            d = d.sort_values(x)
            for w, ls in (("best", "-"), ("last", "--")):
                ax.errorbar(d[x], d[f"{w}_{part}"], d[f"{w}_{part}_sd"], ls=ls, marker="o", ms=3, capsize=2,
                            color=f"C{i}", label={"N_ft": r"$\tilde N_f$", "K": "$K$", "R": "$R$"}.get(hue, hue) + f" = {h}"
                            if w == "best" else None)
        ax.set_title({"freq": "unseen frequent facts", "rare": "rare facts"}[part], fontsize=10)
        ax.set_xlabel({"N_ft": r"$\tilde N_f$", "R": "$R$ (relation phrases)", "K": "$K$"}.get(x, x))
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("OOD accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right", fontsize=9)
    return fig


def plot_bound(s: pd.DataFrame):
    """Measured error ``1 - best accuracy`` (mean over seeds, bars: sd) against Theorem 2's bound."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6), sharey=True, layout="constrained")
    for ax, part in zip(axes, ("", "_rare")):
        for i, (r, d) in enumerate(s.groupby("R")):
            ax.errorbar(d["bound"], d[f"err_best{part}"], d[f"err_best{part}_sd"], fmt="o", ms=4, capsize=2,
                        color=f"C{i}", label=f"$R$ = {r}")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="error = bound")
        ax.fill_between([0, 1], [0, 1], 1, color="red", alpha=0.07, label="bound violated")
        ax.set_xlabel("bound, Eq. (14)")
        ax.set_title("all unseen facts" if not part else "rare facts", fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("measured OOD error (best step)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=5, fontsize=9)
    return fig


def plot_regime(s: pd.DataFrame, threshold: float = 0.5):
    """Over the (K, N~_f) plane of each R: where extraction succeeds (mean best accuracy >
    ``threshold``), measured (colour) and predicted by the bound (o: success, x: failure)."""
    Rs = sorted(s["R"].unique())
    fig, axes = plt.subplots(1, len(Rs), figsize=(7.2, 2.9), squeeze=False, layout="constrained")
    for ax, R in zip(axes[0], Rs):
        d = s[s["R"] == R]
        sc = ax.scatter(d["N_ft"], d["K"], c=d["best"], vmin=0, vmax=1, cmap="viridis", s=150, marker="s")
        ok = d["predicted"]
        ax.scatter(d.loc[ok, "N_ft"], d.loc[ok, "K"], marker="o", facecolors="none", edgecolors="w", s=60)
        ax.scatter(d.loc[~ok, "N_ft"], d.loc[~ok, "K"], marker="x", color="r", s=40)
        Ks = np.linspace(0.8, d["K"].max() * 1.1, 100)
        ax.plot(threshold_N(Ks, R, 1 - threshold), Ks, "r--", lw=1)
        ax.set_xlim(0, d["N_ft"].max() * 1.15)
        ax.set_ylim(0, d["K"].max() * 1.15)
        ax.set_title(f"$R$ = {R}", fontsize=10)
        ax.set_xlabel(r"$\tilde N_f$")
    axes[0, 0].set_ylabel("$K$")
    fig.colorbar(sc, ax=axes[0], label="accuracy (best step)")
    return fig


def plotly_heatmap(s: pd.DataFrame, R: int):
    """A kernel-free interactive Fig. 2a: heat map with hover (mean, sd, bound) and a menu for
    best/last step and frequent/rare facts."""
    cols = list(ACC)
    fig = go.Figure()
    for i, col in enumerate(cols):
        m, sd, b = _pivot(s, col, R), _pivot(s, col + "_sd", R), _pivot(s, "bound", R)
        text = [[f"K={k}, N~f={n}<br>accuracy {m.loc[k, n]:.3f} ± {sd.loc[k, n]:.3f}<br>"
                 f"bound on error {b.loc[k, n]:.3f}" for n in m.columns] for k in m.index]
        fig.add_trace(go.Heatmap(z=m.values, x=[str(n) for n in m.columns], y=[str(k) for k in m.index],
                                 zmin=0, zmax=1, colorscale="Viridis", text=text, hoverinfo="text",
                                 texttemplate="%{z:.2f}", visible=i == 0, colorbar={"title": "accuracy"}))
    buttons = [{"label": ACC[c], "method": "update",
                "args": [{"visible": [j == i for j in range(len(cols))]}, {"title": f"OOD accuracy, {ACC[c]} (R={R})"}]}
               for i, c in enumerate(cols)]
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.18, "xanchor": "right"}],
                      title=f"OOD accuracy, {ACC[cols[0]]} (R={R})", xaxis_title="N~f (fine-tuning size)",
                      yaxis_title="multiplicity K", width=650, height=420)
    return fig


def plot_curves(curves: dict, K: int, N_ft: int, R: int, ax=None):
    """Fine-tuning curves of one grid cell: accuracy on unseen frequent and rare facts per step, each seed."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7.2, 3), layout="constrained")
    runs = {k[3]: h for k, h in curves.items() if k[:3] == (K, N_ft, R)}
    for i, (seed, h) in enumerate(sorted(runs.items())):
        ax.plot(h.acc_freq[:, 0], color=f"C{i}", label=f"seed {seed}")
        ax.plot(h.acc_rare[:, 0], color=f"C{i}", ls=":")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("OOD accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(rf"$K$ = {K}, $\tilde N_f$ = {N_ft}, $R$ = {R} (solid: unseen frequent, dotted: rare)",
                 fontsize=10)
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return ax


def plot_rank1(both: pd.DataFrame):
    """Best-step OOD accuracy after rank-1 against after full fine-tuning (App. H), one point
    per cell of ``both`` (a ``summary`` of each, merged with suffixes ``_full``, ``_rank1``),
    unseen frequent facts left, rare facts right; colour: ``K``."""
    Ks = sorted(both["K"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.2), sharey=True, layout="constrained")
    for ax, part in zip(axes, ("freq", "rare")):
        sc = ax.scatter(both[f"best_{part}_full"], both[f"best_{part}_rank1"],
                        c=np.log2(both["K"]), cmap="viridis", vmin=np.log2(Ks[0]), vmax=np.log2(Ks[-1]))
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("full fine-tuning (best step)")
        ax.set_title({"freq": "unseen frequent facts", "rare": "rare facts"}[part], fontsize=10)
    axes[0].set_ylabel("rank-1 fine-tuning (best step)")
    cb = fig.colorbar(sc, ax=axes, ticks=np.log2(Ks))
    cb.set_ticklabels([str(k) for k in Ks])
    cb.set_label("K")
    return fig

"""Plot helpers shared by the chapters.

Matplotlib for the figures of the book (``ax`` in, ``ax`` out, so a chapter composes
its own panels), plotly for the kernel-free twins of the widgets: a figure with a
slider over precomputed results works in the static HTML, where widgets do not.
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

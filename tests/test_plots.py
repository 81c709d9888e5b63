"""Tests of the plot helpers (kaol.plots) and the widget builders (kaol.widgets)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from kaol import plots, widgets
from kaol.data import DataConfig, entropy, make_data
from kaol.metrics import FEATURES
from kaol.model import ModelConfig
from kaol.train import Schedule, pretrain

TINY = DataConfig(N_f=6, N_r=3, R=4, K=2, N_ft=3)
SCHED = Schedule(eta=(2.0, 20.0, 10.0), T1=2, T2=5, T=8)


@pytest.fixture(scope="module")
def hist():
    return pretrain(make_data(TINY), ModelConfig(m=2), SCHED, seed=0, log_every=2)[1]


def test_curves_draw_one_line_per_series(hist) -> None:
    fig, axes = plt.subplots(1, 4)
    plots.loss_curves(axes[0], hist, entropy(TINY), SCHED)
    assert len(axes[0].lines) == 1 + 4 + 1 + 2      # loss, 4 kinds present (no Q&A), H, T1, T2
    plots.attention_curves(axes[1], hist, SCHED, row=0)
    assert len(axes[1].lines) == 2 + 2              # c, s (no r in (c, s) inputs), T1, T2
    plots.attention_curves(axes[2], hist, SCHED, row=1)
    assert len(axes[2].lines) == 3 + 2
    plots.feature_curves(axes[3], hist, SCHED, FEATURES)
    np.testing.assert_allclose(axes[3].lines[0].get_ydata(), np.asarray(hist.features)[:, 0, 0])
    plt.close(fig)


def test_stage_lines_skip_boundaries_outside_the_run() -> None:
    fig, ax = plt.subplots()
    plots.stage_lines(ax, Schedule.constant(1.0, 10))
    assert len(ax.lines) == 0
    plt.close(fig)


def test_heatmap_labels() -> None:
    fig, ax = plt.subplots()
    plots.heatmap(ax, np.eye(3)[:2], ["c", "s", "r"], ["a", "b"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c", "s", "r"]
    plt.close(fig)


def test_slider_figure_shows_one_frame_per_step() -> None:
    frames = {k: [go.Scatter(x=[0, 1], y=[k, k]), go.Scatter(x=[0], y=[k])] for k in (1, 2, 3)}
    fig = plots.slider_figure(frames, "k", active=1)
    assert [tr.visible for tr in fig.data] == [False, False, True, True, False, False]
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 3 and steps[2].args[0]["visible"] == [False] * 4 + [True] * 2


def test_data_counts_and_invalid_setting() -> None:
    c = widgets.data_counts(make_data(TINY))
    assert c["next-token samples"] == 2 * (TINY.N_f * TINY.K + TINY.N_r)
    assert c["H_w (App. J)"] == pytest.approx(entropy(TINY))
    assert "Alice Smith" in widgets.data_report(TINY)


def test_data_explorer_shows_error_instead_of_raising() -> None:
    w = widgets.data_explorer(TINY)
    K = w.children[1].children[0]
    K.value = 10                                      # K > R = 4
    assert "K = 10" in w.children[2].value and "invalid" in w.children[2].value
    K.value = 2
    assert "invalid" not in w.children[2].value


def test_pretraining_explorer_reports_bad_schedule() -> None:
    w = widgets.pretraining_explorer(TINY, SCHED, ModelConfig(m=2))
    T1 = w.children[1].children[0]
    T1.value = 7                                      # T1 > T2 = 5
    assert "T1=7" in w.children[2].value
    T1.value = 2
    assert w.children[2].value == ""
    plt.close("all")


def test_pretraining_traces_follow_the_history(hist) -> None:
    traces = plots.pretraining_traces(hist, 0.5)
    np.testing.assert_allclose(traces[0].y, np.asarray(hist.loss)[:, 0])
    assert list(traces[1].y) == [0.5, 0.5]
    assert {tr.xaxis for tr in traces[2:]} == {"x2"}
    np.testing.assert_allclose(traces[3].y, np.asarray(hist.attn)[:, 0, 1, 0])


def test_step_axis_starts_at_zero() -> None:
    fig, ax = plt.subplots()
    plots.step_axis(ax, SCHED)
    assert ax.get_xscale() == "symlog" and ax.get_xlim() == (0.0, float(SCHED.T))
    plt.close(fig)


def test_figure_data_is_a_csv_link(hist) -> None:
    """``FigureData`` links the figure's table as a base64 CSV that decodes to the table itself."""
    import base64
    import io
    import re


    table = hist.table()
    assert list(table["step"]) == hist.steps and "attention on s, (c,s,r) inputs" in table
    d = plots.FigureData(table, "pretraining")
    assert repr(d) == f"data of this figure: pretraining.csv ({len(table)} rows x {table.shape[1]} columns)"
    uri = re.search(r'href="data:text/csv;charset=utf-8;base64,([^"]+)"', d._repr_html_()).group(1)
    back = pd.read_csv(io.StringIO(base64.b64decode(uri).decode()))
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back.to_numpy(float), table.to_numpy(float), rtol=1e-5)


def test_rank1_scatter_one_point_per_cell_and_colour_per_K() -> None:
    both = pd.DataFrame({"K": [1, 2, 4], "N_ft": [10, 10, 10],
                         **{f"best_{p}_{f}": [0.1, 0.5, 0.9] for p in ("freq", "rare") for f in ("full", "rank1")}})
    fig = plots.plot_rank1(both)
    panels, colorbar = fig.axes[:2], fig.axes[2]
    assert len(fig.axes) == 3 and colorbar.get_ylabel() == "K"
    xy = panels[0].collections[0].get_offsets()
    np.testing.assert_allclose(xy, [[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])
    assert [t.get_text() for t in colorbar.get_yticklabels()] == ["1", "2", "4"]
    plt.close(fig)

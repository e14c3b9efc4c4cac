"""Plotly figures of every page, built from plain data read from the store.

No streamlit here, so the figures can be checked without a running app. Colours are left to the
streamlit theme (`st.plotly_chart(theme="streamlit")` follows light and dark mode); where a colour
must be fixed it is a mid-tone or a translucent grey that reads on both backgrounds.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

MIB = 1024 * 1024
NEUTRAL = "rgba(128,128,128,0.55)"
NEUTRAL_FILL = "rgba(128,128,128,0.14)"
# The engine's memory parts (app.memory.PARTS, which this module does not import: it loads torch).
PARTS = ("weights", "quantized", "gradients", "optimizer", "activations", "loss")
# Mid-tone colours, distinct in both themes and for common colour-vision deficiencies.
PART_COLOURS = {
    "weights": "#4C78A8",
    "quantized": "#72B7B2",
    "gradients": "#F58518",
    "optimizer": "#54A24B",
    "activations": "#E45756",
    "loss": "#B279A2",
}
# Parts drawn only where some value has them: a classifier's loss keeps nothing worth a legend entry.
OPTIONAL_PARTS = ("loss",)


def drawn_parts(breakdowns) -> list[str]:
    breakdowns = [b or {} for b in breakdowns]
    return [part for part in PARTS if part not in OPTIONAL_PARTS or any(b.get(part) for b in breakdowns)]


# Categorical colours (Tableau 10): neighbours differ in hue, unlike the theme's paired blues and reds.
PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#EECA3B", "#9D755D", "#FF9DA6",
           "#BAB0AC"]
HEATMAP_SCALE = "Viridis"
MAX_HEATMAP_COLUMNS = 600


def _layout(fig: go.Figure, x_title: str, y_title: str, title: str | None = None, height: int = 320) -> go.Figure:
    # The title sits at the very top, the legend in its own row just above the plot area.
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left", y=0.995, yanchor="top", pad=dict(t=4)) if title else None,
        height=height + (30 if title else 0),
        margin=dict(l=10, r=10, t=78 if title else 40, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0),
        hovermode="x unified",
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def thin_columns(steps: list, *columns: list) -> tuple:
    """Every k-th entry so a heatmap stays under MAX_HEATMAP_COLUMNS columns (last kept)."""
    n = len(steps)
    if n <= MAX_HEATMAP_COLUMNS:
        return (steps, *columns)
    stride = math.ceil(n / MAX_HEATMAP_COLUMNS)
    keep = list(range(0, n, stride))
    if keep[-1] != n - 1:
        keep.append(n - 1)
    return ([steps[i] for i in keep], *[[c[i] for i in keep] for c in columns])


def lines(traces: list[dict], x_title: str, y_title: str, title: str | None = None, height: int = 320,
          hline: tuple[float, str] | None = None) -> go.Figure:
    """Line chart; each trace is {"name", "x", "y"} plus optional "dash", "mode", "color"."""
    fig = go.Figure()
    for index, trace in enumerate(traces):
        # A series of one or two points draws no visible line: mark its points.
        short = sum(v is not None for v in trace["y"]) <= 2
        fig.add_trace(go.Scatter(
            x=trace["x"], y=trace["y"], name=trace["name"], mode=trace.get("mode", "lines+markers" if short else "lines"),
            line=dict(dash=trace.get("dash", "solid"), color=trace.get("color") or PALETTE[index % len(PALETTE)]),
            legendgroup=trace.get("group"), showlegend=trace.get("showlegend", True),
        ))
    if hline is not None:
        value, label = hline
        fig.add_hline(y=value, line_dash="dot", line_color=NEUTRAL, annotation_text=label,
                      annotation_position="bottom right")
    return _layout(fig, x_title, y_title, title, height)


# --- a run's live curves ----------------------------------------------------------------------


def loss_figure(steps: list[dict], terms: bool = True) -> go.Figure:
    xs = [s["step"] for s in steps]
    traces = [{"name": "loss", "x": xs, "y": [s.get("loss") for s in steps]}]
    if terms:
        names = []
        for s in steps:
            for name in (s.get("terms") or {}):
                if name not in names:
                    names.append(name)
        for name in names:
            if name == "total":
                continue
            traces.append({"name": name, "x": xs, "y": [(s.get("terms") or {}).get(name) for s in steps],
                           "dash": "dot"})
    return lines(traces, "step", "loss", "Training loss")


def accuracy_figure(evals: list[dict], reference: tuple[float, str] | None = None, title="Validation accuracy") -> go.Figure:
    val = [e for e in evals if e["split"] == "validation"]
    traces = [{"name": "validation accuracy", "x": [e["step"] for e in val],
               "y": [None if e.get("accuracy") is None else 100 * e["accuracy"] for e in val], "mode": "lines+markers"}]
    if any(e.get("macro_f1") is not None for e in val):
        traces.append({"name": "validation macro-F1", "x": [e["step"] for e in val],
                       "y": [None if e.get("macro_f1") is None else 100 * e["macro_f1"] for e in val],
                       "mode": "lines+markers", "dash": "dot"})
    hline = (100 * reference[0], reference[1]) if reference else None
    fig = lines(traces, "step", "accuracy (%)", title, hline=hline)
    if 0 < len(val) <= 12:
        fig.update_xaxes(tickmode="array", tickvals=[e["step"] for e in val])  # no fractional steps
    if not val:
        fig.update_yaxes(range=[0, 100])
        fig.add_annotation(text="no validation pass yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def perplexity_figure(evals: list[dict], reference: tuple[float, str] | None = None,
                      title: str = "Validation perplexity") -> go.Figure:
    """Validation perplexity per evaluation of a causal-LM run, from the untuned model's at step 0."""
    val = [e for e in evals if e["split"] == "validation" and e.get("perplexity") is not None]
    fig = lines([{"name": "validation perplexity", "x": [e["step"] for e in val], "y": [e["perplexity"] for e in val],
                  "mode": "lines+markers"}], "step", "perplexity (log scale)", title, hline=reference)
    fig.update_yaxes(type="log")
    if not val:
        fig.add_annotation(text="no validation pass yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def throughput_figure(steps: list[dict]) -> go.Figure:
    return lines([{"name": "examples / s", "x": [s["step"] for s in steps],
                   "y": [s.get("examples_per_second") for s in steps]}], "step", "throughput (examples / s)",
                 "Throughput")


def memory_parts_figure(steps: list[dict]) -> go.Figure:
    """Stacked areas of the measured parts of one run's memory, per step."""
    measured = [s for s in steps if s.get("memory")]
    fig = go.Figure()
    xs = [s["step"] for s in measured]
    for part in drawn_parts(s["memory"] for s in measured):
        fig.add_trace(go.Scatter(
            x=xs, y=[s["memory"].get(part, 0) / MIB for s in measured], name=part, stackgroup="memory",
            mode="lines", line=dict(width=0.5, color=PART_COLOURS[part]),
        ))
    cuda = [s["memory"].get("cuda_max_allocated") for s in measured]
    if any(v is not None for v in cuda):
        fig.add_trace(go.Scatter(x=xs, y=[None if v is None else v / MIB for v in cuda],
                                 name="CUDA max allocated", mode="lines", line=dict(dash="dash")))
    return _layout(fig, "step", "memory (MiB)", "Measured training memory")


# --- memory page --------------------------------------------------------------------------------


def memory_overlay(series: list[dict]) -> go.Figure:
    """Peak memory per step of several runs: [{"name", "steps", "peak"}] (peak in bytes)."""
    return lines([{"name": s["name"], "x": s["steps"], "y": [None if v is None else v / MIB for v in s["peak"]]}
                  for s in series], "step", "peak memory (MiB)", "Peak training memory per step")


def memory_breakdown_bars(rows: list[dict]) -> go.Figure:
    """Stacked bars per run: [{"name", "weights", "gradients", "optimizer", "activations"}] in bytes."""
    fig = go.Figure()
    names = [r["name"] for r in rows]
    for part in drawn_parts(rows):
        fig.add_trace(go.Bar(x=names, y=[(r.get(part) or 0) / MIB for r in rows], name=part,
                             marker_color=PART_COLOURS[part]))
    fig.update_layout(barmode="stack")
    fig = _layout(fig, "run", "memory at the peak step (MiB)", "What the memory holds")
    fig.update_layout(hovermode="closest")
    return fig


def estimate_bar(breakdown: dict) -> go.Figure:
    """One horizontal stacked bar: where the estimated peak goes (bytes per part)."""
    fig = go.Figure()
    for part in drawn_parts([breakdown]):
        value = (breakdown.get(part) or 0) / MIB
        fig.add_trace(go.Bar(x=[value], y=["estimate"], orientation="h", name=part, marker_color=PART_COLOURS[part],
                             hovertemplate=f"{part}: %{{x:.1f}} MiB<extra></extra>"))
    fig.update_layout(barmode="stack", height=120, margin=dict(l=10, r=10, t=10, b=10), hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.35, xanchor="left", x=0))
    fig.update_xaxes(title_text=None, ticksuffix=" MiB")
    fig.update_yaxes(visible=False)
    return fig


def trainable_bars(rows: list[dict]) -> go.Figure:
    fig = go.Figure(go.Bar(x=[r["name"] for r in rows], y=[r["trainable"] for r in rows],
                           text=[f"{100 * r['trainable'] / r['total']:.2f}%" if r.get("total") else "" for r in rows],
                           textposition="outside", marker_color="#4C78A8", name="trainable"))
    fig = _layout(fig, "run", "trainable parameters (log scale)", "Trainable parameters")
    fig.update_yaxes(type="log", dtick=1, tickformat="~s")  # one tick per power of ten
    fig.update_layout(hovermode="closest")
    return fig


# --- LST ----------------------------------------------------------------------------------------


def block_names(backbone_layers: list[int] | None, count: int) -> list[str]:
    if backbone_layers and len(backbone_layers) == count:
        return [f"side {i + 1} ← layer {layer}" for i, layer in enumerate(backbone_layers)]
    return [f"side {i + 1}" for i in range(count)]


def gates_heatmap(steps: list[int], gates: list[list[float]], backbone_layers: list[int] | None) -> go.Figure:
    """mu_i over steps: rows are side blocks, columns steps, coloured by the change from the start."""
    start = list(gates[0]) if gates else []
    steps, gates = thin_columns(steps, gates)
    count = len(gates[0]) if gates else 0
    mu = [[row[i] for row in gates] for i in range(count)]
    # Gates move a few hundredths in a short run, and deep stacks start them above 0.5: a 0-1 scale
    # would show one flat colour, so the colour is each gate's change from its own start, on a
    # scale spanning what this run reached.
    z = [[None if v is None else v - start[i] for v in row] for i, row in enumerate(mu)]
    reach = max([abs(v) for row in z for v in row if v is not None] + [0.02])
    fig = go.Figure(go.Heatmap(
        x=steps, y=block_names(backbone_layers, count), z=z, zmid=0.0, zmin=-reach, zmax=reach, customdata=mu,
        colorscale="RdBu", colorbar=dict(title="μ − start"),
        hovertemplate="step %{x}<br>%{y}<br>μ = %{customdata:.3f} (%{z:+.3f})<extra></extra>",
    ))
    # blue: the block keeps more of its side stream; red: it takes more of the backbone
    fig = _layout(fig, "step", "side block", "Ladder gates μᵢ = σ(αᵢ / T), blue ↑ red ↓",
                  height=max(240, 60 + 28 * count))
    fig.update_layout(hovermode="closest")
    fig.update_yaxes(autorange="reversed")
    return fig


def block_colours(count: int) -> tuple[list[str], bool]:
    """One colour per side block, and whether a legend can name them: distinct hues for a few
    blocks; for a deep stack (a 30-layer decoder) a dark-to-light ramp by depth, since thirty legend
    entries would bury the chart (the hover still names each block)."""
    if count <= len(PALETTE):
        return [PALETTE[i] for i in range(count)], True
    from plotly.colors import sample_colorscale

    return sample_colorscale(HEATMAP_SCALE, [i / max(1, count - 1) for i in range(count)]), False


DEPTH_NOTE = " (colour: block depth, dark = first)"


def layer_stat_figure(steps: list[int], values: list[list[float]], names: list[str], stat: str) -> go.Figure:
    colours, legend = block_colours(len(names))
    traces = [{"name": name, "x": steps, "y": [row[i] if i < len(row) else None for row in values],
               "color": colours[i], "showlegend": legend}
              for i, name in enumerate(names)]
    return lines(traces, "step", stat, f"Side activations: {stat} per block" + ("" if legend else DEPTH_NOTE))


def histogram_figure(edges: list[float], hists: list[list[float]], names: list[str], step: int) -> go.Figure:
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig = go.Figure()
    colours, legend = block_colours(len(names))
    for index, (name, counts) in enumerate(zip(names, hists)):
        total = sum(counts) or 1
        fig.add_trace(go.Scatter(x=centres, y=[100 * c / total for c in counts], name=name, mode="lines",
                                 line=dict(shape="hvh", color=colours[index]), showlegend=legend))
    fig = _layout(fig, "activation value", "share of values (%)",
                  f"Side activation histogram at step {step}" + ("" if legend else DEPTH_NOTE))
    fig.update_layout(hovermode="closest")
    return fig


def norms_figure(steps: list[int], side: list[list[float]], ladder: list[list[float]], names: list[str],
                 shown: list[int]) -> go.Figure:
    traces = []
    for i in shown:
        colour = PALETTE[i % len(PALETTE)]
        traces.append({"name": f"{names[i]}: side μ·h", "x": steps, "y": [r[i] if i < len(r) else None for r in side],
                       "color": colour, "group": names[i]})
        traces.append({"name": f"{names[i]}: ladder (1−μ)·down(h)", "x": steps,
                       "y": [r[i] if i < len(r) else None for r in ladder], "color": colour, "dash": "dash",
                       "group": names[i]})
    return lines(traces, "step", "mean L2 norm per token", "Side stream vs ladder input (solid: side, dashed: ladder)")


def pca_figure(points: list[list[float]], labels: list[int], label_names: list[str],
               explained: list[float] | None, step: int) -> go.Figure:
    fig = go.Figure()
    for index, name in enumerate(label_names):
        chosen = [p for p, lab in zip(points, labels) if lab == index]
        if not chosen:
            continue
        fig.add_trace(go.Scatter(x=[p[0] for p in chosen], y=[p[1] for p in chosen], mode="markers", name=name,
                                 marker=dict(size=7, opacity=0.8, color=PALETTE[index % len(PALETTE)])))
    ev = explained or [None, None]
    fmt = lambda i: f"PC{i + 1}" + (f" ({100 * ev[i]:.0f}% of variance)" if ev[i] is not None else "")
    fig = _layout(fig, fmt(0), fmt(1), f"Side representations at step {step}, coloured by label", height=380)
    fig.update_layout(hovermode="closest")
    return fig


def ladder_diagram(num_backbone_layers: int, feeding_layers: list[int], gates: list[float] | None) -> go.Figure:
    """Backbone column (left), side column (right), a rung from each feeding backbone layer
    (1-based; 0 = embeddings) into its side block, annotated with the block's current gate μ."""
    box_h, gap = 0.62, 1.0
    backbone_x, side_x = (0.0, 2.2), (4.2, 5.6)
    side_centre = sum(side_x) / 2
    shapes, annotations = [], []
    # A 30-layer decoder at the shallow stacks' 62 px per layer would be 2,000 px tall: deep stacks
    # get less height per layer (and smaller text), so the whole ladder fits beside the gate chart.
    deep = num_backbone_layers > 12
    level_px = 62 if not deep else max(30, 62 * 12 // num_backbone_layers)
    text_size = 12 if not deep else 10

    def box(x, level, text, line, fill, size=text_size):
        y = level * gap
        shapes.append(dict(type="rect", x0=x[0], x1=x[1], y0=y, y1=y + box_h, line=dict(color=line), fillcolor=fill))
        annotations.append(dict(x=sum(x) / 2, y=y + box_h / 2, text=text, showarrow=False, font=dict(size=size)))

    def segment(x0, y0, x1, y1, colour=NEUTRAL, width=2, dash="solid"):
        shapes.append(dict(type="line", x0=x0, x1=x1, y0=y0, y1=y1, line=dict(color=colour, width=width, dash=dash),
                           layer="below"))

    for level in range(num_backbone_layers + 1):
        box(backbone_x, level, "embeddings" if level == 0 else f"layer {level}", NEUTRAL, NEUTRAL_FILL)
        if level:
            segment(sum(backbone_x) / 2, (level - 1) * gap + box_h, sum(backbone_x) / 2, level * gap)
    levels = [layer if 0 < layer <= num_backbone_layers else i + 1 for i, layer in enumerate(feeding_layers)]
    # down_0 on the embeddings starts the side stream, which climbs through every side block to the head.
    segment(backbone_x[1], box_h / 2, side_centre, box_h / 2, dash="dot")
    annotations.append(dict(x=(backbone_x[1] + side_x[0]) / 2, y=box_h / 2 + 0.17, text="down₀", showarrow=False,
                            font=dict(size=11)))
    previous_top = box_h / 2
    gate_x, gate_y, gate_text, gate_values = [], [], [], []
    for i, level in enumerate(levels):
        mu = gates[i] if gates and i < len(gates) else None
        y = level * gap
        segment(side_centre, previous_top, side_centre, y, colour="#4C78A8")
        box(side_x, level, f"side {i + 1}", "#4C78A8", "rgba(76,120,168,0.25)")
        previous_top = y + box_h
        # A thick rung: the block takes much of the backbone's layer output (small μ).
        segment(backbone_x[1], y + box_h / 2, side_x[0], y + box_h / 2, colour="#F58518",
                width=1 + (6 * (1 - mu) if mu is not None else 2))
        gate_x.append((backbone_x[1] + side_x[0]) / 2)
        gate_y.append(y + box_h / 2)
        gate_text.append("μ = ?" if mu is None else f"μ = {mu:.2f}")
        gate_values.append(0.5 if mu is None else mu)
    head_level = num_backbone_layers + 1
    segment(side_centre, previous_top, side_centre, head_level * gap, colour="#4C78A8")
    box(side_x, head_level, "up + head", "#54A24B", "rgba(84,162,75,0.25)", size=11)
    top = (head_level + 1) * gap
    annotations.append(dict(x=sum(backbone_x) / 2, y=top, text="<b>backbone</b> (frozen, no autograd)",
                            showarrow=False))
    annotations.append(dict(x=side_centre, y=top, text="<b>side network</b> (trained)", showarrow=False))
    fig = go.Figure(go.Scatter(
        x=gate_x, y=gate_y, mode="markers+text", text=gate_text, textposition="top center",
        textfont=dict(size=text_size),
        marker=dict(size=13 if not deep else 9, color=gate_values, colorscale=HEATMAP_SCALE, cmin=0, cmax=1,
                    line=dict(color=NEUTRAL, width=1)),
        hovertemplate="%{text}<extra></extra>", name="gates", showlegend=False,
    ))
    fig.update_layout(shapes=shapes, annotations=annotations, height=max(340, level_px * (num_backbone_layers + 3)),
                      margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text="The ladder (rung thickness ∝ 1 − μ)", x=0, xanchor="left"),
                      hovermode="closest")
    fig.update_xaxes(visible=False, range=[-0.3, 5.9])
    fig.update_yaxes(visible=False, range=[-0.3, top + 0.4])
    return fig


# --- Theseus ------------------------------------------------------------------------------------


def theseus_p_figure(steps: list[int], p: list[float], phases: list[int]) -> go.Figure:
    fig = lines([{"name": "replacement rate p", "x": steps, "y": p}], "step", "p (successor probability)",
                "Replacement schedule pₜ")
    phase2 = [s for s, ph in zip(steps, phases) if ph == 2]
    if phase2:
        fig.add_vrect(x0=phase2[0], x1=steps[-1], fillcolor=NEUTRAL_FILL, line_width=0,
                      annotation_text="phase 2: successor alone", annotation_position="top left")
    if steps and (not phase2 or phase2[0] > steps[0]):
        end = phase2[0] if phase2 else steps[-1]
        fig.add_annotation(x=(steps[0] + end) / 2, y=1.05, text="phase 1: module replacement", showarrow=False,
                           yref="y")
    fig.update_yaxes(range=[0, 1.12])
    return fig


def draws_heatmap(steps: list[int], draws: list[list[int]]) -> go.Figure:
    steps, draws = thin_columns(steps, draws)
    count = max((len(d) for d in draws), default=0)
    z = [[row[i] if i < len(row) else None for row in draws] for i in range(count)]
    fig = go.Figure(go.Heatmap(
        x=steps, y=[f"module {i + 1}" for i in range(count)], z=z, zmin=0, zmax=1,
        colorscale=[[0, "rgba(128,128,128,0.25)"], [1, "#F58518"]], showscale=False,
        hovertemplate="step %{x}<br>%{y}<br>%{z}<extra>1 = successor, 0 = predecessor</extra>",
    ))
    fig = _layout(fig, "step", "successor module", "Per-module draws (orange: successor ran, grey: predecessor)",
                  height=max(220, 70 + 32 * count))
    fig.update_layout(hovermode="closest")
    fig.update_yaxes(autorange="reversed")
    return fig


def size_speed_figure(rows: list[dict]) -> go.Figure:
    """Grouped bars: [{"name", "params", "layers"}]; params in millions on the left axis."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[r["name"] for r in rows], y=[(r.get("params") or 0) / 1e6 for r in rows],
                         name="parameters (M)", marker_color="#4C78A8", offsetgroup=0))
    fig.add_trace(go.Bar(x=[r["name"] for r in rows], y=[r.get("layers") or 0 for r in rows], name="layers",
                         marker_color="#F58518", yaxis="y2", offsetgroup=1))
    fig.update_layout(barmode="group")
    fig = _layout(fig, "model", "parameters (millions)", "Predecessor vs successor")
    # After _layout, which titles every y axis alike.
    fig.update_layout(hovermode="closest", yaxis2=dict(title=dict(text="layers"), overlaying="y", side="right",
                                                       rangemode="tozero", dtick=1, showgrid=False))
    return fig


# --- compare and compress -----------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats: lower x (cost) and higher y (accuracy)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox <= x and oy >= y) and (ox < x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


# How a run is judged on the Compare page's Pareto chart: (axis title, scale, hover, higher is better, chart title).
PARETO_SCORES = {
    "test_accuracy": ("test accuracy (%)", 100.0, "%{y:.1f}%", True, "Accuracy against cost (up and left is better)"),
    "test_perplexity": ("test perplexity (log scale)", 1.0, "%{y:.2f}", False,
                        "Perplexity against cost (down and left is better)"),
}


def pareto_figure(rows: list[dict], x_key: str, x_title: str, log_x: bool = False,
                  score: str = "test_accuracy") -> go.Figure:
    """A score against a cost; rows: {"name", "method", x_key, score}; the front is a line."""
    y_title, factor, hover, higher_better, title = PARETO_SCORES[score]
    usable = [r for r in rows if r.get(x_key) is not None and r.get(score) is not None]
    fig = go.Figure()
    methods = []
    for r in usable:
        if r["method"] not in methods:
            methods.append(r["method"])
    for index, method in enumerate(methods):
        chosen = [r for r in usable if r["method"] == method]
        fig.add_trace(go.Scatter(
            x=[r[x_key] for r in chosen], y=[factor * r[score] for r in chosen], mode="markers", name=method,
            text=[r["name"] for r in chosen],
            marker=dict(size=11, opacity=0.85, color=PALETTE[index % len(PALETTE)], line=dict(width=1, color=NEUTRAL)),
            hovertemplate="%{text}<br>%{x}<br>" + hover + "<extra></extra>",
        ))
    front = pareto_front([(r[x_key], r[score] if higher_better else -r[score]) for r in usable])
    if front:
        fig.add_trace(go.Scatter(
            x=[usable[i][x_key] for i in front], y=[factor * usable[i][score] for i in front], mode="lines",
            name="Pareto front", line=dict(color=NEUTRAL, dash="dash", shape="hv"), hoverinfo="skip",
        ))
    fig = _layout(fig, x_title, y_title, title, height=420)
    fig.update_layout(hovermode="closest")
    if log_x:
        fig.update_xaxes(type="log")
    if not higher_better:
        fig.update_yaxes(type="log")
    return fig


# What a compression chart puts on its y axis: (axis title, scale, hover format, log axis).
COMPRESS_SCORES = {
    "test_accuracy": ("test accuracy (%)", 100.0, "%{y:.1f}%", False),
    "test_perplexity": ("test perplexity (log scale, lower is better)", 1.0, "%{y:.2f}", True),
}


def compress_series(point: dict) -> str:
    """The line a compression point belongs to: its kind, and how it ranked what it pruned when two
    rankings can sit in one sweep's records (points stored before a ranking was recorded used weights)."""
    kind = str(point.get("kind"))
    if kind == "unstructured":
        return f"unstructured ({point.get('score', 'magnitude')})"
    if kind in ("heads", "ffn"):
        return f"{kind} (by {'activation' if point.get('importance') == 'activation' else 'weight'})"
    return kind


def compress_figure(points: list[dict], x_key: str, x_title: str, baseline: dict | None = None,
                    score: str = "test_accuracy") -> go.Figure:
    """A classifier's accuracy or a language model's perplexity against size or latency, one line per
    compression kind."""
    y_title, factor, hover, log = COMPRESS_SCORES[score]
    fig = go.Figure()
    kinds = []
    for p in points:
        if compress_series(p) not in kinds:
            kinds.append(compress_series(p))
    scale = (1 / MIB) if x_key == "bytes" else 1.0
    for index, kind in enumerate(kinds):
        chosen = sorted((p for p in points if compress_series(p) == kind and p.get(x_key) is not None
                         and p.get(score) is not None), key=lambda p: p[x_key])
        if not chosen:
            continue
        fig.add_trace(go.Scatter(
            x=[p[x_key] * scale for p in chosen], y=[factor * p[score] for p in chosen],
            mode="lines+markers", name=str(kind), text=[str(p.get("setting", "")) for p in chosen],
            line=dict(color=PALETTE[index % len(PALETTE)]),
            hovertemplate="%{text}<br>%{x:.2f}<br>" + hover + "<extra>" + str(kind) + "</extra>",
        ))
    if baseline and baseline.get(x_key) is not None and baseline.get(score) is not None:
        fig.add_trace(go.Scatter(x=[baseline[x_key] * scale], y=[factor * baseline[score]], mode="markers",
                                 name="original", marker=dict(size=14, symbol="star", color=NEUTRAL)))
    # the legend sits below the plot: each row of it (two or three entries) takes room from the plot
    fig = _layout(fig, x_title, y_title, None, height=300 + 22 * ((len(kinds) + 2) // 2))
    if log:
        fig.update_yaxes(type="log")
    # Below the plot: at the top the chart's toolbar would cover the legend.
    fig.update_layout(hovermode="closest", margin=dict(l=10, r=10, t=30, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0))
    return fig


# --- explain ------------------------------------------------------------------------------------


def attention_heatmap(tokens: list[str], matrix: list[list[float]], layer: int, head: int | str) -> go.Figure:
    """Query × key attention weights; positions on the axes (tokens repeat), token text as tick labels."""
    n = len(tokens)
    positions = list(range(n))
    pairs = [[[tokens[i], tokens[j]] for j in positions] for i in positions]
    fig = go.Figure(go.Heatmap(
        z=matrix, x=positions, y=positions, customdata=pairs, colorscale=HEATMAP_SCALE, zmin=0,
        colorbar=dict(title="weight"),
        hovertemplate="from %{customdata[0]}<br>to %{customdata[1]}<br>%{z:.3f}<extra></extra>",
    ))
    head_text = f"head {head + 1}" if isinstance(head, int) else head
    fig = _layout(fig, "attended token (key)", "attending token (query)",
                  f"Attention, layer {layer + 1}, {head_text}", height=max(360, 22 * n + 140))
    fig.update_layout(hovermode="closest")
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=positions, ticktext=tokens)
    fig.update_xaxes(tickangle=-60, tickmode="array", tickvals=positions, ticktext=tokens)
    return fig


def probability_bars(names: list[str], probabilities: list[float], title: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=[100 * p for p in probabilities], y=names, orientation="h",
                           marker_color="#4C78A8", text=[f"{100 * p:.1f}%" for p in probabilities],
                           textposition="auto"))
    fig = _layout(fig, "probability (%)", "class", title, height=max(160, 60 + 28 * len(names)))
    fig.update_xaxes(range=[0, 100])
    fig.update_layout(hovermode="closest")
    return fig


# --- Plan ---------------------------------------------------------------------------------------

GIB = 1024**3


def plan_curves(series: dict[str, list[tuple[int, int | None]]], *, capacity: int | None, capacity_label: str,
                chosen_length: int, y_title: str) -> go.Figure:
    """Memory against sequence length, one line per method (bytes; None where a point has no
    estimate), the device's capacity across, the chosen length marked."""
    fig = go.Figure()
    for i, (name, points) in enumerate(series.items()):
        fig.add_trace(go.Scatter(
            x=[length for length, _ in points], y=[None if v is None else v / GIB for _, v in points],
            mode="lines+markers", name=name, line=dict(color=PALETTE[i % len(PALETTE)], width=2),
            hovertemplate=f"{name}: %{{y:.2f}} GiB at %{{x}} tokens<extra></extra>",
        ))
    if capacity:
        fig.add_hline(y=capacity / GIB, line=dict(color=NEUTRAL, dash="dash", width=2),
                      annotation_text=capacity_label, annotation_position="top left")
    fig.add_vline(x=chosen_length, line=dict(color=NEUTRAL, dash="dot", width=1))
    fig = _layout(fig, "sequence length (tokens, log scale)", y_title, height=380)
    fig.update_xaxes(type="log", dtick=math.log10(2), tickformat="d")
    fig.update_yaxes(rangemode="tozero", ticksuffix=" GiB")
    fig.update_layout(hovermode="closest")
    return fig


def plan_breakdown(rows: dict[str, dict[str, int]], *, allowance: dict[str, int] | None = None) -> go.Figure:
    """One stacked horizontal bar per method: the parts of its peak (and the CUDA allowance) in GiB."""
    fig = go.Figure()
    names = list(rows)
    for part in drawn_parts(rows.values()):
        fig.add_trace(go.Bar(y=names, x=[rows[n][part] / GIB for n in names], orientation="h", name=part,
                             marker_color=PART_COLOURS[part],
                             hovertemplate=f"{part}: %{{x:.2f}} GiB<extra></extra>"))
    if allowance:
        fig.add_trace(go.Bar(y=names, x=[allowance[n] / GIB for n in names], orientation="h",
                             name="CUDA allowance", marker=dict(color=NEUTRAL_FILL, line=dict(color=NEUTRAL, width=1)),
                             hovertemplate="CUDA allowance: %{x:.2f} GiB<extra></extra>"))
    fig.update_layout(barmode="stack", height=90 + 46 * len(names), margin=dict(l=10, r=10, t=10, b=10),
                      hovermode="closest", legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0,
                                                       traceorder="normal"))
    fig.update_xaxes(ticksuffix=" GiB")
    fig.update_yaxes(autorange="reversed")
    return fig


def generation_attribution_heatmap(prompt_tokens: list[str], answer_tokens: list[str],
                                   matrix: list[list[float]]) -> go.Figure:
    """Rows: the answer's tokens; columns: the prompt's; each cell the change in that answer token's
    log-probability when the prompt token is taken out (captum's sign: positive helped)."""
    limit = max((abs(v) for row in matrix for v in row), default=1.0) or 1.0
    fig = go.Figure(go.Heatmap(z=matrix, x=[f"{i}:{t}" for i, t in enumerate(prompt_tokens)],
                               y=[f"{i}:{t}" for i, t in enumerate(answer_tokens)], colorscale="RdBu",
                               zmin=-limit, zmax=limit, colorbar={"title": "attribution"}))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "prompt token", "answer token", "Each prompt token's attribution to each answer token",
                   height=max(260, 28 * len(answer_tokens) + 140))

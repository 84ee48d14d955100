"""Plotly figure builders: plain data in, ``go.Figure`` out. No torch, no streamlit."""

from __future__ import annotations

import plotly.graph_objects as go

from .models import Prediction

ACCENT = "#3b6fd6"
MUTED = "#9db4e6"


def topk_bar(prediction: Prediction, *, highlight: int | None = None, height: int | None = None) -> go.Figure:
    """Horizontal bars of the top-k probabilities, best on top; ``highlight`` marks one class id."""
    labels = [f"{label}  " for label in prediction.labels][::-1]
    probs = [100 * p for p in prediction.probs][::-1]
    colours = [ACCENT if (highlight is None and i == len(probs) - 1) or index == highlight else MUTED
               for i, index in enumerate(prediction.indices[::-1])]
    figure = go.Figure(go.Bar(
        x=probs, y=labels, orientation="h", marker_color=colours,
        text=[f"{p:.1f} %" for p in probs], textposition="outside", cliponaxis=False,
        customdata=list(prediction.indices[::-1]),
        hovertemplate="%{y}<br>class id %{customdata}<br>%{x:.2f} %<extra></extra>",
    ))
    figure.update_layout(
        height=height or 60 + 42 * len(probs), margin=dict(l=10, r=40, t=30, b=40),
        xaxis=dict(title="probability (%)", range=[0, 108], fixedrange=True),
        yaxis=dict(fixedrange=True, automargin=True),
        title=dict(text=f"Top-{len(probs)} classes · {prediction.model}", font=dict(size=15)),
        plot_bgcolor="white", font=dict(size=14),
    )
    figure.update_xaxes(showgrid=True, gridcolor="#eee")
    return figure

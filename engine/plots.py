"""Plotly figure builders: plain data in, ``go.Figure`` out. No torch, no streamlit."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from .models import Prediction

ACCENT = "#3b6fd6"
MUTED = "#9db4e6"


def topk_bar(prediction: Prediction, *, highlight: int | None = None, height: int | None = None,
             title: str | None = None) -> go.Figure:
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
        title=dict(text=f"{title or 'Top-' + str(len(probs)) + ' classes'} · {prediction.model}", font=dict(size=15)),
        plot_bgcolor="white", font=dict(size=14),
    )
    figure.update_xaxes(showgrid=True, gridcolor="#eee")
    return figure


# ---------------------------------------------------------------------------------------------
# Saliency maps over images


UNSIGNED_SCALE = "Turbo"
SIGNED_SCALE = "RdBu_r"


def colour_range(maps: list[np.ndarray], *, signed: bool, shared: bool) -> list[tuple[float, float]]:
    """(zmin, zmax) per map: one range for all (same units compare) or each map its own.

    Signed maps get a range symmetric around 0, so white means "no effect" on the diverging scale.
    """
    def own(m: np.ndarray) -> tuple[float, float]:
        if signed:
            top = float(np.abs(m).max()) or 1.0
            return -top, top
        low, high = float(m.min()), float(m.max())
        return low, high if high > low else low + 1.0

    if not shared:
        return [own(m) for m in maps]
    ranges = [own(m) for m in maps]
    joint = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    return [joint] * len(maps)


def display_map(saliency: np.ndarray, *, signed: bool) -> np.ndarray:
    """What is drawn: the signed map, or its absolute value."""
    return saliency if signed else np.abs(saliency)


@lru_cache(maxsize=8)
def colour_table(scale: str) -> np.ndarray:
    """A 256-entry RGB lookup table sampled from a plotly colour scale."""
    samples = sample_colorscale(scale, list(np.linspace(0, 1, 256)), colortype="tuple")  # floats in [0, 1]
    return np.clip(np.round(np.array(samples) * 255), 0, 255).astype(np.uint8)


def fade(level: np.ndarray, *, diverging: bool) -> np.ndarray:
    """How much colour covers the photo at each level in [0, 1]: none where the map says nothing.

    Unsigned maps fade in over the lower half of the range; diverging maps are clear at the
    middle (zero) and opaque at both ends. Without it a sparse map (gradients) darkens the whole photo.
    """
    strength = np.abs(2 * level - 1) if diverging else level
    return np.clip(2 * strength, 0, 1)


def overlay_rgb(image: np.ndarray, saliency: np.ndarray, *, zmin: float, zmax: float, opacity: float = 0.5,
                scale: str = UNSIGNED_SCALE) -> np.ndarray:
    """The map coloured and blended over the image, as uint8 H x W x 3 (the downloadable overlay)."""
    level = np.clip((saliency - zmin) / ((zmax - zmin) or 1.0), 0, 1)
    colours = colour_table(scale)[np.round(level * 255).astype(np.int64)].astype(np.float32)
    weight = (opacity * fade(level, diverging=scale == SIGNED_SCALE))[..., None]
    blended = (1 - weight) * image.astype(np.float32) + weight * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def fading_colourscale(scale: str, opacity: float, stops: int = 21) -> list:
    """The plotly colour scale with the same fade as :func:`overlay_rgb`, as rgba stops."""
    table = colour_table(scale)
    levels = np.linspace(0, 1, stops)
    alphas = opacity * fade(levels, diverging=scale == SIGNED_SCALE)
    return [[float(v), f"rgba({r},{g},{b},{a:.3f})"]
            for v, (r, g, b), a in zip(levels, table[np.round(levels * 255).astype(int)], alphas)]


def saliency_figure(image: np.ndarray, saliency: np.ndarray, *, title: str, zmin: float, zmax: float,
                    opacity: float = 0.5, scale: str = UNSIGNED_SCALE, height: int = 360) -> go.Figure:
    """The photo with the map as a translucent heatmap on top; hover shows the map's value."""
    figure = go.Figure()
    figure.add_trace(go.Image(z=image, hoverinfo="skip"))
    figure.add_trace(go.Heatmap(z=saliency, zmin=zmin, zmax=zmax, colorscale=fading_colourscale(scale, opacity),
                                colorbar=dict(thickness=12, len=0.9), hovertemplate="x %{x}, y %{y}<br>%{z:.4g}<extra></extra>"))
    figure.update_layout(title=dict(text=title, font=dict(size=14)), height=height,
                         margin=dict(l=0, r=0, t=36, b=0), plot_bgcolor="white")
    figure.update_xaxes(visible=False, range=[-0.5, image.shape[1] - 0.5])
    figure.update_yaxes(visible=False, range=[image.shape[0] - 0.5, -0.5], scaleanchor="x")
    return figure


def occlusion_figure(probability: np.ndarray, ys: tuple[int, ...], xs: tuple[int, ...], patch: int, *,
                     title: str, height: int = 360) -> go.Figure:
    """Target probability as a function of the occluder's position (the lecture's plot)."""
    centres_y = [y + patch / 2 for y in ys]
    centres_x = [x + patch / 2 for x in xs]
    figure = go.Figure(go.Heatmap(z=probability, x=centres_x, y=centres_y, colorscale="Viridis", zmin=0,
                                  zmax=max(float(probability.max()), 1e-6), colorbar=dict(thickness=12, title="p"),
                                  hovertemplate="occluder centre (%{x:.0f}, %{y:.0f})<br>p = %{z:.3f}<extra></extra>"))
    figure.update_layout(title=dict(text=title, font=dict(size=14)), height=height, margin=dict(l=0, r=0, t=36, b=0))
    figure.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    figure.update_xaxes(visible=False)
    return figure


def faithfulness_figure(curves: dict[str, "object"]) -> go.Figure:
    """Deletion and insertion curves side by side, one line per method, AUC in the legend."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("Deletion (lower AUC is better)",
                                                           "Insertion (higher AUC is better)"))
    palette = ["#3b6fd6", "#e4572e", "#17bebb", "#ffc914", "#76b041", "#9c51b6", "#444444", "#f28abf"]
    for i, (label, result) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        figure.add_trace(go.Scatter(x=100 * result.fractions, y=result.deletion, mode="lines", line=dict(color=colour),
                                    name=f"{label} · del {result.deletion_auc:.3f}", legendgroup=label), 1, 1)
        figure.add_trace(go.Scatter(x=100 * result.fractions, y=result.insertion, mode="lines",
                                    line=dict(color=colour, dash="dot"),
                                    name=f"{label} · ins {result.insertion_auc:.3f}", legendgroup=label), 1, 2)
    figure.update_xaxes(title="pixels removed / inserted (%)", range=[0, 100])
    figure.update_yaxes(title="target probability", range=[0, 1.02])
    figure.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                         legend=dict(orientation="h", y=-0.25))
    return figure


def relabel_steps_figure(target_prob, original_prob, distortion, *, target_label: str, original_label: str,
                         cap: float | None) -> go.Figure:
    """Target and original probability per step, and the distortion (eq. 3) against its cap."""
    from plotly.subplots import make_subplots

    steps = list(range(len(target_prob)))
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(x=steps, y=list(target_prob), name=f"p({target_label})", line=dict(color=ACCENT, width=3)))
    figure.add_trace(go.Scatter(x=steps, y=list(original_prob), name=f"p({original_label})", line=dict(color="#e4572e")))
    figure.add_trace(go.Scatter(x=steps, y=list(distortion), name="distortion (eq. 3)", line=dict(color="#666", dash="dot")),
                     secondary_y=True)
    if cap is not None:
        figure.add_trace(go.Scatter(x=[steps[0], steps[-1]], y=[cap, cap], name=f"cap {cap}", mode="lines",
                                    line=dict(color="#bbb", dash="dash")), secondary_y=True)
    figure.update_xaxes(title="step", dtick=1 if len(steps) <= 20 else None)
    figure.update_yaxes(title="probability", range=[0, 1.02], secondary_y=False)
    figure.update_yaxes(title="distortion", rangemode="tozero", secondary_y=True, showgrid=False)
    figure.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                         legend=dict(orientation="h", y=1.15))
    return figure


TERM_COLOURS = {"total": "#222", "classification": ACCENT, "content": "#e4572e", "style": "#76b041", "tv": "#9c4dcc",
                "colour": "#f0a202", "representation": ACCENT, "alpha_norm": "#e4572e", "tv_beta": "#9c4dcc",
                "cGAN (G)": "#76b041", "mask": "#f0a202", "classifier": ACCENT, "substrate": "#e4572e"}


def inversion_loss_figure(terms: dict[str, "np.ndarray"], total, *, target_prob=None, target_label: str = "",
                          log: bool = False, steps=None) -> go.Figure:
    """Each weighted loss term per step (as it enters the total), the total, and p(target) on the right."""
    from plotly.subplots import make_subplots

    steps = list(range(len(total))) if steps is None else [int(s) for s in steps]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(x=steps, y=list(total), name="total", line=dict(color=TERM_COLOURS["total"], width=3)))
    for name, values in terms.items():
        figure.add_trace(go.Scatter(x=steps, y=list(values), name=name, line=dict(color=TERM_COLOURS.get(name), width=2)))
    has_prob = target_prob is not None and np.isfinite(np.asarray(target_prob, float)).any()
    if has_prob:
        figure.add_trace(go.Scatter(x=steps, y=list(target_prob), name=f"p({target_label})",
                                    line=dict(color="#888", dash="dot")), secondary_y=True)
        figure.update_yaxes(title="probability", range=[0, 1.02], dtick=0.2, secondary_y=True, showgrid=False)
    figure.update_xaxes(title="step")
    figure.update_yaxes(title="weighted loss" + (" (log)" if log else ""), type="log" if log else "linear",
                        secondary_y=False)
    figure.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                         legend=dict(orientation="h", y=1.15))
    return figure


def mask_preview(image: "np.ndarray", mask: "np.ndarray") -> "np.ndarray":
    """The image with the area outside the mask dimmed: what may change stays bright."""
    dim = (image.astype(np.float32) * 0.35 + 255 * 0.1).astype(np.uint8)
    return np.where(mask[..., None] > 0, image, dim)


CATEGORY_COLOURS = {"colour": "#e4572e", "color": "#e4572e", "texture": "#76b041", "shape": ACCENT, "object": ACCENT,
                    "part": "#9c4dcc", "material": "#f0a202", "scene": "#17a398"}


def detector_histogram(counts: dict[str, dict[str, int]], *, units: int, layer: str, threshold: float) -> go.Figure:
    """Detector units per concept, grouped and coloured by category (the lecture's histogram)."""
    figure = go.Figure()
    total = sum(sum(by.values()) for by in counts.values())
    for category in sorted(counts):
        ordered = sorted(counts[category].items(), key=lambda kv: -kv[1])
        figure.add_trace(go.Bar(x=[name for name, _ in ordered], y=[n for _, n in ordered],
                                name=f"{category} ({sum(n for _, n in ordered)})",
                                marker_color=CATEGORY_COLOURS.get(category, MUTED),
                                hovertemplate="%{x}: %{y} units<extra>" + category + "</extra>"))
    figure.update_layout(
        title=dict(text=f"{total}/{units} units of {layer} with IoU > {threshold:g}", font=dict(size=15)),
        height=340, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white", barmode="group",
        xaxis=dict(categoryorder="total descending", tickangle=-40), yaxis=dict(title="detector units"),
        legend=dict(orientation="h", y=1.12))
    return figure


def unit_overlay(image: np.ndarray, activation: np.ndarray, threshold: float) -> np.ndarray:
    """NetDissect's view of a unit: the image dimmed where the unit is below its threshold, with the
    lit area outlined."""
    lit = activation > threshold
    out = np.where(lit[..., None], image, (image.astype(np.float32) * 0.3).astype(np.uint8))
    edge = lit & ~(np.roll(lit, 1, 0) & np.roll(lit, -1, 0) & np.roll(lit, 1, 1) & np.roll(lit, -1, 1))
    out[edge] = (255, 214, 0)
    return out


# ---------------------------------------------------------------------------------------------
# Anatomy


def enlarge(picture: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement (crisp pixels for small filters and patches)."""
    factor = max(1, int(factor))
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


def tile(pictures: list[np.ndarray], columns: int, *, gap: int = 2, background: int = 255) -> np.ndarray:
    """Equal-sized H x W x 3 uint8 pictures in a grid with ``gap`` pixels between them."""
    rows = -(-len(pictures) // columns)
    h, w = pictures[0].shape[:2]
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), background, np.uint8)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = picture
    return grid


def scaled_map(values: np.ndarray, scale: str = "Viridis") -> np.ndarray:
    """A map drawn in a colour scale over its own range (H x W x 3 uint8)."""
    low, high = float(values.min()), float(values.max())
    level = np.zeros(values.shape, np.uint8) if high <= low else np.round(255 * (values - low) / (high - low))
    return colour_table(scale)[level.astype(np.uint8)]


def channel_grid(maps: np.ndarray, channels: list[int], strength: np.ndarray, *, tile_px: int = 48) -> go.Figure:
    """A layer's channels as one image grid with a clickable point at each tile's centre (plotly selects
    points, not image pixels): ``customdata`` carries the channel."""
    from PIL import Image

    columns = min(8, len(channels))
    tiles = [np.asarray(Image.fromarray(scaled_map(m)).resize((tile_px, tile_px), Image.NEAREST)) for m in maps]
    gap = 3
    grid = tile(tiles, columns, gap=gap)
    rows = -(-len(tiles) // columns)
    xs = [(i % columns) * (tile_px + gap) + tile_px / 2 for i in range(len(tiles))]
    ys = [(i // columns) * (tile_px + gap) + tile_px / 2 for i in range(len(tiles))]
    figure = go.Figure(go.Image(z=grid, hoverinfo="skip"))
    figure.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers+text", marker=dict(size=tile_px * 0.9, symbol="square", opacity=0.01,
                                                     color="white"),
        text=[str(c) for c in channels], textposition="top left", textfont=dict(size=10, color="white"),
        customdata=[[c, float(s)] for c, s in zip(channels, strength)],
        hovertemplate="channel %{customdata[0]}<br>max %{customdata[1]:.3g}<extra></extra>"))
    figure.update_layout(height=rows * (tile_px + gap) * 1.6 + 40, margin=dict(l=0, r=0, t=10, b=0),
                         showlegend=False, clickmode="event+select", dragmode=False)
    figure.update_xaxes(visible=False, range=[-2, columns * (tile_px + gap)])
    figure.update_yaxes(visible=False, range=[rows * (tile_px + gap), -2], scaleanchor="x")
    return figure


def activation_overlay(image: np.ndarray, activation: np.ndarray, *, opacity: float = 0.6) -> np.ndarray:
    """One channel upsampled over the image (bilinear), coloured where it is strong."""
    from PIL import Image

    big = np.asarray(Image.fromarray(np.ascontiguousarray(activation, dtype=np.float32))
                     .resize(image.shape[1::-1], Image.BILINEAR))
    high = float(big.max())
    level = np.clip(big / high, 0, 1) if high > 0 else np.zeros_like(big)
    return overlay_rgb(image, level, zmin=0.0, zmax=1.0, opacity=opacity, scale=UNSIGNED_SCALE)


def mark_box(image: np.ndarray, box, colour=(255, 214, 0), width: int = 2) -> np.ndarray:
    """The image with a rectangle (top, left, bottom, right; bottom/right exclusive) drawn on it."""
    out = image.copy()
    top, left, bottom, right = (int(v) for v in box)
    bottom, right = max(bottom - 1, top), max(right - 1, left)
    out[top:top + width, left:right + 1] = colour
    out[max(bottom - width + 1, top):bottom + 1, left:right + 1] = colour
    out[top:bottom + 1, left:left + width] = colour
    out[top:bottom + 1, max(right - width + 1, left):right + 1] = colour
    return out


def embedding_figure(points: np.ndarray, labels: list[str], predicted: list[str], confidence: np.ndarray, *,
                     thumbnails: list[str] | None = None, title: str = "") -> go.Figure:
    """A 2-D embedding: a point per image coloured by predicted class (one legend entry per class, the
    most frequent first), hover text with the file and the class, optional thumbnails drawn at the
    points; ``customdata[0]`` is the image's index in the set."""
    palette = ["#3b6fd6", "#e4572e", "#17bebb", "#ffc914", "#76b041", "#8e44ad", "#f28482", "#2e4057",
               "#c17c74", "#48a9a6", "#d4b483", "#4c956c"]
    order = sorted(set(predicted), key=lambda name: (-predicted.count(name), name))
    figure = go.Figure()
    for rank, name in enumerate(order):
        members = [i for i, p in enumerate(predicted) if p == name]
        colour = palette[rank] if rank < len(palette) else "#999999"
        figure.add_trace(go.Scatter(
            x=points[members, 0], y=points[members, 1], mode="markers", name=name if rank < 12 else "other",
            legendgroup=name if rank < 12 else "other", showlegend=rank <= 12,
            marker=dict(size=9 if thumbnails is None else 6, color=colour, line=dict(width=0.5, color="white")),
            customdata=[[i, labels[i], float(confidence[i])] for i in members],
            hovertemplate="%{customdata[1]}<br>" + name.replace("%", "%%") +
                          " (%{customdata[2]:.0%})<extra></extra>"))
    if thumbnails is not None and len(points):
        span = float(max(np.ptp(points[:, 0]), np.ptp(points[:, 1]), 1e-6))
        side = span / max(8.0, np.sqrt(len(points)) * 2.2)
        figure.update_layout(images=[dict(source=uri, x=float(x), y=float(y), xref="x", yref="y", sizex=side,
                                          sizey=side, xanchor="center", yanchor="middle", layer="below")
                                     for uri, (x, y) in zip(thumbnails, points)])
    figure.update_layout(title=dict(text=title, font=dict(size=15)), height=620, plot_bgcolor="white",
                         margin=dict(l=10, r=10, t=50, b=10), clickmode="event+select",
                         legend=dict(title="predicted class", itemsizing="constant"))
    figure.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x")
    return figure


def signed_picture(values: np.ndarray, *, percentile: float = 99.5) -> np.ndarray:
    """A signed (H, W, 3) projection as a picture: 0 is mid-grey and the ``percentile`` of |v| reaches full
    contrast (the few largest values clip), so a handful of extreme pixels do not leave the rest grey."""
    magnitude = np.abs(values)
    peak = float(np.percentile(magnitude, percentile)) if values.size else 0.0
    peak = peak if peak > 0 else float(magnitude.max(initial=0.0))
    scaled = np.clip(values / peak, -1, 1) if peak > 0 else np.zeros_like(values)
    return np.rint(128.0 + 127.0 * scaled).astype(np.uint8)


SWEEP_COLOURS = {"paper": ACCENT, "fit": "#f0a202"}


def sweep_histogram(series: dict[str, tuple[list, list]], *, x_title: str, markers: tuple = (), title: str = "",
                    bar_width: float | None = None) -> go.Figure:
    """Relabelling sweep (sec. 3.1): pairs per bin for each rule side by side; ``series`` maps a rule's
    legend name to (bin centres, counts); ``markers`` are (x, label) dashed lines, e.g. the paper's mean."""
    figure = go.Figure()
    for rank, (name, (xs, counts)) in enumerate(series.items()):
        colour = next((c for key, c in SWEEP_COLOURS.items() if key in name.lower()), MUTED if rank else ACCENT)
        figure.add_trace(go.Bar(x=list(xs), y=list(counts), name=name, marker_color=colour, width=bar_width,
                                hovertemplate="%{x}: %{y} pairs<extra>" + name + "</extra>"))
    for x, label in markers:
        figure.add_vline(x=x, line=dict(color="#444", dash="dash", width=1.5), annotation_text=label,
                         annotation_position="top", annotation_font_size=11)
    figure.update_layout(barmode="group", height=320, margin=dict(l=10, r=10, t=60 if title else 40, b=10),
                         plot_bgcolor="white", legend=dict(orientation="h", y=-0.25),
                         title=dict(text=title, font=dict(size=15)) if title else None)
    figure.update_xaxes(title=x_title)
    figure.update_yaxes(title="pairs relabelled", rangemode="tozero", gridcolor="#eee")
    return figure

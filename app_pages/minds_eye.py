"""Mind's Eye: a classifier that must redraw what it sees (Berntsen, Kuijper & Heskes).

Five views, chosen by ``?view=``. **Explorer**: one composed image through the triple-staged network,
stage by stage (angles, drawing, similarity and weight, score, verdict at Θ) beside the direct nets.
**Table 1**: clean error rates on the test set (a job the first time, then read from disk), with Θ
and the error/Θ curve. **Effort**: Fig. 4 and Fig. 6 from the shipped sweep, or a fresh sweep as a
job. **Gallery**: Fig. 5's adversarial images and what each network then believes. **Attack live**:
§3.2's sign steps on one image, every network watching. All compute lives in the engine
(:mod:`engine.minds_eye`) and :mod:`engine.cache`; every setting that decides a result is in the link.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from engine import cache, images, jobs, plots
from engine.errors import GlassboxError
from engine.minds_eye import attack, data, evaluate, nets, weights
from streamlit_app import (find_job, page_header, set_url_value, show_job, start_job, url_value, url_widget,
                           use_as_image_button)

VIEWS = {"explorer": "Explorer", "table": "Table 1", "effort": "Effort (Fig. 4, 6)", "gallery": "Gallery (Fig. 5)",
         "attack": "Attack live"}
OBJECTS = data.CLASSES[:data.NONE]
ANGLE_AXES = ("x", "y", "z")
DEFAULT_THETA = 0.45
DEFAULT_BACKGROUND = 3
DEFAULT_TABLE_N = 1000
DEFAULT_SWEEP_N, DEFAULT_SWEEP_STEPS = 20, attack.MAX_STEPS
DEFAULT_LIVE_STEPS = 300
ZOOM = 3  # 64 px shown at 192 px, nearest neighbour
GALLERY_COLUMNS = 8
KIND_LABELS = {"false-positive": "False positives (Fig. 4): another object", "false-negative": "False negatives (Fig. 6): None"}
GALLERY_TARGETS = {"monkey": "monkey (as Fig. 5)", "penguin": "penguin", "aeroplane": "aeroplane", "any": "any object"}
COLOURS = {"direct": "#868e96", "direct_params": "#3b6fd6", "direct_adv": "#e8590c", "triple": "#2b8a3e"}
TRAIN_ALL = ("`python -m engine minds-eye train --net direct --out runs/minds_eye` (and `--net direct-params`, "
             "`--net direct-adv`, `--net triple`), then `python -m engine minds-eye export --from runs/minds_eye`, "
             "or point `GLASSBOX_MINDS_EYE_WEIGHTS` at `runs/minds_eye`")


# --- Settings -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Weights:
    """The networks in use: the folder (None: the shipped weights), its stamp and digest, the nets."""

    folder: str | None
    stamp: tuple
    digest: str
    nets: dict | None  # None: some weights are missing (a sentence says which and how to train them)


@dataclass(frozen=True)
class ExplorerSettings:
    name: str                                 # an object, or "none"
    angles: tuple[float, float, float]
    background: int
    theta: float

    @property
    def label(self) -> int:
        return data.CLASSES.index(self.name)


@dataclass(frozen=True)
class SweepSettings:
    kind: str
    n: int
    max_steps: int


@dataclass(frozen=True)
class AttackSettings:
    source: str        # "test" or "explorer"
    index: int         # the test image (source "test")
    network: str       # a key of weights.CONTENDER_LABELS
    target: int        # a class id, 3 = None
    theta: float
    max_steps: int


@dataclass(frozen=True)
class AttackImage:
    pixels: np.ndarray  # uint8 64×64
    label: int
    caption: str

    @property
    def digest(self) -> str:
        return images.image_digest(self.pixels.tobytes())


# --- Small helpers (numpy only) -----------------------------------------------------------------------------

def zoom(pixels: np.ndarray, factor: int = ZOOM) -> np.ndarray:
    """Nearest-neighbour upscaling, so 64 px stay crisp on screen."""
    return np.repeat(np.repeat(np.asarray(pixels), factor, 0), factor, 1)


def to_uint8(picture: np.ndarray) -> np.ndarray:
    return (np.clip(picture, 0.0, 1.0) * 255).round().astype(np.uint8)


def rule_label(name: str) -> str:
    """'direct_params' -> its label; 'triple@0.7' -> 'Triple-staged, Θ = 0.7'."""
    key, _, theta = name.partition("@")
    label = weights.CONTENDER_LABELS.get(key, key)
    return f"{label}, Θ = {theta}" if theta else label


def repo_path(path) -> str:
    """A path as the README's commands write it: relative to the repository when it is inside."""
    root = weights.ASSETS.parent.parent
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def angles_text(angles) -> str:
    return "(" + ", ".join(f"{a:+.2f}" for a in angles) + ")"


def theta_control(label: str = "Threshold Θ") -> float:
    value = url_widget(st.slider, label, key="me_theta", param="theta", default=DEFAULT_THETA, parse=float,
                       dump=lambda v: f"{v:g}", min_value=0.0, max_value=0.99, step=0.01,
                       help="The triple-staged network says an object only when that object's score exceeds Θ "
                            "(§2.1); the paper tries 0.2, 0.45 and 0.7.")
    return round(float(value), 2)


def load_weights() -> Weights:
    folder = weights.default_folder()
    stamp = cache.minds_eye_stamp(folder)
    try:
        nets = cache.minds_eye_contenders(folder, stamp)
    except GlassboxError as error:
        st.error(f"{error} This page needs all six networks: {TRAIN_ALL}.")
        return Weights(folder, stamp, "", None)
    return Weights(folder, stamp, cache.minds_eye_digest(folder, stamp), nets)


# --- Explorer -----------------------------------------------------------------------------------------------

def explorer_controls() -> ExplorerSettings:
    name = url_widget(st.selectbox, "Object", key="me_object", param="object", default="monkey",
                      options=list(data.CLASSES), help="'none' is the background alone (the negative class).")
    angles = []
    columns = st.columns(3)
    for axis, column in zip(ANGLE_AXES, columns):
        with column:
            angles.append(url_widget(st.slider, f"rotation about {axis} (rad)", key=f"me_a{axis}", param=f"a{axis}",
                                     default=0.0, parse=float, dump=lambda v: f"{v:g}", min_value=-0.5, max_value=0.5,
                                     step=0.05, disabled=name == "none"))
    background = url_widget(st.number_input, "Test background number", key="me_bg", param="bg",
                            default=DEFAULT_BACKGROUND, parse=int, min_value=0, max_value=99_999, step=1,
                            help=f"A crop of one of the test photos ({', '.join(data.TEST_PHOTOS)}), which "
                                 "training never saw.")
    theta = theta_control()
    return ExplorerSettings(name, tuple(round(float(a), 2) for a in angles), int(background), theta)


def explorer_image() -> ExplorerSettings:
    """The explorer's settings read from the link alone (the Attack view starts from them)."""
    def number(param: str, default, low, high, kind=float):
        try:
            value = kind(url_value(param, str(default)))
        except ValueError:
            return default
        return value if low <= value <= high else default

    name = url_value("object", "monkey")
    name = name if name in data.CLASSES else "monkey"
    angles = tuple(round(number(f"a{axis}", 0.0, -0.5, 0.5), 2) for axis in ANGLE_AXES)
    return ExplorerSettings(name, angles, number("bg", DEFAULT_BACKGROUND, 0, 99_999, int),
                            number("theta", DEFAULT_THETA, 0.0, 0.99))


def composed(settings: ExplorerSettings) -> np.ndarray:
    return cache.minds_eye_composed(settings.name, settings.angles if settings.name != "none" else (0.0, 0.0, 0.0),
                                    settings.background)


def similarity_figure(similarity: np.ndarray, weight: np.ndarray) -> go.Figure:
    """Fig. 2's two maps for one class on one colour scale (0 to 1): what the comparator calls the
    same patch, and how much each patch counts (the drawing's alpha, averaged over 10×10)."""
    figure = make_subplots(1, 2, subplot_titles=("similarity per 10×10 patch", "weight (projected alpha)"),
                           horizontal_spacing=0.08)
    for col, values in ((1, similarity), (2, weight)):
        figure.add_trace(go.Heatmap(z=values, coloraxis="coloraxis",
                                    hovertemplate="x %{x}, y %{y}: %{z:.3f}<extra></extra>"), 1, col)
        figure.update_yaxes(autorange="reversed", scaleanchor=f"x{'' if col == 1 else col}", showticklabels=False,
                            row=1, col=col)
        figure.update_xaxes(showticklabels=False, row=1, col=col)
    figure.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=dict(thickness=10, len=0.9)),
                         height=200, margin=dict(l=5, r=5, t=28, b=5), font=dict(size=12))
    figure.update_annotations(font_size=12)
    return figure


def render_verdict(settings: ExplorerSettings, scores: np.ndarray) -> None:
    said = nets.verdict_array(scores, settings.theta)
    best = int(np.argmax(scores))
    if said == data.NONE:
        reason = f"no score exceeds Θ = {settings.theta:.2f} (the best, {data.CLASSES[best]}, has {scores[best]:.3f})"
    else:
        reason = f"its score {scores[said]:.3f} is the highest and exceeds Θ = {settings.theta:.2f}"
    text = f"Triple-staged verdict: **{data.CLASSES[said]}**, because {reason}."
    if said == settings.label:
        st.success(text + " Correct.")
    else:
        st.error(text + f" Wrong: the image shows {settings.name}.")


def render_direct(view: dict[str, np.ndarray]) -> None:
    rows = []
    for key in ("direct", "direct_params", "direct_adv"):
        probs = view[f"direct:{key}"]
        rows.append({"network": weights.CONTENDER_LABELS[key], "says": data.CLASSES[int(np.argmax(probs))],
                     **{f"p({name})": float(p) for name, p in zip(data.CLASSES, probs)}})
    config = {f"p({name})": st.column_config.ProgressColumn(f"p({name})", min_value=0.0, max_value=1.0, format="%.3f")
              for name in data.CLASSES}
    st.dataframe(rows, hide_index=True, column_config=config, width="stretch")


def render_class_row(settings: ExplorerSettings, view: dict[str, np.ndarray], c: int, said: int) -> None:
    name = OBJECTS[c]
    score = float(view["scores"][c])
    info, drawing, maps = st.columns([1.3, 1, 3], vertical_alignment="center")
    with info:
        marker = " ← the verdict" if c == said else ""
        st.markdown(f"**{name}**{marker}")
        st.progress(score, text=f"score {score:.3f} ({'above' if score > settings.theta else 'not above'} "
                                f"Θ = {settings.theta:.2f})")
        truth = f"  \ntruth {angles_text(settings.angles)}" if settings.name == name else ""
        st.caption(f"estimated angles {angles_text(view['angles'][c])}{truth}")
    drawing.image(zoom(to_uint8(view["drawing"][c]), 2), caption=f"the projector's {name}")
    maps.plotly_chart(similarity_figure(view["similarity"][c], view["weight"][c]), width="stretch",
                      key=f"maps_{c}", config={"displayModeBar": False})


def render_explorer(settings: ExplorerSettings, view: dict[str, np.ndarray]) -> None:
    st.markdown("**Stage by stage, once per object class** (Fig. 1 and 3): the estimator guesses the object's "
                "rotation, the projector draws that object at that rotation, and the comparator scores each 10×10 "
                "patch of the drawing against the image; the score is the similarity averaged with the drawing's "
                "alpha as weight (Fig. 2).")
    said = nets.verdict_array(view["scores"], settings.theta)
    for c in range(len(OBJECTS)):
        with st.container(border=True):
            render_class_row(settings, view, c, said)


def explorer_view(w: Weights) -> None:
    left, right = st.columns([3, 2], gap="large")
    with left:
        settings = explorer_controls()
    try:
        pixels = composed(settings)
        view = cache.minds_eye_explore(w.folder, w.stamp, images.image_digest(pixels.tobytes()), pixels)
    except GlassboxError as error:
        st.error(str(error))
        return
    with right:
        what = (f"{settings.name} at {angles_text(settings.angles)} rad over test background {settings.background}"
                if settings.name != "none" else f"test background {settings.background} alone (no object)")
        st.image(zoom(pixels), caption=f"the query image: {what} (64 px, shown ×{ZOOM})")
    render_verdict(settings, view["scores"])
    st.caption("The direct networks on the same image (softmax over the three objects and None):")
    render_direct(view)
    render_explorer(settings, view)


# --- Table 1 ------------------------------------------------------------------------------------------------

def table_controls() -> tuple[int, float]:
    c1, c2 = st.columns([1, 2])
    with c1:
        n = url_widget(st.number_input, "Test images per class", key="me_table_n", param="n", default=DEFAULT_TABLE_N,
                       parse=int, min_value=5, max_value=10_000, step=100,
                       help="The paper used 10 000 per class; 1000 takes a few minutes on a CPU, once.")
    with c2:
        theta = theta_control("Θ for the triple-staged row (and the line on the curve)")
    return int(n), theta


def table_rows(scores, theta: float) -> list[dict]:
    rows = []
    names = ["direct", "direct_params", "direct_adv", *(f"triple@{t:g}" for t in attack.PAPER_THETAS)]
    if not any(abs(theta - t) < 1e-9 for t in attack.PAPER_THETAS):
        names.append(f"triple@{theta:g}")
    for name in names:
        paper = evaluate.PAPER_TABLE1.get(name)
        rows.append({"network": rule_label(name), "error rate (ours, %)": 100 * scores.error_rate(name),
                     "error rate (paper, %)": "—" if paper is None else f"{100 * paper:.2f}",
                     "": "your Θ" if name == f"triple@{theta:g}" else ""})
    return rows


def curve_figure(curve: dict[str, np.ndarray], theta: float) -> go.Figure:
    x = curve["theta"]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=x, y=100 * curve["missed"], name="missed: an object called None", mode="lines",
                                stackgroup="error", line=dict(color=plots.MUTED)))
    figure.add_trace(go.Scatter(x=x, y=100 * curve["wrong"], name="wrong: another object, or one invented on None",
                                mode="lines", stackgroup="error", line=dict(color="#e8590c")))
    figure.add_trace(go.Scatter(x=x, y=100 * curve["error"], name="error (ours)", mode="lines",
                                line=dict(color=plots.ACCENT, width=2.5)))
    paper = [(t, 100 * evaluate.PAPER_TABLE1[f"triple@{t:g}"]) for t in attack.PAPER_THETAS]
    figure.add_trace(go.Scatter(x=[t for t, _ in paper], y=[e for _, e in paper], name="the paper (Table 1)",
                                mode="markers", marker=dict(symbol="diamond", size=12, color="black")))
    figure.add_vline(x=theta, line_dash="dash", line_color="#495057", annotation_text=f"Θ = {theta:.2f}",
                     annotation_position="top right")
    figure.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=40), plot_bgcolor="white", font=dict(size=13),
                         xaxis=dict(title="Θ", range=[0, 1], gridcolor="#eee"),
                         yaxis=dict(title="error rate on clean test images (%)", gridcolor="#eee", rangemode="tozero"),
                         legend=dict(orientation="h", y=-0.2))
    return figure


def render_table(scores, n: int, theta: float, digest: str) -> None:
    rows = table_rows(scores, theta)
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        "error rate (ours, %)": st.column_config.NumberColumn(format="%.2f"),
        "error rate (paper, %)": st.column_config.TextColumn(),
        "": st.column_config.TextColumn(width="small")})
    st.caption(f"Ours: {len(scores.label)} fresh test images ({n} per class, backgrounds from photos training never "
               "saw). The paper: 10 000 per class. The direct, adversarially trained network is our addition.")
    curve = cache.minds_eye_curve(digest, n, scores)
    st.plotly_chart(curve_figure(curve, theta), width="stretch", key="error_curve")
    st.caption("The triple-staged network's error against Θ (§4): a low Θ accepts sloppy drawings, so objects are "
               "invented or confused; a high Θ asks for a near-perfect drawing, so real objects are missed.")


def table_view(w: Weights) -> None:
    st.caption("Table 1 (§4): the error rate on clean test images. The direct networks have no threshold; the "
               "triple-staged network's error depends on Θ, which trades missed objects against invented ones.")
    n, theta = table_controls()
    key = f"minds-eye-table|{w.folder}|{w.digest}|{n}"
    if evaluate.scores_path(n, 0, w.folder).is_file():
        render_table(cache.minds_eye_scores(w.folder, w.digest, n), n, theta, w.digest)
        return
    def start() -> None:
        start_job(key, evaluate.test_scores, n, folder=w.folder, title=f"Scoring {4 * n} test images")

    if st.button("Score the test set", type="primary"):
        start()
    status = show_job(key, idle=f"Press **Score the test set** to run every network on {4 * n} test images (once; "
                                "the scores are then kept on disk and Θ recomputes the table at once).", again=start)
    if status is not None:
        render_table(status.result, n, theta, w.digest)


# --- Effort (Fig. 4 and 6) ----------------------------------------------------------------------------------

def kind_control() -> str:
    return url_widget(st.radio, "Attack", key="me_kind", param="kind", default="false-positive",
                      options=list(attack.KINDS), format_func=KIND_LABELS.get, horizontal=True)


def effort_stats(sweep: dict, name: str) -> dict:
    """One verdict rule's box (2nd, 25th, 50th, 75th, 98th percentiles) of steps (unflipped at the cap,
    clipped at 1500) and of distortion (flipped only), and its counts."""
    record = sweep["attacks"][name]
    steps = np.asarray(record["steps"], dtype=float)
    excluded = np.asarray(record["excluded"], dtype=bool)
    dist = np.asarray([np.nan if d is None else d for d in record["distortion"]], dtype=float)
    used = ~excluded
    flipped = used & (steps >= 0)
    counted = np.minimum(np.where(steps[used] >= 0, steps[used], sweep["max_steps"]), attack.MAX_STEPS)

    def box(values):
        return None if len(values) == 0 else np.percentile(values, [2, 25, 50, 75, 98])

    return {"steps": box(counted), "distortion": box(dist[flipped]), "n": int(used.sum()),
            "flipped": int(flipped.sum()), "excluded": int(excluded.sum()), "total": len(steps)}


def effort_figure(sweep: dict) -> go.Figure:
    names = [name for name in sweep["attacks"]][::-1]  # the first network on top
    figure = make_subplots(1, 2, shared_yaxes=True, horizontal_spacing=0.04,
                           subplot_titles=(f"steps to flip (clipped at {attack.MAX_STEPS})", "distortion at the flip"))
    for name in names:
        stats = effort_stats(sweep, name)
        colour = COLOURS.get(name.partition("@")[0], plots.ACCENT)
        for col, part in ((1, "steps"), (2, "distortion")):
            box = stats[part]
            if box is None:
                continue
            p2, q1, median, q3, p98 = (float(v) for v in box)
            figure.add_trace(go.Box(y=[rule_label(name)], q1=[q1], median=[median], q3=[q3], lowerfence=[p2],
                                    upperfence=[p98], orientation="h", name=rule_label(name), marker_color=colour,
                                    showlegend=False, hoverinfo="x+name"), 1, col)
    figure.update_layout(height=110 + 55 * len(names), margin=dict(l=10, r=10, t=30, b=40), plot_bgcolor="white",
                         font=dict(size=13))
    figure.update_xaxes(gridcolor="#eee", rangemode="tozero")
    figure.update_yaxes(automargin=True, categoryorder="array", categoryarray=[rule_label(n) for n in names])
    figure.update_annotations(font_size=13)
    return figure


def render_effort(sweep: dict, key: str) -> None:
    """A sweep's boxes and counts, whatever made it (the shipped files or a fresh run)."""
    if not sweep.get("attacks"):
        st.warning("This sweep holds no attacks.")
        return
    st.plotly_chart(effort_figure(sweep), width="stretch", key=f"effort_{key}")
    rows = []
    for name in sweep["attacks"]:
        stats = effort_stats(sweep, name)
        rows.append({"network": rule_label(name), "attacked": stats["n"], "flipped": stats["flipped"],
                     "not flipped within the cap": stats["n"] - stats["flipped"],
                     "excluded (wrong before the attack)": stats["excluded"],
                     "median steps": None if stats["steps"] is None else float(stats["steps"][2]),
                     "median distortion": None if stats["distortion"] is None else float(stats["distortion"][2])})
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        "median steps": st.column_config.NumberColumn(format="%.0f"),
        "median distortion": st.column_config.NumberColumn(format="%.4f")})
    st.caption(f"{sweep['n']} test images, {len(sweep.get('label', []))} attacks per network, at most "
               f"{sweep['max_steps']} steps. Whiskers at the 2nd and 98th percentiles, as in the paper; an image that "
               "never flipped counts at the cap in the steps and is left out of the distortion. Images a network got "
               "wrong before any step are excluded, as in Fig. 6.")


def sweep_controls(kind: str) -> tuple[SweepSettings, bool]:
    with st.form("me_sweep_form", border=False):
        c1, c2, c3 = st.columns([1, 1, 1], vertical_alignment="bottom")
        with c1:
            n = url_widget(st.number_input, "Test images", key="me_sweep_n", param="sweep_n", default=DEFAULT_SWEEP_N,
                           parse=int, min_value=1, max_value=1000, step=5)
        with c2:
            steps = url_widget(st.number_input, "Max steps", key="me_sweep_steps", param="sweep_steps",
                               default=DEFAULT_SWEEP_STEPS, parse=int, min_value=1, max_value=attack.MAX_STEPS, step=50)
        with c3:
            run = st.form_submit_button("Run a fresh sweep", type="primary")
    return SweepSettings(kind, int(n), int(steps)), run


def effort_view(w: Weights) -> None:
    kind = kind_control()
    figure_name = "Fig. 4" if kind == "false-positive" else "Fig. 6"
    st.caption({"false-positive": "Fig. 4 (§4): start from a test image with an object and push it, one grey level per "
                                  "pixel per step, until the network says one of the other two objects. The "
                                  "triple-staged network should need many more steps and a larger distortion, more "
                                  "so at a high Θ.",
                "false-negative": "Fig. 6 (§4): push an object image until the network says None. Here a low Θ "
                                  "resists best: every class score must fall below it."}[kind])
    path = evaluate.SWEEP_FILES[kind]
    sweep, _ = cache.minds_eye_sweep_file(kind, str(path), path.stat().st_mtime_ns if path.is_file() else 0)
    st.subheader(f"The shipped sweep ({figure_name})")
    if sweep is None:
        st.warning(f"The shipped {kind} sweep is missing ({repo_path(path)}): run a fresh sweep below, or make it "
                   f"with `python -m engine minds-eye attack --kind {kind} --n 30 --save {repo_path(path)}`.")
    else:
        render_effort(sweep, "shipped")
    st.subheader("A fresh sweep")
    settings, run = sweep_controls(kind)
    if w.nets is None:
        return
    key = f"minds-eye-sweep|{w.folder}|{w.digest}|{settings.kind}|{settings.n}|{settings.max_steps}"
    def start() -> None:
        start_job(key, evaluate.sweep, settings.kind, settings.n, max_steps=settings.max_steps, folder=w.folder,
                  title=f"Sweep: {settings.kind}, {settings.n} images")

    if run:
        start()
    status = show_job(key, idle="Press **Run a fresh sweep** to attack the first test images against every network "
                                "(each step is a forward and a backward pass of every network; Cancel stops it).",
                      again=start)
    if status is not None:
        record = status.result.to_json()
        render_effort(record, "fresh")
        st.download_button("Sweep (JSON)", json.dumps(record), f"sweep-{settings.kind}-{settings.n}.json",
                           "application/json", key="sweep_json")


# --- Gallery (Fig. 5) ---------------------------------------------------------------------------------------

def gallery_controls(sweep: dict) -> tuple[float, str]:
    thetas = sorted(float(name.partition("@")[2]) for name in sweep["attacks"] if name.startswith("triple@"))
    c1, c2 = st.columns(2)
    with c1:
        theta = url_widget(st.radio, "Θ of the triple-staged network", key="me_gallery_theta", param="gtheta",
                           default=0.7 if 0.7 in thetas else (thetas[-1] if thetas else 0.7), parse=float,
                           dump=lambda v: f"{v:g}", options=thetas or [0.7], horizontal=True)
    with c2:
        target = url_widget(st.radio, "Adversarial target", key="me_gallery_target", param="gtarget",
                            default="monkey", options=list(GALLERY_TARGETS), format_func=GALLERY_TARGETS.get,
                            horizontal=True)
    return float(theta), target


def gallery_picks(sweep: dict, name: str, target: str) -> list[int]:
    """Up to GALLERY_COLUMNS flipped attacks toward ``target``, spread evenly over the distortion order."""
    record = sweep["attacks"][name]
    chosen = [i for i, (s, d, x) in enumerate(zip(record["steps"], record["distortion"], record["excluded"]))
              if s >= 0 and d is not None and not x
              and (target == "any" or sweep["target"][i] == data.CLASSES.index(target))]
    chosen.sort(key=lambda i: record["distortion"][i])
    if len(chosen) > GALLERY_COLUMNS:
        chosen = [chosen[round(j)] for j in np.linspace(0, len(chosen) - 1, GALLERY_COLUMNS)]
    return chosen


def render_gallery(w: Weights, sweep: dict, pictures: dict[str, np.ndarray], name: str, key: str, theta: float,
                   target: str) -> None:
    st.markdown(f"**{rule_label(name)}**")
    if name not in sweep["attacks"] or name not in pictures:
        st.info(f"The sweep has no attacks on {rule_label(name)}.")
        return
    picks = gallery_picks(sweep, name, target)
    if not picks:
        st.info(f"No attack toward {'any object' if target == 'any' else target} flipped {rule_label(name)} within "
                f"{sweep['max_steps']} steps in this sweep.")
        return
    record = sweep["attacks"][name]
    rows = (("original", lambda i: (pictures["original"][i], None)),
            ("adversarial", lambda i: (pictures[name][i], f"d={record['distortion'][i]:.3f} n={record['steps'][i]}")),
            ("what it now believes", lambda i: believed(w, key, theta, pictures[name][i])))
    for title, picture in rows:
        columns = st.columns([0.9] + [1] * GALLERY_COLUMNS, vertical_alignment="center")
        columns[0].caption(title)
        for column, i in zip(columns[1:], picks):
            shown, caption = picture(i)
            if shown is None:
                column.caption(caption)
            else:
                column.image(zoom(shown, 2), caption=caption, width="stretch")


def believed(w: Weights, key: str, theta: float, pixels: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The network's drawing of what it now sees, and the class it says (no drawing when it says None)."""
    said, picture = cache.minds_eye_believed(w.folder, w.stamp, key, theta, images.image_digest(pixels.tobytes()),
                                             pixels)
    return picture, (f"says {data.CLASSES[said]}" if picture is not None else f"says {data.CLASSES[said]}: no drawing")


def gallery_view(w: Weights) -> None:
    st.caption("Fig. 5 (§4): false-positive adversarial images ordered by distortion d (n: steps). Top: the test "
               "image; middle: the adversarial image the network now calls the target; bottom: what the network now "
               "believes, drawn over it (the parameter head's angles rendered, or the projector's own drawing). For "
               "the triple-staged network at a high Θ the target object has to appear in the image.")
    path = evaluate.SWEEP_FILES["false-positive"]
    sweep, pictures = cache.minds_eye_sweep_file("false-positive", str(path),
                                                 path.stat().st_mtime_ns if path.is_file() else 0)
    if sweep is None or pictures is None:
        st.warning(f"The shipped false-positive sweep is missing ({repo_path(path)} and its .npz): run a fresh sweep "
                   "in the Effort view, or make it with `python -m engine minds-eye attack --kind false-positive "
                   f"--n 30 --save {repo_path(path)}`.")
        return
    if w.nets is None:
        return
    theta, target = gallery_controls(sweep)
    render_gallery(w, sweep, pictures, "direct_params", "direct_params", theta, target)
    render_gallery(w, sweep, pictures, f"triple@{theta:g}", "triple", theta, target)


# --- Attack live --------------------------------------------------------------------------------------------

def attack_image(source: str, index: int) -> AttackImage:
    if source == "explorer":
        settings = explorer_image()
        pixels = composed(settings)
        return AttackImage(pixels, settings.label, f"the explorer's {settings.name} over background {settings.background}")
    pixels, label, _ = cache.minds_eye_test_image(index)
    return AttackImage(pixels, label, f"test image {index}: {data.CLASSES[label]}")


def attack_controls() -> tuple[AttackSettings, AttackImage, bool]:
    c1, c2 = st.columns([2, 1])
    with c1:
        source = url_widget(st.radio, "Image", key="me_src", param="src", default="test",
                            options=["test", "explorer"], horizontal=True,
                            format_func={"test": "a test image", "explorer": "the explorer's image"}.get)
    with c2:
        index = url_widget(st.number_input, "Test image number", key="me_img", param="img", default=0, parse=int,
                           min_value=0, max_value=99_999, step=1, disabled=source != "test",
                           help="Image i shows class i mod 4 (monkey, penguin, aeroplane, None).")
    image = attack_image(source, int(index))
    options = [c for c in range(len(data.CLASSES)) if c != image.label]
    default = (image.label + 1) % len(OBJECTS) if image.label != data.NONE else 0
    if st.session_state.get("me_target") not in (None, *options):  # the image changed under the target
        del st.session_state["me_target"]
        set_url_value("target", None)
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        network = url_widget(st.selectbox, "Attack this network", key="me_net", param="net", default="triple",
                             options=list(weights.CONTENDER_LABELS), format_func=weights.CONTENDER_LABELS.get)
    with c2:
        target = url_widget(st.selectbox, "toward", key="me_target", param="target", default=default,
                            options=options, format_func=data.CLASSES.__getitem__, parse=data.CLASSES.index,
                            dump=data.CLASSES.__getitem__)
    with c3:
        theta = theta_control("Θ (triple-staged)")
    with c4:
        steps = url_widget(st.number_input, "Max steps", key="me_live_steps", param="steps", default=DEFAULT_LIVE_STEPS,
                           parse=int, min_value=1, max_value=attack.MAX_STEPS, step=50)
    run = st.button("Attack", type="primary")
    return AttackSettings(source, int(index), network, int(target), theta, int(steps)), image, run


def attack_key(w: Weights, settings: AttackSettings, image: AttackImage) -> str:
    return "|".join(["minds-eye-live", str(w.folder), w.digest, image.digest, settings.network, str(settings.target),
                     f"{settings.theta:g}", str(settings.max_steps)])


def score_curves(records, target: int, label: int, theta: float) -> go.Figure:
    """Every network's belief in the target (solid) and in the truth (dotted), per step."""
    steps = [r["step"] for r in records]
    figure = go.Figure()
    for key in records[0]["scores"]:
        colour = COLOURS.get(key, plots.ACCENT)
        triple = key == "triple"

        def pick(scores, c):
            if triple and c == data.NONE:
                return max(scores)  # None wins once the best object score is under Θ
            return scores[c] if c < len(scores) else None

        short = weights.CONTENDER_LABELS[key]
        target_name = "best object score" if triple and target == data.NONE else f"{'score' if triple else 'p'}({data.CLASSES[target]})"
        figure.add_trace(go.Scatter(x=steps, y=[pick(r["scores"][key], target) for r in records], mode="lines",
                                    name=f"{short}: {target_name}", line=dict(color=colour, width=2.5)))
        if not (triple and label == data.NONE):
            truth_name = f"{'score' if triple else 'p'}({data.CLASSES[label]})"
            figure.add_trace(go.Scatter(x=steps, y=[pick(r["scores"][key], label) for r in records], mode="lines",
                                        name=f"{short}: {truth_name}", line=dict(color=colour, dash="dot")))
    figure.add_hline(y=theta, line_dash="dash", line_color="#495057", annotation_text=f"Θ = {theta:.2f}")
    figure.update_layout(height=380, margin=dict(l=10, r=10, t=20, b=40), plot_bgcolor="white", font=dict(size=13),
                         xaxis=dict(title="step (one grey level per pixel)", gridcolor="#eee"),
                         yaxis=dict(title="probability / score", range=[0, 1.02], gridcolor="#eee"),
                         legend=dict(font=dict(size=11)))
    return figure


def verdict_line(record: dict) -> str:
    return " · ".join(f"{rule_label(name)}: **{data.CLASSES[v]}**" for name, v in record["verdicts"].items())


def live_view(settings: AttackSettings, image: AttackImage):
    def live(status: jobs.JobStatus) -> None:
        records = status.records
        if not records:
            return
        last = records[-1]
        shot = next((r for r in reversed(records) if "image" in r), None)
        left, right = st.columns([1, 3])
        if shot is not None:
            left.image(zoom(attack.snapshot(shot)), caption=f"step {shot['step']}")
        left.caption(f"step {last['step']} · distortion {last['distortion']:.4f}")
        right.plotly_chart(score_curves(records, settings.target, image.label, settings.theta), width="stretch",
                           key=f"live_{status.id}_{len(records)}")
        st.caption("Now: " + verdict_line(last))
    return live


def difference(final: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, float]:
    """The change around mid-grey, scaled so the largest change just fits; and the scale."""
    scale = 127.0 / max(float(np.abs(final.astype(np.float32) - original.astype(np.float32)).max()), 1.0)
    return images.difference_image(final, original, gain=scale), scale


def render_step_viewer(records: tuple, original: np.ndarray) -> None:
    """Each step's image, with every network's verdict on it: a slider over the attack's snapshots."""
    shots = [r for r in records if "image" in r]
    if len(shots) < 2:
        return
    steps = [r["step"] for r in shots]
    step = st.select_slider("Look at step", options=steps, value=steps[-1], key="attack_step")
    record = shots[steps.index(step)]
    pixels = attack.snapshot(record)
    left, middle, right = st.columns([1, 1, 2])
    left.image(zoom(pixels), caption=f"step {step} · distortion {record['distortion']:.4f}")
    change, scale = difference(pixels, original)
    middle.image(zoom(change), caption=f"its change ×{scale:.3g}")
    right.markdown("At this step: " + verdict_line(record))


def use_minds_eye_button(pixels: np.ndarray, *, name: str, key: str) -> None:
    """"Use as the image" under a Mind's Eye picture (64 px grey). This page does not use the sidebar's
    image, so the picture becomes a new image of its own (kept by its hash in the link): e.g. to ask the
    ImageNet model on Classify what it makes of an image that fooled the direct network."""
    use_as_image_button(np.asarray(pixels, dtype=np.uint8), name=name, operation=name, key=key, from_current=False,
                        help="Make this 64-pixel grey picture the image of every page. It was not made from the "
                             "sidebar's image, so it starts a chain of its own.")


def render_attack_result(settings: AttackSettings, image: AttackImage, status: jobs.JobStatus) -> None:
    result = status.result
    attacked = weights.CONTENDER_LABELS[result.attacked]
    target = data.CLASSES[result.target]
    if result.flipped_at is not None:
        st.success(f"{attacked} now says **{target}** after {result.flipped_at} steps (distortion "
                   f"{result.distortion:.4f}).")
    else:
        st.warning(f"{attacked} still does not say {target} after {result.steps} steps (distortion "
                   f"{result.distortion:.4f}): raise the step limit, or try another target.")
    c1, c2, c3 = st.columns(3)
    c1.image(zoom(result.original), caption=f"original: {image.caption}")
    c2.image(zoom(result.final), caption=f"adversarial, step {result.steps}")
    with c2:
        use_minds_eye_button(result.final, name=f"Mind's Eye attack → {target} ({image.caption})",
                             key="use_minds_eye_attack")
    change, scale = difference(result.final, result.original)
    c3.image(zoom(change), caption=f"difference ×{scale:.3g}, around mid-grey")
    records = status.records
    if records:
        st.markdown("Every network on the adversarial image: " + verdict_line(records[-1]))
        st.plotly_chart(score_curves(records, settings.target, image.label, settings.theta), width="stretch",
                        key="attack_curves")
        render_step_viewer(records, result.original)
    st.download_button("Adversarial PNG", lambda: images.to_png_bytes(result.final),
                       f"minds-eye-{result.attacked}-to-{target}.png", "image/png", key="attack_png")


def attack_view(w: Weights) -> None:
    st.caption("§3.2: x̃ = clip(x − sign ∇ₓJ, 0, 255), one grey level per pixel per step, until the attacked network "
               "says the target. Every other network watches the same image, so you see whether a fooled direct "
               "network fools the triple-staged one too.")
    settings, image, run = attack_controls()
    st.image(zoom(image.pixels), caption=image.caption)
    if w.nets is None:
        return
    key = attack_key(w, settings, image)
    def start() -> None:
        start_job(key, cache.minds_eye_live_attack, w.nets, settings.network, image.pixels, settings.target,
                  settings.theta, max_steps=settings.max_steps, snapshot_every=1, records=True,
                  title=f"Attacking {weights.CONTENDER_LABELS[settings.network]} toward {data.CLASSES[settings.target]}")

    if run:
        start()
    status = show_job(key, live=live_view(settings, image), idle="Press **Attack** to start.", cancel_label="Stop",
                      cancelled="Stopped. Press **Attack** to start again.", again=start)
    if status is not None:
        render_attack_result(settings, image, status)
        return
    stopped = find_job(key)
    if stopped is not None and stopped.state is jobs.JobState.CANCELLED and stopped.records:
        live_view(settings, image)(stopped)  # how far it got: the last snapshot and every network's curves


# --- The page -----------------------------------------------------------------------------------------------

def view_control() -> str:
    return url_widget(st.segmented_control, "View", key="me_view", param="view", default="explorer",
                      options=list(VIEWS), format_func=VIEWS.get, required=True, label_visibility="collapsed")


def main() -> None:
    page_header(
        "Mind's Eye", "Berntsen, Kuijper & Heskes (2016), The Artificial Mind's Eye: a triple-staged network estimates "
        "an object's rotation, draws the object at that rotation and compares its drawing with the image patch by "
        "patch; it only says 'monkey' if it can draw the monkey it sees. Set against direct classifiers on 64×64 grey "
        "renders over photos, and attacked with one-grey-level sign steps. (This page does not use the sidebar's "
        "ImageNet model or image.)")
    view = view_control()
    w = load_weights()
    if w.nets is None and view != "effort":
        return
    {"explorer": explorer_view, "table": table_view, "effort": effort_view, "gallery": gallery_view,
     "attack": attack_view}[view](w)


main()

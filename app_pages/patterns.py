"""Patterns: paint class patterns onto garments (Chaplygin & Chacksfield's conditional GAN)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import streamlit as st

from engine import images, jobs, plots
from engine.errors import GlassboxError
from engine.patterns import generate as G
from engine.patterns import quick as Q
from engine.patterns import runs as R
from engine.patterns import substrates as S
from engine.patterns import training as T
from engine.patterns.cli import parse_weights
from streamlit_app import ensure_frame, job_progress, job_row, require_model, set_url_value, url_value

selection = ensure_frame()
handle = require_model(selection)

st.title("Patterns")
st.caption("Chaplygin & Chacksfield (2019): a conditional GAN learns to paint what the classifier believes a class "
           "looks like onto a blank garment. The classifier is the critic: the whole image must show the wanted class, "
           "random crops must show none of the others, and the garment and its white background should survive.")

MODES = {"generate": "Generate", "train": "Train a generator", "quick": "Quick mode (no GAN)"}
if "pat_mode" not in st.session_state:
    st.session_state.pat_mode = url_value("mode") if url_value("mode") in MODES else "generate"
mode = st.segmented_control("Mode", list(MODES), key="pat_mode", format_func=MODES.get, required=True)
set_url_value("mode", None if mode == "generate" else mode)
DEFAULT_CLASSES = ["goldfish", "zebra", "flamingo", "jaguar", "giant panda"]


def pick_substrate(size: int, key: str) -> S.Substrate | None:
    """A generated garment or an uploaded photo; None with a sentence when the upload is unusable."""
    source = st.radio("Substrate", ["garment", "upload"], horizontal=True, key=f"{key}_source",
                      format_func={"garment": "A generated garment", "upload": "Your own garment photo"}.get)
    if source == "garment":
        c1, c2 = st.columns([2, 1])
        garment = c1.selectbox("Garment", S.GARMENTS, key=f"{key}_garment")
        colour = c2.color_picker("Colour", "#5a78c8", key=f"{key}_colour")
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return S.draw_substrate(garment, size, rgb)
    upload = st.file_uploader("A garment on a white background", type=["png", "jpg", "jpeg", "webp"],
                              key=f"{key}_upload")
    if upload is None:
        st.info("Upload a photo of a garment on white; its near-white pixels count as background.")
        return None
    try:
        return S.substrate_from_picture(np.asarray(images.decode_image(upload.getvalue())), size)
    except GlassboxError as error:
        st.error(f"{upload.name}: {error}")
        return None


def class_mix(names: list[str], default: list[str], key: str) -> dict[str, float]:
    chosen = st.multiselect("Classes (up to three, mixed)", names, default=[d for d in default if d in names],
                            max_selections=3, key=f"{key}_classes")
    weights = {}
    columns = st.columns(max(len(chosen), 1))
    for column, name in zip(columns, chosen):
        weights[name] = column.slider(f"weight of {name}", 0.0, 1.0, 1.0, 0.05, key=f"{key}_w_{name}")
    return weights


def show_top5(picture: np.ndarray, *, highlight: int | None, title: str, key: str, grey: bool = False) -> None:
    x = images.to_tensor(images.fit_square(picture, handle.input_size), device=handle.device)
    prediction = handle.classify(T.grey(x) if grey else x)
    st.plotly_chart(plots.topk_bar(prediction, highlight=highlight, title=title), width="stretch", key=key)


@st.cache_resource(max_entries=8, show_spinner=False)
def cached_generator(path: str, stamp: float) -> G.LoadedGenerator:
    return G.load_generator_file(Path(path))


def load_file(path: Path) -> G.LoadedGenerator:
    return cached_generator(str(path), path.stat().st_mtime)


# --- Generate ---------------------------------------------------------------------------------------------

def generate_view() -> None:
    runs_with_checkpoints = [p for p in R.list_runs() if (p / "checkpoint.pt").is_file()]
    sources = ["shipped"] + [f"run:{p.name}" for p in runs_with_checkpoints] + ["upload"]
    labels = {"shipped": "Shipped generator (5 classes)", "upload": "Upload a checkpoint",
              **{f"run:{p.name}": f"Run '{p.name}' trained here" for p in runs_with_checkpoints}}
    source = st.selectbox("Generator", sources, format_func=labels.get, key="gen_generator")
    try:
        if source == "shipped":
            if not G.SHIPPED.is_file():
                st.error(f"The shipped generator is missing ({G.SHIPPED}); reinstall, or train one in *Train*.")
                return
            loaded = load_file(G.SHIPPED)
        elif source == "upload":
            upload = st.file_uploader("checkpoint.pt of a run, or a generator exported with `python -m engine patterns "
                                      "export`", type=["pt"], key="gen_checkpoint")
            if upload is None:
                st.info("Upload a checkpoint to generate.")
                return
            loaded = uploaded_generator(upload.getvalue(), upload.name)
        else:
            loaded = load_file(R.runs_root() / source.removeprefix("run:") / "checkpoint.pt")
    except GlassboxError as error:
        st.error(str(error))
        return
    st.caption(f"A {loaded.size} px generator for {', '.join(loaded.class_names)}, trained {loaded.steps} steps "
               f"against {loaded.model or 'a classifier'}.")
    notice = G.check_classifier(loaded, handle)
    if notice:
        st.info(notice)
    left, right = st.columns([1, 2])
    with left:
        substrate = pick_substrate(loaded.size, "gen")
        weights = class_mix(list(loaded.class_names), [loaded.class_names[0]], "gen")
        seed = st.number_input("Noise seed (f(t) is sampled)", 0, 10_000, 0, key="gen_seed") if loaded.class_noise else 0
        grey = loaded.grayscale and st.radio(
            "The classifier sees", [True, False], horizontal=True, key="gen_grey",
            format_func={True: "grey, as in training", False: "colour"}.get,
            help="This generator was trained with a grey classifier input (sec. 4): its patterns are meant to be "
                 "read in grey. In colour the garment's own colour also counts.")
    if substrate is None:
        return
    if not weights or not any(weights.values()):
        right.info("Pick at least one class with a weight above 0.")
        return
    try:
        pattern = G.generate(loaded, substrate.image, {loaded.class_names.index(n): w for n, w in weights.items()},
                             seed=int(seed))
        strip = [G.generate(loaded, substrate.image, {i: 1.0}, seed=int(seed)) for i in range(len(loaded.class_names))]
    except GlassboxError as error:
        right.error(str(error))
        return
    with right:
        c1, c2, c3 = st.columns(3)
        c1.image(substrate.image, caption="substrate", width="stretch")
        c2.image(pattern, caption=" + ".join(f"{n} × {w:g}" for n, w in weights.items()), width="stretch")
        change = np.clip(128 + 3 * (pattern.astype(np.int16) - substrate.image.astype(np.int16)), 0, 255)
        c3.image(change.astype(np.uint8), caption="what G changed (× 3, grey = nothing)", width="stretch")
        target = loaded.class_ids[loaded.class_names.index(max(weights, key=weights.get))]
        show_top5(pattern, highlight=target, key="gen_top5", grey=grey,
                  title="The classifier on the pattern" + (" (in grey)" if grey else ""))
        st.download_button("Pattern PNG", images.to_png_bytes(pattern), "pattern.png", "image/png")
    st.markdown("**Every class of this generator on this garment**")
    for column, name, picture in zip(st.columns(len(strip)), loaded.class_names, strip):
        column.image(picture, caption=name, width="stretch")


@st.cache_resource(max_entries=4, show_spinner=False)
def uploaded_generator(data: bytes, name: str) -> G.LoadedGenerator:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / (Path(name).name or "checkpoint.pt")
        path.write_bytes(data)
        return G.load_generator_file(path)


# --- Train ------------------------------------------------------------------------------------------------

def run_job(folder: Path) -> jobs.JobStatus | None:
    """The latest training job of this run folder, if this server still remembers one."""
    prefix = f"pattern-train|{folder}|"
    mine = [s for s in jobs.registry("training").list() if (s.key or "").startswith(prefix)]
    return mine[-1] if mine else None


def start_training(folder: Path, config: T.TrainConfig | None, steps: int, *, resume: bool) -> None:
    start = 0 if not resume else (R.view_run(folder).checkpoint_steps or 0)
    jobs.registry("training").submit(
        R.train_run, str(folder), config, int(steps), resume=resume, sample_every=25, checkpoint_every=100,
        title=f"Training '{folder.name}'", key=f"pattern-train|{folder}|{start}->{steps}|{time.time():.0f}",
        kind="process")


def train_view() -> None:
    runs = R.list_runs()
    names = ["(new run)"] + [p.name for p in runs]
    wanted = url_value("run")
    if st.session_state.get("_train_select") in names:
        st.session_state.train_run = st.session_state.pop("_train_select")
    if "train_run" not in st.session_state or st.session_state.train_run not in names:
        st.session_state.train_run = wanted if wanted in names else ("(new run)" if not runs else runs[0].name)
    chosen = st.selectbox("Run", names, key="train_run", help=f"Runs are kept in {R.runs_root()}.")
    set_url_value("run", None if chosen == "(new run)" else chosen)
    if chosen == "(new run)":
        new_run_form()
    else:
        run_panel(R.runs_root() / chosen)


RECIPES = {  # batch, learning rate, loss weights, f(t) sampled as the paper
    "paper": (2, 2e-4, "3, 10, 50, 150", True),
    "shipped": (1, 5e-4, "3, 10, 50, 60", False),
}


def apply_recipe() -> None:
    batch, lr, weights, noise = RECIPES[st.session_state.train_recipe]
    st.session_state.update(train_batch=batch, train_lr=lr, train_weights=weights, train_noise=noise)


def new_run_form() -> None:
    if "train_recipe" not in st.session_state:  # on a CPU, the recipe that shows patterns in a few thousand steps
        st.session_state.train_recipe = "shipped" if handle.device.type == "cpu" else "paper"
        apply_recipe()
    st.radio("Start from", list(RECIPES), horizontal=True, key="train_recipe", on_change=apply_recipe,
             format_func={"paper": "The paper's settings (sec. 3)",
                          "shipped": "The shipped generator's (faster on a CPU; assets/patterns/README.md)"}.get)
    c1, c2, c3 = st.columns([2, 1, 1])
    name = c1.text_input("Name", "five-classes", key="train_name")
    size = c2.select_slider("Size (px)", [64, 128, 256, 512], value=128, key="train_size",
                            help="The paper trains at 512 on a GPU; 128 is the CPU default.")
    steps = c3.number_input("Steps", 10, 200_000, 2000, 100, key="train_steps")
    classes = st.multiselect("Classes (1 to 24)", list(handle.class_names),
                             default=[c for c in DEFAULT_CLASSES if c in handle.class_names] or [handle.class_names[0]],
                             key="train_classes", max_selections=24)
    paper_net = T.default_classifier() == "vgg16" and handle.name != "vgg16"
    st.caption(f"The critic is the sidebar's model, {handle.name}."
               + (" VGG16, the paper's classifier, is on this machine: pick it in the sidebar to train as the paper did."
                  if paper_net else ""))
    c1, c2, c3, c4 = st.columns(4)
    batch = c1.number_input("Batch", 1, 8, key="train_batch", help="The paper: 1-3.")
    lr = c2.number_input("Learning rate", 1e-5, 1e-2, format="%.5f", key="train_lr", help="The paper: 0.0002.")
    weights_text = c3.text_input("Loss weights cGAN, mask, classifier, substrate", key="train_weights",
                                 help="The paper: 3 L_cGAN + 10 L_m + 50 L_VGG + 150 L_s.")
    grey = c4.toggle("Grey to the classifier", True, key="train_grey", help="Sec. 4: the paper found grey better.")
    noise = c4.toggle("Sample f(t) as the paper", key="train_noise",
                      help="The paper draws each active class tile from N(1, 2) ∪ N(-1, 2), which has mean 0: G can "
                           "only tell the class from the draw's spread, and on a CPU budget it learns one pattern for "
                           "all classes. Off: constant tiles, which G picks up in a few thousand steps.")
    gradcam = c4.toggle("Grad-CAM masking", False, key="train_gradcam",
                        help="The extension at the end of sec. 4: the substrate loss is relaxed where Grad-CAM sees "
                             "the class, so the pattern separates from the garment.")
    source = st.radio("Substrates", ["generated", "upload", "folder"], horizontal=True, key="train_substrates",
                      format_func={"generated": "Generated garments (8 kinds, the paper's augmentations)",
                                   "upload": "Upload your own (several images)",
                                   "folder": "A folder on this machine"}.get)
    uploads, folder_text = [], ""
    if source == "upload":
        uploads = st.file_uploader(f"Garment photos on white (at least {S.MIN_SUBSTRATES})", accept_multiple_files=True,
                                   key="train_uploads") or []
    elif source == "folder":
        folder_text = st.text_input("Folder of garment images", key="train_folder")
    problems = []
    try:
        run_name = R.safe_run_name(name)
    except GlassboxError as error:
        problems.append(str(error))
        run_name = ""
    if run_name and (R.runs_root() / run_name).exists():
        problems.append(f"A run called '{run_name}' exists already; pick it above to resume it, or choose another name.")
    if not classes:
        problems.append("Pick at least one class.")
    try:
        weights = parse_weights(weights_text)
    except GlassboxError as error:
        problems.append(str(error))
        weights = None
    if source == "upload" and len(uploads) < S.MIN_SUBSTRATES:
        problems.append(f"Training needs at least {S.MIN_SUBSTRATES} substrate images; {len(uploads)} uploaded so far.")
    if source == "folder":
        try:
            S.load_substrate_folder(Path(folder_text).expanduser(), int(size)) if folder_text else None
        except GlassboxError as error:
            problems.append(str(error))
        if not folder_text:
            problems.append("Give the folder's path.")
    for problem in problems:
        st.warning(problem)
    st.caption(f"On this machine one step at {size} px takes about {0.3 * (size / 128) ** 2:.1f} s on the CPU "
               f"({int(steps) * 0.3 * (size / 128) ** 2 / 60:.0f} min for {int(steps)} steps); the CLI does the same: "
               f"`python -m engine patterns train --classes … --steps {int(steps)} --size {size} --out DIR`.")
    if st.button("Start training", type="primary", disabled=bool(problems)):
        folder = R.runs_root() / run_name
        try:
            substrate_dir = None
            if source == "upload":
                R.save_uploads(folder / "substrates", [(u.name, u.getvalue()) for u in uploads])
                substrate_dir = str(folder / "substrates")
            elif source == "folder":
                substrate_dir = str(Path(folder_text).expanduser().resolve())
            config = T.TrainConfig(classes=tuple(handle.class_index(c) for c in classes), model=handle.name,
                                   size=int(size), batch=int(batch), lr=float(lr), weights=weights,
                                   grayscale=bool(grey), gradcam_mask=bool(gradcam), substrates=substrate_dir,
                                   class_noise=bool(noise))
            config.validate(handle)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps({**config.as_dict(), "class_names": list(classes)}, indent=2))
            start_training(folder, config, int(steps), resume=False)
        except GlassboxError as error:
            st.error(str(error))
            return
        st.session_state._train_select = run_name  # the select box exists already: switch to the run on the rerun
        st.rerun()


def run_panel(folder: Path) -> None:
    status = run_job(folder)
    if status is not None and not status.finished:
        live_run(str(folder), status.id)
        return
    view = R.view_run(folder)
    st.caption(run_summary(view))
    if status is not None and status.state == "failed":
        where = f"step {view.checkpoint_steps}" if view.checkpoint_steps else "no checkpoint yet"
        st.error(f"The training stopped with an error: {status.error} The last checkpoint is at {where}; "
                 "resume below to continue from it.")
    elif status is not None and status.state == "cancelled":
        st.warning("The training was stopped before it saved; resume below from the last checkpoint.")
    elif status is None and view.checkpoint_steps is not None and view.logged_steps > view.checkpoint_steps:
        st.warning(f"This run logged step {view.logged_steps} but its checkpoint is at step {view.checkpoint_steps}: "
                   "it was interrupted (a crash or a server restart). Resume continues from the checkpoint.")
    run_results(view)
    if view.checkpoint_steps is None:
        st.info("This run has no checkpoint yet, so it cannot be resumed; start a new run.")
        return
    c1, c2 = st.columns([1, 2])
    target = c1.number_input("Train until step", view.checkpoint_steps + 1, 1_000_000, view.checkpoint_steps + 1000,
                             100, key=f"resume_to_{folder.name}")
    if c2.button("Resume", type="primary", key=f"resume_{folder.name}"):
        try:
            start_training(folder, None, int(target), resume=True)
        except GlassboxError as error:
            st.error(str(error))
            return
        st.rerun()
    downloads(folder, view)


def run_summary(view: R.RunView) -> str:
    config = view.config or {}
    names = ", ".join(config.get("class_names", [])) or "?"
    saved = f"checkpoint at step {view.checkpoint_steps}" if view.checkpoint_steps is not None else "no checkpoint yet"
    extras = [k for k, on in (("grey", config.get("grayscale")), ("Grad-CAM mask", config.get("gradcam_mask")),
                              ("f(t) sampled", config.get("class_noise", True)),
                              ("own substrates", config.get("substrates"))) if on]
    weights = config.get("weights", {})
    return (f"{names} · {config.get('size', '?')} px · batch {config.get('batch', '?')} · lr {config.get('lr', '?')} · "
            f"weights {', '.join(f'{v:g}' for v in weights.values())}{' · ' + ', '.join(extras) if extras else ''} · "
            f"{saved}")


def run_results(view: R.RunView) -> None:
    """The latest sample grid, the loss curves and p(target), from the run's own files."""
    config = view.config or {}
    if view.sample is not None:
        names = config.get("class_names", [])
        step = int(view.sample.stem.removeprefix("step_"))
        st.image(str(view.sample), width=min(1000, 150 * (len(names) + 1)),
                 caption=f"Samples at step {step}: each row a fixed substrate, then each class "
                         f"({' · '.join(names)})")
    log = view.log
    if log and len(log.get("step", ())) > 1:
        weights = config.get("weights", {})
        window = max(1, len(log["step"]) // 100)
        smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
        terms = {"cGAN (G)": weights.get("cgan", 0) * log["adversarial"], "mask": weights.get("mask", 0) * log["mask"],
                 "classifier": weights.get("vgg", 0) * log["vgg"],
                 "substrate": weights.get("substrate", 0) * log["substrate"]}
        figure = plots.inversion_loss_figure({k: smooth(v) for k, v in terms.items()}, smooth(log["total"]),
                                             target_prob=smooth(log["target_prob"]), target_label="target, batch",
                                             steps=log["step"][window - 1:])
        samples = view.sample_probs
        if samples and len(samples.get("step", ())):
            import plotly.graph_objects as go

            per_class = np.stack([v for k, v in samples.items() if k != "step"], 1)
            figure.add_trace(go.Scatter(x=samples["step"], y=per_class.mean(1), mode="lines+markers",
                                        name="p(target), sample grid (colour)", line=dict(color="#d6336c")),
                             secondary_y=True)
        st.markdown(f"**Weighted losses and p(target) per step** (training batch: moving mean over {window}; "
                    "sample grid: the mean over its classes)")
        st.plotly_chart(figure, width="stretch", key=f"curves_{view.folder.name}")


@st.fragment(run_every=2.0)
def live_run(folder: str, job_id: str) -> None:
    status = jobs.registry("training").status(job_id)
    job_row(status, pool="training", cancel_label="Stop")
    st.caption("Stop saves a checkpoint at the current step, so the run can be resumed. Reloading the page or "
               "leaving it does not stop the training.")
    view = R.view_run(Path(folder))
    st.caption(run_summary(view))
    run_results(view)
    if status.finished:
        st.rerun()


def downloads(folder: Path, view: R.RunView) -> None:
    c1, c2, c3 = st.columns(3)
    checkpoint = folder / "checkpoint.pt"
    c1.download_button("checkpoint.pt (resume elsewhere)", checkpoint.read_bytes(), f"{folder.name}-checkpoint.pt",
                       key=f"dl_ck_{folder.name}")
    if (folder / "log.csv").is_file():
        c2.download_button("log.csv", (folder / "log.csv").read_bytes(), f"{folder.name}-log.csv", "text/csv",
                           key=f"dl_log_{folder.name}")
    if view.sample is not None:
        c3.download_button("Latest sample grid PNG", view.sample.read_bytes(), f"{folder.name}-{view.sample.name}",
                           "image/png", key=f"dl_grid_{folder.name}")


# --- Quick mode -------------------------------------------------------------------------------------------

def quick_view() -> None:
    left, right = st.columns([1, 2])
    with left:
        size = st.select_slider("Size (px)", [128, 256], value=128, key="pat_size")
        substrate = pick_substrate(size, "quick")
        weights = class_mix(list(handle.class_names), ["zebra"] if "zebra" in handle.class_names
                            else [handle.class_names[0]], "quick")
        steps = st.slider("Steps", 10, 200, 80, 10, key="pat_steps")
        grey = st.toggle("Show the classifier grey images (the paper found it better)", key="pat_grey")
    if substrate is None:
        return
    if not weights:
        right.info("Pick at least one class.")
        return
    key = "|".join(["patterns-quick", handle.name, str(size), str(steps), str(grey), json.dumps(weights, sort_keys=True),
                    images.image_digest(substrate.image.tobytes())])
    with right:
        st.caption("Optimises this one garment's pixels with the GAN's own losses (classifier on the whole image and "
                   "on crops, substrate, mask), with no generator: quick, but it only ever makes one picture.")
        if st.button("Paint", type="primary"):
            try:
                status = jobs.registry().find(key)
                if status is None or status.state in ("failed", "cancelled"):
                    jobs.registry().submit(Q.quick_pattern, handle, substrate.image, substrate.background,
                                           list(weights), list(weights.values()),
                                           Q.QuickConfig(steps=int(steps), grayscale=bool(grey)),
                                           title=f"Quick pattern: {', '.join(weights)}", key=key)
            except GlassboxError as error:
                st.error(str(error))
        status = jobs.registry().find(key)
        if status is not None and not status.finished:
            job_progress(status.id)
        elif status is not None and status.state == "done":
            result: Q.QuickResult = status.result
            c1, c2 = st.columns(2)
            c1.image(substrate.image, caption="substrate", width="stretch")
            c2.image(result.image, caption=f"after {len(result.total)} steps · p = {result.target_prob[-1]:.3f}",
                     width="stretch")
            show_top5(result.image, highlight=None, title="The classifier on the result", key="quick_bar")
            st.download_button("Pattern PNG", images.to_png_bytes(result.image), "pattern.png", "image/png")
        elif status is not None and status.error:
            st.error(status.error)
        else:
            st.info("Press **Paint** to start.")


{"generate": generate_view, "train": train_view, "quick": quick_view}[mode]()

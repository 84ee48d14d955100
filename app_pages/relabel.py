"""Relabel: make the photo take any label while it looks unchanged (Robinson & Graham 2015).

Three views, chosen by ``?view=``: **One image** (the methods are the entries of the attack registry,
``engine.attacks``), **Sweep** (sec. 3.1: photos x random targets under the cap, the paper's rule
and the fit rule side by side with the paper's numbers) and **One big step** (sec. 3.1: a single
large step along the first gradient against the iterative method). Each run is a job keyed by the
page's settings, and every one of them lives in the link, so a reload or a second tab finds the
same run by itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import streamlit as st

from engine import attacks, cache, images, io, jobs, models, plots, relabel
from engine.errors import GlassboxError
from streamlit_app import (Selection, class_picker, dump_bool, find_job, page_header, parse_bool, set_url_value,
                           show_job, start_job, url_value, url_widget, use_as_image_button)

HALF_TRACK = 586  # Fig. 1's half-track
EGYPTIAN_CAT = 285
GAUSSIAN_NAME = "gaussian"
GAUSSIAN_DIGEST = f"gaussian-seed-{relabel.GAUSSIAN_SEED}"
DEFAULT_CAP, DEFAULT_STEPS, DEFAULT_EPSILON = 0.01, 300, 4
PANDA_SAMPLE, PANDA_EPSILON = "chelsea", 2  # the lecture's panda -> gibbon: eps .007 of the range is about 2 levels
SECOND_NETWORKS = ("efficientnet_lite1", "efficientnet_lite0")  # sec. 3.1's "another network"
TONES = {"success": st.success, "warning": st.warning, "info": st.info}
VIEWS = {"run": "One image", "sweep": "Sweep (sec. 3.1)", "onestep": "One big step (sec. 3.1)"}
SWEEP_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left")  # the 50 pairs (x 10)
# The step of a sweep, in 8-bit levels: whole levels stay on the 8-bit grid; the paper's own step
# (alpha = 50 with sgn/255 in Caffe's 0-255 units) is 0.2 level on a float image.
SWEEP_STEPS = {"1": "1 level (8-bit grid)", "0.5": "0.5 level (float)", "0.2": "0.2 level (float, paper)"}
RULE_NAMES = {"both": "Both (the paper's first)", "paper": "The paper's rule", "fit": "Fit (beyond the paper)"}
SECONDS_PER_PAIR = 0.3  # one relabelling of the bundled model on this kind of CPU, for the estimate


@dataclass(frozen=True, eq=False)
class StartImage:
    """The image a run starts from, as the model sees it: a photo, or sec. 3.2's Gaussian noise."""

    name: str
    digest: str
    data: bytes | None  # None: the Gaussian image
    view: np.ndarray  # uint8, input_size x input_size x 3

    @property
    def sha256(self) -> str | None:
        return None if self.data is None else self.digest

    def tensor(self, handle: models.ModelHandle):
        return images.to_tensor(self.view, device=handle.device)


@dataclass(frozen=True)
class RelabelSettings:
    """What the controls chose; all of it is in the page's link."""

    attack: str  # a key of attacks.ATTACKS
    target: int | None  # None: untargeted, away from the image's own class (the lecture's panda -> gibbon)
    cap: float
    max_steps: int
    epsilon: int
    swap: bool  # Fig. 1's swap: the partner photo is relabelled into this photo's class beside it

    def config(self):
        """The chosen attack's config; each attack takes the values that name its fields."""
        return attacks.get_attack(self.attack).make_config(cap=self.cap, max_steps=self.max_steps, epsilon=self.epsilon)


# ---------------------------------------------------------------------------------------------
# Controls


def start_controls(handle: models.ModelHandle, selection: Selection) -> StartImage:
    gaussian = url_widget(st.toggle, "Start from a random Gaussian image instead of the photo (sec. 3.2)",
                          key="rl_gaussian", param="gaussian", default=False, parse=parse_bool, dump=dump_bool,
                          help="The paper's image synthesis: noise that the model will call anything. It needed a "
                               "distortion of about 0.03, so raise the cap.")
    if gaussian:
        return start_image(handle, GAUSSIAN_NAME, GAUSSIAN_DIGEST, None)
    return start_image(handle, selection.image_name, selection.digest, selection.image_bytes)


def start_image(handle: models.ModelHandle, name: str, digest: str, data: bytes | None) -> StartImage:
    return StartImage(name, digest, data, cache.relabel_start(handle.name, digest, data))


def view_control() -> str:
    if "_next_rl_view" in st.session_state:  # set by a preset before the control was drawn again
        st.session_state["rl_view"] = st.session_state.pop("_next_rl_view")
    return url_widget(st.segmented_control, "View", key="rl_view", param="view", default="run", options=list(VIEWS),
                      format_func=VIEWS.get, required=True, label_visibility="collapsed")


def switch_view(view: str) -> None:
    st.session_state["_next_rl_view"] = view
    set_url_value("view", None if view == "run" else view)


def preset_buttons(handle: models.ModelHandle) -> None:
    with st.expander("Presets from the paper", icon=":material/school:"):
        p1, p2, p3, p4 = st.columns(4)
        if p1.button("The cat turned into a half-track", width="stretch"):
            use_preset(handle, sample="chelsea", target=HALF_TRACK)
        p1.caption("Fig. 1's 'half-track', on the chelsea photo.")
        if p2.button("Swap two photos' labels (Fig. 1)", width="stretch"):
            # the espresso becomes an Egyptian cat; the cat's run is shown beside it
            use_preset(handle, sample="coffee", target=EGYPTIAN_CAT, swap=True)
        p2.caption("The espresso becomes an Egyptian cat and the cat becomes an espresso, side by side.")
        if p3.button("Panda → gibbon: untargeted FGSM", width="stretch"):
            use_untargeted_preset(handle, sample=PANDA_SAMPLE, method=attacks.FGSM.key, epsilon=PANDA_EPSILON)
        p3.caption(f"The lecture's first slide: one step of ε = {PANDA_EPSILON} levels (about .007 of the range) "
                   f"away from the photo's own class, on {PANDA_SAMPLE}.")
        if p4.button("One big step fails (sec. 3.1)", width="stretch"):
            use_onestep_preset(handle, sample="chelsea", target=HALF_TRACK)
        p4.caption("The whole cap in one step along the first gradient, against small steps: the cat and the "
                   "half-track.")


def use_preset(handle: models.ModelHandle, *, sample: str, target: int, swap: bool = False) -> None:
    """Point the sidebar and the controls at a preset (they are drawn below, or on the next run)."""
    st.session_state["_next_sample"] = sample
    st.session_state["rl_method"] = attacks.Relabel.key  # the method radio is not drawn yet in this run
    st.session_state.pop(f"_class_target_{handle.name}", None)
    switch_view("run")
    set_url_value("target", str(target))
    set_url_value("method", None)  # the default, relabel
    set_url_value("untargeted", None)
    if swap:
        set_url_value("swap", "1")
    st.rerun()


def use_onestep_preset(handle: models.ModelHandle, *, sample: str, target: int) -> None:
    """Sec. 3.1's "the gradient is not stationary": one big step against the iterative method."""
    st.session_state["_next_sample"] = sample
    st.session_state.pop(f"_class_target_{handle.name}", None)
    st.session_state.pop("rl_os_cap", None)
    switch_view("onestep")
    set_url_value("target", str(target))
    set_url_value("cap", None)  # the paper's 0.01
    st.rerun()


def use_untargeted_preset(handle: models.ModelHandle, *, sample: str, method: str, epsilon: int) -> None:
    """The lecture's panda -> gibbon: an untargeted attack on a bundled photo."""
    st.session_state["_next_sample"] = sample
    st.session_state["rl_method"] = method
    st.session_state["rl_untargeted"] = True
    st.session_state["rl_epsilon"] = epsilon
    switch_view("run")
    set_url_value("method", method)
    set_url_value("untargeted", "1")
    set_url_value("epsilon", str(epsilon))
    set_url_value("swap", None)
    st.rerun()



def relabel_controls(handle: models.ModelHandle, start: StartImage) -> tuple[RelabelSettings, bool]:
    """The method, the target and the run's settings; True when Run was pressed."""
    left, right = st.columns([3, 2], gap="large")
    with right:
        key = url_widget(st.radio, "Method", key="rl_method", param="method", default=attacks.Relabel.key,
                         options=list(attacks.ATTACKS), format_func=lambda name: attacks.ATTACKS[name].label)
    attack = attacks.get_attack(key)
    with left:
        target = target_control(handle, start, attack)
        with st.form("relabel_settings", border=False):
            c1, c2, c3 = st.columns(3)
            with c1:
                cap = url_widget(st.number_input, "Distortion cap (eq. 3)", key="rl_cap", param="cap",
                                 default=DEFAULT_CAP, parse=float, min_value=0.001,
                                 max_value=0.2, step=0.001, format="%.3f")
            with c2:
                max_steps = url_widget(st.number_input, "Step limit", key="rl_steps", param="steps",
                                       default=DEFAULT_STEPS, parse=int, min_value=1,
                                       max_value=2000, step=10)
            with c3:
                epsilon = url_widget(st.number_input, "ε for FGSM/PGD (levels)", key="rl_epsilon", param="epsilon",
                                     default=DEFAULT_EPSILON, parse=int, min_value=1, max_value=64)
            run = st.form_submit_button("Run", type="primary")
    settings = RelabelSettings(attack=attack.key, target=None if target is None else int(target), cap=float(cap), max_steps=int(max_steps),
                               epsilon=int(epsilon), swap=url_value("swap") == "1")
    return settings, run


def can_untarget(attack: type[attacks.Attack]) -> bool:
    """An attack that runs away from the image's own class when given no target (FGSM, PGD, ...)."""
    return not attack.needs_target and not attack.own_target


def target_control(handle: models.ModelHandle, start: StartImage, attack: type[attacks.Attack]) -> int | None:
    """The class to push towards; None for an untargeted run."""
    if can_untarget(attack) and not getattr(attack, "targeted", True):  # untargeted by nature (DeepFool)
        st.markdown("This method is **untargeted**: it pushes the image across the nearest boundary, to "
                    "whichever class is closest.")
        return None
    if can_untarget(attack) and url_widget(
            st.toggle, "Untargeted: push away from the image's own class (the lecture's panda → gibbon)",
            key="rl_untargeted", param="untargeted", default=False, parse=parse_bool, dump=dump_bool,
            help="x ← x + ε·sgn ∇L(x, y*): raise the loss of the class the model sees now, whatever class wins."):
        return None
    if attack.own_target:  # least-likely (or most-likely): the image decides its target
        target = cache.attack_target(handle.name, start.digest, start.data, attack.key)
        if attack.own_target == "most likely":
            st.markdown(f"Push this image further into the class it already has, **{handle.class_names[target]}** "
                        f"({target}): the change shows the pixels that support that label (the lecture's "
                        "*adversarial samples vs. interpretability*).")
        else:
            st.markdown(f"Turn this image into its **{attack.own_target}** class: "
                        f"**{handle.class_names[target]}** ({target}).")
        return target
    return class_picker(handle, label="Turn this image into a:", key="target", default=HALF_TRACK,
                        help="Type to search the class names.")


# ---------------------------------------------------------------------------------------------
# Jobs


def job_key(handle: models.ModelHandle, settings: RelabelSettings, start: StartImage, target: int | None) -> str:
    config = json.dumps(settings.config().as_dict(), sort_keys=True)
    return "|".join(["relabel", handle.name, start.digest, str(target), settings.attack, config])


def launch(handle: models.ModelHandle, settings: RelabelSettings, start: StartImage, target: int | None,
           title: str) -> None:
    attack = attacks.get_attack(settings.attack)
    start_job(job_key(handle, settings, start, target), attack.run, handle, start.tensor(handle), target,
              settings.config(), title=title, records=True)


def swap_partner(handle: models.ModelHandle, selection: Selection, start: StartImage,
                 settings: RelabelSettings) -> StartImage | None:
    """Fig. 1's swap: the other photo (read only in swap mode, through the shared decode cache)."""
    if not settings.swap or start.data is None or attacks.get_attack(settings.attack) is not attacks.Relabel:
        return None
    name = "chelsea" if selection.image_name != "chelsea" else "coffee"
    data = images.sample_bytes(name)
    return start_image(handle, name, images.image_digest(data), data)


# ---------------------------------------------------------------------------------------------
# Views


def steps_figure(handle: models.ModelHandle, target_prob, original_prob, distortion, *, target: int | None,
                 original_class: int, cap: float | None):
    names = handle.class_names
    return plots.relabel_steps_figure(target_prob, original_prob, distortion,
                                      target_label=names[target] if target is not None else "any other class",
                                      original_label=names[original_class], cap=cap)


def live_steps(handle: models.ModelHandle, target: int | None, cap: float | None) -> Callable[[jobs.JobStatus], None]:
    """The live view of a running job: its steps so far, from the job's own records."""
    def live(status: jobs.JobStatus) -> None:
        records = status.records
        if records:
            figure = steps_figure(handle, [r["target"] for r in records], [r["original"] for r in records],
                                  [r["distortion"] for r in records], target=target,
                                  original_class=records[0]["top1"], cap=cap)
            st.plotly_chart(figure, width="stretch", key=f"live_{status.id}_{len(records)}")
    return live


def use_result_button(picture: np.ndarray, start: StartImage, *, name: str, operation: str, settings: dict, key: str,
                      derived: bool) -> None:
    """"Use as the image" under a result. A run on the sidebar's image records it as the parent (so
    Classify and Saliency can compare); a run on the Gaussian image or the swap partner did not start
    from the sidebar's image, so its result becomes a new image of its own (no original to compare)."""
    from_current = derived and start.data is not None
    use_as_image_button(picture, name=name, operation=operation, settings=settings, key=key, from_current=from_current,
                        help=None if from_current else f"Make this result the image of every page. It was made from "
                        f"{start.name}, not from the sidebar's image, so it starts a new chain of its own.")


def render_result(handle: models.ModelHandle, status: jobs.JobStatus, start: StartImage, *,
                  derived: bool = True) -> None:
    """Before, difference and after ("Use as the image" under it); the numbers; the verdict; the PNG and
    the manifest. ``derived``: the run started from the sidebar's image (not the swap partner)."""
    names = handle.class_names
    result: attacks.AttackResult = status.result
    record = cache.attack_manifest(handle.name, status.id, start.name, start.sha256, result)
    c1, c2, c3 = st.columns(3)
    c1.image(result.original, caption=f"original · {names[result.original_class]}", width="stretch")
    c2.image(relabel.difference_image(result.image, result.original), caption="difference × 10, around mid-grey",
             width="stretch")
    c3.image(result.image, caption=f"relabelled · {names[result.final_class]}", width="stretch")
    with c3:
        use_result_button(result.image, start, name=f"{start.name} → {names[result.final_class]}",
                          operation=f"{attacks.get_attack(result.attack).label} → {names[result.final_class]}",
                          settings={"attack": result.attack, "target": result.target, **result.config},
                          key=f"use_relabel_{start.name}", derived=derived)
    quality = record["quality"]
    st.caption(f"distortion {quality['distortion']:.5f} (eq. 3) · largest change {quality['linf_levels']} levels · "
               f"PSNR {quality['psnr_db']:.1f} dB · SSIM {quality['ssim']:.4f}")
    verdict = attacks.get_attack(result.attack).verdict(result, names)
    TONES[verdict.tone](verdict.text)
    d1, d2, _ = st.columns([1, 1, 3])
    stem = f"{start.name}_{result.attack}"
    d1.download_button("Relabelled PNG", lambda: images.to_png_bytes(result.image), f"{stem}.png", "image/png",
                       key=f"png_{start.name}")
    d2.download_button("Manifest (JSON)", io.manifest_json(record), f"{stem}.json", "application/json",
                       key=f"json_{start.name}")


def render_before_after(handle: models.ModelHandle, ranking: models.Prediction, result: attacks.AttackResult,
                        target: int | None) -> None:
    b1, b2 = st.columns(2)
    b1.plotly_chart(plots.topk_bar(ranking.top(5), highlight=target, title="Before"), width="stretch",
                    key="before_bar")
    b2.plotly_chart(plots.topk_bar(attacks.final_ranking(result, handle), highlight=target, title="After (Fig. 2)"),
                    width="stretch", key="after_bar")


def render_steps(handle: models.ModelHandle, result: attacks.AttackResult, target: int | None) -> None:
    figure = steps_figure(handle, result.target_prob, result.original_prob, result.distortion, target=target,
                          original_class=result.original_class, cap=result.config.get("cap"))
    st.plotly_chart(figure, width="stretch", key="steps_plot")


def render_gradients(handle: models.ModelHandle, start: StartImage, target: int) -> None:
    with st.expander("Raw versus sign gradient (Fig. 3)"):
        raw, sign = cache.relabel_first_gradients(handle.name, start.digest, start.data, target)
        g1, g2 = st.columns(2)
        g1.image(raw, caption="raw gradient of the first step: hot spots", clamp=True, width="stretch")
        g2.image(sign, caption="its sign: every value moves by one level", clamp=True, width="stretch")


def render_limits(handle: models.ModelHandle, result: attacks.AttackResult, target: int) -> None:
    if not st.button("Check the limits (crop, shift, mirror, another network)"):
        return
    second = next(name for name in SECOND_NETWORKS if name != handle.name)
    try:
        rows = cache.relabel_limit_checks(handle.name, second, images.image_digest(result.image.tobytes()),
                                          result.image, target, result.original_class)
    except GlassboxError as error:
        st.error(str(error))
        return
    st.dataframe([{"check": r.check, "model": r.model, "top-1": r.label,
                   f"p({handle.class_names[target]})": round(r.target_prob, 4),
                   "keeps the new label": r.keeps_target, "back to the original": r.reverted} for r in rows],
                 hide_index=True)


def render_swap(handle: models.ModelHandle, settings: RelabelSettings, partner: StartImage, own_class: int) -> None:
    """The partner photo's run, once there is one, and the way out of swap mode."""
    key = job_key(handle, settings, partner, own_class)
    if find_job(key) is None:
        return
    st.subheader(f"The swap: {partner.name} into a {handle.class_names[own_class]}")
    status = show_job(key, live=live_steps(handle, own_class, settings.config().as_dict().get("cap")), idle=None)
    if status is not None:
        render_result(handle, status, partner, derived=False)
    if st.button("Stop swapping"):
        set_url_value("swap", None)
        st.rerun()


# ---------------------------------------------------------------------------------------------
# Sweep (sec. 3.1): photos x random targets under the cap, both rules, the paper's numbers beside


@dataclass(frozen=True)
class SweepSettings:
    """What the sweep's controls chose; all of it is in the page's link."""

    photos: tuple[str, ...]
    targets: int
    cap: float
    rule: str  # a key of RULE_NAMES: both, paper or fit
    seed: int
    step: str  # a key of SWEEP_STEPS

    @property
    def pairs(self) -> int:
        return len(self.photos) * self.targets

    def engine_settings(self) -> dict:
        alpha = float(self.step)
        return {"rule": self.rule, "cap": self.cap, "seed": self.seed, "max_steps": DEFAULT_STEPS,
                "alpha": int(alpha) if alpha == 1 else alpha, "snap": alpha == 1}

    def job_key(self, handle: models.ModelHandle) -> str:
        return "|".join(["relabel-sweep", handle.name, ",".join(self.photos), str(self.targets),
                         json.dumps(self.engine_settings(), sort_keys=True)])


def sweep_controls() -> tuple[SweepSettings, bool]:
    photos = images.list_samples()
    with st.form("relabel_sweep", border=False):
        chosen = url_widget(st.multiselect, "Photos (bundled samples)", key="rl_sw_photos", param="photos",
                            default=list(SWEEP_PHOTOS), options=photos,
                            parse=lambda text: [name for name in text.split(",") if name], dump=",".join,
                            help="The default five photos x 10 targets (seed 0) are the issue's 50 pairs.")
        c1, c2, c3, c4, c5 = st.columns([1, 1, 1.4, 1, 1.6])
        targets = url_widget(c1.number_input, "Targets per photo", key="rl_sw_targets", param="targets", default=10,
                             parse=int, min_value=1, max_value=100,
                             help="Random classes per photo, never the photo's own top-1 (the paper: 999 each).")
        cap = url_widget(c2.number_input, "Distortion cap (eq. 3)", key="rl_sw_cap", param="cap", default=DEFAULT_CAP,
                         parse=float, min_value=0.001, max_value=0.2, step=0.001, format="%.3f")
        rule = url_widget(c3.selectbox, "Rule", key="rl_sw_rule", param="rule", default="both",
                          options=list(RULE_NAMES), format_func=RULE_NAMES.get,
                          help="The paper's rule stops at top-1 and fails a pair when the next step would pass "
                               "the cap. Fit takes the part of that step that fits under the cap.")
        seed = url_widget(c4.number_input, "Seed", key="rl_sw_seed", param="seed", default=0, parse=int,
                          min_value=0, max_value=10_000, help="Which random targets.")
        step = url_widget(c5.selectbox, "Step α", key="rl_sw_step", param="alpha", default="1",
                          options=list(SWEEP_STEPS), format_func=SWEEP_STEPS.get,
                          help="The paper's α = 50 with sgn/255 on Caffe's 0-255 images moves 0.2 of a level a "
                               "step, on a float image; whole levels keep every step on the 8-bit grid.")
        run = st.form_submit_button("Run the sweep", type="primary")
    settings = SweepSettings(photos=tuple(chosen), targets=int(targets), cap=float(cap), rule=rule, seed=int(seed),
                             step=step)
    return settings, run


def sweep_view(handle: models.ModelHandle) -> None:
    st.markdown("**Sec. 3.1, *How robust is this process?*** Each photo is relabelled towards random classes, "
                "each under the distortion cap. The paper: **98.7 %** of its pairs (10 photos of each of "
                "ImageNet's 1000 classes towards the 999 others, on GoogLeNet) succeeded under 0.01.")
    settings, run = sweep_controls()
    if not settings.photos:
        st.warning("Pick at least one photo to sweep.")
        return
    steps_factor = 1 / float(settings.step)  # fractional steps take more of them
    estimate = settings.pairs * SECONDS_PER_PAIR * steps_factor * (1.2 if settings.rule == "both" else 1)
    st.caption(f"{settings.pairs} pairs · about {estimate:.0f} s on this kind of CPU · "
               f"{'both rules on the same pairs' if settings.rule == 'both' else RULE_NAMES[settings.rule]}")
    key = settings.job_key(handle)
    if run:
        start_job(key, relabel.sweep_samples, handle, settings.photos, settings.targets,
                  title=f"Sweep: {settings.pairs} pairs", **settings.engine_settings())
    status = show_job(key, idle="Press **Run the sweep** to start.",
                      cancelled="Cancelled. Press **Run the sweep** to start again.")
    if status is not None:
        render_sweep(handle, status.result, settings)


def percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def rule_title(rule: str) -> str:
    return {"paper": "the paper's rule", "fit": "the fit rule"}[rule]


def render_sweep(handle: models.ModelHandle, results: dict[str, relabel.SweepResult], settings: SweepSettings) -> None:
    names = handle.class_names
    columns = st.columns(len(results) + 2)
    for column, (rule, result) in zip(columns, results.items()):
        column.metric(f"Relabelled, {rule_title(rule)}", percent(result.success_rate),
                      f"{result.successes} of {len(result.pairs)} pairs", delta_color="off", delta_arrow="off",
                      help=relabel.RULE_LABELS[rule])
    headline = next(iter(results.values()))
    columns[-2].metric("The paper (GoogLeNet)", percent(relabel.PAPER_SUCCESS_RATE), "cap 0.01", delta_color="off",
                       delta_arrow="off")
    columns[-1].metric(f"Mean distortion, {rule_title(headline.rule)}", f"{headline.mean_distortion:.5f}",
                       f"the paper: {relabel.PAPER_MEAN_DISTORTION}", delta_color="off", delta_arrow="off",
                       help="Eq. 3 over the relabelled pairs. The paper's 0.00814 is the mean of its 30 relabellings "
                            "in sec. 3 (Shih-Tzu and half-track).")
    rows = [{"": rule_title(rule), "relabelled": f"{r.successes} of {len(r.pairs)}",
             "success": percent(r.success_rate), "8-bit image keeps it": percent(r.saved_success_rate),
             "mean distortion": f"{r.mean_distortion:.5f}",
             "median steps": f"{np.median(r.steps):.0f}" if r.steps.size else "-"} for rule, r in results.items()]
    rows.append({"": "the paper (GoogLeNet, Caffe)", "relabelled": "10 × 1000 × 999",
                 "success": percent(relabel.PAPER_SUCCESS_RATE), "8-bit image keeps it": "-",
                 "mean distortion": f"{relabel.PAPER_MEAN_DISTORTION} (sec. 3)", "median steps": "-"})
    st.dataframe(rows, hide_index=True)
    d1, d2 = st.columns(2)
    series = {}
    for rule, result in results.items():
        edges, counts = result.distortion_histogram(bins=10)
        series[rule_title(rule)] = (((edges[:-1] + edges[1:]) / 2).round(5).tolist(), counts.tolist())
    markers = [(relabel.PAPER_MEAN_DISTORTION, "paper's mean"), (settings.cap, "cap")]
    d1.plotly_chart(plots.sweep_histogram(series, x_title="distortion (eq. 3)", markers=markers,
                                          title="Distortion of the relabelled pairs",
                                          bar_width=settings.cap / 10 * 0.4),
                    width="stretch", key="sweep_distortion")
    steps = sorted({s for result in results.values() for s in result.steps_histogram()})
    series = {rule_title(rule): (steps, [result.steps_histogram().get(s, 0) for s in steps])
              for rule, result in results.items()}
    d2.plotly_chart(plots.sweep_histogram(series, x_title="steps", title="Steps to relabel"),
                    width="stretch", key="sweep_steps")
    st.caption("Failed pairs are left out of both histograms. " + " ".join(
        f"**{rule_title(rule).capitalize()}**: {relabel.RULE_LABELS[rule].split(': ', 1)[1]}." for rule in results))
    with st.expander(f"Every pair ({len(headline.pairs)})"):
        table = []
        for i, pair in enumerate(headline.pairs):
            row = {"photo": pair.image, "target": f"{names[pair.target]} ({pair.target})"}
            for rule, result in results.items():
                other = result.pairs[i]
                row[f"{rule}: outcome"] = other.outcome
                row[f"{rule}: steps"] = other.steps
                row[f"{rule}: distortion"] = round(other.distortion, 5)
            table.append(row)
        st.dataframe(table, hide_index=True)
    c1, c2, _ = st.columns([1, 1, 3])
    c1.download_button("Pairs (CSV)", relabel.sweep_csv(results), "relabel_sweep.csv", "text/csv", key="sweep_csv")
    c2.download_button("Sweep (JSON)", io.manifest_json({"model": handle.name, **relabel.sweep_summary(results)}),
                       "relabel_sweep.json", "application/json", key="sweep_json")


# ---------------------------------------------------------------------------------------------
# One big step (sec. 3.1): the gradient is not stationary


def onestep_view(handle: models.ModelHandle, selection: Selection) -> None:
    st.markdown("**Sec. 3.1:** *\"Simply taking the first gradient and moving an equivalent distance in image "
                "space that would have arisen from many smaller steps does not successfully re-label the image.\"* "
                "Here: one sign step along the first gradient, as large as the cap allows, against the iterative "
                "method (steps of one level, the paper's rule) on the same photo and target.")
    left, right = st.columns([3, 1])
    with left:
        target = class_picker(handle, label="Turn this image into a:", key="target", default=HALF_TRACK,
                              help="Type to search the class names.")
    with right:
        cap = url_widget(st.number_input, "Distortion cap (eq. 3)", key="rl_os_cap", param="cap", default=DEFAULT_CAP,
                         parse=float, min_value=0.001, max_value=0.2, step=0.001, format="%.3f")
    view = cache.model_view(handle.name, selection.digest, selection.image_bytes)
    ranking = cache.relabel_ranking(handle.name, selection.digest, selection.image_bytes)
    if ranking.indices[0] == target:
        st.info(f"The model already calls this image a {handle.class_names[target]}: pick another class.")
        return
    key = "|".join(["relabel-onestep", handle.name, selection.digest, str(target), f"{float(cap):.6f}"])
    if find_job(key) is None:  # one click: the comparison takes a second or two, so it starts by itself
        start_job(key, relabel.single_step_vs_iterative, handle, images.to_tensor(view, device=handle.device),
                  target, cap=float(cap), title=f"One big step vs small steps → {handle.class_names[target]}")
    status = show_job(key, idle=None, cancelled="Cancelled. Change a setting or reload to start again.")
    if status is not None:
        render_onestep(handle, status.result, selection.image_name)


def render_onestep(handle: models.ModelHandle, compared: relabel.OneStepComparison, image_name: str) -> None:
    names = handle.class_names
    iterative = compared.iterative
    target = names[compared.target]
    c1, c2, c3 = st.columns(3)
    c1.image(iterative.original, caption=f"original · {names[compared.original_class]}", width="stretch")
    c2.image(compared.single_image, width="stretch",
             caption=f"one step of {compared.epsilon} levels · {names[compared.single_top1]} · "
                     f"p({target}) {compared.single_target_prob:.3f} · distortion {compared.single_distortion:.5f}")
    c3.image(iterative.image, width="stretch",
             caption=f"{iterative.steps} steps of 1 level · {names[iterative.final_class]} · "
                     f"p({target}) {iterative.target_prob[-1]:.3f} · distortion {iterative.final_distortion:.5f}")
    settings = {"target": compared.target, "cap": compared.cap}
    with c2:
        use_as_image_button(compared.single_image, name=f"{image_name} · one step → {names[compared.single_top1]}",
                            operation=f"one sign step of {compared.epsilon} levels toward {target}",
                            settings={**settings, "epsilon": compared.epsilon}, key="use_relabel_onestep_single")
    with c3:
        use_as_image_button(iterative.image, name=f"{image_name} → {names[iterative.final_class]}",
                            operation=f"{iterative.steps} one-level steps toward {target}",
                            settings={**settings, **iterative.config}, key="use_relabel_onestep_iterative")
    if compared.iterative_relabels and not compared.single_relabels:
        st.info(f"One step of {compared.epsilon} levels along the first gradient (distortion "
                f"{compared.single_distortion:.5f}) leaves the model saying **{names[compared.single_top1]}**; "
                f"{iterative.steps} steps of one level (distortion {iterative.final_distortion:.5f}, under the same "
                f"cap) make it a **{target}**.")
    elif compared.single_relabels:
        st.warning(f"Here one step of {compared.epsilon} levels already makes it a **{target}**: the paper's claim "
                   "holds in general, not for every pair. Try another target.")
    else:
        st.warning(f"The iterative run did not reach **{target}** under the cap either ({iterative.outcome}): raise "
                   "the cap or pick another target.")
    st.markdown(
        f"**Why: the gradient is not stationary.** After a single one-level step only "
        f"**{100 * compared.first_two_sign_agreement:.0f} %** of the gradient's signs still agree with the first "
        f"gradient's, and at the end of the iterative run **{100 * compared.first_last_sign_agreement:.0f} %** "
        "(a coin toss would give 50 %). Each small step asks the network again which way to go; one big step "
        "trusts the first answer all the way, and that answer only holds near the start.")
    reached = [row for row in compared.ladder if row[1] == compared.target]
    with st.expander(f"Every single step from 1 to {len(compared.ladder)} levels"
                     f"{'' if reached else f': none makes it a {target}'}"):
        st.dataframe([{"one step of (levels)": levels, "top-1": names[top1], f"p({target})": round(prob, 4),
                       "distortion": round(distortion, 5), "over the cap": distortion > compared.cap}
                      for levels, top1, prob, distortion in compared.ladder], hide_index=True)


def main() -> None:
    selection, handle = page_header(
        "Relabel", "Robinson & Graham (2015): nudge every pixel by one 8-bit level in the direction that makes the "
        "target class more likely (the sign of the gradient, eq. 1-2), until the model agrees, while the "
        "distortion (eq. 3) stays under a cap. The lecture's FGSM, PGD and least-likely attacks are here too.")
    view = view_control()
    preset_buttons(handle)
    try:
        if view == "sweep":
            sweep_view(handle)
            return
        if view == "onestep":
            onestep_view(handle, selection)
            return
    except GlassboxError as error:
        st.error(str(error))
        return
    run_view(handle, selection)


def run_view(handle: models.ModelHandle, selection: Selection) -> None:
    """One image: the chosen method towards the chosen class, with its views."""
    names = handle.class_names
    try:
        start = start_controls(handle, selection)
        ranking = cache.relabel_ranking(handle.name, start.digest, start.data)
    except GlassboxError as error:
        st.error(str(error))
        return
    settings, run = relabel_controls(handle, start)
    attack = attacks.get_attack(settings.attack)
    target, own_class = settings.target, ranking.indices[0]
    partner = swap_partner(handle, selection, start, settings)
    already = not attack.own_target and own_class == target
    goal = names[target] if target is not None else f"anything but {names[own_class]}"
    if already:
        st.info(f"The model already calls this image a {names[target]}: pick another class to relabel it into.")
    elif run:
        launch(handle, settings, start, target, f"{attack.label} → {goal}")
        if partner is not None:
            launch(handle, settings, partner, own_class, f"{partner.name} → {names[own_class]}")
    if not already:
        cap = settings.config().as_dict().get("cap")
        status = show_job(job_key(handle, settings, start, target), live=live_steps(handle, target, cap),
                          again=lambda: launch(handle, settings, start, target, f"{attack.label} → {goal}"))
        if status is not None:
            result = status.result
            render_result(handle, status, start)
            render_before_after(handle, ranking, result, target)
            render_steps(handle, result, target)
            if target is not None:
                render_gradients(handle, start, target)
            render_limits(handle, result, target if target is not None else result.final_class)
    if partner is not None:
        render_swap(handle, settings, partner, own_class)


main()

"""Relabel: make the photo take any label while it looks unchanged (Robinson & Graham 2015).

The methods are the entries of the attack registry (``engine.attacks``). A run is a job keyed by the
page's settings, and every one of them lives in the link (method, target, cap, step limit, epsilon,
the Gaussian start, the swap), so a reload or a second tab finds the same run by itself.
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
                           show_job, start_job, url_value, url_widget)

HALF_TRACK = 586  # Fig. 1's half-track
EGYPTIAN_CAT = 285
GAUSSIAN_NAME = "gaussian"
GAUSSIAN_DIGEST = f"gaussian-seed-{relabel.GAUSSIAN_SEED}"
DEFAULT_CAP, DEFAULT_STEPS, DEFAULT_EPSILON = 0.01, 300, 4
PANDA_SAMPLE, PANDA_EPSILON = "chelsea", 2  # the lecture's panda -> gibbon: eps .007 of the range is about 2 levels
SECOND_NETWORKS = ("efficientnet_lite1", "efficientnet_lite0")  # sec. 3.1's "another network"
TONES = {"success": st.success, "warning": st.warning, "info": st.info}


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


def preset_buttons(handle: models.ModelHandle) -> None:
    with st.expander("Presets from the paper", icon=":material/school:"):
        p1, p2, p3 = st.columns(3)
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


def use_preset(handle: models.ModelHandle, *, sample: str, target: int, swap: bool = False) -> None:
    """Point the sidebar and the controls at a preset (they are drawn below, or on the next run)."""
    st.session_state["_next_sample"] = sample
    st.session_state["rl_method"] = attacks.Relabel.key  # the method radio is not drawn yet in this run
    st.session_state.pop(f"_class_target_{handle.name}", None)
    set_url_value("target", str(target))
    set_url_value("method", None)  # the default, relabel
    set_url_value("untargeted", None)
    if swap:
        set_url_value("swap", "1")
    st.rerun()


def use_untargeted_preset(handle: models.ModelHandle, *, sample: str, method: str, epsilon: int) -> None:
    """The lecture's panda -> gibbon: an untargeted attack on a bundled photo."""
    st.session_state["_next_sample"] = sample
    st.session_state["rl_method"] = method
    st.session_state["rl_untargeted"] = True
    st.session_state["rl_epsilon"] = epsilon
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


def render_result(handle: models.ModelHandle, status: jobs.JobStatus, start: StartImage) -> None:
    """Before, difference and after; the numbers; the verdict; the PNG and the manifest."""
    names = handle.class_names
    result: attacks.AttackResult = status.result
    record = cache.attack_manifest(handle.name, status.id, start.name, start.sha256, result)
    c1, c2, c3 = st.columns(3)
    c1.image(result.original, caption=f"original · {names[result.original_class]}", width="stretch")
    c2.image(relabel.difference_image(result.image, result.original), caption="difference × 10, around mid-grey",
             width="stretch")
    c3.image(result.image, caption=f"relabelled · {names[result.final_class]}", width="stretch")
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
        render_result(handle, status, partner)
    if st.button("Stop swapping"):
        set_url_value("swap", None)
        st.rerun()


def main() -> None:
    selection, handle = page_header(
        "Relabel", "Robinson & Graham (2015): nudge every pixel by one 8-bit level in the direction that makes the "
        "target class more likely (the sign of the gradient, eq. 1-2), until the model agrees, while the "
        "distortion (eq. 3) stays under a cap. The lecture's FGSM, PGD and least-likely attacks are here too.")
    names = handle.class_names
    try:
        start = start_controls(handle, selection)
        ranking = cache.relabel_ranking(handle.name, start.digest, start.data)
    except GlassboxError as error:
        st.error(str(error))
        return
    preset_buttons(handle)
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
        status = show_job(job_key(handle, settings, start, target), live=live_steps(handle, target, cap))
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

"""The Artificial Mind's Eye (Berntsen, Kuijper & Heskes): a classifier that must redraw what it sees.

A triple-staged network (§2.1, Fig. 1–3) estimates an object's rotation from the image, projects that
object back to pixels with a deconvolutional network, and compares its drawing with the image patch
by patch; the class is only accepted when the drawing matches. It is set against direct classifiers
(a reduced AlexNet, with and without a parameter head, and, beyond the paper, one trained
adversarially) on 64×64 grey renders of three 3D objects over natural backgrounds (§3.1), and attacked
with the paper's one-grey-level sign steps (§3.2) to measure the effort needed to fool each (§4).

Modules: :mod:`render` (meshes and a torch z-buffer rasteriser), :mod:`data` (the deterministic data
set), :mod:`nets` (the networks), :mod:`train` (each stage's training, resumable), :mod:`attack` (the
batched sign attack), :mod:`evaluate` (Table 1 and the sweeps), :mod:`cli`.
"""

"""Pattern generation: Chaplygin & Chacksfield's conditional GAN, trained against a frozen classifier.

Paper: shared/papers/chaplygin-2019-restoring-training-distribution-cgan-patterns.txt. This package
holds the networks (:mod:`.networks`) and the losses of sec. 3 (:mod:`.losses`); the trainer, the
substrates, the page and the shipped checkpoint build on them.
"""

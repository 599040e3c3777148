"""Adapt the shipped detectors to a robot's own world from recorded in-distribution bags.

    python -m training.adapt --bag town_a.mcap --bag town_b.bag --out runs/my_town

docs/adapt.md is the user's page. The modules, in the order the command runs them:

- recordings: the bags read as the runtime reads them (topic choice, decoding, header stamps), each
  split into a fit part, a validation part and a held-back check part; bad input is refused here.
- faults: validation and check OOD made from the user's own frames (haze, darkness, glare, lens
  dirt, noise, frozen, black; spin, reverse, shake and speed-up by frame manipulation).
- encoders: the students' torch encoders rebuilt from their ONNX, fine-tuned towards the teacher on
  the new frames while anchored to their own outputs on replayed default-world frames.
- scores: the new world added to the shipped score as mixture components of its own, the
  shipped components kept for the default world; the decision tuned on the synthetic onsets.
- adapting: one detector through those steps into a verified bundle.
- report: flag shares, score distributions, AUROC and delays before and after, default world too.
- cli: the command, its stages, the resumable work folder and the final rename.
- example: the measured example's bags (docs/adapt.md).
"""

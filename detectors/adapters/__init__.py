"""One module per anomalib model that cannot take our backbone as anomalib builds it; each holds a
thin subclass that swaps ours in and changes nothing else. A detector config names the adapter
(``_target_: detectors.adapters.fastflow.Fastflow``); ``build_detector`` refuses anomalib's own class
for these models. PatchCore is the exception: configs name anomalib's class, and ``build_detector``
builds ours, which differs only in how the coreset is selected (the same indices, faster)."""

# anomalib class name -> the module here that adapts it
ADAPTED = {"Fastflow": "fastflow", "Stfpm": "stfpm", "ReverseDistillation": "reverse_distillation", "Cfa": "cfa",
           "Glass": "glass", "Supersimplenet": "supersimplenet"}

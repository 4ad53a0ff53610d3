"""Files on disk to training batches: the dataset scan (folders, image headers, captions),
caption processing and token counts, buckets and batches, the plan of a run and its report,
the image pipeline and the latent cache. Knows the model only through ``core.models``
(the tokenizer that counts caption tokens).
"""

"""Readers of the released foreign checkpoints, with explicit key tables, producing our components.

* :mod:`~speechgpt.convert.restricted_pickle`: unpickling that stubs ``fairseq``/``sklearn`` classes and refuses
  any global outside a short allow-list.
* :mod:`~speechgpt.convert.fairseq_hubert`: the fairseq mHuBERT checkpoint -> a Hugging Face ``HubertModel``.
* :mod:`~speechgpt.convert.sklearn_kmeans`: the joblib scikit-learn k-means -> its ``cluster_centers_``.
* :mod:`~speechgpt.convert.fairseq_hifigan`: the fairseq unit HiFi-GAN checkpoint.

Nothing is imported here: each reader pulls in its own (sometimes heavy) dependencies when used.
"""

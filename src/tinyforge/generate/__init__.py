"""Generate: prompts in, completions out.

* ``base``: the engine interface (``Engine``, ``SamplingParams``, ``GenerationRequest``, ``Completion``);
* ``hf``: the transformers engine (``HFEngine``);
* ``models``: which model to load (``resolve_model``), with small embedded models fetched from PyPI;
* ``cache``: the append-only generation cache (``CachedEngine``);
* ``prompts`` and ``sanitize``: what the model is shown, and turning its text into a program.

Modules are imported one by one (``from tinyforge.generate.hf import HFEngine``), so that what needs no
torch (the cache, the models table) loads without it.
"""

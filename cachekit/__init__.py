"""cachekit: portable, verified bundles of Hugging Face models, datasets and metrics.

`prefetch` (online) resolves and pins every artefact an evaluation needs and writes a bundle;
`verify` and `import` (offline) check it and install it into the standard Hugging Face cache.
Importing this package is cheap: huggingface_hub, datasets and pyarrow are imported lazily by the
modules that need them.
"""

__version__ = "0.1.0"

"""The package version: the one place it is written.

pyproject.toml reads it (``[tool.setuptools.dynamic]``) without importing the package, and
``engramdb.__version__`` re-exports it, so an installed wheel, an editable install and a checkout
used straight from ``src/`` report the same version.
"""

__version__ = "0.1.0"

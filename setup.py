"""Package layout for setuptools: probing and its subpackages, plus configs/ as probing.configs.

Metadata and dependencies are in pyproject.toml; this file only exists
because pyproject.toml cannot map a top-level folder into the package.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["probing", "probing.*"]), "probing.configs"],
    package_dir={"probing.configs": "configs"},
    # The trained tiny checkpoints (probing.models.trained) are data files; a
    # non-editable install must carry them or `trained:<family>` finds nothing.
    package_data={"probing.models.trained": ["checkpoints/*/*"]},
)

"""Package layout for setuptools: probing and its subpackages, plus configs/ as probing.configs.

Metadata and dependencies are in pyproject.toml; this file only exists
because pyproject.toml cannot map a top-level folder into the package.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["probing", "probing.*"]), "probing.configs"],
    package_dir={"probing.configs": "configs"},
)

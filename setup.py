"""Packaging: the project's folders formats/, kernels/, analyses/, pipelines/ and dashboards/ install
as ``attnlens.formats``, ``attnlens.kernels``, ... so that they never shadow the PyPI packages that
own those top-level names (Hugging Face's ``kernels``, ``formats``, ``pipelines``); ``lens`` keeps its
own name (``import lens``). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

NAMESPACED = ("formats", "kernels", "analyses", "pipelines", "dashboards")

setup(
    packages=find_packages(include=["lens", "lens.*"])
    + [f"attnlens.{p}" for p in find_packages(include=[f"{n}{s}" for n in NAMESPACED for s in ("", ".*")])],
    package_dir={f"attnlens.{n}": n for n in NAMESPACED},
)

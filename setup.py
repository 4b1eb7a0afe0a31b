"""jaxdiff: a functional JAX/Flax library for conditional diffusion models."""
from setuptools import find_packages, setup

setup(
    name="jaxdiff",
    version="0.1.0",
    description="Conditional diffusion models in JAX/Flax NNX: schedules, denoisers, samplers, "
    "guidance, training and evaluation.",
    packages=find_packages(include=["jaxdiff", "jaxdiff.*", "repro", "repro.*"]),
    # the pinned feature networks: parameters (.npz) and their checksummed manifests
    package_data={"jaxdiff": ["assets/feature_networks/*/*.npz",
                              "assets/feature_networks/*/*.json"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "ml_collections>=1.0",
        "chex>=0.1.90",
        "numpy>=1.26",
        "scipy>=1.11",
        "absl-py>=2.0",
        "tqdm>=4.60",
        "pillow>=10.0",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",
        "mlxtend>=0.23",
        "tensorboardX>=2.6",
        "tensorflow-datasets>=4.9.6",
        "grain>=0.2.10",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        "tf": ["tensorflow>=2.16"],
    },
    entry_points={"console_scripts": ["jaxdiff=jaxdiff.main:run"]},
)

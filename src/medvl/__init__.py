"""medvl: build, train, evaluate and serve medical vision-language assistants.

Importing the package is cheap on purpose: sub-packages load torch/transformers only when used.
"""

__version__ = "0.1.0"

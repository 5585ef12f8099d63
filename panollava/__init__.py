"""panollava: train and evaluate panoramic vision-language models.

Importing the package is cheap: heavy libraries (torch, lightning, transformers) are imported by the
submodules that need them.
"""

__version__ = "0.1.0"

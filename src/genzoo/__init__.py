"""genzoo: the families of deep generative models as one coherent, tested system.

    >>> import genzoo
    >>> run = genzoo.load_run("runs/vae-mnist")
    >>> images = run.model.sample(16)          # [16 x 1 x 28 x 28] in [0, 1]
"""

from genzoo._version import __version__
from genzoo.runs import Run, load_run

__all__ = ["__version__", "Run", "load_run"]

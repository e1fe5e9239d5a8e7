"""vithub: efficient vision-transformer backbones on one shared attention-kernel layer, registered with timm.

``import vithub`` registers every ``vh_*`` architecture with timm, so ``timm.create_model("vh_...")`` works, and
``timm.create_model("hf-hub:org/repo")`` builds a vh_* model pushed with :func:`push_to_hub`.
"""

if __name__ != "vithub":  # imported under its folder name from a clone's root (see vithub.kernels._shadowing)
    raise ImportError(f"{__path__[0]} is vithub's source folder for 'vithub', imported as '{__name__}' "
                      "because the repository root is on sys.path: run from another folder, or install "
                      "vithub (`pip install -e .`) and import 'vithub'.", name=__name__)

from importlib.metadata import PackageNotFoundError, version

from vithub import backbones as backbones  # noqa: F401  (registers the vh_* models with timm)
from vithub import kernels as kernels
from vithub.backbones.token_reduction import reduce_tokens
from vithub.export import ExportError, export_onnx, export_program
from vithub.publishing import HubError, WeightsMismatchError, load, pull, push_to_hub, save_pretrained

try:
    __version__ = version("vithub")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__", "backbones", "kernels", "reduce_tokens", "save_pretrained", "push_to_hub", "pull", "load",
           "export_onnx", "export_program", "ExportError", "HubError", "WeightsMismatchError"]

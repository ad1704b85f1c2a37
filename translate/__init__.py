"""translate: attention-GRU neural machine translation, from corpus to sacreBLEU.

from translate import Translator
t = Translator.load("runs/multi30k.en-de/best.pt")
t.translate("A dog runs.")
"""

__version__ = "0.1.0"
__all__ = ["Translator"]


def __getattr__(name: str):
    if name == "Translator":  # imported on first use: the command line does not pay for torch here
        from translate.translator import Translator

        return Translator
    raise AttributeError(f"module 'translate' has no attribute {name!r}")

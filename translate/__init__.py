"""translate: attention-GRU neural machine translation, from corpus to sacreBLEU."""

__version__ = "0.1.0"

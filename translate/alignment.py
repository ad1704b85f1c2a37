"""Word alignments and word-level attention from a hypothesis's subword attention.

The attention of a hypothesis is one row per decoding step (its output pieces, then the
EOS step) over the source pieces (then the source EOS). Two readings give each target
piece one source piece:

    argmax   row t: the attention of the step that *predicted* target piece t
    shifted  row t + 1: the step that *reads* piece t as its input (Chen et al. 2020,
             "Accurate word alignment induction from neural machine translation")

Pieces become words as SentencePiece marks them (a piece that starts with U+2581 begins
a word), and a piece link (s, t) becomes the word link (word(s), word(t)); pairs are
written ``i-j`` (source word i, target word j, from 0), as fast_align, Moses and
fairseq do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

METHODS = ("argmax", "shifted")  # the first is the default (README: measured on tasks with a known alignment)
WORD_START = "\u2581"


def word_ids(pieces: Sequence[str]) -> list[int]:
    """The word index of each SentencePiece piece (a piece starting with U+2581 begins a word)."""
    ids, word = [], -1
    for i, piece in enumerate(pieces):
        if i == 0 or piece.startswith(WORD_START):
            word += 1
        ids.append(word)
    return ids


def words(pieces: Sequence[str]) -> list[str]:
    """The whitespace words the pieces spell."""
    out: list[str] = []
    for piece, word in zip(pieces, word_ids(pieces)):
        if word == len(out):
            out.append("")
        out[word] += piece.replace(WORD_START, "")
    return out


def piece_links(attention: torch.Tensor, n_src: int, n_tgt: int, method: str = METHODS[0]) -> list[int]:
    """For each target piece, the source piece it attends to most.

    attention (n_tgt + 1, n_src + 1): steps x source pieces, EOS last on both axes (mean
    over heads). The source EOS column is never chosen."""
    if method not in METHODS:
        raise ValueError(f"alignment method {method!r}: choose one of {', '.join(METHODS)}")
    if n_src == 0 or n_tgt == 0:
        return []
    offset = 1 if method == "shifted" else 0
    rows = attention[offset : offset + n_tgt, :n_src]
    return rows.argmax(dim=-1).tolist()


def word_alignment(
    attention: torch.Tensor, src_pieces: Sequence[str], tgt_pieces: Sequence[str], method: str = METHODS[0]
) -> list[tuple[int, int]]:
    """Hard word alignment (source word, target word), sorted, each pair once."""
    links = piece_links(attention, len(src_pieces), len(tgt_pieces), method)
    src_words, tgt_words = word_ids(src_pieces), word_ids(tgt_pieces)
    return sorted({(src_words[s], tgt_words[t]) for t, s in enumerate(links)})


def format_alignment(pairs: Sequence[tuple[int, int]]) -> str:
    return " ".join(f"{i}-{j}" for i, j in pairs)


def word_matrix(attention: torch.Tensor, src_pieces: Sequence[str], tgt_pieces: Sequence[str]) -> torch.Tensor:
    """Attention between words: (target words, source words). A target word's row is the
    mean of its pieces' rows (argmax reading), a source word's column the sum of its
    pieces' columns, so each row still sums to at most 1 (the rest went to EOS).

    attention (..., n_tgt + 1, n_src + 1), e.g. (H, T + 1, S + 1) for each head."""
    n_src, n_tgt = len(src_pieces), len(tgt_pieces)
    a = attention[..., :n_tgt, :n_src].float()
    src_words, tgt_words = torch.tensor(word_ids(src_pieces)), torch.tensor(word_ids(tgt_pieces))
    n_sw = int(src_words.max()) + 1 if n_src else 0
    n_tw = int(tgt_words.max()) + 1 if n_tgt else 0
    to_src = torch.zeros(n_src, n_sw).index_put_((torch.arange(n_src), src_words), torch.tensor(1.0))
    to_tgt = torch.zeros(n_tw, n_tgt).index_put_((tgt_words, torch.arange(n_tgt)), torch.tensor(1.0))
    to_tgt = to_tgt / to_tgt.sum(-1, keepdim=True).clamp(min=1)
    return to_tgt @ a @ to_src

"""Titles made of whole characters: byte-fallback pieces that always form UTF-8 characters.

A SentencePiece tokenizer with byte fallback spells a character it has no piece for as its UTF-8 bytes,
one piece each (``<0xE2><0x97><0x8B>`` for ○). A model decodes such a character one byte at a time and
may stop, or go on with another token, after the first byte: the title then holds U+FFFD where the
character should be. `WholeCharacters` lets a title take a byte piece only where it continues or starts a
valid UTF-8 sequence, and end only between characters.
"""

from __future__ import annotations

import re

# What a token is, for UTF-8: a whole character (or special token), the first byte of a sequence of 2-4 bytes,
# a continuation byte, or a byte that never appears in UTF-8.
WHOLE, CONTINUATION, INVALID = 1, 0, -1
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# First bytes whose second byte has a narrower range than 0x80-0xBF: the others would give overlong forms,
# surrogates or code points beyond U+10FFFF, which decode to U+FFFD as well.
SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def utf8_role(byte: int) -> int:
    """`CONTINUATION`, `INVALID`, `WHOLE` (ASCII), or the length (2-4) of the sequence that `byte` starts."""
    if byte < 0x80:
        return WHOLE
    if byte < 0xC0:
        return CONTINUATION
    if byte < 0xC2 or byte > 0xF4:  # overlong forms and code points beyond U+10FFFF
        return INVALID
    return 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4


def byte_piece_ids(tokenizer) -> dict[int, int]:
    """The id of each byte's piece in `tokenizer`, by byte value (empty without byte fallback)."""
    return {
        int(match.group(1), 16): token_id
        for piece, token_id in tokenizer.get_vocab().items()
        if (match := _BYTE_PIECE.fullmatch(piece))
    }


def has_byte_pieces(tokenizer) -> bool:
    """Whether `tokenizer` spells anything in byte pieces (SentencePiece byte fallback)."""
    return bool(byte_piece_ids(tokenizer))


def token_roles(byte_ids: dict[int, int], vocab_size: int):
    """The UTF-8 role (`utf8_role`) of every token id: `WHOLE` for all but byte pieces."""
    import torch

    roles = torch.full((vocab_size,), WHOLE, dtype=torch.long)
    for byte, token_id in byte_ids.items():
        if token_id < vocab_size:
            roles[token_id] = utf8_role(byte)
    return roles


class WholeCharacters:
    """A logits processor that keeps byte pieces in whole, valid UTF-8 characters.

    After the first byte of an n-byte character only continuation bytes may follow (in the narrower range
    that some first bytes require), until n bytes are there; anywhere else a continuation byte, a byte that
    UTF-8 never uses and, inside a character, end-of-title are ruled out. The state of each row is read from
    its last three tokens, so it holds through beam search's reordering of rows.

    Args:
        byte_ids: `byte_piece_ids` of the tokenizer.
        vocab_size: The model's vocabulary size (scores per step).
        eos_token_id: End-of-title (an int or a list of them).
    """

    def __init__(self, byte_ids: dict[int, int], vocab_size: int, eos_token_id):
        import torch

        self.roles = token_roles(byte_ids, vocab_size)
        eos_token_ids = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
        # What may follow a byte that leaves a character unfinished, and what may come between characters.
        self.inside = self.roles == CONTINUATION
        self.between = (self.roles != CONTINUATION) & (self.roles != INVALID)
        self.between[eos_token_ids] = True
        # The narrower second bytes, by the id of the first byte's piece.
        self.second = {}
        for first, (low, high) in SECOND_BYTE.items():
            if first in byte_ids:
                allowed = torch.zeros(vocab_size, dtype=torch.bool)
                allowed[[byte_ids[b] for b in range(low, high + 1) if b in byte_ids]] = True
                self.second[byte_ids[first]] = allowed

    def __call__(self, input_ids, scores):
        import torch

        if self.roles.device != scores.device:
            self.roles, self.inside, self.between = (
                t.to(scores.device) for t in (self.roles, self.inside, self.between)
            )
            self.second = {k: v.to(scores.device) for k, v in self.second.items()}
        input_ids = input_ids.to(scores.device)
        # Bytes still missing from the character each title is in (0 between characters).
        missing = torch.zeros(input_ids.shape[0], dtype=torch.long, device=scores.device)
        for position in range(max(0, input_ids.shape[1] - 3), input_ids.shape[1]):
            role = self.roles[input_ids[:, position]]
            missing = torch.where(role == CONTINUATION, (missing - 1).clamp(min=0), (role - 1).clamp(min=0))
        allowed = torch.where((missing > 0)[:, None], self.inside, self.between)
        last = input_ids[:, -1]
        for first, second in self.second.items():
            allowed[last == first] &= second
        return scores.masked_fill(~allowed, float("-inf"))


def drop_broken_characters(text: str) -> str:
    """`text` without U+FFFD, which the decoder writes for each byte of a run of byte pieces that is not valid
    UTF-8: a title cut inside a character at its length limit loses that run, rather than showing it so."""
    return text.replace("\ufffd", "")

"""Transaction numbers: the boot epoch in the high 32 bits, a sequence in the low 32.

Every start of a target bumps its epoch, so any transno handed out after a restart is larger
than every transno of an earlier life, and replays (which keep their original transno) sort
before new work.
"""

from __future__ import annotations

EPOCH_SHIFT = 32
SEQ_MASK = (1 << EPOCH_SHIFT) - 1


def make_transno(epoch: int, seq: int) -> int:
    return (epoch << EPOCH_SHIFT) | (seq & SEQ_MASK)


def epoch_of(transno: int) -> int:
    return transno >> EPOCH_SHIFT


def seq_of(transno: int) -> int:
    return transno & SEQ_MASK

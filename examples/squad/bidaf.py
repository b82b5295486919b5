"""A BiDAF-style reading-comprehension model (Seo et al., 2017), word-level: a user's model, not isscompress's.

word embedding -> one bidirectional LSTM shared by passage and question (the context encoder) ->
attention flow (trilinear similarity, passage-to-question and question-to-passage attention, the 8d
representation G) -> a two-layer bidirectional modeling LSTM -> start pointer; one more bidirectional
LSTM -> end pointer. Variable-length batches are packed. The ISS paper (Wen et al., ICLR 2018, sec. 4.2)
compressed the bidirectional LSTMs of exactly this architecture (with character embeddings) on SQuAD.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

NEG = -1e30


class BiDAF(nn.Module):
    def __init__(self, vocab: int, embed: int = 100, hidden: int = 100, dropout: float = 0.2) -> None:
        super().__init__()
        d2 = 2 * hidden
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        self.context = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
        self.w_h = nn.Parameter(torch.empty(d2, 1).uniform_(-0.1, 0.1))  # trilinear similarity w^T [h; u; h*u]
        self.w_u = nn.Parameter(torch.empty(d2, 1).uniform_(-0.1, 0.1))
        self.w_hu = nn.Parameter(torch.empty(d2).uniform_(-0.1, 0.1))
        self.modeling = nn.LSTM(4 * d2, hidden, num_layers=2, batch_first=True, bidirectional=True, dropout=dropout)
        self.end_encoder = nn.LSTM(d2, hidden, batch_first=True, bidirectional=True)
        self.start = nn.Linear(5 * d2, 1)
        self.end = nn.Linear(5 * d2, 1)
        self.drop = nn.Dropout(dropout)

    @staticmethod
    def encode(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def forward(self, passage: Tensor, question: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids (batch, T) and (batch, J), 0 = padding -> start and end logits (batch, T)."""
        p_mask, q_mask = passage != 0, question != 0
        p_len, q_len = p_mask.sum(1).clamp_min(1), q_mask.sum(1).clamp_min(1)
        h = self.encode(self.context, self.drop(self.embed(passage)), p_len)  # (B, T, 2d)
        u = self.encode(self.context, self.drop(self.embed(question)), q_len)  # (B, J, 2d)
        s = h @ self.w_h + (u @ self.w_u).transpose(1, 2) + (h * self.w_hu) @ u.transpose(1, 2)  # (B, T, J)
        s = s.masked_fill(~q_mask.unsqueeze(1), NEG)
        c2q = torch.softmax(s, dim=-1) @ u  # (B, T, 2d)
        b = torch.softmax(s.max(dim=-1).values.masked_fill(~p_mask, NEG), dim=-1)  # (B, T)
        q2c = (b.unsqueeze(1) @ h).expand(-1, h.shape[1], -1)  # (B, T, 2d)
        g = torch.cat([h, c2q, h * c2q, h * q2c], dim=-1)  # (B, T, 8d)
        m = self.encode(self.modeling, self.drop(g), p_len)  # (B, T, 2d)
        m2 = self.encode(self.end_encoder, self.drop(m), p_len)
        start = self.start(self.drop(torch.cat([g, m], dim=-1))).squeeze(-1).masked_fill(~p_mask, NEG)
        end = self.end(self.drop(torch.cat([g, m2], dim=-1))).squeeze(-1).masked_fill(~p_mask, NEG)
        return start, end

"""Small recurrent models of the kinds people ship, each with example inputs: the any-model API's test zoo."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class AttentionClassifier(nn.Module):
    """Embedding -> BiLSTM -> attention pooling over time -> linear classifier."""

    def __init__(self, vocab: int = 30, emb: int = 8, hidden: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * hidden, 1)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        weights = torch.softmax(self.score(torch.tanh(h)).squeeze(-1), dim=1)
        pooled = (weights.unsqueeze(-1) * h).sum(1)
        return self.out(pooled)


class Seq2Seq(nn.Module):
    """An encoder LSTM whose final (h, c) starts the decoder LSTM (their units are coupled)."""

    def __init__(self, vocab: int = 25, emb: int = 7, hidden: int = 5) -> None:
        super().__init__()
        self.src = nn.Embedding(vocab, emb)
        self.tgt = nn.Embedding(vocab, emb)
        self.encoder = nn.LSTM(emb, hidden, num_layers=2, batch_first=True)
        self.decoder = nn.LSTM(emb, hidden, num_layers=2, batch_first=True)
        self.proj = nn.Linear(hidden, vocab)

    def forward(self, source, target):
        _, state = self.encoder(self.src(source))
        out, _ = self.decoder(self.tgt(target), state)
        return self.proj(out)


class BiEncoderSeq2Seq(nn.Module):
    """A bidirectional encoder whose directions' final states, concatenated, start a wider GRU decoder."""

    def __init__(self, vocab: int = 25, emb: int = 6, hidden: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.encoder = nn.GRU(emb, hidden, batch_first=True, bidirectional=True)
        self.decoder = nn.GRU(emb, 2 * hidden, batch_first=True)
        self.out = nn.Linear(2 * hidden, vocab)

    def forward(self, source, target):
        _, h = self.encoder(self.emb(source))
        start = torch.cat([h[0], h[1]], dim=-1).unsqueeze(0)
        out, _ = self.decoder(self.emb(target), start)
        return self.out(out)


class StackedWithDropout(nn.Module):
    """Separate LSTM modules with dropout between them, the last read through a residual sum with the first."""

    def __init__(self, vocab: int = 20, emb: int = 6, hidden: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.first = nn.LSTM(emb, hidden)
        self.drop = nn.Dropout(0.3)
        self.second = nn.LSTM(hidden, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        a, _ = self.first(self.emb(tokens))
        b, _ = self.second(self.drop(a))
        return self.head(self.drop(a + b))


class GRUTagger(nn.Module):
    """A two-layer bidirectional GRU tagger with a per-token linear head."""

    def __init__(self, vocab: int = 20, emb: int = 5, hidden: int = 6, tags: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, num_layers=2, bidirectional=True)
        self.tag = nn.Linear(2 * hidden, tags)

    def forward(self, tokens):
        out, _ = self.gru(self.emb(tokens))
        return torch.log_softmax(self.tag(torch.relu(out)), -1)


class ProjectedClassifier(nn.Module):
    """A projected LSTM (proj_size) read at its last time step and by its final state."""

    def __init__(self, features: int = 7, hidden: int = 8, proj: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, proj_size=proj, batch_first=True)
        self.head = nn.Linear(2 * proj, classes)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(torch.cat([out[:, -1], h[-1]], dim=-1))


class PackedTagger(nn.Module):
    """Variable-length batches packed for an LSTM and a second LSTM, padded back for a Conv1d head."""

    def __init__(self, vocab: int = 20, emb: int = 5, hidden: int = 4, tags: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(2 * hidden, hidden, batch_first=True)
        self.conv = nn.Conv1d(hidden, tags, kernel_size=3, padding=1)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.emb(tokens), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = self.lstm2(out)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        return self.conv(padded.transpose(1, 2))


class HighwayTagger(nn.Module):
    """isscompress's own RHN layer (the cell table's module) inside a user's model, feeding an LSTM."""

    def __init__(self, vocab: int = 20, emb: int = 5, hidden: int = 6, tags: int = 3) -> None:
        super().__init__()
        from isscompress.layers.rhn import RHNLayer

        self.emb = nn.Embedding(vocab, emb)
        self.rhn = RHNLayer(emb, hidden, depth=2)
        self.lstm = nn.LSTM(hidden, 4)
        self.tag = nn.Linear(4, tags)

    def forward(self, tokens):
        out, _ = self.rhn(self.emb(tokens))
        out, _ = self.lstm(torch.relu(out))
        return self.tag(out)


class MLPTagger(nn.Module):
    """Every kind of width: an embedding, a Conv1d feature layer in front of the LSTM, an MLP head (Linear, ReLU,
    dropout, Linear) behind it, and a Linear whose features a LayerNorm mixes (that width cannot go)."""

    def __init__(self, vocab: int = 20, emb: int = 6, channels: int = 5, hidden: int = 4, mlp: int = 7,
                 tags: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.conv = nn.Conv1d(emb, channels, kernel_size=3, padding=1)
        self.lstm = nn.LSTM(channels, hidden, batch_first=True)
        self.fc1 = nn.Linear(hidden, mlp)
        self.pre = nn.Linear(hidden, 3)
        self.norm = nn.LayerNorm(3)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(mlp + 3, tags)

    def forward(self, tokens):
        x = torch.relu(self.conv(self.emb(tokens).transpose(1, 2))).transpose(1, 2)
        h, _ = self.lstm(x)
        return self.out(torch.cat([self.drop(torch.relu(self.fc1(h))), self.norm(self.pre(h))], dim=-1))


class SelfAttentionTagger(nn.Module):
    """Single-head self-attention over an LSTM's outputs: query and key projections meet only in their scores (one
    width together), the value projection is read by the output layer (a width of its own)."""

    def __init__(self, vocab: int = 20, emb: int = 6, hidden: int = 5, key: int = 4, value: int = 3,
                 tags: int = 2) -> None:
        super().__init__()
        self.emb, self.lstm = nn.Embedding(vocab, emb), nn.LSTM(emb, hidden, batch_first=True)
        self.q, self.k, self.v = nn.Linear(hidden, key), nn.Linear(hidden, key), nn.Linear(hidden, value)
        self.out = nn.Linear(value, tags)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        scores = self.q(h) @ self.k(h).transpose(1, 2) / 2.0
        return self.out(torch.softmax(scores, -1) @ self.v(h))


def tokens(*shape: int, vocab: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def zoo() -> dict[str, tuple[nn.Module, tuple]]:
    """name -> (model, example inputs), seeded."""
    torch.manual_seed(0)
    from bidaf import BiDAF  # examples/squad, put on sys.path by conftest

    return {
        "attention_classifier": (AttentionClassifier(), (tokens(3, 7, vocab=30),)),
        "seq2seq": (Seq2Seq(), (tokens(2, 6, vocab=25), tokens(2, 5, vocab=25, seed=1))),
        "bi_encoder_seq2seq": (BiEncoderSeq2Seq(), (tokens(2, 6, vocab=25), tokens(2, 4, vocab=25, seed=1))),
        "stacked_dropout": (StackedWithDropout(), (tokens(6, 2),)),
        "gru_tagger": (GRUTagger(), (tokens(5, 3),)),
        "projected_classifier": (ProjectedClassifier(), (torch.randn(2, 6, 7),)),
        "packed_tagger": (PackedTagger(), (tokens(3, 6), torch.tensor([6, 3, 4]))),
        "bidaf": (BiDAF(vocab=40, embed=8, hidden=5), (tokens(2, 12, vocab=40), tokens(2, 5, vocab=40, seed=1))),
        "pooled_attention": (PooledAttentionClassifier(), (tokens(3, 7),)),
        "highway_tagger": (HighwayTagger(), (tokens(6, 2),)),
        "mlp_tagger": (MLPTagger(), (tokens(3, 6),)),
        "self_attention": (SelfAttentionTagger(), (tokens(2, 5),)),
    }


class PooledAttentionClassifier(nn.Module):
    """Max-pooling over time with F.max_pool1d and attention scores from a parameter vector (h @ w)."""

    def __init__(self, vocab: int = 20, emb: int = 6, hidden: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.w = nn.Parameter(torch.randn(2 * hidden))
        self.out = nn.Linear(4 * hidden, classes)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        pooled = nn.functional.max_pool1d(h.transpose(1, 2), h.size(1)).squeeze(2)
        weights = torch.softmax(h @ self.w, dim=1)
        attended = (weights.unsqueeze(-1) * h).sum(1)
        return self.out(torch.cat([pooled, attended], dim=-1))

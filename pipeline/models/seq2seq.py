"""Many-to-many, encoder-decoder: a bidirectional RNN encoder, attention, and an RNN decoder with input feeding.

One decoder step (Luong et al., 2015, with input feeding; OpenNMT-py's ``InputFeedRNNDecoder``)::

    y_{t-1} ──embed──┐
                     ├─ concat ─► RNN (L layers) ─► h_t ─► attention(h_t, memory) ─► c_t
    h~_{t-1} ────────┘                                │                               │
       ▲                                              └──────── concat ◄──────────────┘
       │                                                          │
       └────────────── h~_t = tanh(W_c [c_t; h_t]) ◄──────────────┘ ─► dropout ─► W_o ─► logits_t

Input feeding hands h~_{t-1} (what the decoder attended to last) to the next step; it makes the steps sequential, so
without it (``input_feeding: false``) and with full teacher forcing the decoder runs over the whole target in one
RNN call and attends for all steps at once, which is faster. The same :meth:`Seq2Seq.step` serves training (teacher
forcing, scheduled sampling) and search (:mod:`pipeline.models.beam_search`), so they cannot drift apart.

States are dicts of tensors with the batch on dim 0 (the RNN's (L, B, H) hidden state is kept as (B, L, H)), so that
search code can pick rows (beams) out of any of them with one ``index_select``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.attention import Attention, Kind, source_mask
from pipeline.models.linear_cross_entropy import linear_cross_entropy
from pipeline.models.loop_weights import LoopBmm, LoopLinear, LoopRNN
from pipeline.models.recurrent import Cell, make_rnn, run_packed


class Seq2Seq(nn.Module):
    """Attentional RNN encoder-decoder for translation.

    Args:
        src_vocab_size: Source token ids (linked from the data's tokenizer by the CLI).
        tgt_vocab_size: Target token ids (linked from the data's tokenizer by the CLI).
        embedding_dim: Size of source and target embeddings.
        hidden_size: Decoder hidden size and encoder output size (a bidirectional encoder gives each direction half).
        encoder_layers: Stacked encoder layers.
        decoder_layers: Stacked decoder layers.
        cell: ``rnn`` (tanh), ``lstm`` or ``gru``, for encoder and decoder.
        bidirectional: Read the source in both directions.
        attention: ``general`` / ``dot`` (Luong, multiplicative) or ``additive`` (Bahdanau).
        input_feeding: Feed the previous attentional vector into the next decoder step.
        output_size: Size of the attentional vector h~ that feeds the output layer (default: ``embedding_dim`` when
            ``tie_embeddings``, else ``hidden_size``); smaller is faster, the output layer dominates the cost.
        dropout: Dropout on embeddings, between stacked layers and on h~.
        tie_embeddings: Share the target embedding matrix with the output layer (Press & Wolf, 2017).
        share_embeddings: Share source and target embeddings (needs a joint vocabulary).
        pad_id: The padding token id of both vocabularies (the pipeline's tokenizers reserve 0); its embedding row
            stays zero and gets no gradient.
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        embedding_dim: int = 256,
        hidden_size: int = 512,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        cell: Cell = "gru",
        bidirectional: bool = True,
        attention: Kind = "general",
        input_feeding: bool = True,
        output_size: int | None = None,
        dropout: float = 0.3,
        tie_embeddings: bool = False,
        share_embeddings: bool = False,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if bidirectional and hidden_size % 2:
            raise ValueError(f"hidden_size {hidden_size} must be even for a bidirectional encoder.")
        out_size = output_size or (embedding_dim if tie_embeddings else hidden_size)
        if tie_embeddings and out_size != embedding_dim:
            raise ValueError(
                f"tie_embeddings needs output_size ({out_size}) == embedding_dim ({embedding_dim})."
            )
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs one joint vocabulary, but the source has {src_vocab_size} ids and the "
                f"target {tgt_vocab_size}; set data.joint_vocab: true or model share_embeddings: false."
            )
        self.cell, self.input_feeding, self.pad_id = cell, input_feeding, pad_id
        self.decoder_layers, self.hidden_size, self.output_size = decoder_layers, hidden_size, out_size
        enc_hidden = hidden_size // 2 if bidirectional else hidden_size

        self.src_embed = nn.Embedding(src_vocab_size, embedding_dim, padding_idx=pad_id)
        self.tgt_embed = (
            self.src_embed
            if share_embeddings
            else nn.Embedding(tgt_vocab_size, embedding_dim, padding_idx=pad_id)
        )
        self.encoder = make_rnn(cell, embedding_dim, enc_hidden, encoder_layers, dropout, bidirectional)
        # final encoder state (both directions of the last layer) -> initial decoder state of every layer
        n_states = 2 if cell == "lstm" else 1
        self.bridge = nn.Linear(hidden_size, n_states * decoder_layers * hidden_size)
        feed = out_size if input_feeding else 0
        self.decoder = make_rnn(cell, embedding_dim + feed, hidden_size, decoder_layers, dropout)
        self.attention = Attention(attention, hidden_size, hidden_size)
        self.combine = nn.Linear(2 * hidden_size, out_size, bias=False)
        self.drop = nn.Dropout(dropout)
        self.generator = nn.Linear(out_size, tgt_vocab_size)
        if tie_embeddings:
            self.generator.weight = self.tgt_embed.weight

    # --- encoder ----------------------------------------------------------------------------------------------
    def start(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[dict, dict]:
        """Encode src (B, S) with lengths (B,); returns the memory (fixed per sentence) and the first decoder state."""
        x = self.drop(self.src_embed(src))  # (B, S, E)
        out, final = run_packed(self.encoder, x, src_lengths)  # (B, S, H)
        h = final[0] if isinstance(final, tuple) else final  # (L*D, B, H/D)
        d = 2 if self.encoder.bidirectional else 1
        last = torch.cat(list(h[-d:]), dim=-1)  # (B, H): both directions of the last layer
        init = torch.tanh(self.bridge(last)).view(src.size(0), -1, self.decoder_layers, self.hidden_size)
        hidden = (init[:, 0], init[:, 1]) if self.cell == "lstm" else init[:, 0]  # (B, L, H) each
        if torch.is_autocast_enabled(out.device.type):  # once, not in every step's bmm
            out = out.to(torch.get_autocast_dtype(out.device.type))
        memory = {
            "memory": out,  # (B, S, H)
            "keys": self.attention.keys(out),  # (B, K, S); (B, S, A) for additive attention
            "mask": source_mask(src_lengths.to(src.device), src.size(1)),  # (B, S)
        }
        feed = out.new_zeros(src.size(0), self.output_size) if self.input_feeding else None
        return memory, {"hidden": hidden, "feed": feed}

    # --- decoder ----------------------------------------------------------------------------------------------
    def _run_decoder(self, x: torch.Tensor, hidden) -> tuple[torch.Tensor, object]:
        """Decoder RNN over x (B, T, I) from a batch-first state (B, L, H); returns (B, T, H) and the new state."""

        def to_rnn(s: torch.Tensor) -> torch.Tensor:
            return s.transpose(0, 1).contiguous().to(x.dtype)  # (L, B, H)

        state = tuple(to_rnn(s) for s in hidden) if isinstance(hidden, tuple) else to_rnn(hidden)
        out, state = self.decoder(x, state)
        state = tuple(s.transpose(0, 1) for s in state) if isinstance(state, tuple) else state.transpose(0, 1)
        return out, state

    def _attend(
        self, h: torch.Tensor, memory: dict, combine: LoopLinear | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder outputs h (B, T, H) -> attentional vectors h~ (B, T, O) and attention weights (B, T, S)."""
        context, weights = self.attention(h, memory["keys"], memory["memory"], memory["mask"])
        both = torch.cat([context.to(h.dtype), h], dim=-1)  # (B, T, 2H)
        mixed = (
            self.combine(both) if combine is None else combine(both.flatten(0, 1)).view(*both.shape[:2], -1)
        )
        return torch.tanh(mixed), weights

    def _step_vectors(
        self, emb: torch.Tensor, memory: dict, state: dict, loop: tuple | None = None
    ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """One step from embedded inputs (B, E): h~ (B, O) after dropout, the new state, weights (B, S).

        ``loop``: (LoopRNN, LoopLinear) of the decoder and the combine layer, for a teacher-forced pass under
        autocast (see :mod:`pipeline.models.loop_weights`); ``emb`` is then already projected by the RNN's input
        weights (B, gates * H)."""
        if loop is None:
            x = emb if state["feed"] is None else torch.cat([emb, state["feed"].to(emb.dtype)], dim=-1)
            h, hidden = self._run_decoder(x.unsqueeze(1), state["hidden"])  # (B, 1, H)
            vec, weights = self._attend(h, memory)
        else:
            rnn, combine = loop
            # (B, H), (L, B, H): the feed through its half of W_ih, the embedding's half was computed ahead
            out, hidden = rnn.step(state["feed"], _swap_batch_and_layers(state["hidden"]), emb)
            hidden = _swap_batch_and_layers(hidden)
            vec, weights = self._attend(out.unsqueeze(1), memory, combine)  # (B, 1, O)
        vec = self.drop(vec[:, 0])  # (B, O)
        return vec, {"hidden": hidden, "feed": vec if self.input_feeding else None}, weights[:, 0]

    def step(
        self, tokens: torch.Tensor, memory: dict, state: dict
    ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Search step: previous tokens (N,) -> logits (N, V), new state, attention weights (N, S)."""
        vec, state, weights = self._step_vectors(self.drop(self.tgt_embed(tokens)), memory, state)
        return self.generator(vec), state, weights

    def forward(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        tgt_in: torch.Tensor,
        teacher_forcing: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training/validation pass: src (B, S), tgt_in (B, T) = BOS + target -> logits (B, T, V), weights (B, T, S).

        With ``teacher_forcing`` < 1 each step feeds, with probability 1 - ratio per sentence, the model's own
        previous prediction instead of the reference token (scheduled sampling, Bengio et al., 2015).
        """
        if teacher_forcing >= 1.0:
            vec, weights = self.vectors(src, src_lengths, tgt_in)
            return self.generator(vec), weights
        memory, state = self.start(src, src_lengths)
        emb = self.drop(self.tgt_embed(tgt_in))  # (B, T, E)
        all_weights, logits = [], []
        for t in range(tgt_in.size(1)):
            x = emb[:, t]
            if teacher_forcing < 1.0 and t > 0:
                own = self.tgt_embed(logits[-1].argmax(-1))  # (B, E)
                use_own = torch.rand(x.size(0), 1, device=x.device) >= teacher_forcing
                x = torch.where(use_own, self.drop(own), x)
            vec, state, weights = self._step_vectors(x, memory, state)
            all_weights.append(weights)
            logits.append(self.generator(vec))
        return torch.stack(logits, 1), torch.stack(all_weights, 1)  # (B, T, V), (B, T, S)

    def vectors(
        self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass up to the output layer: attentional vectors h~ (B, T, O) after dropout, weights
        (B, T, S)."""
        memory, state = self.start(src, src_lengths)
        emb = self.drop(self.tgt_embed(tgt_in))  # (B, T, E)
        if not self.input_feeding:  # every step at once
            h, _ = self._run_decoder(emb, state["hidden"])  # (B, T, H)
            vec, weights = self._attend(h, memory)
            return self.drop(vec), weights
        vecs, all_weights = [], []
        loop = None
        device = src.device.type
        if torch.is_autocast_enabled(device) and self.cell in ("gru", "lstm"):
            low = torch.get_autocast_dtype(device)  # weights cast once, gradients by one GEMM over the steps
            rnn = LoopRNN(self.decoder, low, ahead=emb.size(-1))
            loop = (rnn, LoopLinear.of(self.combine, low))
            emb = rnn.project(emb)  # (B, T, gates * H): every step's embedding through W_ih in one GEMM
            if self.attention.kind != "additive":  # keys' and memory's gradients: one bmm each after the loop
                memory = memory | {"keys": LoopBmm(memory["keys"]), "memory": LoopBmm(memory["memory"])}
        # unbind, not emb[:, t]: each indexing's backward would write its step into a zeroed (B, T, .) tensor, T
        # times over; unbind's backward stacks the T step gradients once
        for x in emb.unbind(1):
            vec, state, weights = self._step_vectors(x, memory, state, loop)
            vecs.append(vec)
            all_weights.append(weights)
        return torch.stack(vecs, 1), torch.stack(all_weights, 1)

    def summed_nll(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        tgt_in: torch.Tensor,
        tgt_out: torch.Tensor,
        label_smoothing: float = 0.0,
        teacher_forcing: float = 1.0,
    ) -> torch.Tensor:
        """Cross-entropy summed over the real (non-pad) target tokens of tgt_out (B, T).

        Teacher-forced, the output layer runs only on real positions and together with the loss, chunk by chunk
        (:mod:`pipeline.models.linear_cross_entropy`); the (B, T, V) logits are never made.
        """
        if teacher_forcing < 1.0:
            logits, _ = self(src, src_lengths, tgt_in, teacher_forcing)
            return F.cross_entropy(
                logits.flatten(0, 1).float(),
                tgt_out.flatten(),
                ignore_index=self.pad_id,
                label_smoothing=label_smoothing,
                reduction="sum",
            )
        vec, _ = self.vectors(src, src_lengths, tgt_in)  # (B, T, O)
        real = tgt_out != self.pad_id  # (B, T)
        return linear_cross_entropy(
            vec[real], self.generator.weight, self.generator.bias, tgt_out[real], self.pad_id, label_smoothing
        )


def _swap_batch_and_layers(state):
    """A state batch-first (B, L, H) <-> as the RNN keeps it (L, B, H); (h, c) pairs alike."""
    return tuple(s.transpose(0, 1) for s in state) if isinstance(state, tuple) else state.transpose(0, 1)

import pytest
import torch

from pipeline.models.classifier import SequenceClassifier
from pipeline.models.recurrent import make_rnn


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_logits_shape_and_padding_is_ignored(cell, pooling):
    torch.manual_seed(0)
    net = SequenceClassifier(
        vocab_size=50,
        num_classes=3,
        embedding_dim=8,
        hidden_size=6,
        num_layers=2,
        cell=cell,
        bidirectional=True,
        pooling=pooling,
    ).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    lengths = torch.tensor([3, 5])
    logits = net(tokens, lengths)
    assert logits.shape == (2, 3)
    # the same sentence with no padding at all gives the same logits: packed sequences skip the pads
    alone = net(tokens[:1, :3], lengths[:1])
    torch.testing.assert_close(logits[:1], alone)


def test_unknown_cell_type_names_the_choices():
    with pytest.raises(ValueError, match="unknown cell type 'transformer': choose one of rnn, lstm, gru"):
        make_rnn("transformer", 4, 4)


def test_one_weight_set_shared_over_time_and_its_gradient_sums_over_steps():
    """h_t = f_W(h_{t-1}, x_t): the same W at every step; dL/dW is the sum of the per-step contributions."""
    torch.manual_seed(0)
    rnn = make_rnn("rnn", 3, 4)
    x = torch.randn(1, 5, 3)
    out, _ = rnn(x)
    out[:, -1].sum().backward()
    full = rnn.weight_ih_l0.grad.clone()
    # the parameter count does not depend on the sequence length
    assert sum(p.numel() for p in rnn.parameters()) == 4 * 3 + 4 * 4 + 4 + 4
    # gradient through the steps = sum of gradients w.r.t. per-step copies of W_ih
    w = rnn.weight_ih_l0.detach()
    copies = [w.clone().requires_grad_(True) for _ in range(5)]
    h = torch.zeros(4)
    for t in range(5):
        h = torch.tanh(copies[t] @ x[0, t] + rnn.bias_ih_l0 + rnn.weight_hh_l0 @ h + rnn.bias_hh_l0)
    h.sum().backward()
    torch.testing.assert_close(sum(c.grad for c in copies), full)


def test_unpacked_mode_equals_packed_when_nothing_is_padded():
    torch.manual_seed(0)
    packed = SequenceClassifier(vocab_size=30, embedding_dim=8, hidden_size=6, cell="gru", packed=True).eval()
    padded = SequenceClassifier(
        vocab_size=30, embedding_dim=8, hidden_size=6, cell="gru", packed=False
    ).eval()
    padded.load_state_dict(packed.state_dict())
    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    lengths = torch.tensor([4, 4])
    torch.testing.assert_close(packed(tokens, lengths), padded(tokens, lengths))


def test_word_dropout_removes_whole_words_in_training_only():
    torch.manual_seed(0)
    net = SequenceClassifier(vocab_size=50, embedding_dim=8, hidden_size=6, word_dropout=0.5, packed=False)
    tokens = torch.randint(1, 50, (4, 20))
    lengths = torch.full((4,), 20)
    seen = {}
    net.rnn.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    net.train()
    net(tokens, lengths)
    zeroed = (seen["x"] == 0).all(-1)  # (B, T): the words read as absent
    assert 0.3 < zeroed.float().mean() < 0.7  # about half the words, each as a whole vector
    net.eval()
    net(tokens, lengths)
    assert not (seen["x"] == 0).all(-1).any()  # evaluation reads every word
    with pytest.raises(ValueError, match="word_dropout is 1.0"):
        SequenceClassifier(vocab_size=50, word_dropout=1.0)


def test_adversarial_shift_has_length_eps_per_sentence_raises_the_loss_and_leaves_pads():
    """SentimentTask.adversarial_eps: the second pass reads the embeddings moved by eps (L2, per sentence) along the
    normalized gradient of the loss: the loss there is higher than the clean loss, and a pad is never moved."""
    from pipeline.tasks.sentiment import SentimentTask

    torch.manual_seed(0)
    net = SequenceClassifier(vocab_size=50, embedding_dim=8, hidden_size=6, packed=False).eval()
    task = SentimentTask(net, adversarial_eps=0.5)
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11], [12, 13, 0, 0]])
    lengths, labels = torch.tensor([3, 4, 2]), torch.tensor([0, 1, 1])
    embedded = net.embed(tokens)
    embedded.retain_grad()
    clean = torch.nn.functional.cross_entropy(net.classify(embedded, tokens, lengths), labels)
    clean.backward()
    shift = task.adversarial_shift(embedded.grad, lengths)  # (B, T, E)
    torch.testing.assert_close(shift.flatten(1).norm(dim=1), torch.full((3,), 0.5))
    assert (shift[0, 3] == 0).all() and (shift[2, 2:] == 0).all()
    moved = torch.nn.functional.cross_entropy(net.classify(embedded + shift, tokens, lengths), labels)
    noise = torch.randn_like(shift) * (shift != 0)  # a random move of the same length, for comparison
    noise = 0.5 * noise / noise.flatten(1).norm(dim=1)[:, None, None]
    randomly = torch.nn.functional.cross_entropy(net.classify(embedded + noise, tokens, lengths), labels)
    assert moved > clean and moved - clean > 3 * abs(randomly - clean)
    with pytest.raises(ValueError, match="adversarial_eps is -1.0; set it above 0"):
        SentimentTask(net, adversarial_eps=-1.0)


def test_label_smoothing_spreads_the_target_and_rejects_a_bad_share():
    from pipeline.tasks.sentiment import SentimentTask

    net = SequenceClassifier(vocab_size=50, embedding_dim=8, hidden_size=6)
    logits, labels = torch.tensor([[3.0, -1.0], [0.5, 0.2]]), torch.tensor([0, 1])
    logp = logits.log_softmax(-1)
    target = torch.tensor([[0.95, 0.05], [0.05, 0.95]])  # 0.1 spread over the two classes
    torch.testing.assert_close(
        SentimentTask(net, label_smoothing=0.1).loss(logits, labels), -(target * logp).sum(1).mean()
    )
    hard = SentimentTask(net).loss(logits, labels)
    torch.testing.assert_close(hard, torch.nn.functional.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="model.label_smoothing is 1.5; set it in"):
        SentimentTask(net, label_smoothing=1.5)

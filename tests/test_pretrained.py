"""GPT-2 checkpoints in Hugging Face's layout (gpt/pretrained.py) and the safetensors
format (gpt/safetensors.py): round trips, config.json field by field, shards, dtypes,
bad files. Where transformers (and torch) are installed, both directions are checked
against GPT2LMHeadModel; elsewhere those tests skip."""
import json
import struct
import warnings

import numpy as np
import pytest

import nn
import tensorgrad as tg
from gpt import GPT, GPTConfig
from gpt.errors import ConfigError, DataError
from gpt.pretrained import read_config
from gpt.safetensors import (SafetensorsError, SafetensorsFile, narrow_bf16, read_safetensors, widen_bf16,
                             write_safetensors)

TINY = dict(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=16)
IDS = np.array([[1, 5, 9, 2, 30, 7], [3, 3, 0, 36, 11, 4]])


def _model(seed=0, **kw):
    tg.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **kw})).eval()


def _logits(model, ids=IDS):
    with tg.no_grad():
        return model.eval()(ids, all_logits=True)[0].numpy()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


# ----------------------------------------------------------------------------- our own round trips
@pytest.mark.parametrize("variant", [{}, dict(tie_weights=False), dict(gelu_approximate="none", norm_eps=1e-3,
                                                                        d_ff=24, scale_attn_by_inverse_layer_idx=True)])
def test_round_trip_is_exact(tmp_path, variant):
    model = _model(**variant)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    state = tg.backend.get_rng_state()
    loaded = GPT.from_pretrained(tmp_path)
    assert tg.backend.get_rng_state() == state          # nothing was randomly initialised
    assert loaded.config == model.config
    _same_weights(model, loaded)
    np.testing.assert_array_equal(_logits(model), _logits(loaded))
    names = SafetensorsFile(tmp_path / "model.safetensors").tensors
    assert ("lm_head.weight" in names) == (not model.config.tie_weights)
    assert names["transformer.h.0.mlp.c_fc.weight"].shape == (16, model.config.mlp_width())   # Conv1D: (in, out)


def test_sharded_and_narrow_files(tmp_path):
    model = _model(1)
    model.save_pretrained(tmp_path / "sharded", max_shard_size=4000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    _same_weights(model, GPT.from_pretrained(tmp_path / "sharded"))
    _same_weights(model, GPT.from_pretrained(tmp_path / "sharded" / "model.safetensors.index.json"))
    for dtype, tol in (("float16", 2e-3), ("bfloat16", 2e-2)):
        model.save_pretrained(tmp_path / dtype, dtype=dtype)
        loaded = GPT.from_pretrained(tmp_path / dtype / "model.safetensors")
        for k, v in loaded.state_dict().items():
            assert v.dtype == np.float32
            np.testing.assert_allclose(v, model.state_dict()[k], rtol=tol, atol=1e-6, err_msg=k)
    bf = model.state_dict()["transformer.wte.weight"]
    np.testing.assert_array_equal(GPT.from_pretrained(tmp_path / "bfloat16").state_dict()["transformer.wte.weight"],
                                  widen_bf16(narrow_bf16(bf)))


def test_overrides_and_crop(tmp_path):
    model = _model(2)
    model.save_pretrained(tmp_path)
    short = GPT.from_pretrained(tmp_path, block_size=8, dropout=0.1)
    assert short.config.block_size == 8 and short.config.dropouts() == (0.1, 0.1)
    np.testing.assert_array_equal(short.transformer.wpe.weight.numpy(), model.transformer.wpe.weight.numpy()[:8])
    np.testing.assert_allclose(_logits(short, IDS[:, :6]), _logits(model, IDS[:, :6]), rtol=1e-6, atol=1e-6)
    with pytest.raises(DataError, match="n_layer=3, but the tensors have 2"):
        GPT.from_pretrained(tmp_path, n_layer=3)
    with pytest.raises(DataError, match="n_positions=32, but the tensors have 16"):
        GPT.from_pretrained(tmp_path, block_size=32)


def test_config_fields_are_honoured_or_refused(tmp_path):
    base = json.loads(json.dumps({"model_type": "gpt2", "n_head": 2, "activation_function": "gelu",
                                  "layer_norm_epsilon": 1e-3, "scale_attn_weights": False,
                                  "scale_attn_by_inverse_layer_idx": True, "tie_word_embeddings": False,
                                  "n_inner": 40, "resid_pdrop": 0.1, "embd_pdrop": 0.2, "attn_pdrop": 0.3}))
    got = read_config(base)
    assert got == dict(n_head=2, gelu_approximate="none", norm_eps=1e-3, scale_attn_weights=False,
                       scale_attn_by_inverse_layer_idx=True, tie_weights=False, d_ff=40, resid_dropout=0.1,
                       dropout=0.2, attn_dropout=0.3)
    assert "attn_dropout" not in read_config(base, dropout=0.0)      # one dropout asked for: all three
    assert GPTConfig(**{**TINY, **read_config(base, dropout=0.0)}).dropouts() == (0.0, 0.0)
    for field, value, match in (("activation_function", "relu", "activation_function='relu': not supported"),
                                ("model_type", "llama", "only GPT-2"),
                                ("add_cross_attention", True, "cross-attention"),
                                ("n_head", "2", "n_head='2': expected an integer"),
                                ("scale_attn_weights", 1, "scale_attn_weights=1: expected true or false"),
                                ("attn_pdrop", 1.5, "attn_pdrop=1.5: expected a probability")):
        with pytest.raises(DataError, match=match) as e:
            read_config({**base, field: value}, where="cfg.json")
        assert str(e.value).startswith("cfg.json: ") and "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="not read.*rotary_dim"):
        read_config({**base, "rotary_dim": 64})
    # the model follows them: scale and layer index in the attention, epsilon in the norms
    model = _model(3, **{**read_config(base, dropout=0.0), "n_head": 2})
    assert model.transformer.h[1].attn.scale == 1.0 / 2 and model.transformer.h[0].ln_1.eps == 1e-3
    model.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path)
    assert again.config == model.config
    np.testing.assert_array_equal(_logits(model), _logits(again))


def test_models_gpt2_cannot_hold_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="norm='rmsnorm' has no place in GPT-2's layout"):
        _model(norm="rmsnorm").save_pretrained(tmp_path)


def test_what_a_loader_needs_is_checked(tmp_path):
    model = _model(4)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(DataError, match="no config.json beside it, and n_head"):
        GPT.from_pretrained(tmp_path / "m")
    _same_weights(model, GPT.from_pretrained(tmp_path / "m", n_head=2))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="no model.safetensors or model.safetensors.index.json.*pytorch_model.bin"):
        GPT.from_pretrained(tmp_path / "empty")
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    write_safetensors({k: v for k, v in sd.items() if "ln_f" not in k}, tmp_path / "a.safetensors")
    with pytest.raises(DataError, match="missing tensors: ln_f.weight, ln_f.bias"):
        GPT.from_pretrained(tmp_path / "a.safetensors", n_head=2)
    write_safetensors({**sd, "transformer.h.0.extra": np.zeros(2, np.float32)}, tmp_path / "b.safetensors")
    with pytest.raises(DataError, match="no place for: h.0.extra"):
        GPT.from_pretrained(tmp_path / "b.safetensors", n_head=2)
    # not transposed: the square c_proj would fit either way, the others do not
    write_safetensors(sd, tmp_path / "c.safetensors")
    with pytest.raises(DataError, match=r"'h.0.attn.c_attn.weight' has shape \[48, 16\].*needs \[16, 48\]"):
        GPT.from_pretrained(tmp_path / "c.safetensors", n_head=2)
    write_safetensors({**sd, "transformer.wte.weight": sd["transformer.wte.weight"].astype(np.int32)},
                      tmp_path / "d.safetensors")
    with pytest.raises(DataError, match="dtype I32; weights must be"):
        GPT.from_pretrained(tmp_path / "d.safetensors", n_head=2)


def test_index_that_lies_is_refused(tmp_path):
    _model(5).save_pretrained(tmp_path, max_shard_size=4000)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"][name] = "model-00002-of-00009.safetensors" if data["weight_map"][name].startswith(
        "model-00001") else "model-00001-of-00009.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(DataError):
        GPT.from_pretrained(tmp_path)
    index.write_text("[1, 2]")
    with pytest.raises(DataError, match="not a safetensors index"):
        GPT.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- the format
def _raw(path, header, data=b"", length=None):
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return path


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("header,data,length,problem", [
    (None, None, None, "truncated: 3 bytes"),
    ({"a": _t()}, b"\0" * 8, 10 ** 6, "header length 1000000 runs past the end"),
    (b"not json", b"", None, "the header is not JSON"),
    ([1, 2], b"", None, "the header is a JSON list, not an object"),
    ({"a": _t("F8_E4M3")}, b"\0" * 8, None, "unknown dtype 'F8_E4M3'"),
    ({"a": _t(shape=(-2,))}, b"\0" * 8, None, "has a negative size"),
    ({"a": _t(offsets=(-8, 0))}, b"\0" * 8, None, "not a range"),
    ({"a": _t(shape=(3,))}, b"\0" * 8, None, "needs 12 bytes, its data_offsets give 8"),
    ({"a": _t(offsets=(0, 8))}, b"\0" * 4, None, r"bytes \[0, 8\) lie outside the file's 4 bytes"),
    ({"a": _t(), "b": _t(offsets=(4, 12))}, b"\0" * 12, None, "'a' and 'b' overlap"),
    ({"a": _t(shape=("2",))}, b"\0" * 8, None, "is not a list of integers"),
    ({"a": [1]}, b"", None, "its entry is not an object"),
    ({"__metadata__": {"x": 1}}, b"", None, "__metadata__ is not an object of strings"),
])
def test_bad_files_give_one_line(tmp_path, header, data, length, problem):
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(b"\1\2\3")
    else:
        _raw(path, header, data, length)
    with pytest.raises(SafetensorsError, match=problem) as e:
        SafetensorsFile(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    with pytest.raises(DataError, match=problem):       # the same through the model's loader
        GPT.from_pretrained(path, n_head=2)


def test_truncated_checkpoint_is_refused(tmp_path):
    _model(6).save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="lie outside the file's .* bytes of data .truncated"):
        GPT.from_pretrained(tmp_path)


def test_format_reads_back_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"f64": rng.standard_normal((2, 3)), "f16": rng.standard_normal(5).astype(np.float16),
              "i64": np.arange(6).reshape(3, 2), "u8": np.arange(4, dtype=np.uint8), "b": np.array([True, False]),
              "empty": np.zeros((0, 3), np.float32), "scalar": np.array(2.5, np.float32),
              "t": np.arange(12, dtype=np.float32).reshape(3, 4).T, "be": np.arange(3, dtype=">i4")}
    write_safetensors(arrays, tmp_path / "x.safetensors", metadata={"format": "pt"})
    back = read_safetensors(tmp_path / "x.safetensors")
    assert SafetensorsFile(tmp_path / "x.safetensors").metadata == {"format": "pt"}
    for k, v in arrays.items():
        assert back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    x = np.array([1.0, -2.5, 3.14159, 1e30, np.inf, -0.0, np.nan], np.float32)
    bits = narrow_bf16(x)
    assert bits[:2].tolist() == [0x3F80, 0xC020] and np.isnan(widen_bf16(bits)[-1])
    np.testing.assert_allclose(widen_bf16(bits)[:-1], x[:-1], rtol=4e-3)


def test_the_safetensors_package_agrees_where_installed(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float16)}
    st.save_file(arrays, str(tmp_path / "theirs.safetensors"))
    for k, v in read_safetensors(tmp_path / "theirs.safetensors").items():
        np.testing.assert_array_equal(v, arrays[k])
    write_safetensors(arrays, tmp_path / "ours.safetensors")
    for k, v in st.load_file(str(tmp_path / "ours.safetensors")).items():
        np.testing.assert_array_equal(v, arrays[k])


# ----------------------------------------------------------------------------- against transformers
@pytest.fixture
def hf():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    return transformers, torch


def _hf_logits(hf_model, torch):
    with torch.no_grad():
        return hf_model(torch.tensor(IDS)).logits.numpy()


def test_transformers_loads_our_export(tmp_path, hf):
    transformers, torch = hf
    for i, variant in enumerate([{}, dict(tie_weights=False, gelu_approximate="none", norm_eps=1e-4, d_ff=40,
                                          scale_attn_by_inverse_layer_idx=True)]):
        model = _model(7, **variant)
        model.save_pretrained(tmp_path / str(i))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / str(i)).eval()
        np.testing.assert_allclose(_hf_logits(theirs, torch), _logits(model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fields", [{}, dict(activation_function="gelu"), dict(layer_norm_epsilon=1e-2),
                                    dict(scale_attn_weights=False), dict(scale_attn_by_inverse_layer_idx=True),
                                    dict(tie_word_embeddings=False), dict(n_inner=24)])
def test_we_load_what_transformers_writes(tmp_path, hf, fields):
    transformers, torch = hf
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=37, n_positions=16, n_embd=16, n_layer=2, n_head=2, **fields)
    theirs = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():                        # HF zeroes biases and sets norms to 1: make them count
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    np.testing.assert_allclose(_logits(ours), _hf_logits(theirs, torch), rtol=1e-5, atol=1e-5)
    # and back: ours -> HF layout -> transformers, the same model
    ours.save_pretrained(tmp_path / "again")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "again").eval()
    np.testing.assert_allclose(_hf_logits(again, torch), _hf_logits(theirs, torch), rtol=1e-6, atol=1e-6)


def test_bf16_file_of_transformers(tmp_path, hf):
    transformers, torch = hf
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=37, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    theirs = transformers.GPT2LMHeadModel(cfg).to(torch.bfloat16)
    theirs.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    ref = theirs.state_dict()["transformer.h.0.mlp.c_fc.weight"].float().numpy()
    np.testing.assert_array_equal(ours.transformer.h[0].mlp.c_fc.weight.numpy(), ref.T)


@pytest.mark.cuda
def test_from_pretrained_straight_to_the_gpu(tmp_path):
    model = _model(8)
    model.save_pretrained(tmp_path, dtype="bfloat16")
    gpu = GPT.from_pretrained(tmp_path, device="cuda")
    cpu = GPT.from_pretrained(tmp_path)
    assert gpu.device == "cuda" and all(p.device == "cuda" for p in gpu.parameters())
    _same_weights(cpu, gpu)
    np.testing.assert_allclose(_logits(gpu), _logits(cpu), rtol=1e-4, atol=1e-4)
    gpu.save_pretrained(tmp_path / "back")
    _same_weights(cpu, GPT.from_pretrained(tmp_path / "back"))


def test_uninitialized_draws_nothing():
    state = tg.backend.get_rng_state()
    with nn.init.skip_init():
        GPT(GPTConfig(**TINY))
    assert tg.backend.get_rng_state() == state

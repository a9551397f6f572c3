"""Text data sets: windows and targets by hand, the seed-free split (by file, by block), the bytes, bpe:N and
local Hugging Face tokenizers, split sizes in bytes, the stored (memory-mapped) windows equal to the
in-memory ones, python-docs, and every bad input refused in one line before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdcli.augment import ViewSet
from kdcli.data import DataSpec, load_dataset
from kdcli.data import corpus as corpus_mod
from kdcli.data import tokenizers as tokenizers_mod
from kdcli.data.corpus import python_docs
from kdcli.data.text import IGNORE, PAD_ID, TextDataSet, windows
from kdcli.engine import DeviceData
from kdcli.errors import UsageError

TENSORS = ("x_pool", "y_pool", "x_test", "y_test", "train_idx", "val_idx")


def load(path, store=None, **extra) -> TextDataSet:
    return load_dataset(DataSpec(name=f"text:{path}", store=store, extra=extra))


def write_files(root, texts: list[str]):
    root.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (root / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return root


def words(seed: int, n: int, alphabet: str = "abcdefghijklmnoprstuvwxy ") -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(alphabet), n))


def targets_of(data: TextDataSet, split: str) -> torch.Tensor:
    """The unmasked targets of one split's windows, in order."""
    if split == "test":
        y = data.y_test
    else:
        y = data.y_pool[data.train_idx if split == "train" else data.val_idx]
    return y[y != IGNORE]


def test_windows_by_hand():
    x, y = windows(np.arange(10), 4)  # 9 predicted tokens: 3 windows, the last padded
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, PAD_ID, PAD_ID]]
    assert y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, IGNORE, IGNORE, IGNORE]]
    x, y = windows(np.arange(5), 4)  # exactly one window: nothing padded
    assert x.tolist() == [[0, 1, 2, 3]] and y.tolist() == [[1, 2, 3, 4]]
    assert windows(np.arange(1), 4)[0].shape == (0, 4)


def test_documents_read_in_pieces_give_the_windows_of_the_whole(tmp_path, monkeypatch):
    lines = "".join(f"{i}: {words(i, i % 23)}\n" for i in range(400))
    (tmp_path / "one.txt").write_text(lines)
    whole = load(tmp_path / "one.txt", context=5)
    monkeypatch.setattr(corpus_mod, "PIECE_CHARS", 7)  # pieces of a line or two
    pieces = load(tmp_path / "one.txt", context=5)
    assert all(torch.equal(getattr(whole, n), getattr(pieces, n)) for n in TENSORS)
    assert whole.split_bytes == pieces.split_bytes and sum(whole.split_bytes.values()) == len(lines) - 100


def test_bytes_windows_of_files_are_their_bytes_with_the_tail_masked(tmp_path):
    texts = [f"file {i}: h\u00e9llo\r\n" + "x" * i for i in range(12)]
    data = load(write_files(tmp_path / "c", texts), context=8)
    assert (data.task, data.num_outputs, data.input_shape, data.context) == ("lm", 256, (8,), 8)
    assert data.x_pool.dtype == data.y_pool.dtype == torch.int64 and data.mapped is None
    expected_x, expected_y, pool_split = [], [], []
    for i, text in enumerate(texts):  # 12 files: file 8 validation, 9 test, the rest train, in order
        x, y = windows(np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64), 8)
        if i != 9:
            expected_x.append(x), expected_y.append(y), pool_split.extend([i == 8] * len(x))
        else:
            assert data.x_test.tolist() == x.tolist() and data.y_test.tolist() == y.tolist()
    assert data.x_pool.tolist() == np.concatenate(expected_x).tolist()
    assert data.y_pool.tolist() == np.concatenate(expected_y).tolist()
    assert data.val_idx.tolist() == [i for i, val in enumerate(pool_split) if val]
    assert data.train_idx.tolist() == [i for i, val in enumerate(pool_split) if not val]
    last = data.x_test[-1], data.y_test[-1]  # the padded tail: input PAD_ID, target IGNORE
    real = len(texts[9].encode()) - 1 - 8 * (len(data.x_test) - 1)
    assert (last[1][real:] == IGNORE).all() and (last[1][:real] != IGNORE).all()
    assert (last[0][real + 1:] == PAD_ID).all()
    assert torch.equal(data.prepare(data.x_pool[:2].to(torch.int32)), data.x_pool[:2])
    described = json.loads(json.dumps(data.describe()))  # JSON-safe, for every manifest
    assert described["tokenizer"]["kind"] == "bytes" and described["split_tokens"]["test"] == len(texts[9].encode()) - 1


def test_the_bytes_tokenizer_round_trips_and_its_ids_are_the_bytes(tmp_path):
    from transformers import AutoTokenizer

    text = "caf\u00e9 \U0001f600\r\n\ttabs \x7f and \u20ac\n"
    (tmp_path / "one.txt").write_text(text * 300, encoding="utf-8")
    data = load(tmp_path / "one.txt", context=16)
    hf = data.text_tokenizer()
    assert hf.encode(text) == list(text.encode()) and hf.decode(list(text.encode())) == text
    assert data.token_bytes.tolist() == [1] * 256
    hf.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"), local_files_only=True)
    assert again.encode(text) == list(text.encode()) and again.decode(again.encode(text)) == text


def test_block_split_is_fixed_by_the_text_and_not_by_the_split_seed(tmp_path):
    lines = [f"line {i:03d}\n" for i in range(200)]  # 100 blocks of 2 equal lines
    (tmp_path / "one.txt").write_text("".join(lines))
    data = load(tmp_path / "one.txt", context=4)
    other_seed = load_dataset(DataSpec(name=f"text:{tmp_path / 'one.txt'}", split_seed=7, extra={"context": 4}))
    assert all(torch.equal(getattr(data, n), getattr(other_seed, n)) for n in TENSORS)
    assert data.fingerprint == other_seed.fingerprint

    def text_of(split):  # each block's first byte is never a target; the rest of its bytes are, once
        return bytes(targets_of(data, split).tolist()).decode()

    blocks = ["".join(lines[2 * i:2 * i + 2]) for i in range(100)]
    for split, rest in (("val", 8), ("test", 9)):
        assert text_of(split) == "".join(blocks[i][1:] for i in range(100) if i % 10 == rest)
    assert text_of("train") == "".join(blocks[i][1:] for i in range(100) if i % 10 < 8)


def test_nine_files_split_by_block_and_ten_by_file(tmp_path):
    lines = [[words(100 * i + j, 20) + "\n" for j in range(20)] for i in range(9)]
    nine = load(write_files(tmp_path / "nine", ["".join(file) for file in lines]), context=8)
    val = bytes(targets_of(nine, "val").tolist()).decode()  # 180 lines of 21 bytes into 100 blocks: 2, 2, 2, 2, 1
    assert val.startswith(lines[0][15][1:] + lines[0][16]) and lines[0][17] not in val  # block 8: lines 15, 16
    assert all(0.04 < nine.split_tokens[split] / sum(nine.split_tokens.values()) < 0.15 for split in ("val", "test"))
    ten = load(write_files(tmp_path / "ten", [words(i, 50 + i) for i in range(10)]), context=8)
    assert bytes(targets_of(ten, "test").tolist()).decode() == words(9, 59)[1:]
    assert bytes(targets_of(ten, "val").tolist()).decode() == words(8, 58)[1:]


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe:300"])
def test_split_bytes_are_the_utf8_bytes_of_the_unmasked_targets(tmp_path, tokenizer):
    texts = ["ab " + words(i, 300, "ab\u00e9\u20ac cd\n") for i in range(10)]  # an ASCII first token
    data = load(write_files(tmp_path / "c", texts), tokenizer=tokenizer, context=16)
    hf = data.text_tokenizer()
    for split, index in (("train", [0, 1, 2, 3, 4, 5, 6, 7]), ("val", [8]), ("test", [9])):
        targets = targets_of(data, split)
        assert data.split_tokens[split] == len(targets)
        assert data.split_bytes[split] == int(data.token_bytes[targets].sum())
        first_bytes = [len(hf.decode(hf.encode(texts[i])[:1]).encode()) for i in index]
        assert data.split_bytes[split] == sum(len(texts[i].encode()) - b for i, b in zip(index, first_bytes))
    whole = [t for t in range(data.num_outputs) if "\ufffd" not in hf.decode([t])]
    assert all(data.token_bytes[t] == len(hf.decode([t]).encode()) for t in whole)


def test_bpe_is_trained_once_on_the_training_split_and_shared_through_the_store(tmp_path, store, monkeypatch):
    from transformers import AutoTokenizer

    trained = []
    real = tokenizers_mod.train_bpe
    monkeypatch.setattr(tokenizers_mod, "train_bpe", lambda size, texts: trained.append(size) or real(size, texts))
    texts = [words(i, 600) for i in range(10)]
    texts[8] = texts[9] = "quiz zq " * 80  # only validation and test have q and z
    root = write_files(tmp_path / "c", texts)
    teacher = load(root, store, tokenizer="bpe:320", context=16)
    student = load(root, store, tokenizer="bpe:320", context=8)
    assert trained == [320] and teacher.tokenizer == student.tokenizer
    assert teacher.tokenizer["artifact"] in store.ids() and teacher.num_outputs == 320
    merged = [t for t in teacher.text_tokenizer().get_vocab() if len(t) > 1]
    assert merged and not any(c in t for t in merged for c in "qz")  # trained on the training split only
    teacher.text_tokenizer().save_pretrained(tmp_path / "saved")
    again, sample = AutoTokenizer.from_pretrained(str(tmp_path / "saved"), local_files_only=True), texts[0][:200]
    assert again.encode(sample) == teacher.text_tokenizer().encode(sample) and again.decode(again.encode(sample)) == sample

    memory = load(root, None, tokenizer="bpe:320", context=16)  # without a store: trained in memory, the same
    assert trained == [320, 320] and memory.tokenizer["sha256"] == teacher.tokenizer["sha256"]
    assert memory.tokenizer["artifact"] is None
    assert all(torch.equal(getattr(memory, n), getattr(teacher, n)) for n in TENSORS)


def test_the_stored_windows_are_mapped_and_equal_the_in_memory_ones(tmp_path, store):
    root = write_files(tmp_path / "c", [words(i, 200 + 7 * i) for i in range(12)])
    mapped, memory = load(root, store, context=8), load(root, None, context=8)
    assert mapped.mapped is not None and memory.mapped is None
    assert all(torch.equal(getattr(mapped, n), getattr(memory, n)) for n in TENSORS)
    assert (mapped.split_bytes, mapped.split_tokens) == (memory.split_bytes, memory.split_tokens)
    assert mapped.fingerprint in store.ids()  # the windows' artifact id
    assert load(root, store, context=8).fingerprint == mapped.fingerprint
    on_map, in_memory = DeviceData(mapped, torch.device("cpu")), DeviceData(memory, torch.device("cpu"))
    order = on_map.epoch_order(mapped.train_idx, torch.Generator().manual_seed(0))
    for start in range(0, len(order), 16):
        a, b = on_map.batch(order[start:start + 16], ViewSet(), None), in_memory.batch(order[start:start + 16],
                                                                                       ViewSet(), None)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.x.dtype == torch.int64


def test_the_fingerprint_follows_content_tokenizer_and_context(tmp_path, store):
    root = write_files(tmp_path / "c", [words(i, 300) for i in range(10)])
    for where in (store, None):
        base = load(root, where, context=8)
        assert load(root, where, context=9).fingerprint != base.fingerprint
        assert load(root, where, context=8, tokenizer="bpe:260").fingerprint != base.fingerprint
    before = load(root, store, context=8).fingerprint
    (root / "doc03.txt").write_text(words(99, 300))
    assert load(root, store, context=8).fingerprint != before


def test_a_local_hugging_face_tokenizer_folder_loads_offline(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = write_files(tmp_path / "c", [words(i, 300) for i in range(10)])
    backend = tokenizers_mod.train_bpe(280, iter([words(0, 3000)]))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|end|>").save_pretrained(tmp_path / "tok")
    data = load(corpus, tokenizer=str(tmp_path / "tok"), context=8)
    assert data.tokenizer["kind"] == "hf" and data.num_outputs == 281  # 280 + the added end token
    assert data.token_bytes[-1] == len("<|end|>")
    reference = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert data.x_test[0].tolist() == reference.encode(words(9, 300))[:8]


def test_a_sentencepiece_style_tokenizer_counts_the_bytes_of_its_word_initial_tokens(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [" ".join(words(10 * i + j, 6) for j in range(60)) for i in range(10)]
    backend = Tokenizer(models.BPE(byte_fallback=True))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=120, show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp_path / "sp")
    data = load(write_files(tmp_path / "c", texts), tokenizer=str(tmp_path / "sp"), context=8)
    hf = data.text_tokenizer()
    word_initial = hf.convert_tokens_to_ids("\u2581b")
    assert data.token_bytes[word_initial] == 2  # " b": the space it stands for, then the letter
    for split, index in (("val", 8), ("test", 9)):  # all but the first token's bytes, to a byte
        assert abs(data.split_bytes[split] - len(texts[index].encode())) <= 1 + len(hf.tokenize(texts[index])[0])


def test_a_split_whose_text_becomes_one_token_is_refused(tmp_path):
    texts = ["aa " * 200] * 9 + ["aa"]
    with pytest.raises(UsageError, match="too small to give every split a window at context 8 \\(none for test\\)"):
        load(write_files(tmp_path / "c", texts), tokenizer="bpe:260", context=8)


def test_python_docs_loads(store):
    text = "".join(python_docs().sources[0].lines())
    data = load_dataset(DataSpec(name="python-docs", store=store, extra={"context": 128}))
    assert data.name == "python-docs" and data.input_shape == (128,) and data.num_outputs == 256
    assert sum(data.split_bytes.values()) == len(text.encode()) - 100  # 100 blocks, each's first byte unpredicted
    windows_per_split = {"train": len(data.train_idx), "val": len(data.val_idx), "test": len(data.x_test)}
    for split, blocks in (("train", 80), ("val", 10), ("test", 10)):  # at most one padded window per block
        assert 0 <= windows_per_split[split] - data.split_tokens[split] / 128 < blocks
    assert 0.07 < data.split_bytes["test"] / sum(data.split_bytes.values()) < 0.13


def bad(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    (tmp_path / "nul.txt").write_bytes(b"text\0more\n")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    (tmp_path / "tiny.txt").write_text("ab\n")
    (tmp_path / "good.txt").write_text(words(0, 3000))
    (tmp_path / "notok").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text('{"model": {"type": "nope"}}')
    (tmp_path / "novocab").mkdir()
    (tmp_path / "novocab" / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    return {
        "missing": (f"text:{tmp_path / 'nope'}", {}, "no such file or folder"),
        "no path": ("text:", {}, "text:PATH"),
        "glob": (f"text:{tmp_path / '*.md'}", {}, "matches no file"),
        "empty": (f"text:{tmp_path / 'empty'}", {}, "empty"),
        "binary": (f"text:{tmp_path / 'nul.txt'}", {}, "nul.txt is binary"),
        "not utf-8": (f"text:{tmp_path / 'latin1.txt'}", {}, "latin1.txt is not UTF-8"),
        "tiny": (f"text:{tmp_path / 'tiny.txt'}", {}, "too small"),
        "bpe word": (f"text:{tmp_path / 'good.txt'}", {"tokenizer": "bpe:many"}, "must be an integer"),
        "bpe small": (f"text:{tmp_path / 'good.txt'}", {"tokenizer": "bpe:256"}, "N >= 257"),
        "no tokenizer": (f"text:{tmp_path / 'good.txt'}", {"tokenizer": str(tmp_path / "none")}, "not bytes, bpe:N"),
        "bad folder": (f"text:{tmp_path / 'good.txt'}", {"tokenizer": str(tmp_path / "notok")}, "not a loadable"),
        "broken folder": (f"text:{tmp_path / 'good.txt'}", {"tokenizer": str(tmp_path / "broken")}, "not a loadable"),
        "no vocabulary": (f"text:{tmp_path / 'good.txt'}", {"tokenizer": str(tmp_path / "novocab")}, "encodes no text"),
        "context 0": (f"text:{tmp_path / 'good.txt'}", {"context": 0}, ">= 1"),
        "context text": ("python-docs", {"context": "long"}, ">= 1"),
    }


@pytest.mark.parametrize("case", ["missing", "no path", "glob", "empty", "binary", "not utf-8", "tiny", "bpe word",
                                  "bpe small", "no tokenizer", "bad folder", "broken folder", "no vocabulary",
                                  "context 0", "context text"])
def test_bad_inputs_are_refused_in_one_line_before_any_work(tmp_path, store, case, monkeypatch):
    monkeypatch.setattr(tokenizers_mod, "train_bpe", lambda *a: pytest.fail("trained a tokenizer on bad input"))
    name, extra, message = bad(tmp_path)[case]
    with pytest.raises(UsageError, match=message) as raised:
        load_dataset(DataSpec(name=name, store=store, extra={"tokenizer": "bpe:300", **extra}))
    assert "\n" not in str(raised.value) and store.ids() == []

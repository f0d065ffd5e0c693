"""Nothing silently wrong: checkpoint digests, unreadable resumable state moved aside (not failed on
at every retry), a full disk said in one line. (The search's score log and state: test_search.)"""

import errno
import io
import json
import os
import re
import struct
import zipfile
import zlib

import pytest
import torch
from conftest import as_json, run_detnas

import detnas.io as dio
from detnas.io import DiskFullError, load_checkpoint, save_checkpoint, write_json_atomic, write_text_atomic


def _flip_a_tensor_byte(path):
    """Flip one bit of a tensor's bytes in the zip file torch.save wrote (entries are stored
    uncompressed), and fix the entry's CRC-32 so the zip stays valid: damage only a digest sees."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 8)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + 5] ^= 0x10
    crc = zlib.crc32(raw[start:start + info.file_size])
    if info.flag_bits & 0x8:  # the CRC is in the data descriptor after the data
        end = start + info.file_size
        struct.pack_into("<I", raw, end + 4 if raw[end:end + 4] == b"PK\x07\x08" else end, crc)
    else:
        struct.pack_into("<I", raw, info.header_offset + 14, crc)
    pos = 0
    while (pos := raw.find(b"PK\x01\x02", pos)) >= 0:  # and in the central directory
        n = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46:pos + 46 + n].decode() == info.filename:
            struct.pack_into("<I", raw, pos + 16, crc)
        pos += 4
    path.write_bytes(raw)


def test_checkpoint_digest_detects_a_flipped_byte(tmp_path):
    state = {"model": {"w": torch.randn(4, 8), "h": torch.randn(3).bfloat16(), "n": torch.tensor(7)},
             "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
             "step": 5, "history": [{"step": 5, "loss": 1.25}], "rng": [{"cpu": torch.get_rng_state(), "cuda": None}]}
    path = tmp_path / "last.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert "_digest" not in loaded and loaded["step"] == 5 and torch.equal(loaded["model"]["h"], state["model"]["h"])
    assert "_digest" in torch.load(path, weights_only=True)
    save_checkpoint({**loaded, "_digest": "stale"}, tmp_path / "again.pt")  # a reserved key is replaced
    assert load_checkpoint(tmp_path / "again.pt")["step"] == 5

    _flip_a_tensor_byte(path)
    assert zipfile.ZipFile(path).testzip() is None  # a valid zip...
    raw = torch.load(path, weights_only=True)  # ...that torch loads without a word
    assert not torch.equal(raw["model"]["w"], state["model"]["w"])
    with pytest.raises(ValueError, match=re.escape(f"{path}: checkpoint damaged: digest mismatch")):
        load_checkpoint(path)

    old = tmp_path / "old.pt"  # written before digests: loads as before
    torch.save({"state_dict": {"w": torch.ones(2)}, "kind": "supernet"}, old)
    assert set(load_checkpoint(old)) == {"state_dict", "kind"}


def test_unreadable_checkpoint_is_named(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'empty.pt'}: cannot load checkpoint")):
        load_checkpoint(tmp_path / "empty.pt")


PRETRAIN = {"space": "tiny", "image_size": 32, "batch_size": 8, "seed": 0, "checkpoint_every": 5, "log_every": 5,
            "schedule": {"iterations": 10, "lr": 0.05, "policy": "linear", "weight_decay": 4e-5}}


def _pretrain(split, out):
    return run_detnas("pretrain", "--settings", as_json(PRETRAIN), "--split", str(split),
                      "--weights", str(out / "supernet.pt"), "--metrics", str(out / "metrics.json"),
                      "--curves", str(out / "curves.png"), "--checkpoint-dir", str(out / "checkpoints"),
                      "--threads", "1").stdout


def test_an_empty_truncated_or_damaged_checkpoint_is_moved_aside_and_the_stage_starts_afresh(cls_split, tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    (ck / "last.pt").write_bytes(b"")  # e.g. a node lost while its file system had not written it out
    first = _pretrain(cls_split, tmp_path)
    (aside,) = ck.glob("last.pt.corrupt-*")
    assert aside.stat().st_size == 0
    assert re.search(rf"{re.escape(str(ck / 'last.pt'))} cannot be read \(cannot load checkpoint .*\); moved it aside "
                     rf"to {aside.name}; starting from step 0", first)
    assert "resuming" not in first and "step 5/10" in first
    assert [r["step"] for r in json.loads((tmp_path / "metrics.json").read_text())["history"]] == [5, 10]

    weights = (tmp_path / "supernet.pt").read_bytes()
    (ck / "last.pt").write_bytes(weights[: len(weights) // 2])  # a real checkpoint, cut short
    second = _pretrain(cls_split, tmp_path)
    assert len(list(ck.glob("last.pt.corrupt-*"))) == 2 and "; starting from step 0" in second
    assert "resuming" not in second and "step 5/10" in second and not (ck / "last.pt").exists()
    assert [r["step"] for r in json.loads((tmp_path / "metrics.json").read_text())["history"]] == [5, 10]

    (ck / "last.pt").write_bytes(weights)
    _flip_a_tensor_byte(ck / "last.pt")  # whole, loadable by torch, one tensor byte changed
    third = _pretrain(cls_split, tmp_path)
    assert len(list(ck.glob("last.pt.corrupt-*"))) == 3 and "digest mismatch" in third
    assert "; starting from step 0" in third and "resuming" not in third and "step 5/10" in third


def test_an_unreadable_input_is_not_moved(tmp_path):
    """Only a stage's own state is moved aside: an input (here the detector an evaluation reads) stays
    where it is, a ValueError naming it."""
    from detnas.detectors import detector_from_checkpoint

    detector = tmp_path / "detector.pt"
    detector.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with pytest.raises(ValueError, match=re.escape(f"{detector}: cannot load checkpoint")):
        detector_from_checkpoint(detector, torch.device("cpu"))
    assert detector.is_file() and _only(tmp_path) == ["detector.pt"]


# -- a full disk -------------------------------------------------------------------------------------

def _full_after(nbytes):
    """A writer that writes ``nbytes`` to its file, then finds the disk full."""
    def write(obj, f, *args, **kwargs):
        if nbytes:
            f.write("x" * nbytes if isinstance(f, io.TextIOBase) else b"x" * nbytes)
            f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def _only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_full_disk_names_the_file_the_bytes_needed_and_the_space_free(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    monkeypatch.setattr(torch, "save", _full_after(100))
    state = {"w": torch.zeros(1024, 256), "step": 3}  # 1 MiB of tensors
    with pytest.raises(DiskFullError) as exc:
        save_checkpoint(state, target)
    msg = str(exc.value)
    assert exc.value.errno == errno.ENOSPC and "\n" not in msg
    assert re.fullmatch(rf"{re.escape(str(target))}: disk full writing it \(No space left on device\): needs at least "
                        r"1\.0 MiB, [\d.]+ [KMGT]?i?B free on its filesystem; the file is unchanged", msg), msg
    assert _only(tmp_path) == []  # no temporary file, no partial target

    target.write_text("the old one")  # a file there before stays as it was
    monkeypatch.setattr(dio.json, "dump", _full_after(4096))
    with pytest.raises(DiskFullError, match=r"needs at least 4\.0 KiB"):
        write_json_atomic({"a": 1}, target)
    assert _only(tmp_path) == ["last.pt"] and target.read_text() == "the old one"

    def quota(self, text):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    monkeypatch.setattr(dio.Path, "write_text", quota)
    with pytest.raises(DiskFullError, match=r"quota exceeded writing it .*: needs at least 3\.0 KiB"):
        write_text_atomic("x" * 3072, tmp_path / "history.csv")
    assert _only(tmp_path) == ["last.pt"]


def test_real_torch_save_on_a_full_device_is_an_oserror(tmp_path, monkeypatch):
    """torch.save given a path reports a full disk as an obscure RuntimeError of its zip writer;
    save_checkpoint writes through a Python file, whose ENOSPC is an OSError it can name."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        return real_open("/dev/full", mode, *args, **kwargs) if "w" in mode else real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr(dio, "open", full_open, raising=False)
    with pytest.raises(DiskFullError, match=r"last\.pt: disk full .* needs at least 4\.0 MiB"):
        save_checkpoint({"w": torch.zeros(1 << 20)}, tmp_path / "last.pt")
    assert _only(tmp_path) == []


def test_the_cli_says_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    from detnas.cli import main

    monkeypatch.setattr(dio.json, "dump", _full_after(0))
    out = tmp_path / "arch.json"
    assert main(["fixed-arch", "--space", "tiny", "--uniform", "0", "--method", "shufflenetv2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out}: disk full writing it") and "Traceback" not in err
    assert _only(tmp_path) == []

"""reader._plain_tar_samples: the direct ustar parse gives WebDataset's samples, and declines (None,
WebDataset reads it) what it does not handle."""
import io
import tarfile

import webdataset as wds

from scaletrain.data.reader import _plain_tar_samples


def _tar(path, members, fmt=tarfile.USTAR_FORMAT):
    with tarfile.open(path, "w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_same_samples_as_webdataset_and_declines_the_rest(tmp_path):
    members = [("__meta__", b"m"), ("a/000001.img.npy", b"x" * 700), ("a/000001.CLS", b"3"),
               ("a/000002.img.npy", b""), ("a/000002.cls", b"7"), ("b.c/000003.img.npy", b"y" * 513),
               ("b.c/000003.cls", b"1")]
    p = str(tmp_path / "s.tar")
    _tar(p, members)
    mine, theirs = _plain_tar_samples(p), list(wds.tarfile_samples([{"url": p}]))
    assert [s["__key__"] for s in mine] == ["a/000001", "a/000002", "b.c/000003"]
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert {k: v for k, v in a.items() if k != "__url__"} == {k: v for k, v in b.items() if k != "__url__"}
    long_name = str(tmp_path / "long.tar")
    _tar(long_name, [("d" * 120 + "/1.cls", b"1")], fmt=tarfile.PAX_FORMAT)
    assert _plain_tar_samples(long_name) is None
    gz = str(tmp_path / "s.tar.gz")
    with tarfile.open(gz, "w:gz") as t:
        t.add(p, arcname="x.cls")
    assert _plain_tar_samples(gz) is None
    bad = bytearray(open(p, "rb").read())
    bad[110] ^= 0xFF                           # a byte of the first header (uid): checksum mismatch
    open(p, "wb").write(bytes(bad))
    assert _plain_tar_samples(p) is None

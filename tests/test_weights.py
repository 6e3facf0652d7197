"""avanon.generators.weights: registry, lookup order, md5 cache, resumable download, import, CLI. Offline: a local HTTP server
on 127.0.0.1 (ephemeral port) serves a small fake checkpoint; registry entries are monkeypatched."""
import argparse
import hashlib
import http.server
import os
import re
import threading
import time

import pytest

from avanon.generators import weights as W
from avanon.generators.weights import cli as weights_cli, registry as weights_registry

PAYLOAD = bytes((i * 7 + (i >> 8) * 13) % 256 for i in range(300_000))
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
WRONG = b"not the checkpoint" * 20_000


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /ok/F (Range supported), /drop/F (a request without Range sends half and drops the connection),
    /norange/F (ignores Range, always 200), /bad/F (other bytes), /slow/F (stalls), anything else 404."""

    protocol_version = "HTTP/1.1"
    server_version = "fake"
    log = []  # (path, Range header) per request

    def log_message(self, *args):  # quiet
        pass

    def _send_full(self, data):
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data)

    def _send_range(self, data, rng):
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if not m:
            return self._send_full(data)
        start = int(m.group(1))
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        route = self.path.split("/")[1] if self.path.count("/") >= 2 else ""
        if route == "ok":
            return self._send_range(PAYLOAD, rng)
        if route == "norange":
            return self._send_full(PAYLOAD)
        if route == "bad":
            return self._send_range(WRONG, rng)
        if route == "drop":
            if rng:
                return self._send_range(PAYLOAD, rng)
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if route == "slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            time.sleep(1.5)
            self.close_connection = True
            return
        self.send_error(404)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    stopper = threading.Timer(120, httpd.shutdown)  # never outlive a stuck test run
    stopper.daemon = True
    stopper.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    stopper.cancel()
    httpd.shutdown()
    httpd.server_close()
    t.join(timeout=5)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated cache and TORCH_HOME, plus a registry entry 'fake' for PAYLOAD."""
    cache = tmp_path / "cache"
    torch_home = tmp_path / "torch"
    monkeypatch.setenv("AVANON_WEIGHTS", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(weights_registry, "_md5_memory", {})
    entry = W.WeightEntry(name="fake", file="fake-ckpt-0123", md5=PAYLOAD_MD5, urls=("http://127.0.0.1:9/unused",),
                          builds="face_fdf128", kind="generator", source="test", note="test entry")
    monkeypatch.setitem(W.REGISTRY, "fake", entry)
    _Handler.log.clear()
    return dict(cache=cache, hub=torch_home / "hub" / "checkpoints", entry=entry, tmp=tmp_path)


def _fetch(name, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("timeout", 5)
    kw.setdefault("retry_wait", 0)
    return W.fetch(name, **kw)


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_contents():
    names = list(W.REGISTRY)
    for n in ("face_fdf128", "face_fdf256", "body_nocse288", "body_triagan288", "pose_vitpose_h"):
        assert n in names
    e = W.REGISTRY["face_fdf128"]
    assert e.url == W.LOKE + "66d803c0-55ce-44c0-9d53-815c2c0e6ba4eb458409-9e91-45d1-bce0-95c8a47a57218b102fdf-" \
                             "bea3-44dc-aac4-0fb1d370ef1c"
    assert e.file == e.url.rsplit("/", 1)[1] and e.md5 == "bccd4403e7c9bca682566ff3319e8176"
    assert W.REGISTRY["face_fdf256"].md5 == "e8e32190528af2ed75f0cb792b7f2b07"
    assert W.REGISTRY["body_triagan288"].md5 == "b649410e831b45f7800a89c738b411ce"
    nocse = W.REGISTRY["body_nocse288"]
    assert nocse.file == "fdh_styleganL_nocse.ckpt" and nocse.md5 == "fda0d809741bc67487abada793975c37"
    assert "#33" in nocse.note and "DEAD" in nocse.note
    vit = W.REGISTRY["pose_vitpose_h"]
    assert vit.file == "vit-h-multi-coco-dbc06d4337.pth" and vit.md5 is None and not vit.check_hash
    assert vit.builds is None
    for e in W.REGISTRY.values():
        assert e.urls[0].startswith("https://")
        if e.check_hash:
            assert re.fullmatch(r"[0-9a-f]{32}", e.md5)
        assert all(m.endswith("/" + e.file) for m in e.mirrors)


def test_registry_matches_realistic_checkpoints():
    realistic = pytest.importorskip("avanon.generators")
    for name, meta in getattr(realistic, "CHECKPOINTS", {}).items():
        e = W.REGISTRY[name]
        assert (meta["url"], meta["md5"], meta.get("filename", e.file)) == (e.url, e.md5, e.file)
        assert e.builds == name


def test_random_is_not_a_file(env):
    with pytest.raises(W.WeightsError, match="not a checkpoint file"):
        W.resolve("random")
    with pytest.raises(W.WeightsError, match="not a checkpoint file"):
        W.resolve("face_fdf128", "random")
    with pytest.raises(W.WeightsError, match="unknown checkpoint 'nope'.*face_fdf128"):
        W.resolve("nope")


def test_default_dirs(monkeypatch, tmp_path):
    monkeypatch.delenv("AVANON_WEIGHTS", raising=False)
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.cache_dir() == tmp_path / ".cache" / "avanon" / "weights"
    assert W.torch_hub_checkpoints() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("AVANON_WEIGHTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert W.cache_dirs() == [tmp_path / "a", tmp_path / "b"] and W.cache_dir() == tmp_path / "a"


# ---------------------------------------------------------------------------------------------------- resolve


def test_missing_message_names_everything(env):
    with pytest.raises(W.WeightsError) as ei:
        W.resolve("face_fdf128")
    msg = str(ei.value)
    e = W.REGISTRY["face_fdf128"]
    for piece in (e.file, e.md5, e.url, "avanon weights fetch face_fdf128", "avanon weights import DIR",
                  "by hand", str(env["cache"]), str(env["hub"])):
        assert piece in msg, piece
    nocse = str(pytest.raises(W.WeightsError, W.resolve, "body_nocse288").value)
    assert "issue #33" in nocse and "fdh_styleganL_nocse.ckpt" in nocse


def test_resolve_order_explicit_cache_torch_home(env):
    e = env["entry"]
    env["hub"].mkdir(parents=True, exist_ok=True)
    (env["hub"] / e.file).write_bytes(PAYLOAD)
    assert W.resolve("fake") == env["hub"] / e.file                      # only TORCH_HOME has it
    env["cache"].mkdir(parents=True, exist_ok=True)
    (env["cache"] / e.file).write_bytes(PAYLOAD)
    assert W.resolve("fake") == env["cache"] / e.file                    # cache before TORCH_HOME
    explicit = env["tmp"] / "mine.ckpt"
    explicit.write_bytes(PAYLOAD)
    assert W.resolve("fake", explicit) == explicit                       # explicit first
    assert W.resolve("fake", env["hub"]) == env["hub"] / e.file          # a directory holding the file name
    with pytest.raises(W.WeightsError, match="path given for it does not exist"):
        W.resolve("fake", env["tmp"] / "absent.ckpt")                    # explicit never falls back


def test_resolve_bad_md5(env):
    e = env["entry"]
    bad = env["tmp"] / "bad.ckpt"
    bad.write_bytes(WRONG)
    with pytest.raises(W.WeightsError) as ei:
        W.resolve("fake", bad)
    actual = hashlib.md5(WRONG).hexdigest()
    assert f"expected {PAYLOAD_MD5}" in str(ei.value) and f"actual {actual}" in str(ei.value)
    # a corrupt cache copy with no good copy elsewhere: mismatch error, not "missing"
    env["cache"].mkdir(parents=True, exist_ok=True)
    (env["cache"] / e.file).write_bytes(WRONG)
    with pytest.raises(W.WeightsError, match="md5 mismatch"):
        W.resolve("fake")
    # ... but a good TORCH_HOME copy is used
    env["hub"].mkdir(parents=True, exist_ok=True)
    (env["hub"] / e.file).write_bytes(PAYLOAD)
    assert W.resolve("fake") == env["hub"] / e.file
    st = W.status("fake", bad)
    assert st.state == "bad_md5" and st.actual_md5 == actual


def test_no_hash_entry_accepted_by_name(env, monkeypatch):
    monkeypatch.setitem(W.REGISTRY, "nohash", W.WeightEntry(
        name="nohash", file="vit.pth", md5=None, urls=("https://example.invalid/vit",), builds=None, kind="pose",
        source="test", check_hash=False))
    env["hub"].mkdir(parents=True, exist_ok=True)
    (env["hub"] / "vit.pth").write_bytes(b"anything")
    assert W.resolve("nohash") == env["hub"] / "vit.pth"
    assert W.status("nohash").state == "unchecked"


def test_md5_cache(env, monkeypatch):
    f = env["tmp"] / "big.bin"
    f.write_bytes(PAYLOAD)
    assert W.md5sum(f) == PAYLOAD_MD5
    calls = []
    real_md5 = hashlib.md5
    monkeypatch.setattr(weights_registry.hashlib, "md5", lambda *a: calls.append(1) or real_md5(*a))
    assert W.md5sum(f) == PAYLOAD_MD5 and not calls                      # memory hit
    monkeypatch.setattr(weights_registry, "_md5_memory", {})
    assert W.md5sum(f) == PAYLOAD_MD5 and not calls                      # disk hit (.md5-cache.json)
    assert (env["cache"] / ".md5-cache.json").is_file()
    os.replace(env["tmp"] / "big.bin", env["tmp"] / "moved.bin")
    (env["tmp"] / "big.bin").write_bytes(WRONG[: len(PAYLOAD)])          # same path, new content
    assert W.md5sum(f) == hashlib.md5(WRONG[: len(PAYLOAD)]).hexdigest() and calls


# ---------------------------------------------------------------------------------------------------- fetch


def test_fetch_ok_and_idempotent(env, server):
    p = _fetch("fake", url=f"{server}/ok/x")
    assert p == env["cache"] / "fake-ckpt-0123" and p.read_bytes() == PAYLOAD
    assert not (env["cache"] / "fake-ckpt-0123.part").exists()
    assert W.resolve("fake") == p
    n = len(_Handler.log)
    assert _fetch("fake", url=f"{server}/ok/x") == p and len(_Handler.log) == n   # verified file: no request
    dest = env["tmp"] / "elsewhere"
    assert _fetch("fake", dest=dest, url=f"{server}/ok/x") == dest / "fake-ckpt-0123"


def test_fetch_registry_urls_in_order(env, server, monkeypatch):
    e = env["entry"]
    monkeypatch.setitem(W.REGISTRY, "fake", W.WeightEntry(
        name="fake", file=e.file, md5=e.md5, urls=(f"{server}/missing/x",), mirrors=(f"{server}/ok/x",),
        builds=None, kind="generator", source="test"))
    assert _fetch("fake").read_bytes() == PAYLOAD
    assert [p for p, _ in _Handler.log] == ["/missing/x", "/ok/x"]


def test_fetch_interrupted_keeps_part_then_resumes(env, server):
    part = env["cache"] / "fake-ckpt-0123.part"
    with pytest.raises(W.WeightsError) as ei:
        _fetch("fake", url=f"{server}/drop/x", retries=0)
    assert "interrupted" in str(ei.value) and "resume" in str(ei.value)
    assert part.is_file() and part.stat().st_size == len(PAYLOAD) // 2
    p = _fetch("fake", url=f"{server}/drop/x", retries=0)                 # second call resumes with Range
    assert p.read_bytes() == PAYLOAD and not part.exists()
    assert _Handler.log[-1] == ("/drop/x", f"bytes={len(PAYLOAD) // 2}-")


def test_fetch_resumes_within_one_call(env, server):
    p = _fetch("fake", url=f"{server}/drop/x", retries=2)
    assert p.read_bytes() == PAYLOAD
    assert [r for _, r in _Handler.log] == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_fetch_server_ignores_range_restarts(env, server):
    part = env["cache"] / "fake-ckpt-0123.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"\xff" * 1000)                                     # junk that must not be kept
    p = _fetch("fake", url=f"{server}/norange/x")
    assert p.read_bytes() == PAYLOAD and _Handler.log[-1][1] == "bytes=1000-"


def test_fetch_complete_part_416(env, server):
    part = env["cache"] / "fake-ckpt-0123.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(PAYLOAD)
    assert _fetch("fake", url=f"{server}/ok/x").read_bytes() == PAYLOAD


def test_fetch_stale_part_restarts_clean(env, server):
    part = env["cache"] / "fake-ckpt-0123.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"\x00" * 5000)                                     # from another file version
    assert _fetch("fake", url=f"{server}/ok/x").read_bytes() == PAYLOAD
    assert [r for _, r in _Handler.log] == ["bytes=5000-", None]


def test_fetch_wrong_checksum_removes_part(env, server):
    with pytest.raises(W.WeightsError) as ei:
        _fetch("fake", url=f"{server}/bad/x")
    msg = str(ei.value)
    assert f"expected {PAYLOAD_MD5}" in msg and hashlib.md5(WRONG).hexdigest() in msg and "removed" in msg
    assert not (env["cache"] / "fake-ckpt-0123.part").exists()
    assert not (env["cache"] / "fake-ckpt-0123").exists()


def test_fetch_http_error_and_timeout(env, server):
    with pytest.raises(W.WeightsError, match="HTTP 404"):
        _fetch("fake", url=f"{server}/gone/x")
    t0 = time.monotonic()
    with pytest.raises(W.WeightsError, match="interrupted"):
        _fetch("fake", url=f"{server}/slow/x", timeout=0.3, retries=0)
    assert time.monotonic() - t0 < 5
    assert (env["cache"] / "fake-ckpt-0123.part").stat().st_size == 1000  # kept for resume


# ---------------------------------------------------------------------------------------------------- import


def test_import_by_name_and_md5(env, monkeypatch):
    src = env["tmp"] / "usb"
    (src / "deep" / "er").mkdir(parents=True, exist_ok=True)
    (src / "deep" / "er" / "renamed_checkpoint.ckpt").write_bytes(PAYLOAD)   # found by md5
    (src / "notes.txt").write_text("hello")
    rep = W.import_dir(src, names=["fake"], min_bytes=1)
    assert [(n, s.name) for n, s, _ in rep.imported] == [("fake", "renamed_checkpoint.ckpt")]
    assert (env["cache"] / "fake-ckpt-0123").read_bytes() == PAYLOAD and not rep.missing
    rep = W.import_dir(src, names=["fake"], min_bytes=1)
    assert not rep.imported and [n for n, _ in rep.already] == ["fake"]

    # by name (no md5 scan), into another destination
    src2 = env["tmp"] / "usb2"
    src2.mkdir()
    (src2 / "fake-ckpt-0123").write_bytes(PAYLOAD)
    dest = env["tmp"] / "dest"
    rep = W.import_dir(src2, dest=dest, names=["fake"], by_md5=False)
    assert [n for n, _, _ in rep.imported] == ["fake"] and (dest / "fake-ckpt-0123").read_bytes() == PAYLOAD

    # a name match with a wrong md5 is rejected; the entry is reported missing
    monkeypatch.setenv("AVANON_WEIGHTS", str(env["tmp"] / "empty_cache"))
    src3 = env["tmp"] / "usb3"
    src3.mkdir()
    (src3 / "fake-ckpt-0123").write_bytes(WRONG)
    rep = W.import_dir(src3, names=["fake"])
    assert not rep.imported and rep.rejected[0][0] == "fake" and "md5 mismatch" in rep.rejected[0][2]
    assert rep.missing == ["fake"] and not (env["tmp"] / "empty_cache" / "fake-ckpt-0123").exists()


def test_import_small_files_not_hashed_by_default(env):
    src = env["tmp"] / "src"
    src.mkdir()
    (src / "renamed").write_bytes(PAYLOAD)                               # 300 kB < 1 MiB default
    rep = W.import_dir(src, names=["fake"])
    assert not rep.imported and rep.missing == ["fake"]


# ---------------------------------------------------------------------------------------------------- CLI


def _cli(argv):
    p = argparse.ArgumentParser(prog="avanon")
    weights_cli.add_weights_arguments(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_list_check_fetch_import(env, server, capsys):
    assert _cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "face_fdf128" in out and "missing" in out and "fake" in out
    assert _cli(["weights", "check", "fake"]) == 1
    assert _cli(["weights", "fetch", "fake", "--url", f"{server}/ok/x", "--no-progress", "--timeout", "5"]) == 0
    assert _cli(["weights", "check", "fake"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"fake\s+fake-ckpt-0123\s+ok\s+", out)
    assert _cli(["weights", "fetch", "fake", "--url", f"{server}/gone/x", "--force", "--no-progress",
                 "--retries", "0"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    bad = env["tmp"] / "bad.ckpt"
    bad.write_bytes(WRONG)
    assert _cli(["weights", "check", "fake", "--path", f"fake={bad}"]) == 1
    assert "BAD MD5" in capsys.readouterr().out
    assert _cli(["weights", "list", "-v"]) == 0
    out = capsys.readouterr().out
    assert W.REGISTRY["body_nocse288"].url in out and "issue #33" in out
    assert _cli(["weights", "import", str(env["tmp"] / "nonexistent")]) == 2
    assert _cli(["weights", "check", "random"]) == 2
    assert "not a checkpoint file" in capsys.readouterr().err

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from helpers import data


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **kw)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


PAYLOAD = b"to be, or not to be\n" * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def remote(url="http://127.0.0.1:9/none", gunzip=False, sha=SHA):
    return data.RemoteFile("toy/text.txt", url, sha, gunzip=gunzip)


def test_cache_hit(data_dirs, monkeypatch):
    cache, _ = data_dirs
    (cache / "toy").mkdir()
    (cache / "toy/text.txt").write_bytes(PAYLOAD)
    monkeypatch.setenv("TFS_OFFLINE", "1")
    assert data.fetch_file(remote()) == cache / "toy/text.txt"


def test_mirror_hit_is_read_in_place(data_dirs, monkeypatch):
    cache, mirror = data_dirs
    (mirror / "toy").mkdir()
    (mirror / "toy/text.txt").write_bytes(PAYLOAD)
    monkeypatch.setenv("TFS_OFFLINE", "1")
    assert data.fetch_file(remote()) == mirror / "toy/text.txt"
    assert not (cache / "toy").exists()  # nothing copied


def test_damaged_mirror_is_a_clear_error(data_dirs):
    _, mirror = data_dirs
    (mirror / "toy").mkdir()
    (mirror / "toy/text.txt").write_bytes(b"damaged")
    with pytest.raises(data.ChecksumError, match="mirror"):
        data.fetch_file(remote(), "toy")


@pytest.mark.parametrize("gz", [False, True])
def test_download_from_http_server(data_dirs, server, gz):
    cache, _ = data_dirs
    root, url = server
    (root / "text.bin").write_bytes(gzip.compress(PAYLOAD) if gz else PAYLOAD)
    path = data.fetch_file(remote(f"{url}/text.bin", gunzip=gz), "toy")
    assert path == cache / "toy/text.txt"
    assert path.read_bytes() == PAYLOAD
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_corrupted_download_is_caught_and_nothing_is_saved(data_dirs, server):
    cache, _ = data_dirs
    root, url = server
    (root / "text.bin").write_bytes(PAYLOAD + b"tampered")
    with pytest.raises(data.ChecksumError, match="SHA-256"):
        data.fetch_file(remote(f"{url}/text.bin"), "toy")
    assert not any((cache / "toy").iterdir())


def test_corrupted_cache_is_replaced(data_dirs, server):
    cache, _ = data_dirs
    root, url = server
    (root / "text.bin").write_bytes(PAYLOAD)
    (cache / "toy").mkdir()
    (cache / "toy/text.txt").write_bytes(b"half a file")
    assert data.fetch_file(remote(f"{url}/text.bin")).read_bytes() == PAYLOAD


def test_missing_while_offline_names_dataset_places_and_remedy(data_dirs, monkeypatch):
    monkeypatch.setenv("TFS_OFFLINE", "1")
    with pytest.raises(data.OfflineError) as err:
        data.fetch_file(remote(), "toy")
    message = str(err.value)
    assert "toy" in message and "cache" in message and "mirror" in message
    assert "TFS_DATA_MIRROR" in message and "TFS_OFFLINE" in message


def test_unreachable_server_is_a_clear_error(data_dirs):
    with pytest.raises(data.DataUnavailableError, match="could not download"):
        data.fetch_file(remote("http://127.0.0.1:9/nothing-listens-here"), "toy")


def test_unknown_dataset():
    with pytest.raises(KeyError, match="registered"):
        data.fetch("no-such-data")


def test_registry_checksums_look_right():
    for info in data.REGISTRY.values():
        for f in info.files:
            assert len(f.sha256) == 64 and f.url.startswith("https://"), f


def test_tiny_shakespeare_from_mirror(mirror, monkeypatch, tmp_path):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    text = data.load_tiny_shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")


def test_mnist_from_mirror(mirror, monkeypatch, tmp_path):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    images, labels = data.load_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10_000,) and set(labels.tolist()) == set(range(10))
    train_images, _ = data.load_mnist("train")
    assert train_images.shape == (60_000, 28, 28)
    assert Path(mirror, "MNIST/raw").is_dir()
    with pytest.raises(ValueError, match="train"):
        data.load_mnist("validation")


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    from helpers.files import atomic_write

    dest = tmp_path / "sub" / "file.bin"
    with atomic_write(dest) as tmp:
        assert tmp.parent == dest.parent and tmp != dest
        tmp.write_bytes(b"complete")
    assert dest.read_bytes() == b"complete"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_write(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert dest.read_bytes() == b"complete"  # the previous version is untouched
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]  # no temporary file left


def test_folder_digest_sees_a_changed_missing_or_renamed_file(tmp_path):
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.jpg").write_bytes(b"one")
    (folder / "a" / "2.jpg").write_bytes(b"two")
    digest, count = data.folder_sha256(folder)
    assert count == 2
    expected = data.FolderDigest("images", digest, count)
    data.verify_folder(folder, expected, "toy")  # unchanged: no error
    for change in (lambda: (folder / "a" / "2.jpg").write_bytes(b"tw0"),
                   lambda: (folder / "a" / "2.jpg").rename(folder / "a" / "3.jpg"),
                   lambda: (folder / "a" / "3.jpg").unlink()):
        change()
        with pytest.raises(data.ChecksumError, match="toy: the folder .* does not match"):
            data.verify_folder(folder, expected, "toy")


def test_offline_errors_are_one_type_of_the_data_layer():
    assert issubclass(data.OfflineError, data.DataUnavailableError)
    assert issubclass(data.OfflineError, data.DataError)


def test_many_files_download_concurrently_in_order(data_dirs, server):
    cache, mirror = data_dirs
    root, url = server
    files = []
    for i in range(40):
        body = f"recording {i}\n".encode() * 50
        (root / f"{i}.wav").write_bytes(body)
        files.append(data.RemoteFile(f"toy/{i}.wav", f"{url}/{i}.wav", hashlib.sha256(body).hexdigest()))
    (mirror / "toy").mkdir()
    (mirror / "toy/3.wav").write_bytes((root / "3.wav").read_bytes())  # one is in the mirror already
    paths = data.fetch_files(files, "toy", workers=8)
    assert paths[3] == mirror / "toy/3.wav"
    assert [p.name for p in paths] == [f"{i}.wav" for i in range(40)]
    assert all(p.read_bytes() == (root / p.name).read_bytes() for p in paths)
    assert sorted(p.name for p in (cache / "toy").iterdir()) == sorted(f"{i}.wav" for i in range(40) if i != 3)


def test_every_download_is_pinned_to_a_release_or_a_commit():
    # A download from a moving branch changes under its checksum one day.
    import helpers.audio  # noqa: F401  (each topic module registers its data sets)
    import helpers.music  # noqa: F401
    import helpers.rag  # noqa: F401

    for info in data.REGISTRY.values():
        for f in info.files:
            assert "/master/" not in f.url and "/main/" not in f.url, (info.name, f.url)

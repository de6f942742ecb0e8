"""The app around the service: model keys and loading, per-session files, how it is
served (localhost, no extra paths, bounded uploads), and that Gradio stays optional."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from pytorch_grad_cam import cli
from pytorch_grad_cam.app import server
from pytorch_grad_cam.app.errors import AppInputError, page_message
from pytorch_grad_cam.app.models import (
    DEFAULT_KEY,
    ModelKey,
    ModelStore,
    model_choices,
    parse_model_key,
)
from pytorch_grad_cam.app.sessions import SessionFiles
from pytorch_grad_cam.cli import pretrained

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------- models
@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("lite:efficientnet_lite0", ModelKey("lite", "efficientnet_lite0")),
        ("efficientnet_lite0", ModelKey("lite", "efficientnet_lite0")),
        ("resnet18", ModelKey("torchvision", "resnet18")),
        ("torchvision:resnet18:random", ModelKey("torchvision", "resnet18", True)),
        ("timm:deit_tiny_patch16_224.fb_in1k", ModelKey("timm", "deit_tiny_patch16_224.fb_in1k")),
    ],
)
def test_model_keys_parse_and_round_trip(text, key):
    assert parse_model_key(text) == key
    assert parse_model_key(key.text) == key


def test_a_bad_model_key_says_how_to_write_one():
    with pytest.raises(AppInputError, match=r"^Model 'hub:resnet': write source:name"):
        parse_model_key("hub:resnet")


def test_the_menu_offers_the_offline_default_first_and_labels_untrained_models():
    choices = model_choices()
    assert choices[0] == ("efficientnet_lite0 (ImageNet weights, offline)", DEFAULT_KEY)
    untrained = [label for label, key in choices if key.endswith(":random")]
    assert untrained == [
        "torchvision resnet18 (random weights, untrained)",
        "torchvision mobilenet_v3_small (random weights, untrained)",
    ]


def test_the_store_loads_once_and_keeps_the_last_two():
    store = ModelStore(torch.device("cpu"), capacity=2)
    first = store.get("torchvision:resnet18:random")
    assert store.get("torchvision:resnet18:random") is first  # cached
    assert first.suggested_layers == ["layer4.1"]
    assert first.layer_names == [name for name, _ in resnet18().named_modules() if name]
    assert "untrained" in first.description and not first.model.training
    store.get("torchvision:mobilenet_v3_small:random")
    store.get("torchvision:squeezenet1_0:random")
    assert store.get("torchvision:resnet18:random") is not first  # evicted, loaded again


def test_a_weights_file_that_does_not_load_gets_a_message(tmp_path):
    store = ModelStore(torch.device("cpu"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00 not a checkpoint")
    with pytest.raises(AppInputError) as caught:
        store.get("torchvision:resnet18:random", str(garbage))
    assert str(caught.value).startswith(
        "Weights file garbage.pt: not a checkpoint torch.load(weights_only=True) can read"
    )
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(AppInputError, match=r"^Weights file other.pt: does not fit ResNet"):
        store.get("torchvision:resnet18", str(other))


def test_a_weights_file_replaces_the_weights(tmp_path):
    torch.manual_seed(5)
    trained = resnet18(num_classes=3)
    path = tmp_path / "three_classes.pt"
    torch.save(trained.state_dict(), path)
    loaded = ModelStore(torch.device("cpu")).get("torchvision:resnet18:random", str(path))
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert loaded.model.fc.out_features == 3


def test_pretrained_weights_that_are_not_cached_get_the_pages_alternatives(monkeypatch):
    monkeypatch.setattr(pretrained, "reachable", lambda url, timeout=3.0: False)  # offline
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent/hub")  # nothing cached
    with pytest.raises(AppInputError) as caught:
        ModelStore(torch.device("cpu")).get("torchvision:resnet18")
    assert str(caught.value) == (
        "Model torchvision:resnet18: its pretrained weights are not in the cache here and "
        "there is no network to download them; upload a weights file for it, add :random for "
        "untrained weights, or use the offline default lite:efficientnet_lite0"
    )


def test_an_unknown_model_is_named():
    with pytest.raises(
        AppInputError,
        match=r"^Model torchvision:resnet7:random: unknown model; choose efficientnet_lite0",
    ):
        ModelStore(torch.device("cpu")).get("torchvision:resnet7:random")


def test_command_line_messages_lose_their_flag():
    error = cli.CommandLineError("--weights /tmp/x.pt: no such file")
    assert str(page_message(error, "Weights file x.pt")) == "Weights file x.pt: no such file"
    error = cli.CommandLineError("--model efficientnet_lite0 needs the examples extra: pip")
    assert str(page_message(error, "Model lite:efficientnet_lite0")) == (
        "Model lite:efficientnet_lite0: --model efficientnet_lite0 needs the examples extra: pip"
    )


# ----------------------------------------------------------------------- sessions
def test_a_session_end_deletes_its_uploads_and_outputs_only(tmp_path):
    sessions = SessionFiles(tmp_path / "app")
    upload = sessions.uploads / "abc123" / "photo.png"
    upload.parent.mkdir()
    upload.write_bytes(b"png")
    other_upload = sessions.uploads / "def456" / "other.png"
    other_upload.parent.mkdir()
    other_upload.write_bytes(b"png")
    outside = tmp_path / "keep.txt"
    outside.write_text("not the app's")
    sessions.remember_upload("tab-1", upload)
    sessions.remember_upload("tab-1", outside)  # never deleted: not an upload
    first, second = sessions.run_folder("tab-1"), sessions.run_folder("tab-1")
    assert (first.name, second.name) == ("run-1", "run-2")
    (second / "gradcam_map.npy").write_bytes(b"map")
    sessions.stop_flag("tab-1").set()

    deleted = sessions.end("tab-1")
    assert deleted == [upload, sessions.outputs / "tab-1"]
    assert not upload.exists() and not upload.parent.exists()
    assert not (sessions.outputs / "tab-1").exists()
    assert other_upload.exists() and outside.exists()  # another session's, and not ours
    assert not sessions.stop_flag("tab-1").is_set()  # a fresh flag
    sessions.close()
    assert not (tmp_path / "app").exists()


def test_session_names_cannot_leave_the_outputs_folder(tmp_path):
    sessions = SessionFiles(tmp_path)
    folder = sessions.run_folder("../../etc")
    assert folder.parent.parent == sessions.outputs and folder.parent.name == "______etc"


# ----------------------------------------------------------------------- serving
def test_it_serves_localhost_with_no_extra_paths_and_bounded_uploads():
    args = server.build_parser().parse_args([])
    options = server.launch_options(args)
    assert options["server_name"] == "127.0.0.1" and options["server_port"] == 7860
    assert options["share"] is False and options["allowed_paths"] == []
    assert options["max_file_size"] == "20mb" and options["show_error"] is False
    assert (args.concurrency, args.queue_size, args.batch_size) == (1, 16, 32)
    args = server.build_parser().parse_args(["--host", "0.0.0.0", "--port", "8000"])
    assert server.launch_options(args)["server_name"] == "0.0.0.0"


def test_the_framework_is_pointed_at_the_apps_folder_and_kept_offline(tmp_path, monkeypatch):
    for name in ("GRADIO_ANALYTICS_ENABLED", "GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE"):
        monkeypatch.delenv(name, raising=False)
    server.configure_environment(tmp_path)
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "uploads")
    assert os.environ["GRADIO_EXAMPLES_CACHE"] == str(tmp_path / "examples-cache")


def test_bad_flags_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["app", "--port", "eighty"])
    assert caught.value.code == 2
    assert "--port: invalid int value: 'eighty'" in capsys.readouterr().err


def test_the_library_and_the_service_need_no_gradio():
    code = (
        "import sys, pytorch_grad_cam, pytorch_grad_cam.app, pytorch_grad_cam.app.service, "
        "pytorch_grad_cam.app.outputs, pytorch_grad_cam.app.server; "
        "print(sorted(m for m in ('gradio', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
